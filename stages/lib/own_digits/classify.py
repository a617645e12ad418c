"""Classifying prepared 28×28 digits with the pipeline's trained checkpoints."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn

from ..data.tensors import to_float
from ..infra.errors import UserError
from ..infra.provenance import file_fingerprint
from ..learning.models import TRAINED, load_checkpoint
from ..learning.predictions import batched_logits, predict, probabilities


@dataclass
class Classifier:
    name: str                  # as shown: the model's name, or its path where names clash
    path: Path
    fingerprint: str           # what the model is: the checkpoint file's content digest
    model: nn.Module
    kind: str
    digits: list[int]          # the digits it was trained on, as data.digits listed them
    target_digits: list[int]   # target_digits[t]: the digit that output class t stands for


def checkpoint_path(ref: str) -> tuple[str, Path]:
    """A model's name and checkpoint from `--model`: a name the pipeline trains
    (models/NAME.pt) or the path of a checkpoint, e.g. one `dvc artifacts get` fetched."""
    if ref in TRAINED:
        return ref, Path("models") / f"{ref}.pt"
    path = Path(ref)
    if path.suffix != ".pt":
        raise UserError(f"--model {ref}: expected one of {', '.join(TRAINED)} or the path of "
                        f"a .pt checkpoint")
    return path.name, path


def load_classifier(ref: str) -> Classifier:
    name, path = checkpoint_path(ref)
    stage = f"train_{name}" if ref in TRAINED else ""
    model, checkpoint = load_checkpoint(path, stage)
    return Classifier(name, path, file_fingerprint(path), model, checkpoint["config"]["kind"],
                      checkpoint["digits"], checkpoint["target_digits"])


def distinct(classifiers: list[Classifier], log: TextIO | None = None) -> list[Classifier]:
    """Each model once, told apart by what it is rather than by its file name: the same
    checkpoint given twice is one model, and checkpoints that share a file name
    (a/model.pt, b/model.pt) are each shown by their path."""
    kept: dict[str, Classifier] = {}
    for classifier in classifiers:
        first = kept.setdefault(classifier.fingerprint, classifier)
        if first is not classifier:
            print(f"predict: {classifier.path} is the same checkpoint as {first.path} "
                  f"(fingerprint {first.fingerprint}); shown once", file=log or sys.stderr)
    unique = list(kept.values())
    clashing = Counter(c.name for c in unique)
    for classifier in unique:
        if clashing[classifier.name] > 1:
            classifier.name = str(classifier.path)
    return unique


def load_classifiers(refs: list[str] | None) -> tuple[list[Classifier], list[str]]:
    """The models asked for, or by default every trained checkpoint in models/; with the
    names of default ones not trained yet (a default run skips them; an asked-for one that
    is missing is an error)."""
    if refs:
        return distinct([load_classifier(ref) for ref in dict.fromkeys(refs)]), []
    present = [name for name in TRAINED if checkpoint_path(name)[1].exists()]
    if not present:
        raise UserError("no trained model in models/ (linear.pt, mlp.pt, cnn.pt); run "
                        "`dvc repro` first")
    return distinct([load_classifier(name) for name in present]), \
        [n for n in TRAINED if n not in present]


@torch.no_grad()
def classify(classifier: Classifier, digits: np.ndarray) -> list[dict]:
    """Per image (N×28×28 uint8): the predicted digit, its probability, and every
    digit's probability, as the model's own output classes."""
    x = to_float(torch.from_numpy(digits)).view(len(digits), -1)
    logits = batched_logits(classifier.model, x)
    if not torch.isfinite(logits).all():  # a checkpoint's weights pushed past float range
        raise UserError(f"{classifier.path} gives NaN or infinite outputs for these images; "
                        f"it cannot be trusted (retrain it: `dvc repro`)")
    probs, preds = probabilities(logits), predict(logits)
    names = classifier.target_digits
    return [{"digit": names[int(pred)], "probability": float(row[pred]),
             "probabilities": {str(d): float(row[names.index(d)]) for d in sorted(names)}}
            for pred, row in zip(preds, probs)]


def answer_range(classifiers: list[Classifier]) -> list[str]:
    """What each group of models can answer: a model trained on some digits picks one
    of them, whatever the image shows."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for classifier in classifiers:
        groups.setdefault(tuple(sorted(classifier.digits)), []).append(classifier.name)
    lines = []
    for digits, names in groups.items():
        if len(digits) == 10:
            lines.append(f"{', '.join(names)}: trained on all ten digits")
        else:
            listed = ", ".join(map(str, digits[:-1])) + f" and {digits[-1]}"
            answers = " or ".join(map(str, digits))
            lines.append(f"{', '.join(names)}: trained on {listed} only, so each answers "
                         f"{answers}, whatever the image shows")
    return lines


def results_table(rows: list[dict], classifiers: list[Classifier]) -> str:
    """File, then per model `digit (probability)`."""
    header = ["file", *(c.name for c in classifiers)]
    body = [[row["file"], *(f"{row['predictions'][c.name]['digit']} "
                            f"({row['predictions'][c.name]['probability']:.3f})"
                            for c in classifiers)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *body])


def as_json(classifiers: list[Classifier], rows: list[dict], errors: dict[str, str]) -> dict:
    """What `predict --json` prints and the server's /api/predict answers: each model, each
    image's answers per model, and each image that could not be read."""
    return {"models": {c.name: {"checkpoint": str(c.path), "fingerprint": c.fingerprint,
                                "kind": c.kind, "digits": c.digits} for c in classifiers},
            "images": rows,
            "errors": [{"file": path, "error": message} for path, message in errors.items()]}


class ServedModels:
    """The checkpoints a long-running process answers with (`stages.serve`): loaded again
    whenever one of their files changes, so a `dvc repro` that writes new checkpoints is
    answered by them at the next request, without a restart."""

    def __init__(self, refs: list[str] | None):
        self.refs = refs
        self._key: tuple | None = None
        self.classifiers: list[Classifier] = []
        self.untrained: list[str] = []

    def paths(self) -> list[Path]:
        return [checkpoint_path(ref)[1] for ref in (self.refs or TRAINED)]

    def current(self) -> list[Classifier]:
        """The classifiers as the files now are; UserError when none can be loaded."""
        key = tuple((str(p), *(_stamp(p))) for p in self.paths())
        if key != self._key:
            self.classifiers, self.untrained = load_classifiers(self.refs)
            self._key = key
        return self.classifiers


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, -1)
    return (info.st_mtime_ns, info.st_size)


def recorded_accuracy(classifier: Classifier, metrics_dir: Path = Path("metrics")) -> float | None:
    """The accuracy metrics/<name>.json gives for this very checkpoint (its `model`
    fingerprint), or None: a fetched checkpoint, or metrics of another run."""
    import json

    try:
        metrics = json.loads((metrics_dir / f"{classifier.path.stem}.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics.get("accuracy") if metrics.get("model") == classifier.fingerprint else None
