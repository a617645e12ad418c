"""The chapter's pixel-similarity baseline: classify by the nearest mean ("ideal") image."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.tensors import to_float
from ..infra.provenance import data_record, digits_problem
from ..infra.torchio import load_pt, save_pt

DISTANCES = ("l1", "l2")
# Valid images compared per step: batch × classes × 784 floats stay a few tens of MB.
DEFAULT_BATCH = 1024


def class_means(images: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The mean image of each target class (n_classes×28×28, float32).

    One `.mean(0)` per class, as the book computes its mean 3 and mean 7, so the float
    rounding (and hence every borderline prediction) is the book's.
    """
    floats = to_float(images)
    return torch.stack([floats[targets == c].mean(0) for c in range(n_classes)])


def mnist_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The book's `mnist_distance`: the mean absolute difference (L1) over the last two
    axes, broadcast over the rest."""
    return (a - b).abs().mean((-1, -2))


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The book's other distance, the root mean squared difference (L2).

    The root is taken in float64: torch's float32 sqrt is an approximation whose last bit
    differs between CPUs (an emulated Intel Haswell and an AMD Zen 4 disagree on 15% of
    values), while the float64 root, rounded to float32, is the exact float32 root on every
    CPU (docs/design.md, "Same bits on every machine")."""
    return (a - b).square().mean((-1, -2)).double().sqrt().float()


def distances(images: torch.Tensor, means: torch.Tensor, kind: str) -> torch.Tensor:
    """batch×classes distances between float images and the class means, by `l1`
    (mnist_distance) or `l2` (rms_distance)."""
    if kind == "l1":
        return mnist_distance(images[:, None], means[None])
    if kind == "l2":
        return rms_distance(images[:, None], means[None])
    raise ValueError(f"unknown distance {kind!r}, expected one of {DISTANCES}")


@torch.no_grad()
def class_distances(images: torch.Tensor, means: torch.Tensor, kind: str,
                    batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """N×classes distances from uint8 images to each class mean, computed in batches."""
    chunks = [distances(to_float(chunk), means, kind) for chunk in images.split(batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, len(means))


def predict_nearest(images: torch.Tensor, means: torch.Tensor, kind: str,
                    batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """The target class whose mean image is nearest to each image.

    On a tie the lower class index wins, which for two digits is the second one listed:
    like the book's `dist(x, mean3) < dist(x, mean7)`, a tie is not called a 3.
    """
    return class_distances(images, means, kind, batch_size).argmin(dim=1)


def nearest_margin(dists: torch.Tensor) -> torch.Tensor:
    """How much nearer the nearest mean is than the runner-up: the baseline's confidence."""
    two = dists.topk(2, dim=1, largest=False).values
    return two[:, 1] - two[:, 0]


class NearestMean(nn.Module):
    """The baseline as a model that scores digits: for flat images (N×784 in [0, 1]), minus
    the L1 distance (`mnist_distance`) to each mean image. The nearest mean scores highest,
    and a tie goes to the lower class, so it answers as predict_nearest does."""

    def __init__(self, means: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -mnist_distance(x.view(-1, 1, 28, 28), self.means[None])


BASELINE_KEYS = {"means", "digits", "target_digits", "tensors"}


def means_problems(data: dict) -> list[str]:
    """What does not add up in a loaded baseline checkpoint: its digits, and one finite
    28×28 mean image in [0, 1] per target digit. Empty for one save_means wrote."""
    targets, means = data["target_digits"], data["means"]
    if (problem := digits_problem(data["digits"], targets)):
        return [problem]
    shape = (len(targets), 28, 28)
    if not (isinstance(means, torch.Tensor) and means.dtype == torch.float32
            and tuple(means.shape) == shape):
        found = (f"{tuple(means.shape)} {means.dtype}" if isinstance(means, torch.Tensor)
                 else type(means).__name__)
        return [f"means is {found} (expected float32 {shape}: a mean image per digit)"]
    if not (means.isfinite().all() and means.min() >= 0 and means.max() <= 1):
        return ["means holds values outside [0, 1] (a mean of pixels cannot)"]
    return []


def save_means(path: str | Path, means: torch.Tensor, meta: dict, scores: dict) -> str:
    """The mean images, the data they were computed from, and the scores its metrics file
    holds (as a trained checkpoint records them)."""
    return save_pt(path, {"means": means, **data_record(meta), "metrics": scores})


def load_means(path: str | Path) -> dict:
    """The baseline's checkpoint: the mean image of each target class, and its digits."""
    return load_pt(path, BASELINE_KEYS, "baseline checkpoint", "baseline",
                   frozenset({"metrics"}))
