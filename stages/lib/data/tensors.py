"""data/tensors: the uint8 images and int64 targets every model stage reads, with their
metadata (meta.json), saved by tensorise and refused unless they are what it wrote.

Targets follow the book: with two digits, 1 for the first listed and 0 for the second
(3 -> 1, 7 -> 0); with three or more, the digit's position in `digits`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..infra.errors import UserError
from ..infra.files import fingerprint, read_json
from ..infra.torchio import load_pt, save_pt

TENSOR_KEYS = ("images", "targets")
TENSOR_DIR = Path("data/tensors")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor   # uint8, N×28×28
    targets: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.targets)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], as the book does (`tensor / 255`)."""
    return images.float() / 255


def as_inputs(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened float pixels in [0, 1] and int64 targets, on the device: the book's
    `train_x` (`.view(-1, 28*28)`) and `train_y`."""
    x = to_float(split.images.to(device)).view(len(split), -1)
    return x, split.targets.to(device)


def target_digits(digits: list[int]) -> list[int]:
    """target_digits(digits)[t] is the digit that target value t stands for."""
    return [digits[1], digits[0]] if len(digits) == 2 else list(digits)


def targets_in_digit_order(digits: list[int]) -> list[int]:
    """The target value of each digit, in the order `digits` lists them (for display)."""
    return [target_digits(digits).index(d) for d in digits]


def save_split(split: Split, path: Path) -> None:
    save_pt(path, {"images": split.images, "targets": split.targets})


def load_split(path: str | Path) -> Split:
    """Load a split written by save_split, refusing anything else."""
    data = load_pt(path, set(TENSOR_KEYS), "tensor file", "tensorise")
    images, targets = data["images"], data["targets"]
    if images.dtype != torch.uint8 or images.shape[1:] != (28, 28) or \
            targets.dtype != torch.int64 or len(images) != len(targets):
        raise UserError(f"{path}: expected uint8 images N×28×28 and int64 targets of equal "
                        f"length, got {tuple(images.shape)} {images.dtype} and "
                        f"{tuple(targets.shape)} {targets.dtype}")
    return Split(images=images, targets=targets)


def tensors_fingerprint(train: Split, valid: Split, digits: list[int],
                        target_digits: list[int]) -> str:
    """What every later output records of the data it was computed from: a digest of the
    pixels and targets of both splits and of what the targets mean."""
    def parts():  # one tensor's bytes at a time
        yield json.dumps({"digits": digits, "target_digits": target_digits}).encode()
        for split in (train, valid):
            for tensor in (split.images, split.targets):
                yield str(tuple(tensor.shape)).encode()
                yield tensor.contiguous().numpy().tobytes()
    return fingerprint(parts())


def load_tensors(folder: Path = TENSOR_DIR) -> tuple[dict, Split, Split]:
    """data/tensors as tensorise wrote it: its metadata and both splits, refused unless the
    splits are the ones the metadata's fingerprint was taken of."""
    meta = read_json(folder / "meta.json", "the tensorise metadata")
    if not (isinstance(meta, dict) and isinstance(meta.get("digits"), list)
            and isinstance(meta.get("target_digits"), list)):
        raise UserError(f"{folder}/meta.json is not the metadata tensorise writes (no digits "
                        f"and target_digits lists); rerun `dvc repro tensorise`")
    train, valid = load_split(folder / "train.pt"), load_split(folder / "valid.pt")
    found = tensors_fingerprint(train, valid, meta["digits"], meta["target_digits"])
    if meta.get("tensors") != found:
        raise UserError(f"{folder}/train.pt and valid.pt are not the tensors "
                        f"{folder}/meta.json describes (fingerprint {found}, meta.json says "
                        f"{meta.get('tensors')}); rerun `dvc repro tensorise`")
    return meta, train, valid
