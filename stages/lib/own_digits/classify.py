"""Classifying prepared 28×28 digits with the pipeline's trained checkpoints."""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn

from ..data.tensors import to_float
from ..infra.errors import UserError
from ..infra.files import fingerprint, read_text, regular_file
from ..infra.provenance import labels_problem
from ..infra.torchio import load_pt
from ..learning.models import CHECKPOINT_KEYS, SCORES_KEY, TRAINED, rebuild
from ..learning.predictions import batched_logits, predict, probabilities
from ..learning.similarity import BASELINE_KEYS, NearestMean, means_problems

# The models that answer, each written as models/<name>.pt by its stage: the chapter's
# pixel-similarity baseline first, then the three models it trains.
ANSWERING = {"baseline": "baseline", **{name: f"train_{name}" for name in TRAINED}}
ANY_KEYS = frozenset(CHECKPOINT_KEYS | BASELINE_KEYS | {SCORES_KEY})


@dataclass
class Classifier:
    name: str                  # as shown: the model's name, or its path where names clash
    path: Path
    fingerprint: str           # what the model is: the checkpoint file's content digest
    model: nn.Module
    kind: str                  # baseline, linear, mlp or cnn
    digits: list[int]          # the digits it was trained on, as data.digits listed them
    target_digits: list[int]   # target_digits[t]: the digit that output class t stands for
    scores: dict | None = None  # the scores the checkpoint records (its metrics file's)
    views: dict = field(default_factory=dict)  # what explaining it keeps (own_digits/why.py)


def checkpoint_path(ref: str) -> tuple[str, Path]:
    """A model's name and checkpoint from `--model`: a name the pipeline trains
    (models/NAME.pt) or the path of a checkpoint, e.g. one `dvc artifacts get` fetched."""
    if ref in ANSWERING:
        return ref, Path("models") / f"{ref}.pt"
    path = Path(ref)
    if path.suffix != ".pt":
        raise UserError(f"--model {ref}: expected one of {', '.join(ANSWERING)} or the path "
                        f"of a .pt checkpoint")
    return path.name, path


def load_classifier(ref: str, content: bytes | None = None) -> Classifier:
    """The model a checkpoint holds. The file is read once: its fingerprint and its weights
    come from the same bytes (`content`, where the caller has read them), so a file rewritten
    meanwhile cannot pair one checkpoint's name with another's weights."""
    name, path = checkpoint_path(ref)
    stage = ANSWERING.get(ref, "")
    if content is None:
        content, _ = read_checkpoint(path, stage)
    model, checkpoint, kind = read_model(path, stage, content)
    meta = tensors_meta()
    if meta is not None and (problem := labels_problem(checkpoint, meta)) is not None:
        again = f"; `dvc repro {stage}` computes it again" if stage else ""
        raise UserError(f"{path}: {problem}{again}")
    return Classifier(name, path, fingerprint(content), model, kind, checkpoint["digits"],
                      checkpoint["target_digits"], checkpoint.get(SCORES_KEY))


def read_model(path: Path, stage: str, content: bytes) -> tuple[nn.Module, dict, str]:
    """(the model, the checkpoint, its kind) from a checkpoint's bytes: the baseline's mean
    images (stage baseline) or a trained model's weights (the train_* stages); anything else,
    or a file that does not add up, is refused by name."""
    checkpoint = load_pt(path, CHECKPOINT_KEYS & BASELINE_KEYS, "checkpoint", stage, ANY_KEYS,
                         content)
    keys = BASELINE_KEYS if "means" in checkpoint else CHECKPOINT_KEYS
    if not keys <= set(checkpoint) <= keys | {SCORES_KEY}:
        raise UserError(f"{path} is not a checkpoint this pipeline wrote (expected keys "
                        f"{sorted(keys)}, found {sorted(checkpoint)})")
    if keys is CHECKPOINT_KEYS:
        return rebuild(checkpoint, path), checkpoint, checkpoint["config"]["kind"]
    problems = means_problems(checkpoint)
    if problems:
        raise UserError(f"{path} is not a baseline checkpoint this pipeline wrote: "
                        f"{problems[0]}")
    return NearestMean(checkpoint["means"]).eval(), checkpoint, "baseline"


def tensors_meta(path: Path = Path("data/tensors/meta.json")) -> dict | None:
    """The project's tensors as tensorise described them, to hold checkpoints' labels to;
    None outside a project that has run tensorise."""
    import json

    try:
        meta = json.loads(read_text(path))  # a FIFO or a device there is refused, not read
    except (OSError, ValueError, UserError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


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
    present = [name for name in ANSWERING if checkpoint_path(name)[1].exists()]
    if not present:
        raise UserError(NO_MODEL)
    return distinct([load_classifier(name) for name in present]), \
        [n for n in ANSWERING if n not in present]


NO_MODEL = ("no trained model in models/ (baseline.pt, linear.pt, mlp.pt, cnn.pt); run "
            "`dvc repro` first")


@torch.no_grad()
def classify(classifier: Classifier, digits: np.ndarray) -> list[dict]:
    """Per image (N×28×28 uint8): the predicted digit, its probability, and every
    digit's probability, as the model's own output classes; for the baseline, the digit
    whose mean image is nearest and the distance (L1) to each digit's mean image."""
    if len(digits) > 1:  # one image at a time, as the server answers: the bits of a
        # probability depend on the batch (a matrix product's blocking, a vectorised or a
        # scalar sigmoid), and the command, the API and the page give the same numbers
        return [answer for image in digits for answer in classify(classifier, image[None])]
    x = to_float(torch.from_numpy(digits)).view(len(digits), -1)
    logits = batched_logits(classifier.model, x)
    if not torch.isfinite(logits).all():  # a checkpoint's weights pushed past float range
        raise UserError(f"{classifier.path} gives NaN or infinite outputs for these images; "
                        f"it cannot be trusted (retrain it: `dvc repro`)")
    names = classifier.target_digits
    if classifier.kind == "baseline":  # its scores are minus the distances
        return [{"digit": names[int(row.argmax())],
                 "distances": {str(d): float(-row[names.index(d)]) for d in sorted(names)}}
                for row in logits]
    probs, preds = probabilities(logits), predict(logits)
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
    body = [[row["file"], *(answer_text(row["predictions"][c.name]) for c in classifiers)]
            for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *body])


def answer_text(prediction: dict) -> str:
    """`3 (0.998)`: the digit and its probability; the baseline's, `3 (L1 0.071)`: the digit
    and its distance to that digit's mean image."""
    digit = prediction["digit"]
    if "distances" in prediction:
        return f"{digit} (L1 {prediction['distances'][str(digit)]:.3f})"
    return f"{digit} ({prediction['probability']:.3f})"


def as_json(classifiers: list[Classifier], rows: list[dict], errors: dict[str, str]) -> dict:
    """What `predict --json` prints and the server's /api/predict answers: each model, each
    image's answers per model, and each image that could not be read."""
    return {"models": {c.name: {"checkpoint": str(c.path), "fingerprint": c.fingerprint,
                                "kind": c.kind, "digits": c.digits} for c in classifiers},
            "images": rows,
            "errors": [{"file": path, "error": message} for path, message in errors.items()]}


MAX_SERVED_BYTES = 512 * 2**20  # a checkpoint the server loads: reading is all in memory


class ServedModels:
    """The checkpoints a long-running process answers with (`stages.serve`), each loaded
    again when its file changes, so a `dvc repro` that writes new checkpoints is answered by
    them at the next request, without a restart.

    Each file is read once per change (its fingerprint and weights from the same bytes); a
    model whose file is missing, being rewritten or not a checkpoint this pipeline wrote is
    named with the reason, never silently left out.
    """

    def __init__(self, refs: list[str] | None):
        refs = list(dict.fromkeys(refs)) if refs else list(ANSWERING)
        paths = [checkpoint_path(ref) for ref in refs]  # each served under its own name,
        # even where two files hold the same bytes: a model is never silently dropped
        clashing = Counter(name for name, _ in paths)
        self.slots = [_Slot(ref, str(path) if clashing[name] > 1 else name, path)
                      for ref, (name, path) in zip(refs, paths)]

    def start(self, every: bool) -> None:
        """Load the checkpoints before serving: with `every` (models asked for by name or
        path) each must load; otherwise (models/ by default) at least one."""
        ready, problems = self.current()
        if every and problems:
            raise UserError("\n".join(problems.values()))
        if not ready:
            raise UserError(NO_MODEL)

    def current(self) -> tuple[list[Classifier], dict[str, str]]:
        """(the models that can answer, as their files now are; {name: why not} for each
        other one)."""
        for slot in self.slots:
            slot.refresh()
        return ([slot.classifier for slot in self.slots if slot.classifier],
                {slot.name: slot.problem for slot in self.slots if slot.problem})

    def unavailable(self, problems: dict[str, str]) -> list[dict]:
        """The JSON the API gives for models that cannot answer, in the served order."""
        return [{"name": slot.name, "checkpoint": str(slot.path), "error": problems[slot.name]}
                for slot in self.slots if slot.name in problems]


@dataclass
class _Slot:
    """One checkpoint the server answers with, as last read."""
    ref: str
    name: str
    path: Path
    stamp: tuple | None = None        # the file's identity when read: inode, size, times
    classifier: Classifier | None = None
    problem: str | None = None        # why it cannot answer, where it cannot

    def refresh(self) -> None:
        if self.stamp is not None and _stamp(self.path) == self.stamp:
            return
        stage = ANSWERING.get(self.ref, "")
        try:
            content, self.stamp = read_checkpoint(self.path, stage, max_bytes=MAX_SERVED_BYTES)
            self.classifier, self.problem = load_classifier(self.ref, content), None
            self.classifier.name = self.name
        except UserError as err:
            self._cannot(str(err))
        except MemoryError:
            self._cannot(f"{self.path}: not enough memory to load it")
        except Exception as err:  # noqa: BLE001 - whatever a broken file raises, it is named
            self._cannot(f"{self.path} cannot be loaded ({type(err).__name__}: {err})")

    def _cannot(self, why: str) -> None:
        self.classifier, self.problem = None, why
        self.stamp = _stamp(self.path)  # retried once the file changes (or appears)


def read_checkpoint(path: Path, stage: str = "", attempts: int = 3,
                    max_bytes: int | None = None) -> tuple[bytes, tuple]:
    """A checkpoint's bytes and the identity (inode, size, times) of the very file they came
    from; UserError naming it when it is missing, not a file, or over `max_bytes`. A file
    being written in place (its size or times moving while it is read) is read again, and
    after `attempts` is refused: its bytes may be half old, half new."""
    import time

    for _ in range(attempts):
        try:
            regular_file(path, "a checkpoint")  # a FIFO would block the open
            with open(path, "rb") as handle:
                before = _identity(os.fstat(handle.fileno()))
                if max_bytes is not None and before[2] > max_bytes:
                    raise UserError(f"{path} is {before[2]:,} bytes, over the {max_bytes:,} "
                                    f"a served checkpoint may be (resnet18's is 45 MB)")
                content = handle.read(max_bytes + 1 if max_bytes is not None else -1)
                after = _identity(os.fstat(handle.fileno()))
        except FileNotFoundError:
            raise UserError(f"checkpoint {path} not found; run "
                            f"`{f'dvc repro {stage}'.strip()}` first") from None
        except OSError as err:
            raise UserError(f"{path}: cannot read the checkpoint ({err.strerror or err})") \
                from None
        if before == after:
            return content, after
        time.sleep(0.05)
    raise UserError(f"{path} is being rewritten (it changed while it was read); it answers "
                    f"again once the run that writes it is done")


def _identity(info: os.stat_result) -> tuple:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _stamp(path: Path) -> tuple | None:
    try:
        return _identity(path.stat())
    except OSError:
        return None


def recorded_accuracy(classifier: Classifier,
                      metrics_dir: Path = Path("metrics")) -> tuple[float | None, str | None]:
    """The validation accuracy to show beside a model, and why none is shown where its
    metrics file should give it but does not hold its checkpoint's own scores.

    The pipeline's checkpoint (models/<name>.pt) must have metrics/<name>.json computed from
    it and holding the scores it records: anything else is named (a file edited by hand, or
    left by another run). A checkpoint from elsewhere shows an accuracy only where
    metrics/ holds its very scores."""
    import json

    from ..infra.provenance import metrics_mismatch

    name = classifier.path.stem
    metrics_path = metrics_dir / f"{name}.json"
    ours = classifier.path == Path("models") / f"{name}.pt"
    try:
        metrics = json.loads(read_text(metrics_path))  # never a FIFO's endless wait
    except (OSError, ValueError, UserError, RecursionError) as err:
        if not ours:
            return None, None
        if isinstance(err, UserError):  # a folder, a FIFO, a file too large: named by it
            return None, str(err)
        found = "not found" if isinstance(err, FileNotFoundError) else "not readable JSON"
        return None, f"{metrics_path} {found}"
    if not isinstance(metrics, dict):
        return None, f"{metrics_path} is not a JSON object" if ours else None
    why = metrics_mismatch(metrics_path, metrics, classifier.path, classifier.fingerprint,
                           classifier.scores)
    if why is not None:
        return None, why if ours else None
    scores = metrics.get("l1") if classifier.kind == "baseline" else metrics  # the book's
    return scores.get("accuracy") if isinstance(scores, dict) else None, None
