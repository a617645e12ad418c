"""The schema of params.yaml: every stage validates the whole file before doing any work.

Every key is required and has no default here: params.yaml is the one place values live.

Unknown keys are rejected at every level, so a typo fails loudly instead of adding a
param that nothing reads.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StrictBool,
                      StrictFloat, StrictInt, ValidationError, field_validator)

from .errors import UserError
from .files import read_yaml

PARAMS_FILE = "params.yaml"
NAMED_SOURCES = ("auto", "mnist", "mnist-5k")


def _int_as_float(value: object) -> object:
    """`lr: 1` is the float 1.0; a string ("0.1", or `1:30`) stays a string and fails."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


Float = Annotated[StrictFloat, Field(allow_inf_nan=False), BeforeValidator(_int_as_float)]
PositiveFloat = Annotated[Float, Field(gt=0)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _auto_or_count(value: object) -> object:
    """base.threads: `auto` or a whole number of threads, said in those words (pydantic's
    own message for the union names its internals: literal['auto'], constrained-int)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                           and value >= 1):
        return value
    raise ValueError("must be auto or a whole number of threads, 1 or more")


class Base(_Section):
    seed: Annotated[StrictInt, Field(ge=0, lt=2**63)]
    device: Literal["cpu", "cuda", "auto"]
    threads: Annotated[Literal["auto"] | PositiveInt, PlainValidator(_auto_or_count)]
    kernels: Literal["portable", "native"]  # which CPU kernels torch computes with (kernels.py)


class Data(_Section):
    source: str
    digits: list[Annotated[StrictInt, Field(ge=0, le=9)]]
    split: Literal["auto", "official", "random"]
    valid_pct: Annotated[Float, Field(gt=0, lt=1)]

    @field_validator("source")
    @classmethod
    def _source_named_or_folder(cls, value: str) -> str:
        if value in NAMED_SOURCES:
            return value
        if not value.strip():
            raise ValueError(f"must be one of {', '.join(NAMED_SOURCES)} or a local folder")
        # Anything else is taken as a local folder; whether it exists is the download
        # stage's check, so validating params stays free of I/O.
        return value

    @field_validator("digits")
    @classmethod
    def _two_or_more_distinct(cls, value: list[int]) -> list[int]:
        if len(value) < 2:
            raise ValueError("needs two or more digits, e.g. [3, 7]")
        if len(set(value)) != len(value):
            raise ValueError("digits must be distinct (a digit is listed twice)")
        return value


class _Training(_Section):
    lr: PositiveFloat
    epochs: PositiveInt
    batch_size: PositiveInt
    shuffle: StrictBool


class _BookTraining(_Training):
    """The chapter's linear model and MLP: plain SGD at a fixed lr."""
    # `mnist` is the book's mnist_loss (two digits); `bce` is binary cross-entropy on the
    # logit. With three or more digits both mean cross-entropy over the classes.
    loss: Literal["mnist", "bce"]


class TrainLinear(_BookTraining):
    init: Literal["book", "torch"]


class TrainMLP(_BookTraining):
    hidden: list[PositiveInt]

    @field_validator("hidden")
    @classmethod
    def _at_least_one_layer(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one hidden layer width, e.g. [30]")
        return value

    @field_validator("hidden")
    @classmethod
    def _fits_in_memory(cls, value: list[int]) -> list[int]:
        """Refused here, before DVC deletes any output, rather than by torch's allocator
        mid-stage: training holds each parameter three times (weights, gradients, the
        update), as float32."""
        import psutil

        widths = [28 * 28, *value, 10]  # ten outputs at most
        count = sum(n_in * n_out + n_out for n_in, n_out in zip(widths, widths[1:]))
        needed, memory = 3 * 4 * count, psutil.virtual_memory().total
        if needed > memory:
            raise ValueError(f"an MLP {'-'.join(map(str, widths[:-1]))}-... has {count:,} "
                             f"parameters: {needed / 2**30:,.0f} GiB to train (weights, "
                             f"gradients, the update), over this machine's "
                             f"{memory / 2**30:.0f} GiB of memory")
        return value


class AugTransforms(_Section):
    """fastai's aug_transforms() settings, without flips (learning/augment.py)."""
    max_rotate: Annotated[Float, Field(ge=0, le=180)]  # degrees
    max_zoom: Annotated[Float, Field(ge=1, le=4)]
    max_warp: Annotated[Float, Field(ge=0, lt=1)]
    max_lighting: Annotated[Float, Field(ge=0, lt=1)]
    p_affine: Annotated[Float, Field(ge=0, le=1)]
    p_lighting: Annotated[Float, Field(ge=0, le=1)]


class TrainCNN(_Training):
    """resnet18 (or resnet34) trained as the book does: Adam, fit_one_cycle with `lr` as its
    peak, cross-entropy over the digits; or, from ImageNet weights, fastai's fine_tune."""
    arch: Literal["resnet18", "resnet34"]  # resnet.ARCHITECTURES
    # none | imagenet | a path to a weights file (learning/pretrained.py checks it)
    weights: Annotated[str, Field(min_length=1)]
    fit: Literal["one_cycle", "fine_tune"]
    wd: Annotated[Float, Field(ge=0)]
    augment: StrictBool
    aug_transforms: AugTransforms

    @field_validator("weights")
    @classmethod
    def _none_imagenet_or_a_path(cls, value: str) -> str:
        if value.lower() in ("none", "imagenet") and value not in ("none", "imagenet"):
            raise ValueError(f"must be none, imagenet (in lower case) or a path to a weights "
                             f"file")
        if any(ord(c) < 32 for c in value):
            raise ValueError("must be one line: none, imagenet or a path to a weights file")
        return value

    @field_validator("batch_size")
    @classmethod
    def _two_or_more(cls, value: int) -> int:
        if value < 2:  # BatchNorm's statistics over one image are undefined
            raise ValueError("must be 2 or more: the resnet's BatchNorm layers need two or "
                             "more images per batch")
        return value


class Report(_Section):
    worst_mistakes: Annotated[StrictInt, Field(ge=1, le=64)]


class Params(_Section):
    base: Base
    data: Data
    train_linear: TrainLinear
    train_mlp: TrainMLP
    train_cnn: TrainCNN
    report: Report


SHOWN_CHARS = 60  # of a bad value: enough to recognise it, not a whole pasted file


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against params.yaml)"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"  {key}: {message} (got {_shown(error['input'])})" if error["type"] != "missing" \
        else f"  {key}: {message}"


def validate_params(raw: object, origin: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; every problem is listed in one UserError."""
    if raw is None:
        raw = {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = "\n".join(_describe(e) for e in err.errors())
        raise UserError(f"{origin} is not valid:\n{lines}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml read as DVC reads it (YAML 1.2), then validated."""
    path = Path(path)
    if not os.path.lexists(path):
        raise UserError(f"{path} not found; run the stages from the project root")
    return validate_params(read_yaml(path, "params"), str(path))

