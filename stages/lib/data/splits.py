"""From raw IDX files to the training and validation splits (the tensorise stage).

Targets follow the book: with two digits, 1 for the first listed and 0 for the second
(3 -> 1, 7 -> 0); with three or more, the digit's position in `digits` (tensors.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..infra.errors import UserError
from .idx import read_images_and_labels
from .raw import split_files
from .tensors import Split, target_digits, targets_in_digit_order


def resolve_split(split: str, available: list[str], source: str) -> str:
    """`official` needs a test set; `auto` picks it when there is one, else `random`."""
    if split == "auto":
        return "official" if "test" in available else "random"
    if split == "official" and "test" not in available:
        raise UserError(f"data.split: official needs the MNIST test set, but source "
                        f"{source!r} has none; use data.split: random (or auto)")
    return split


def check_digits_available(digits: list[int], available: list[int], source: str) -> None:
    missing = [d for d in digits if d not in available]
    if missing:
        raise UserError(f"data.digits: {missing} not in source {source!r}, which holds "
                        f"digits {available}")


def read_raw_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = split_files(split)
    return read_images_and_labels(raw_dir / images_name, raw_dir / labels_name)


def class_order(labels: torch.Tensor, digits: list[int]) -> torch.Tensor:
    """Indices of the images of `digits`, grouped by digit in the order listed.

    Within a digit, the source order is kept: the book trains on all 3s, then all 7s.
    """
    return torch.cat([torch.nonzero(labels == d).flatten() for d in digits])


def encode_targets(labels: torch.Tensor, digits: list[int]) -> torch.Tensor:
    lookup = torch.full((10,), -1, dtype=torch.int64)
    lookup[torch.tensor(target_digits(digits))] = torch.arange(len(digits))
    return lookup[labels.long()]


def make_split(images: torch.Tensor, labels: torch.Tensor, digits: list[int]) -> Split:
    order = class_order(labels, digits)
    return Split(images=images[order].contiguous(),
                 targets=encode_targets(labels[order], digits))


def random_valid_mask(n: int, valid_pct: float, seed: int) -> torch.Tensor:
    """A seeded mask choosing round(n * valid_pct) of n items for validation."""
    generator = torch.Generator().manual_seed(seed)
    n_valid = round(n * valid_pct)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:n_valid]] = True
    return mask


def build_splits(raw_dir: Path, digits: list[int], split: str, valid_pct: float,
                 seed: int) -> tuple[Split, Split]:
    train_images, train_labels = map(torch.from_numpy, read_raw_split(raw_dir, "train"))
    if split == "official":
        valid_images, valid_labels = map(torch.from_numpy, read_raw_split(raw_dir, "test"))
    else:
        chosen = torch.isin(train_labels, torch.tensor(digits, dtype=train_labels.dtype))
        images, labels = train_images[chosen], train_labels[chosen]
        in_valid = random_valid_mask(len(labels), valid_pct, seed)
        train_images, train_labels = images[~in_valid], labels[~in_valid]
        valid_images, valid_labels = images[in_valid], labels[in_valid]
    return (make_split(train_images, train_labels, digits),
            make_split(valid_images, valid_labels, digits))


def class_counts(split: Split, digits: list[int]) -> dict[str, int]:
    counts = torch.bincount(split.targets, minlength=len(digits))
    return {str(d): int(counts[t]) for d, t in zip(digits, targets_in_digit_order(digits))}


def check_no_empty_class(counts: dict[str, dict[str, int]], split: str, valid_pct: float,
                         source: str) -> None:
    """Every digit has images in both splits; the advice depends on why one has none."""
    for split_name, per_digit in counts.items():
        empty = ", ".join(d for d, n in per_digit.items() if n == 0)
        if not empty:
            continue
        if split == "official":
            held = "training set" if split_name == "train" else "test set"
            advice = (f"source {source!r} has none in its {held}; pick other digits, or use "
                      "data.split: random to validate on part of the training set")
        elif split_name == "valid":
            advice = (f"data.valid_pct: {valid_pct} leaves none for validation; raise "
                      "data.valid_pct or pick other digits")
        else:
            advice = (f"data.valid_pct: {valid_pct} puts them all in validation; lower "
                      "data.valid_pct or pick other digits")
        raise UserError(f"data.digits: no images of digit(s) {empty} in the {split_name} "
                        f"split: {advice}")
