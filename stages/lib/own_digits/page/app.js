// The draw-a-digit page: a canvas drawn on with pointer events (mouse, pen, finger), sent to
// /api/predict?why=1 as a PNG while a stroke is drawn and when it ends, one request at a time
// (the newest drawing goes when the answer in flight is back, so answers never queue up).
// The answers come back per model with a bar per digit and the model's why, beside the 28x28
// image the models saw; each model that could not answer is shown with why. Nothing here is
// fetched from another host.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const answersBox = document.getElementById("answers");
const prepared = document.getElementById("prepared");
// MNIST's strokes are about a tenth of the digit's 20-pixel box: on a 280-pixel square, 20.
const BRUSH = 20;
let models = [];
let unavailable = [];  // served models that cannot answer now, with why
let drawing = false;
let busy = false;      // a request is in flight: at most one at a time
let pending = null;    // what to send once it is back: "drawing", or a file's FormData
let cleared = 0;       // Clear's count: an answer to a drawing from before it is not shown
let sent = 0;          // requests sent, for the page's own test

function clearPad() {
  cleared += 1;
  pending = null;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  prepared.removeAttribute("src");
  answersBox.replaceChildren();
  say(models.length ? "Draw a digit." : statusLine.textContent);
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(x, y, BRUSH / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  ctx.lineTo(x, y);
  ctx.stroke();
  ask("drawing");  // live: the answers follow the pen
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  document.body.dataset.strokes = String(Number(document.body.dataset.strokes || 0) + 1);
  ask("drawing");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

// One request in flight at most: what is asked meanwhile replaces what waits, and is sent
// (the drawing as it is then) when the answer is back, so a slow answer never queues up.
function ask(what) {
  pending = what;
  if (!busy) sendNext();
}

async function sendNext() {
  if (!pending) return;
  const what = pending;
  pending = null;
  busy = true;
  try {
    if (what === "drawing") {
      const image = pad.toDataURL("image/png");
      document.body.dataset.lastImage = image;
      await send(what, JSON.stringify({image}), "application/json");
    } else {
      await send(what, what, null);
    }
  } finally {
    busy = false;
    sendNext();
  }
}

async function send(what, body, type) {
  sent += 1;
  const number = sent;
  const asOf = cleared;
  document.body.dataset.sent = String(number);
  const headers = type ? {"Content-Type": type} : {};
  try {
    const response = await fetch("/api/predict?why=1", {method: "POST", body, headers});
    const answer = await response.json();
    const retry = Number(response.headers.get("Retry-After"));
    if (response.status === 503 && retry > 0 && !answer.unavailable) {
      // The server's queue is full (another client is busy): this again, unless newer waits.
      say(`${answer.error} (trying again in ${retry} s)`, true);
      await new Promise((resolve) => setTimeout(resolve, 1000 * retry));
      if (!pending && asOf === cleared) pending = what;
      return;
    }
    if (asOf !== cleared) return;  // the pad was cleared meanwhile
    if (!response.ok) {
      if (answer.unavailable) unavailable = answer.unavailable;
      say(answer.error || `the server answered ${response.status}`, true);
      document.body.dataset.answered = String(number);
      return;
    }
    // Checkpoints other than the ones listed answered (`dvc repro` retrained one, or one
    // cannot answer now): list the models again, for their fingerprints and accuracies.
    if (!sameModels(answer.models, answer.unavailable)) await loadModels();
    show(answer);
    document.body.dataset.answered = String(number);
    if (drawing) document.body.dataset.answeredWhileDrawing = String(number);
  } catch (err) {
    say(`no answer from the server (${err.message})`, true);
  }
}

function sameModels(answered, missing) {
  const names = Object.keys(answered);
  return names.length === models.length && models.every((model, i) =>
    names[i] === model.name && answered[model.name].fingerprint === model.fingerprint)
    && missing.map((m) => m.name).join() === unavailable.map((m) => m.name).join();
}

function show(answer) {
  prepared.src = answer.prepared;
  const predictions = answer.images[0].predictions;
  const cards = models.filter((model) => predictions[model.name])
    .map((model) => card(model, predictions[model.name]));
  unavailable = answer.unavailable;
  answersBox.replaceChildren(...cards, ...unavailable.map(missingCard));
  say(`Answered by ${cards.length} model${cards.length === 1 ? "" : "s"}` +
      (unavailable.length ? `; ${unavailable.length} could not answer.` : "."),
      unavailable.length > 0);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function card(model, prediction) {
  const box = element("div", "model");
  box.dataset.model = model.name;
  const title = element("h2");
  title.append(element("span", "", model.name));
  if (model.kind !== model.name) title.append(element("span", "kind", model.kind));
  const digit = element("div", "digit", String(prediction.digit));
  digit.dataset.digit = String(prediction.digit);
  const nearest = prediction.distances;  // the baseline's: smaller is nearer
  // as `predict` prints it: "3 (0.998)", the baseline's "3 (L1 0.071)"
  digit.dataset.answer = nearest
    ? `${prediction.digit} (L1 ${nearest[prediction.digit].toFixed(3)})`
    : `${prediction.digit} (${prediction.probability.toFixed(3)})`;
  digit.title = nearest ? "the digit whose mean image is nearest"
    : `probability ${prediction.probability.toFixed(3)}`;
  box.append(title, digit, element("p", "range", model.answers));
  if (nearest) box.append(element("p", "range", "distance (L1) to each digit's mean image; " +
                                                "smaller is nearer"));
  const values = nearest || prediction.probabilities;
  const largest = Math.max(...Object.values(values));
  for (const [label, p] of Object.entries(values)) {
    const bar = element("div", label === String(prediction.digit) ? "bar top" : "bar");
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * (nearest ? p / largest : p)).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", "", label), track, element("span", "p", p.toFixed(3)));
    box.append(bar);
  }
  if (prediction.why) box.append(whyView(prediction.why));
  const accuracy = model.accuracy !== null ? ` · validation accuracy ${model.accuracy.toFixed(4)}`
    : model.accuracy_problem ? "" : " · accuracy: not in metrics/ for this checkpoint";
  box.append(element("p", "meta", `${model.checkpoint} · ${model.fingerprint}${accuracy}`));
  if (model.accuracy_problem) {  // its metrics file is not its checkpoint's own scores
    box.append(element("p", "meta problem", `accuracy not shown: ${model.accuracy_problem}`));
  }
  return box;
}

// Why it answers so: the pictures the server drew (own_digits/why.py) and its sentence.
function whyView(why) {
  const box = element("div", "why-view");
  const pictures = element("div", "pictures");
  const small = (why.means || why.weights || []).length > 2;  // ten digits: ten small ones
  for (const mean of why.means || []) {
    pictures.append(picture(mean.image, `mean ${mean.digit}: ${mean.distance.toFixed(3)}`,
                            small ? "grey small" : "grey"));
  }
  for (const weights of why.weights || []) {
    pictures.append(picture(weights.image, `weights: ${weights.label}`, small ? "small" : ""));
  }
  if (why.attribution) {
    const a = why.attribution;
    pictures.append(picture(a.image, `your drawing: ${a.toward} over ${a.over}`));
  }
  box.append(pictures);
  if (why.weights || why.attribution) {
    const legend = element("div", "legend");
    legend.append(element("span", "", "lowers the score"), element("span", "scale"),
                  element("span", "", "raises it"));
    box.append(legend);
  }
  box.append(element("p", "says", why.says));
  return box;
}

function picture(src, caption, kind) {
  const figure = element("figure", kind ? `view ${kind}` : "view");
  const img = element("img");
  img.src = src;
  img.alt = caption;
  img.width = img.height = (kind || "").includes("small") ? 56 : 84;
  figure.append(img, element("figcaption", "", caption));
  return figure;
}

function missingCard(model) {
  const box = element("div", "model missing");
  box.dataset.model = model.name;
  const title = element("h2");
  title.append(element("span", "", model.name));
  box.append(title, element("p", "why", `cannot answer: ${model.error}`));
  return box;
}

async function loadModels() {
  try {
    const response = await fetch("/api/models");
    const answer = await response.json();
    if (!response.ok) {
      say(answer.error, true);
      return;
    }
    models = answer.models;
    unavailable = answer.unavailable;
    say("Draw a digit.");
  } catch (err) {
    say(`no answer from the server (${err.message})`, true);
  }
}

function sendFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  ask(form);
}

document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("file").addEventListener("change", (e) => sendFile(e.target.files[0]));
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  sendFile(e.dataTransfer.files[0]);
});

clearPad();
loadModels();
