"""What each output records of what it was computed from, and the check that the outputs a
stage reads all come from one run.

tensorise fingerprints the tensors it writes (meta.json "tensors"). Every model stage records
that fingerprint in its checkpoint and its metrics, and its metrics record the fingerprint of
the checkpoint they were computed from ("model"). DVC reruns stages in order, but
`dvc repro -s STAGE`, `python -m stages.STAGE` or a hand-copied file can still put outputs of
different runs side by side; a stage reading them refuses instead of mixing them.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import fingerprint


def file_fingerprint(path: str | Path) -> str:
    """fingerprint() of a file's bytes, read a megabyte at a time."""
    with open(path, "rb") as handle:
        return fingerprint(iter(lambda: handle.read(1 << 20), b""))


def data_record(meta: dict) -> dict:
    """What a checkpoint records of the data it was computed from (`meta`, the tensorise
    metadata): its digits, what each target means, and the tensors' fingerprint."""
    return {key: meta[key] for key in ("digits", "target_digits", "tensors")}


def digits_problem(digits: object, targets: object) -> str | None:
    """What is wrong with the digits and target_digits a checkpoint records (a trained
    model's or the baseline's), or None: two to ten distinct digits 0-9 (True is not 1),
    the targets the same ones in some order."""
    if not (isinstance(digits, list) and 2 <= len(digits) <= 10
            and all(type(d) is int and 0 <= d <= 9 for d in digits)
            and len(set(digits)) == len(digits)):
        return f"digits is {digits!r} (expected two to ten distinct digits 0-9)"
    if not (isinstance(targets, list) and sorted(targets, key=str) == sorted(digits, key=str)):
        return f"target_digits is {targets!r} (expected the digits {digits} in some order)"
    return None


def labels_problem(checkpoint: dict, meta: dict) -> str | None:
    """Why a checkpoint's labels are not those of the tensors it says it was trained on,
    when those are the tensors in `meta` (None: they are, or they are other tensors). The
    tensors' fingerprint covers what each target means, so labels edited in the checkpoint
    would answer every image with the wrong digit."""
    if checkpoint.get("tensors") != meta.get("tensors"):
        return None
    said = {key: checkpoint.get(key) for key in ("digits", "target_digits")}
    data = {key: meta.get(key) for key in ("digits", "target_digits")}
    if said == data:
        return None
    return (f"its labels (digits {said['digits']}, target_digits {said['target_digits']}) are "
            f"not those of the tensors {meta.get('tensors')} it was trained on (digits "
            f"{data['digits']}, target_digits {data['target_digits']}): edited after training")


def metrics_origin(meta: dict, checkpoint_fingerprint: str) -> dict:
    """The keys a model stage adds to its metrics: the tensors it saw and the checkpoint
    the metrics were computed from (the fingerprint save_pt returned)."""
    return {"tensors": meta["tensors"], "model": checkpoint_fingerprint}


@dataclass
class ModelOutputs:
    """One model stage's outputs, as a later stage has read them."""
    stage: str
    checkpoint_path: Path
    checkpoint: dict
    metrics_path: Path
    metrics: dict
    history_path: Path | None = None
    history: list[dict] | None = None


# history_tsv keeps 6 decimals and the metrics 4: the same number differs by at most this.
_ROUNDING = 0.5e-4 + 0.5e-6


def _history_matches(history: list[dict], metrics: dict) -> bool:
    if len(history) != metrics.get("epochs"):
        return False
    last = history[-1]
    return all(abs(last[key] - metrics.get(key, float("nan"))) <= _ROUNDING
               for key in ("train_loss", "valid_loss"))


def stale_outputs(meta: dict, outputs: ModelOutputs) -> list[str]:
    """Why each of a stage's outputs does not belong with the tensors in `meta` (or with
    each other); empty when they all come from one run on these tensors."""
    tensors, stage = meta["tensors"], outputs.stage
    problems = []
    if outputs.checkpoint.get("tensors") != tensors:
        problems.append(f"{outputs.checkpoint_path} was computed from tensors "
                        f"{outputs.checkpoint.get('tensors')} (stage {stage})")
    elif (labels := labels_problem(outputs.checkpoint, meta)) is not None:
        problems.append(f"{outputs.checkpoint_path}: {labels} (stage {stage})")
    if outputs.metrics.get("tensors") != tensors:
        problems.append(f"{outputs.metrics_path} was computed from tensors "
                        f"{outputs.metrics.get('tensors')} (stage {stage})")
    elif (mismatch := metrics_mismatch(outputs.metrics_path, outputs.metrics,
                                       outputs.checkpoint_path,
                                       file_fingerprint(outputs.checkpoint_path),
                                       outputs.checkpoint.get("metrics"),
                                       check_scores=not problems)) is not None:
        problems.append(f"{mismatch} (stage {stage})")
    if outputs.history is not None and not _history_matches(outputs.history, outputs.metrics):
        problems.append(f"{outputs.history_path} is not the history of the run that wrote "
                        f"{outputs.metrics_path} (stage {stage})")
    return problems


def metrics_mismatch(metrics_path: str | Path, metrics: dict, checkpoint_path: str | Path,
                     fingerprint: str, recorded: dict | None,
                     check_scores: bool = True) -> str | None:
    """Why a metrics file is not the scores of the checkpoint with this fingerprint, which
    records `recorded` (None: it is): computed from another checkpoint, or edited since."""
    if metrics.get("model") != fingerprint:
        return f"{metrics_path} was not computed from {checkpoint_path}"
    if check_scores and (edit := scores_edit(metrics, recorded)) is not None:
        return f"{metrics_path} does not hold the scores {checkpoint_path} records: {edit}"
    return None


class _ScoresOnly(pickle.Unpickler):
    """A checkpoint's pickle read without torch: every tensor comes back as None, and
    nothing but torch's own rebuild functions and plain containers is accepted."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" or module.startswith("torch."):
            return lambda *args, **kwargs: None
        raise pickle.UnpicklingError(f"{module}.{name} is not in a checkpoint")

    def persistent_load(self, pid):  # a tensor's storage: not read
        return None


def recorded_scores(checkpoint_path: str | Path) -> dict | None:
    """The scores a checkpoint records (its "metrics"), read without torch (a summary
    answers at once); None when it records none. A file that is not a checkpoint: UserError."""
    try:
        with zipfile.ZipFile(checkpoint_path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            with archive.open(name) as handle:
                content = _ScoresOnly(handle).load()
    except (OSError, zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError,
            ValueError, TypeError, AttributeError) as err:
        cause = str(err) or "not a checkpoint"
        raise UserError(f"{checkpoint_path}: cannot read the scores it records ({cause})") \
            from None
    scores = content.get("metrics") if isinstance(content, dict) else None
    return scores if isinstance(scores, dict) else None


def scores_edit(metrics: dict, recorded: dict | None) -> str | None:
    """How a metrics file differs from the scores its checkpoint records (None: it does
    not), e.g. an accuracy edited by hand after the stage wrote it."""
    if recorded is None:
        return "the checkpoint records no scores (an older version wrote it)"
    written = {k: v for k, v in metrics.items() if k not in ("tensors", "model")}
    for key in sorted(set(written) | set(recorded)):
        if written.get(key) != recorded.get(key):
            return (f"{key} is {written.get(key)!r} there but {recorded.get(key)!r} in the "
                    f"checkpoint (edited after the stage wrote it?)")
    return None


# What produced a model's numbers besides its params, as its metrics and checkpoint record it.
SETTINGS = {"seed": "base.seed", "device": "base.device", "threads": "base.threads",
            "kernels": "base.kernels"}
# The settings the baseline records too: it draws nothing at random and runs on the CPU.
BASELINE_SETTINGS = ("threads", "kernels")


def settings_text(metrics: dict) -> str:
    """`seed 42, cpu, 2 threads, portable`: a model's recorded settings in a table cell."""
    parts = [f"seed {metrics['seed']}" if metrics.get("seed") is not None else None,
             metrics.get("device"),
             f"{metrics['threads']} thread{'s' if metrics['threads'] != 1 else ''}"
             if metrics.get("threads") is not None else None,
             metrics.get("kernels")]
    return ", ".join(p for p in parts if p) or "not recorded"


def native_kernels(metrics: dict[str, dict]) -> list[str]:
    """A line when some models were computed with this CPU's own kernels: their last digits
    are this kind of CPU's, which a clone elsewhere does not reproduce."""
    native = [name for name, m in metrics.items() if m.get("kernels") == "native"]
    if not native:
        return []
    return [f"Computed with base.kernels: native, this CPU's own fastest kernels: "
            f"{', '.join(native)}. Their numbers are reproducible bit for bit on this kind of "
            f"CPU only (another CPU gets other last digits); for numbers every x86-64 CPU "
            f"reproduces: `dvc exp run -S base.kernels=portable`."]


def mixed_settings(metrics: dict[str, dict], base: dict | None) -> list[str]:
    """A line for each setting the models were not all produced with alike, or that
    params.yaml (`base`, its base section now) no longer says: those numbers do not come
    from one run of the params in view, and reruns would not reproduce them together. Then
    native_kernels' line, if any."""
    lines = []
    for key, param in SETTINGS.items():
        groups: dict[object, list[str]] = {}
        for name, m in metrics.items():
            if key in BASELINE_SETTINGS or not name.startswith("baseline"):
                groups.setdefault(m.get(key), []).append(name)
        said = (base or {}).get(param.split(".")[1])
        if len(groups) > 1:
            listing = "; ".join(f"{', '.join(names)}: "
                                f"{value if value is not None else 'not recorded'}"
                                for value, names in groups.items())
            lines.append(f"The models were not all produced with the same {key} ({listing}). "
                         f"Rerun them together: `dvc repro`.")
        elif said not in (None, "auto") and groups and next(iter(groups)) != said:
            value = next(iter(groups))
            lines.append(f"params.yaml now says {param}: {said}, but the models were produced "
                         f"with {key} {value}; `dvc repro` reruns them with {said}.")
    return lines + native_kernels(metrics)


def check_one_run(meta: dict, outputs: list[ModelOutputs], reader: str) -> None:
    """Refuse, naming each stale file and its stage, unless every output was computed from
    the tensors in `meta` and each stage's outputs from one run of it."""
    found = {out.stage: stale_outputs(meta, out) for out in outputs}
    problems = [problem for stage_problems in found.values() for problem in stage_problems]
    if problems:
        stages = " ".join(stage for stage, stage_problems in found.items() if stage_problems)
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise UserError(
            f"{reader}'s inputs do not all come from one run. data/tensors holds digits "
            f"{meta['digits']} from {meta['source']} (tensors {meta['tensors']}), but:\n"
            f"{listing}\nrerun the stale stages first: `dvc repro {stages}` "
            f"(or `dvc repro` for everything)")
