"""Why each model answers (learning/explain.py, own_digits/why.py): the baseline answering
as its stage scores, integrated gradients that add up, pictures whose colours mean what the
legend says, and the API's `?why=1` (tiny checkpoints made here: no pipeline run)."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from stages.lib.data.tensors import to_float
from stages.lib.learning.explain import integrated_gradients, margin, runner_up
from stages.lib.learning.models import build_model
from stages.lib.learning.similarity import (NearestMean, class_distances, class_means,
                                            predict_nearest, save_means)
from stages.lib.own_digits.classify import load_classifier
from stages.lib.own_digits.why import explain, signed
from tests.helpers import tiny_digits
from tests.test_predict import tiny_checkpoint
from tests.test_serve import data_url, png, post, serving, seven  # noqa: F401 - a fixture


def decoded(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_the_baseline_answers_as_its_stage_scores_it():
    """NearestMean's scores are minus the stage's L1 distances, bit for bit, and its answer
    the nearest mean, a tie going to the lower class as predict_nearest's does."""
    images, labels = (torch.from_numpy(a) for a in tiny_digits(per_digit=20, digits=range(3)))
    means = class_means(images, labels.long(), 3)
    scores = NearestMean(means)(to_float(images).view(len(images), -1))
    assert torch.equal(-scores, class_distances(images, means, "l1"))
    assert torch.equal(scores.argmax(1), predict_nearest(images, means, "l1"))
    tie = NearestMean(torch.stack([means[0], means[0]]))(to_float(images[:1]).view(1, -1))
    assert tie.argmax(1).item() == 0


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_a_linear_model_s_why_is_its_weights_times_the_pixels(n_outputs):
    torch.manual_seed(0)
    model = build_model({"kind": "linear", "n_outputs": n_outputs})
    x = torch.rand(784)
    logits = model(x[None]).detach()
    answer = int(logits[0, 0] > 0) if n_outputs == 1 else int(logits.argmax())
    found = integrated_gradients(model, x, answer)
    w, b = model[0].weight.detach(), model[0].bias.detach()
    if n_outputs == 1:
        sign = 1 if answer == 1 else -1
        torch.testing.assert_close(found.parts, sign * w[0] * x)
        assert found.blank == pytest.approx(sign * b[0].item(), abs=1e-6)
    else:
        other = int(logits[0].topk(2).indices[1])
        assert found.other == other
        torch.testing.assert_close(found.parts, (w[answer] - w[other]) * x)
        assert found.blank == pytest.approx((b[answer] - b[other]).item(), abs=1e-6)
    assert found.parts.sum().item() + found.blank == pytest.approx(found.drawing, abs=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_integrated_gradients_add_up_to_the_margin_s_change(kind):
    """Completeness: the parts sum to margin(drawing) − margin(blank), but for the midpoint
    rule's error, which shrinks as the path gets more points."""
    torch.manual_seed(1)
    model = build_model({"kind": kind, "n_outputs": 3, "hidden": [16],
                         "input_mean": 0.13, "input_std": 0.31}).eval()
    x = torch.rand(784) * (torch.rand(784) > 0.7)
    answer = int(model(x[None]).argmax())
    errors = []
    for steps in (4, 256):
        found = integrated_gradients(model, x, answer, steps)
        change = found.drawing - found.blank
        # against the parts' whole size: an untrained model's margin barely changes
        errors.append(abs(found.parts.sum().item() - change) / found.parts.abs().sum().item())
    assert errors[1] <= 0.005 and errors[1] <= errors[0]
    with torch.no_grad():
        assert found.drawing == pytest.approx(margin(model(x[None]), answer,
                                                     found.other).item(), rel=1e-5, abs=1e-6)


def test_the_runner_up_is_the_second_highest_score_or_the_sigmoid_s_other_side():
    assert runner_up(torch.tensor([[0.1, 3.0, 2.0, -1.0]]), answer=1) == 2
    assert runner_up(torch.tensor([[0.1, 3.0, 2.0, -1.0]]), answer=2) == 1
    assert runner_up(torch.tensor([[2.5]]), answer=1) == 0
    assert margin(torch.tensor([[2.5]]), 0, 1).item() == -2.5


def test_a_signed_picture_is_red_where_it_raises_and_blue_where_it_lowers():
    values = torch.zeros(28, 28)
    values[0, 0], values[0, 1], values[0, 2] = 2.0, -2.0, 0.5
    under = torch.zeros(28, 28)
    under[5, 5] = 1.0  # ink, where the map is 0: grey, not a colour
    picture, scale = signed(values, under)
    rgb = decoded(picture)
    assert rgb.shape == (28, 28, 3) and scale == 2.0
    assert tuple(rgb[0, 0]) == (178, 24, 43) and tuple(rgb[0, 1]) == (33, 102, 172)
    assert rgb[0, 2, 0] > rgb[0, 2, 2] and tuple(rgb[0, 3]) == (255, 255, 255)
    assert rgb[5, 5, 0] == rgb[5, 5, 1] == rgb[5, 5, 2] < 255


@pytest.fixture
def four(tmp_path):
    """A baseline, a linear, an MLP and a CNN checkpoint, tiny, on 3 and 7."""
    images, labels = (torch.from_numpy(a) for a in tiny_digits(per_digit=10, digits=(3, 7)))
    means = class_means(images, (labels == 7).long(), 2)
    save_means(tmp_path / "baseline.pt", means,
               {"digits": [3, 7], "target_digits": [3, 7], "tensors": "t"}, {})
    paths = [tmp_path / "baseline.pt"] + [tiny_checkpoint(tmp_path / f"{kind}.pt", kind, seed)
                                          for seed, kind in enumerate(("linear", "mlp", "cnn"))]
    return tmp_path, [arg for path in paths for arg in ("--model", str(path))]


def test_every_answer_s_why_from_the_api(four, seven):
    folder, args = four
    body, kind = data_url(png(255 - np.kron(seven, np.ones((4, 4), np.uint8))))
    with serving(folder, *args) as url:
        _, plain = post(url, body, kind)
        status, answer = post(url, body, kind, "?why=1")
        assert status == 200, answer
        for bad in ("?why=yes", "?why=1&why=0"):
            status, refused = post(url, body, kind, bad)
            assert status == 400 and "expected one why, 0 or 1" in refused["error"]
        assert post(url, body, kind, "?why=0")[1]["images"] == plain["images"]
    predictions = answer["images"][0]["predictions"]
    assert {name: {k: v for k, v in p.items() if k != "why"} for name, p in
            predictions.items()} == plain["images"][0]["predictions"]
    assert all("why" not in p for p in plain["images"][0]["predictions"].values())

    nearest = predictions["baseline.pt"]
    means = nearest["why"]["means"]
    assert [m["digit"] for m in means][0] == nearest["digit"]  # nearest first
    assert {str(m["digit"]): m["distance"] for m in means} == nearest["distances"]
    assert all(decoded(m["image"]).shape == (28, 28) for m in means)
    assert "mean absolute difference (L1) is smallest for" in nearest["why"]["says"]

    linear = predictions["linear.pt"]["why"]
    assert [w["label"] for w in linear["weights"]] == [
        f"{predictions['linear.pt']['digit']} over {10 - predictions['linear.pt']['digit']}"]
    assert "weight times its ink" in linear["says"]
    for name in ("linear.pt", "mlp.pt", "cnn.pt"):
        why = predictions[name]["why"]
        a = why["attribution"]
        assert decoded(a["image"]).shape == (28, 28, 3)
        assert a["toward"] == predictions[name]["digit"] and a["over"] in (3, 7)
        if name == "linear.pt":  # exactly weight × pixel: the parts add up to the change
            assert a["total"] == pytest.approx(a["drawing"] - a["blank"], rel=1e-4)
        assert f"{a['toward']}'s score over {a['over']}'s" in why["says"]


def test_the_explained_cnn_is_the_served_cnn(four, seven):
    """The CNN's why is computed with the CPU speed-ups: the same margins, to rounding."""
    folder, _ = four
    cnn = load_classifier(str(folder / "cnn.pt"))
    pixels = seven
    prediction = {"digit": 7}
    why = explain(cnn, pixels, prediction)["attribution"]
    x = to_float(torch.from_numpy(pixels)).view(1, -1)
    with torch.no_grad():
        plain = margin(cnn.model(x), cnn.target_digits.index(7),
                       cnn.target_digits.index(why["over"])).item()
    assert why["drawing"] == pytest.approx(plain, rel=1e-4, abs=1e-5)
    assert isinstance(cnn.views["fast"], nn.Module) and cnn.views["fast"] is not cnn.model


def test_the_models_listing_names_the_baseline_first(four):
    folder, args = four
    with serving(folder, *args) as url:
        with urllib.request.urlopen(f"{url}/api/models") as response:
            listed = json.loads(response.read())["models"]
    assert [m["kind"] for m in listed] == ["baseline", "linear", "mlp", "cnn"]
    assert listed[0]["answers"].endswith("answers 3 or 7, whatever the image shows")


# --- found by the red team (docs/what-happens-when.md, round five) -------------------------

def test_a_score_past_float_s_range_gets_no_why_rather_than_a_broken_answer(tmp_path, seven):
    """A checkpoint edited to a bias of ±3e38: its margins overflow to infinity, which JSON
    cannot carry (the server answered 500 for every model); it gets one sentence instead."""
    from stages.lib.learning.models import save_checkpoint

    config = {"kind": "linear", "n_outputs": 3, "hidden": []}
    model = build_model(config)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([3e38, -3e38, -3e38]))  # 3e38 - -3e38: inf
    path = tmp_path / "edited.pt"
    save_checkpoint(path, model, config, {}, {"digits": [1, 2, 3], "target_digits": [1, 2, 3],
                                              "tensors": "t"}, {})
    classifier = load_classifier(str(path))
    from stages.lib.own_digits.classify import classify

    prediction = classify(classifier, seven[None])[0]
    why = explain(classifier, seven, prediction)
    assert why == {"says": "No why: its scores for this drawing, or for blank paper, are not "
                           "finite numbers."}
    json.dumps(why, allow_nan=False)


def test_a_baseline_checkpoint_with_true_for_a_digit_is_refused(tmp_path):
    """`True == 1` in Python: digits [1, True] passed the check and answered 'True'."""
    from stages.lib.learning.similarity import means_problems

    means = torch.rand(2, 28, 28)
    assert means_problems({"digits": [1, True], "target_digits": [True, 1],
                           "means": means}) == [
        "digits is [1, True] (expected two to ten distinct digits 0-9)"]
    assert means_problems({"digits": [1, 7], "target_digits": [7, 1], "means": means}) == []


def test_many_images_at_once_get_the_bits_each_gets_alone(four, seven):
    """predict classifies a whole folder in one call; the server one image a time. A batch
    moved the last bits of 104 of 256 probabilities (1 ulp), so the API and the command
    disagreed; now each image is classified alone, as the server does."""
    from stages.lib.own_digits.classify import classify

    folder, _ = four
    rng = np.random.default_rng(0)
    images = np.stack([seven, *rng.integers(0, 256, (31, 28, 28), dtype=np.uint8)])
    for name in ("baseline", "linear", "mlp", "cnn"):
        classifier = load_classifier(str(folder / f"{name}.pt"))
        together = classify(classifier, images)
        assert together == [classify(classifier, image[None])[0] for image in images], name
