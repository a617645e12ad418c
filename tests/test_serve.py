"""`python -m stages.serve`: the draw-a-digit page and its JSON API, run as a real server in
its own process. The API answers as `predict` does and survives bad requests; the page is
driven in headless Chromium (Debian's package, through Selenium), with every request to
another host blocked."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.lib.data.idx import read_images_and_labels
from tests.helpers import ROOT, env_with, run_module
from tests.test_predict import tiny_checkpoint
from tests.test_report import REMOTE_LOAD

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INSTALL = "apt-get install chromium chromium-driver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(project: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m stages.serve` in `project` on a free port, and its base URL, once it
    answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "stages.serve", "--port", str(port),
                                *args], cwd=project, stdout=subprocess.PIPE,
                               # a folder of checkpoints runs this checkout's code
                               env=env_with(PYTHONPATH=None if (project / "stages").is_dir()
                                            else str(ROOT)),
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/api/models", timeout=5)
            return process, url
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


@contextlib.contextmanager
def serving(project: Path, *args: str):
    """The server of start_server until the block ends; its base URL."""
    process, url = start_server(project, *args)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def post(url: str, body: bytes, kind: str, query: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/api/predict{query}", data=body,
                                     headers={"Content-Type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return body + data + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def data_url(data: bytes) -> tuple[bytes, str]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return json.dumps({"image": url}).encode(), "application/json"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_json(project: Path, image: Path, *models: str) -> dict:
    args = [arg for model in models for arg in ("--model", model)]
    return json.loads(run_module(project, "stages.predict", str(image), *args, "--json",
                                 check=True).stdout)


@pytest.fixture(scope="module")
def seven(shared_mnist) -> np.ndarray:
    images, labels = read_images_and_labels(shared_mnist / "t10k-images-idx3-ubyte.gz",
                                            shared_mnist / "t10k-labels-idx1-ubyte.gz")
    assert labels[0] == 7
    return images[0]


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, list[str]]:
    """A folder with two tiny checkpoints, and the --model arguments that serve them."""
    models = [tiny_checkpoint(tmp_path / "a.pt", "linear", seed=1),
              tiny_checkpoint(tmp_path / "b.pt", "mlp", seed=2)]
    return tmp_path, [arg for m in models for arg in ("--model", str(m))]


# --- the API -------------------------------------------------------------------------------

def test_the_api_answers_as_predict_does(tiny, seven):
    folder, args = tiny
    (folder / "seven.png").write_bytes(png(255 - np.kron(seven, np.ones((4, 4), np.uint8))))
    expected = predict_json(folder, folder / "seven.png", *args[1::2])
    with serving(folder, *args) as url:
        data = (folder / "seven.png").read_bytes()
        for body, kind in (multipart("seven.png", data), data_url(data)):
            status, answer = post(url, body, kind)
            assert status == 200, answer
            assert answer["models"] == expected["models"]
            assert answer["images"][0]["predictions"] == expected["images"][0]["predictions"]
            assert answer["prepared"].startswith("data:image/png;base64,")
        with urllib.request.urlopen(f"{url}/api/models") as response:
            listed = json.loads(response.read())["models"]
    assert [m["checkpoint"] for m in listed] == [str(folder / "a.pt"), str(folder / "b.pt")]
    assert listed[0]["answers"].endswith("answers 3 or 7, whatever the image shows")


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(tiny, seven):
    folder, args = tiny
    good = png(seven)
    blank = png(np.full((280, 280), 255, np.uint8))
    Image.new("1", (12_000, 12_000)).save(folder / "bomb.png")
    bad = [
        ((b"", "application/json"), 400, "the request is empty"),
        (multipart("notes.png", b"not an image"), 400, "notes.png: not an image Pillow can read"),
        (data_url(blank), 400, "drawing: no digit found (the image is one flat shade)"),
        ((b'{"image": "http://example.com/x.png"}', "application/json"), 400,
         "expected an image file"),
        ((b"\xff\xfe", "application/json"), 400, "expected an image file"),
        (multipart("bomb.png", (folder / "bomb.png").read_bytes()), 413, "too many pixels"),
        (multipart("huge.png", b"\0" * (11 * 1024 * 1024)), 413, "over the limit"),
    ]
    with serving(folder, *args) as url:
        _, expected = post(url, *data_url(good))
        for i in range(200):
            (body, kind), status, message = bad[i % len(bad)]
            got, answer = post(url, body, kind)
            assert (got, set(answer)) == (status, {"error"}) and message in answer["error"]
        assert post(url, *data_url(good)) == (200, expected)


def test_a_checkpoint_rewritten_while_serving_answers_the_next_request(tiny, seven):
    folder, args = tiny
    with serving(folder, *args) as url:
        _, before = post(url, *data_url(png(seven)))
        tiny_checkpoint(folder / "a.pt", "linear", seed=3)  # as `dvc repro` would rewrite it
        _, after = post(url, *data_url(png(seven)))
        (folder / "b.pt").unlink()
        one_gone = post(url, *data_url(png(seven)))
        (folder / "a.pt").unlink()
        status, all_gone = post(url, *data_url(png(seven)))
    name = "a.pt"  # models are named by their file, or by their path where names clash
    assert after["models"][name]["fingerprint"] != before["models"][name]["fingerprint"]
    # One missing: the others answer, and the answer names the missing one and why.
    assert one_gone[0] == 200 and list(one_gone[1]["models"]) == ["a.pt"]
    assert one_gone[1]["unavailable"] == [{
        "name": "b.pt", "checkpoint": str(folder / "b.pt"),
        "error": f"checkpoint {folder / 'b.pt'} not found; run `dvc repro` first"}]
    # None left: 503, each named.
    assert status == 503 and [m["name"] for m in all_gone["unavailable"]] == ["a.pt", "b.pt"]
    assert all_gone["error"].startswith("no model can answer (a.pt: checkpoint ")


def test_no_trained_model_is_one_message_before_serving(tmp_path):
    result = run_module(tmp_path, "stages.serve", "--port", str(free_port()))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("no trained model in models/ (baseline.pt, linear.pt, mlp.pt, cnn.pt); run `dvc "
            "repro` first") in result.stderr


# --- the page, in a real browser -----------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {INSTALL}")
        pytest.skip(f"needs Chromium and its driver: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                 "--proxy-server=127.0.0.1:9",  # every other host unreachable
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not (value := condition(driver)):
        assert time.monotonic() < deadline, driver.find_element("id", "status").text
        time.sleep(0.1)
    return value


def answered(driver) -> bool:
    body = driver.find_element("tag name", "body")
    sent = body.get_attribute("data-sent")
    return sent is not None and body.get_attribute("data-answered") == sent


def shown_answers(driver) -> dict[str, str]:
    """Each model's answer as the page shows it, in predict's words: `3 (0.998)`, and the
    baseline's `3 (L1 0.071)`."""
    return {card.get_attribute("data-model"):
            card.find_element("class name", "digit").get_attribute("data-answer")
            for card in driver.find_elements("class name", "model")}


def as_predict_says(predictions: dict) -> dict[str, str]:
    from stages.lib.own_digits.classify import answer_text

    return {name: answer_text(p) for name, p in predictions.items()}


def trace(driver, pixels: np.ndarray) -> None:
    """Draw the digit's ink with the mouse, a stroke per run of ink in each row, scaled
    10× onto the 280-pixel canvas (pointerdown, pointermove, pointerup as a hand would)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.actions import interaction

    canvas = driver.find_element("id", "pad")
    actions = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"))
    for row in range(28):
        ink = np.flatnonzero(pixels[row] > 127)
        for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1) if ink.size else []:
            y = row * 10 + 5 - 140  # offsets from the canvas's centre
            actions.pointer_action.move_to(canvas, int(run[0]) * 10 + 5 - 140, y)
            actions.pointer_action.pointer_down()
            actions.pointer_action.move_to(canvas, int(run[-1]) * 10 + 5 - 140, y)
            actions.pointer_action.pointer_up()
    actions.perform()


@pytest.mark.pipeline
def test_the_page_answers_a_drawn_digit_as_predict_does(browser, book_project, seven,
                                                        tmp_path):
    project = book_project[0]
    with serving(project) as url:
        browser.get(url)
        page = browser.page_source
        assert not REMOTE_LOAD.search(page)
        wait_for(browser, lambda d: d.find_element("id", "status").text == "Draw a digit.")
        trace(browser, seven)
        wait_for(browser, answered)
        shown = shown_answers(browser)
        sent = browser.find_element("tag name", "body").get_attribute("data-last-image")
        prepared = browser.find_element("id", "prepared").get_attribute("src")
        browser.save_screenshot(str(tmp_path / "page.png"))

        drawing = tmp_path / "drawing.png"
        drawing.write_bytes(base64.b64decode(sent.split(",", 1)[1]))
        expected = predict_json(project, drawing)["images"][0]["predictions"]
        assert list(shown) == ["baseline", "linear", "mlp", "cnn"]
        assert shown == as_predict_says(expected)
        assert shown["cnn"].startswith("7 (")  # the traced 7 reads as one
        assert prepared.startswith("data:image/png;base64,")

        # A file chosen with the page's file input: the same answers as predict on it.
        photo = tmp_path / "photo.png"
        photo.write_bytes(png(255 - np.kron(seven, np.ones((5, 5), np.uint8))))
        before = browser.find_element("tag name", "body").get_attribute("data-sent")
        browser.find_element("id", "file").send_keys(str(photo))
        wait_for(browser, lambda d: answered(d) and d.find_element(
            "tag name", "body").get_attribute("data-sent") != before)
        expected = predict_json(project, photo)["images"][0]["predictions"]
        assert shown_answers(browser) == as_predict_says(expected)
        logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert logs == []


@pytest.mark.pipeline
def test_the_answers_follow_the_pen_while_it_is_down(browser, book_project, seven):
    """Live while drawing: with the mouse button held, the answers, the image the models saw
    and each model's why change as the stroke grows; one request at most is in flight."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    ink = np.argwhere(seven > 127)  # the 7's pixels, top row first: the pen's path
    path = ink[np.lexsort((ink[:, 1], ink[:, 0]))][::6]
    with serving(book_project[0]) as url:
        browser.get(url)
        wait_for(browser, lambda d: d.find_element("id", "status").text == "Draw a digit.")
        canvas = browser.find_element("id", "pad")
        pen = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"))
        y, x = path[0]
        pen.pointer_action.move_to(canvas, int(x) * 10 + 5 - 140, int(y) * 10 + 5 - 140)
        pen.pointer_action.pointer_down()
        pen.perform()
        body = browser.find_element("tag name", "body")
        seen = []
        for y, x in path[1:]:
            pen.pointer_action.move_to(canvas, int(x) * 10 + 5 - 140, int(y) * 10 + 5 - 140)
            pen.pointer_action.pause(0.05)
            pen.perform()
            sent, answered_ = (int(body.get_attribute(name) or 0)
                               for name in ("data-sent", "data-answered"))
            assert sent - answered_ <= 1  # never a queue of requests
            if body.get_attribute("data-answered-while-drawing"):
                seen.append((browser.find_element("id", "prepared").get_attribute("src"),
                             tuple(shown_answers(browser).values()),
                             tuple(e.get_attribute("src") for e in browser.find_elements(
                                 "css selector", ".why-view img"))))
        assert body.get_attribute("data-strokes") is None  # the button is still down
        pen.pointer_action.pointer_up()
        pen.perform()
        wait_for(browser, answered)
        assert body.get_attribute("data-strokes") == "1"
    assert len(seen) >= 5, seen  # answered again and again before the button went up
    assert len({prepared for prepared, _, _ in seen}) >= 3
    assert len({answers for _, answers, _ in seen}) >= 2
    assert len({why for _, _, why in seen}) >= 3
    assert all(len(answers) == 4 for _, answers, _ in seen)


def test_the_page_names_a_model_that_cannot_answer(browser, tiny, seven):
    folder, args = tiny
    with serving(folder, *args) as url:
        browser.get(url)
        wait_for(browser, lambda d: d.find_element("id", "status").text == "Draw a digit.")
        (folder / "b.pt").unlink()  # as `dvc repro` deletes a stage's outputs first
        trace(browser, seven)
        wait_for(browser, answered)
        cards = {card.get_attribute("data-model"): card.text
                 for card in browser.find_elements("class name", "model")}
        status = browser.find_element("id", "status").text
    assert list(cards) == ["a.pt", "b.pt"]
    assert cards["b.pt"] == (f"b.pt\ncannot answer: checkpoint {folder / 'b.pt'} not found; "
                             f"run `dvc repro` first")
    assert status == "Answered by 1 model; 1 could not answer."


def test_ctrl_c_stops_the_server_cleanly(tiny):
    import signal

    folder, args = tiny
    process, url = start_server(folder, *args)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert f"draw a digit at {url}" in err


def test_the_api_shows_no_accuracy_its_checkpoint_does_not_record(book_copy, monkeypatch):
    """A metrics file edited by hand (and committed with `dvc commit -f`) is not shown as the
    model's accuracy by /api/models and the page: each names why instead."""
    from stages.lib.own_digits.app import models_json
    from stages.lib.own_digits.classify import ServedModels
    from tests.test_summary import commit_edited_metrics

    monkeypatch.chdir(book_copy)
    served = ServedModels(["linear", "cnn"])
    accuracy = json.loads((book_copy / "metrics/cnn.json").read_text())["accuracy"]
    shown = {m["name"]: m for m in models_json(served)["models"]}
    assert shown["cnn"]["accuracy"] == accuracy and shown["cnn"]["accuracy_problem"] is None
    commit_edited_metrics(book_copy, "cnn", f'"accuracy": {accuracy}', '"accuracy": 0.9999')
    shown = {m["name"]: m for m in models_json(served)["models"]}
    assert shown["cnn"]["accuracy"] is None
    assert shown["cnn"]["accuracy_problem"] == (
        f"metrics/cnn.json does not hold the scores models/cnn.pt records: accuracy is 0.9999 "
        f"there but {accuracy} in the checkpoint (edited after the stage wrote it?)")
    assert shown["linear"]["accuracy"] is not None  # the others as they were
    (book_copy / "metrics/linear.json").unlink()
    assert {m["name"]: m for m in models_json(served)["models"]}["linear"][
        "accuracy_problem"] == "metrics/linear.json not found"
