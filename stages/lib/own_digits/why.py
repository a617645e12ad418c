"""Why each model answers as it does, as pictures and one sentence (the page shows them; the
API gives them with `?why=1`):

- baseline (pixel similarity): each digit's mean image and the drawing's distance to it;
- linear: its weights as a 28×28 image, and the drawing's weight × pixel;
- MLP and CNN: integrated gradients, what each pixel of the drawing adds to the answer's
  score over the runner-up's (learning/explain.py).

Signed maps are red for what raises the answer's score and blue for what lowers it, white
for nothing, each scaled to its own largest value; the page draws the legend.
"""

from __future__ import annotations

import base64
import copy
import io
import math

import numpy as np
import torch

from ..data.tensors import to_float
from ..learning.explain import integrated_gradients, weights_by_digit
from ..learning.speedups import channels_last, skip_padding_taps
from .classify import Classifier

RED, BLUE = np.array([178, 24, 43]), np.array([33, 102, 172])  # ColorBrewer's RdBu ends
INK = 0.35  # how dark the drawing shows under a map: seen, but not read as part of it


def png_data_url(rgb: np.ndarray) -> str:
    """A 28×28 (grey) or 28×28×3 (colour) uint8 image as a PNG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def grey(image: torch.Tensor) -> str:
    """A [0, 1] image as MNIST shows digits: white ink on black."""
    return png_data_url((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def signed(values: torch.Tensor, under: torch.Tensor | None = None) -> tuple[str, float]:
    """A signed 28×28 map, red above zero and blue below, as strong as the square root of
    the value against the largest one; drawn over `under` (a [0, 1] drawing, shown as grey
    ink on white). Returns the picture and that largest value (the legend's end)."""
    v = values.detach().double().numpy()
    scale = float(np.abs(v).max())
    # the square root: a pixel with a tenth of the largest part still shows (at a third)
    strength = np.sqrt(np.abs(v)[..., None] / scale) if scale > 0 else np.zeros((*v.shape, 1))
    paper = np.full((*v.shape, 3), 255.0)
    if under is not None:
        paper -= 255 * INK * under.double().numpy()[..., None]
    hue = np.where(v[..., None] >= 0, RED, BLUE)
    rgb = paper + (hue - paper) * strength
    return png_data_url(rgb.round().clip(0, 255).astype(np.uint8)), scale


def explain(classifier: Classifier, pixels: np.ndarray, prediction: dict) -> dict:
    """The why of one answer (`prediction`, as classify gave it) for one 28×28 drawing."""
    if classifier.kind == "baseline":
        return nearest_mean_why(classifier, prediction)
    digits = classifier.target_digits
    answer = digits.index(prediction["digit"])
    x = to_float(torch.from_numpy(pixels)).view(-1)
    found = integrated_gradients(explaining_model(classifier), x, answer)
    total = float(found.parts.sum())
    if not (found.parts.isfinite().all() and all(map(math.isfinite, (
            total, found.blank, found.drawing)))):  # weights near float's range
        return {"says": "No why: its scores for this drawing, or for blank paper, are not "
                        "finite numbers."}
    picture, scale = signed(found.parts.view(28, 28), x.view(28, 28))
    toward, over = digits[answer], digits[found.other]
    why = {"attribution": {"image": picture, "scale": scale, "toward": toward, "over": over,
                           "total": total, "blank": found.blank, "drawing": found.drawing}}
    if classifier.kind == "linear":
        why["weights"] = linear_weights(classifier, answer)
        why["says"] = (f"Each pixel's weight times its ink, added up with the bias, is the "
                       f"score. Red pixels of your drawing raise {toward}'s score over "
                       f"{over}'s, blue ones lower it: {signed_number(total)} together, "
                       f"{signed_number(found.blank)} from the bias.")
    else:
        why["says"] = (f"Integrated gradients: what each pixel of your drawing adds to "
                       f"{toward}'s score over {over}'s, on the way from blank paper to the "
                       f"drawing. Red raises it, blue lowers it: {signed_number(total)} "
                       f"together, on top of {signed_number(found.blank)} for blank paper.")
    return why


def signed_number(value: float) -> str:
    """+7.2, or +3.00e+38 for a score no trained model gives (a checkpoint edited by hand)."""
    return f"{value:+.1f}" if abs(value) < 1e6 else f"{value:+.2e}"


def explaining_model(classifier: Classifier) -> torch.nn.Module:
    """The model the attributions are computed with: the CNN with train_cnn's CPU speed-ups
    (the same function but for float rounding, and 3× faster through a backward pass, which
    keeps answers live while drawing), every other model as it is. Built once per model."""
    if classifier.kind != "cnn":
        return classifier.model
    if "fast" not in classifier.views:
        fast = copy.deepcopy(classifier.model).eval()
        skip_padding_taps(fast)
        classifier.views["fast"] = channels_last(fast)
    return classifier.views["fast"]


def linear_weights(classifier: Classifier, answer: int) -> list[dict]:
    """The linear model's weights, one picture per output class: for the book's one-output
    3/7 model, turned toward the answer (red: ink there raises its score over the other's);
    else one per digit, each toward that digit. Drawn once per model and answer."""
    digits, weights = classifier.target_digits, weights_by_digit(classifier.model)
    if len(weights) == 1:
        key = f"weights {answer}"
        if key not in classifier.views:
            toward = weights[0] if answer == 1 else -weights[0]
            label = f"{digits[answer]} over {digits[1 - answer]}"
            classifier.views[key] = [{"label": label, "image": signed(toward)[0]}]
        return classifier.views[key]
    if "weights" not in classifier.views:
        pictures = [{"label": str(d), "image": signed(w)[0]} for d, w in zip(digits, weights)]
        classifier.views["weights"] = sorted(pictures, key=lambda p: p["label"])
    return classifier.views["weights"]


def nearest_mean_why(classifier: Classifier, prediction: dict) -> dict:
    """Each digit's mean image and the drawing's distance to it, nearest first."""
    if "means" not in classifier.views:
        means = classifier.model.means
        classifier.views["means"] = {d: grey(means[i])
                                     for i, d in enumerate(classifier.target_digits)}
    distances = prediction["distances"]
    ranked = sorted(classifier.target_digits, key=lambda d: distances[str(d)])
    nearest, second = ranked[0], ranked[1]
    return {"means": [{"digit": d, "image": classifier.views["means"][d],
                       "distance": distances[str(d)]} for d in ranked],
            "says": (f"Pixel similarity: your drawing against the mean (\"ideal\") image of "
                     f"each digit. The mean absolute difference (L1) is smallest for {nearest} "
                     f"({distances[str(nearest)]:.3f}; {second}: "
                     f"{distances[str(second)]:.3f}), so it answers {nearest}.")}
