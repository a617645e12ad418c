"""The seed study: the same pipeline run over several seeds, each model's accuracy summarised
(mean, sd, min, max) beside the book's figure. The book sets no seed, so this is what says
whether its figure is one our runs reach."""

from __future__ import annotations

import json
import math

import pandas as pd

from ..infra.errors import UserError
from ..infra.experiments import Experiment
from ..learning.models import TRAINED
from .book import book_figure
from .markdown import markdown_table

# The baseline's book figure is the mean of its per-class accuracies (balanced accuracy).
MODELS = {"baseline_l1": ("metrics/baseline.json", "balanced_accuracy"),
          **{name: (f"metrics/{name}.json", "accuracy") for name in TRAINED}}
SUMMARY_COLUMNS = ["model", "metric", "seeds", "mean", "sd", "min", "max", "book",
                   "book within seeds' range"]


def _data_of(metrics: dict) -> dict:
    """What book_figure needs to know about the data a model was measured on."""
    return {"source": metrics["source"], "split": metrics["split"],
            "digits": [int(d) for d in metrics["per_class"]]}


def seed_rows(exp: Experiment) -> list[dict]:
    """One row per model of one experiment: its seed, metric, value and the book's figure."""
    rows = []
    for model, (path, metric) in MODELS.items():
        metrics = exp.metrics.get(path)
        if not metrics:  # e.g. a queued run that failed, or one from before the CNN
            raise UserError(f"experiment {exp.name} has no {path}: did it fail? "
                            f"(`dvc queue logs {exp.name}`). Remove it with `dvc exp remove "
                            f"{exp.name}` and run the study again")
        if model == "baseline_l1":
            metrics, settings = {**metrics["l1"], **metrics}, {}
        else:
            settings = exp.params[f"train_{model}"]
            seed = exp.params["base"]["seed"]
            if metrics.get("seed") != seed:
                raise UserError(f"experiment {exp.name}'s {path} was computed with seed "
                                f"{metrics.get('seed')}, not its seed {seed}: not its result "
                                f"(did it fail? `dvc queue logs {exp.name}`)")
        figure = book_figure(model, settings, _data_of(metrics))
        rows.append({"experiment": exp.name, "seed": exp.params["base"]["seed"],
                     "model": model, "metric": metric, "value": metrics[metric],
                     "threads": metrics.get("threads"), "kernels": metrics.get("kernels"),
                     "book": figure[metric] if figure else math.nan})
    return rows


def succeeded(exps: list[Experiment]) -> tuple[list[Experiment], list[str]]:
    """(the experiments that ran to the end, a line for each that did not): a failed one's
    metrics are not its own (DVC shows those of the commit it started from)."""
    lines = [f"{exp.name}: not a result ({exp.failed}; see `dvc queue logs {exp.name}`)"
             for exp in exps if exp.failed]
    return [exp for exp in exps if not exp.failed], lines


def study_frame(exps: list[Experiment]) -> pd.DataFrame:
    """Every model's row for every experiment; a UserError where two experiments give the
    very same metrics, files and all: that is one run counted twice, not two seeds."""
    seen: dict[str, str] = {}
    for exp in exps:
        key = json.dumps(exp.metrics, sort_keys=True)
        if key in seen:
            raise UserError(f"experiments {seen[key]} and {exp.name} have the very same "
                            f"metrics, every file: one run counted twice, not two seeds. "
                            f"Remove them (`dvc exp remove {seen[key]} {exp.name}`) and run "
                            f"the study again")
        seen[key] = exp.name
    runs = pd.DataFrame([row for exp in exps for row in seed_rows(exp)])
    return runs.sort_values("seed", kind="stable", ignore_index=True)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model: how many seeds, mean, sd (n-1), min, max, and where the book's figure lies."""
    summary = runs.groupby("model", sort=False).agg(
        metric=("metric", "first"), seeds=("value", "size"), mean=("value", "mean"),
        sd=("value", "std"), min=("value", "min"), max=("value", "max"),
        book=("book", "first")).reset_index()
    # Which side of the range the book falls on says whether the seeds did better or worse.
    place = pd.Series("yes", index=summary.index)
    place[summary["book"] < summary["min"]] = "no (below)"
    place[summary["book"] > summary["max"]] = "no (above)"
    summary["book within seeds' range"] = place.where(summary["book"].notna(), "—")
    return summary[SUMMARY_COLUMNS]


def summary_markdown(summary: pd.DataFrame) -> str:
    def cell(value):
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.4f}"
        return value
    return markdown_table(SUMMARY_COLUMNS, [[cell(v) for v in row]
                                            for row in summary.itertuples(index=False)])


def runs_markdown(runs: pd.DataFrame) -> str:
    """Every seed's value per model, one row per seed, with the thread counts and kernels its
    stages ran with (results are bit-identical only for the same of both)."""
    wide = runs.pivot_table(index="seed", columns="model", values="value", sort=False)
    wide = wide[[m for m in MODELS if m in wide.columns]]
    ran_with = {column: runs.groupby("seed")[column].agg(
        lambda values: ", ".join(map(str, sorted(set(values), key=str))))
        for column in ("threads", "kernels")}
    return markdown_table(["seed", *wide.columns, *ran_with],
                          [[seed, *(f"{v:.4f}" for v in row),
                            *(column[seed] for column in ran_with.values())]
                           for seed, row in zip(wide.index, wide.itertuples(index=False))])
