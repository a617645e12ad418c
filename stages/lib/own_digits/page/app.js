// The draw-a-digit page: a canvas drawn on with pointer events (mouse, pen, finger), sent to
// /api/predict as a PNG when each stroke ends; the answers come back per model with a bar
// per digit, beside the 28x28 image the models saw, and each model that could not answer is
// shown with why. Nothing here is fetched from another host.
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
let inFlight = null;   // the request whose answer is awaited: a newer stroke replaces it
let sent = 0;          // requests sent, for the page's own test

function clearPad() {
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
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  send(JSON.stringify({image: pad.toDataURL("image/png")}), "application/json");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

async function send(body, type) {
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  sent += 1;
  const number = sent;
  document.body.dataset.sent = String(number);
  if (typeof body === "string") document.body.dataset.lastImage = JSON.parse(body).image;
  const headers = type ? {"Content-Type": type} : {};
  try {
    const response = await fetch("/api/predict", {method: "POST", body, headers,
                                                  signal: controller.signal});
    const answer = await response.json();
    const retry = Number(response.headers.get("Retry-After"));
    if (response.status === 503 && retry > 0 && !answer.unavailable) {
      // The server's queue is full (another client is busy): this drawing again, once.
      say(`${answer.error} (trying again in ${retry} s)`, true);
      await new Promise((resolve) => setTimeout(resolve, 1000 * retry));
      if (inFlight === controller && !controller.signal.aborted) {
        inFlight = null;
        send(body, type);
      }
      return;
    }
    if (!response.ok) {
      if (answer.unavailable) unavailable = answer.unavailable;
      say(answer.error || `the server answered ${response.status}`, true);
      document.body.dataset.answered = String(number);
      return;
    }
    // Checkpoints other than the ones listed answered (`dvc repro` retrained one, or one
    // cannot answer now): list the models again, for their fingerprints and accuracies.
    if (!sameModels(answer.models, answer.unavailable)) await loadModels();
    if (controller.signal.aborted) return;
    show(answer);
    document.body.dataset.answered = String(number);
  } catch (err) {
    if (err.name !== "AbortError") say(`no answer from the server (${err.message})`, true);
  } finally {
    if (inFlight === controller) inFlight = null;
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
  digit.dataset.probability = prediction.probability.toFixed(3);
  digit.title = `probability ${prediction.probability.toFixed(3)}`;
  box.append(title, digit, element("p", "range", model.answers));
  for (const [label, p] of Object.entries(prediction.probabilities)) {
    const bar = element("div", label === String(prediction.digit) ? "bar top" : "bar");
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", "", label), track, element("span", "p", p.toFixed(3)));
    box.append(bar);
  }
  const accuracy = model.accuracy !== null ? ` · validation accuracy ${model.accuracy.toFixed(4)}`
    : model.accuracy_problem ? "" : " · accuracy: not in metrics/ for this checkpoint";
  box.append(element("p", "meta", `${model.checkpoint} · ${model.fingerprint}${accuracy}`));
  if (model.accuracy_problem) {  // its metrics file is not its checkpoint's own scores
    box.append(element("p", "meta problem", `accuracy not shown: ${model.accuracy_problem}`));
  }
  return box;
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
  send(form, null);
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
