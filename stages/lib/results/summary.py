"""A run's answer in a few lines: each model's accuracy beside the book's figure, read from
`metrics/*.json` and from the params `dvc.lock` says they were computed with (not from
params.yaml, which may have changed since). Torch-free, so it answers at once."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

from ..data.raw import FALLBACK_WARNING, fell_back
from ..infra.errors import UserError
from ..infra.files import decode_text, parse_json, read_text, read_yaml, regular_file
from ..infra.gitindex import results_changed
from ..infra.provenance import (file_fingerprint, metrics_mismatch, mixed_settings,
                                recorded_scores, settings_text)
from .book import book_figure, cnn_recipe, figure_text, is_book_data
from .caveats import caveats
from .markdown import text_table

LOCK = Path("dvc.lock")
# fastai's own code for the finale on this machine, as `python -m bench.finale` last ran it
FASTAI_FINALE = Path("bench/results/finale.json")
PARAMS = Path("params.yaml")
WIDTH = 92  # of the notes under the table, as wide as the fallback warning

# DVC ends a run that changed dvc.lock with "To track the changes with git, run: git add
# dvc.lock"; this says when to follow it.
UNCOMMITTED = (
    "\ndvc.lock and metrics/ differ from the last commit (DVC's `git add dvc.lock` hint is about\n"
    "them). Commit both only to make these the project's results: `git add dvc.lock metrics &&\n"
    "git commit`. `make reset` goes back to the committed params; from real MNIST they give the\n"
    "committed results (offline, the sample's). With base.kernels: portable on the CPU, every\n"
    "x86-64 machine computes the same dvc.lock; one from the native kernels or a GPU holds for\n"
    "that machine alone.")
# Where DVC printed the same hint for a dvc.lock it rewrote as the commit's (a run on real
# MNIST after an offline one, `make reset`).
COMMITTED_AGAIN = ("\ndvc.lock and metrics/ are the last commit's: nothing to commit (DVC's "
                   "`git add dvc.lock` hint,\nif it printed one, can be passed by).")


def commit_note() -> str:
    """The summary's last lines: whether dvc.lock and metrics/ are the commit's, and what to
    do with them (DVC's `git add dvc.lock` hint above them, in context)."""
    return UNCOMMITTED if results_changed() else COMMITTED_AGAIN


# (as shown, the stage that wrote it, its metrics file, the key in book.BOOK_FIGURES)
MODELS = (("baseline (L1)", "baseline", "metrics/baseline.json", "baseline_l1"),
          ("linear", "train_linear", "metrics/linear.json", "linear"),
          ("mlp", "train_mlp", "metrics/mlp.json", "mlp"),
          ("cnn", "train_cnn", "metrics/cnn.json", "cnn"))


def locked_stages(lock: Path = LOCK) -> dict:
    """dvc.lock's stages, each checked to have the shape DVC writes (what the summary reads
    of it): anything else is one line naming the stage and the key, not a traceback."""
    if not os.path.lexists(lock):
        raise UserError(f"{lock} not found: no pipeline run to summarise; run `dvc repro`")
    locked = read_yaml(lock, "dvc.lock") or {}
    stages = locked.get("stages", {}) if isinstance(locked, dict) else None
    if not isinstance(stages, dict):
        raise UserError(f"{lock} is not a lock file DVC wrote (no mapping of stages); run "
                        f"`dvc repro` to write it again")
    for name, stage in stages.items():
        problem = _lock_shape_problem(stage)
        if problem:
            raise UserError(f"{lock}: stage '{name}' {problem}, not what DVC writes; run "
                            f"`dvc repro` to write it again")
    return stages


def _lock_shape_problem(stage: object) -> str | None:
    if not isinstance(stage, dict):
        return f"is {type(stage).__name__}, not a mapping"
    params = stage.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        return "has params that are not a mapping of files to their values"
    for key in ("deps", "outs"):
        entries = stage.get(key, [])
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries):
            return f"has {key} that are not a list of entries with a path"
    return None


def stage_params(stages: dict, stage: str) -> dict:
    """The params `stage` last ran with, by their key in params.yaml ("data.digits")."""
    return stages[stage].get("params", {}).get("params.yaml", {})


def recorded_metrics(stages: dict, stage: str, path: str) -> dict:
    """`path` as `stage` wrote it when DVC last ran it; anything else is an error."""
    if stage not in stages:
        raise UserError(f"dvc.lock has no stage '{stage}': run `dvc repro`")
    recorded = {out["path"]: out.get("md5") for out in stages[stage].get("outs", [])}
    file = Path(path)
    if not os.path.lexists(file):
        raise UserError(f"{path} not found; run `dvc repro {stage}` (or `dvc checkout`)")
    data = read_text(file).encode()  # never a FIFO's wait, nor a huge file read whole
    if hashlib.md5(data).hexdigest() != recorded.get(path):
        raise UserError(f"{path} is not the file dvc.lock records for stage '{stage}' (it "
                        f"changed after DVC ran the stage); run `dvc repro` to bring them "
                        f"together")
    return parse_json(decode_text(data, path), path, f"the {stage} metrics")


def settings(params: dict, stage: str) -> dict:
    """A training stage's own params without their section: {"lr": 0.1, ...}."""
    prefix = f"{stage}."
    return {key.removeprefix(prefix): value for key, value in params.items()
            if key.startswith(prefix)}


def _tensors_md5(entries: list[dict]) -> str | None:
    return next((e.get("md5") for e in entries if e.get("path") == "data/tensors"), None)


def check_same_tensors(stages: dict, metrics: dict[str, dict]) -> None:
    """Every model stage last ran on the tensors tensorise last wrote (by dvc.lock) and
    on the same tensors as the others (by the fingerprint in its metrics)."""
    written = _tensors_md5(stages.get("tensorise", {}).get("outs", []))
    stale = [stage for stage in metrics
             if _tensors_md5(stages[stage].get("deps", [])) != written]
    fingerprints = {m.get("tensors") for m in metrics.values()}
    if stale or len(fingerprints) > 1:
        stale = stale or list(metrics)
        raise UserError(f"the metrics of {', '.join(stale)} were computed from other tensors "
                        f"than tensorise last wrote (dvc.lock), so they are not one run's "
                        f"numbers; run `dvc repro` to bring them together")


# resnet18's checkpoint is 45 MB; the server loads none over this either.
MAX_CHECKPOINT_BYTES = 512 * 2**20


def metrics_shape_problem(path: str, metrics: object, stage: str) -> str | None:
    """What in a metrics file is not as the stage writes it (None: nothing), e.g. an
    accuracy edited into a string."""
    if not isinstance(metrics, dict):
        return f"{path} holds {type(metrics).__name__}, not the mapping {stage} writes"
    parts = {f"{kind}.": metrics.get(kind) for kind in ("l1", "l2")} if stage == "baseline" \
        else {"": metrics}
    for prefix, scores in parts.items():
        if not isinstance(scores, dict):
            return f"{path}: {prefix.rstrip('.')} is {scores!r}, not a mapping of scores"
        for key in ("accuracy", "balanced_accuracy"):
            value = scores.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                return f"{path}: {prefix}{key} is {value!r} (expected a number from 0 to 1)"
    if not isinstance(metrics.get("tensors"), str):
        return f"{path}: tensors is {metrics.get('tensors')!r} (expected a fingerprint)"
    return None


def checkpoint_of(metrics_path: str) -> Path:
    """metrics/<name>.json's checkpoint: models/<name>.pt."""
    return Path("models") / f"{Path(metrics_path).stem}.pt"


def checkpoint_mismatches(metrics: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """Each metrics file held to the scores its checkpoint records: {stage: why they are
    not its scores}, and the checkpoints not here to hold them to (a clone before `dvc pull`)."""
    mismatched, absent = {}, []
    for _, stage, path, _ in MODELS:
        checkpoint = checkpoint_of(path)
        if not checkpoint.exists():
            absent.append(str(checkpoint))
            continue
        try:
            size = regular_file(checkpoint, "a checkpoint").stat().st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise UserError(f"{checkpoint}: {size / 2**30:.1f} GiB, over the "
                                f"{MAX_CHECKPOINT_BYTES // 2**20} MiB a checkpoint of this "
                                f"pipeline takes")
            why = metrics_mismatch(path, metrics[stage], checkpoint,
                                   file_fingerprint(checkpoint), recorded_scores(checkpoint))
        except UserError as err:
            why = str(err)
        if why is not None:
            mismatched[stage] = why
    return mismatched, absent


def summary_rows(stages: dict) -> tuple[dict, list[list[str]]]:
    """The data the models saw (meta) and one row per model: name, accuracy, balanced
    accuracy, the book's figure ("—" where the settings are not the book's), and the seed,
    device, threads and kernels that produced it."""
    metrics = {stage: recorded_metrics(stages, stage, path) for _, stage, path, _ in MODELS}
    for _, stage, path, _ in MODELS:
        if (problem := metrics_shape_problem(path, metrics[stage], stage)) is not None:
            raise UserError(f"{problem}; `dvc repro --force {stage}` writes it again")
    check_same_tensors(stages, metrics)
    first = metrics["baseline"]
    meta = {"source": first["source"], "split": first["split"], "n_train": first["n_train"],
            "n_valid": first["n_valid"],
            "digits": stage_params(stages, "tensorise").get("data.digits"),
            "requested": stage_params(stages, "download").get("data.source")}
    digits = meta["digits"]
    if digits is not None and not (isinstance(digits, list)
                                   and all(isinstance(d, int) for d in digits)):
        raise UserError(f"dvc.lock records data.digits: {digits!r} for stage 'tensorise' "
                        f"(expected a list of digits); `dvc repro --force` records it again")
    meta["mismatched"], meta["not_checked"] = checkpoint_mismatches(metrics)
    try:
        return _rows(stages, metrics, meta)
    except (TypeError, AttributeError, ValueError, KeyError) as err:
        raise UserError(f"dvc.lock records params of another shape than params.yaml takes "
                        f"({type(err).__name__}: {err}); `dvc repro --force` records them "
                        f"again") from None


def _rows(stages: dict, metrics: dict, meta: dict) -> tuple[dict, list[list[str]]]:
    rows, trained = [], {}
    for name, stage, _, key in MODELS:
        scores = metrics[stage]["l1"] if stage == "baseline" else metrics[stage]
        trained_with = settings(stage_params(stages, stage), stage)
        figure = book_figure(key, trained_with, meta)
        shown = ([f"{scores['accuracy']:.4f}", f"{scores['balanced_accuracy']:.4f}"]
                 if stage not in meta["mismatched"] else ["not shown", "not shown"])
        rows.append([name, *shown, figure_text(figure, per_class=False),
                     settings_text(metrics[stage])])
        if stage != "baseline":
            trained[name] = (scores, trained_with)
    meta["caveats"] = caveats(metrics["baseline"]["l1"], trained, meta["n_train"],
                              meta["source"])
    meta["recipe"] = [line for line in [cnn_recipe(trained["cnn"][1], metrics["train_cnn"]),
                                        fastai_finale(metrics["train_cnn"])]
                      if line and "train_cnn" not in meta["mismatched"]]
    meta["mixed"] = mixed_settings({name: metrics[stage] for name, stage, _, _ in MODELS},
                                   params_base())
    return meta, rows


def fastai_finale(cnn: dict, path: Path = FASTAI_FINALE) -> str | None:
    """fastai's error rate on the CNN's own images, from `python -m bench.finale`, if it ran
    on these tensors (a later run on other data makes it nobody's comparison)."""
    try:
        theirs = (parse_json(read_text(path), path, "bench.finale's results") if path.is_file()
                  else None)
    except UserError:
        return None
    if not isinstance(theirs, dict) or theirs.get("tensors") != cnn.get("tensors"):
        return None
    try:
        return (f"fastai's code on the same images (`python -m bench.finale`, {theirs['cpu']}, "
                f"{theirs['date']}): error rate {float(theirs['error_rate']):.4f}, its lr_find "
                f"valley {float(theirs['lr']):.3g}, {theirs['epochs']} epochs after the frozen "
                f"one.")
    except (KeyError, TypeError, ValueError):
        return None


def params_base(path: Path = PARAMS) -> dict | None:
    """params.yaml's base section as it stands now, to hold the recorded settings to (None
    where params.yaml holds none: check_params, not the summary, says what is wrong there)."""
    try:
        params = read_yaml(path, "params") if path.is_file() else None
    except UserError:
        return None
    base = params.get("base") if isinstance(params, dict) else None
    return base if isinstance(base, dict) else None


def render_summary(meta: dict, rows: list[list[str]]) -> str:
    digits = ", ".join(str(d) for d in meta["digits"] or [])
    lines = [f"Digits {digits} from {meta['source']}, {meta['split']} validation split "
             f"({meta['n_train']} training, {meta['n_valid']} validation images):", ""]
    if is_book_data(meta):
        lines.append(text_table(["model", "accuracy", "balanced", "the book", "produced with"],
                                rows))
    else:
        lines.append(text_table(["model", "accuracy", "balanced", "produced with"],
                                [[*r[:3], r[4]] for r in rows]))
        lines += ["", "Not the book's data (MNIST 3s and 7s, the MNIST test set to validate),\n"
                      "so there are no book figures to compare with."]
    for note in (*meta.get("recipe", []), *meta.get("caveats", []),  # read on a terminal
                 *meta.get("mixed", [])):
        lines += ["", textwrap.fill(note, WIDTH, break_long_words=False,
                                    break_on_hyphens=False)]
    notes = [f"Not shown: {why}." for why in meta.get("mismatched", {}).values()]
    if meta.get("not_checked"):
        notes.append(f"Not held to the scores their checkpoints record (not in this clone: "
                     f"`dvc pull` or `make run`): {', '.join(meta['not_checked'])}.")
    for note in notes:
        lines += ["", textwrap.fill(note, WIDTH, break_long_words=False,
                                    break_on_hyphens=False)]
    if fell_back(meta["source"], meta["requested"]):
        lines += ["", FALLBACK_WARNING]
    report = "report/report.md" if Path("report/report.md").is_file() else \
        "report/report.md (not here: `dvc repro report`)"
    lines += ["", f"Details: {report}; per metric: dvc metrics show"]
    return "\n".join(lines)
