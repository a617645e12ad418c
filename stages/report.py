"""Stage `report`: report/report.md and its PNG figures, from every model's outputs."""

from __future__ import annotations

import sys

from stages.lib.data.tensors import load_tensors, targets_in_digit_order
from stages.lib.infra.errors import run_stage
from stages.lib.infra.files import atomic_dir, write_text
from stages.lib.infra.kernels import use_kernels
from stages.lib.infra.params import load_params
from stages.lib.infra.threads import use_threads
from stages.lib.learning.models import TRAINED
from stages.lib.results import figures
from stages.lib.results.report import (baseline_results, confusion_by_digit,
                                       linear_weights_before_and_after, read_model_outputs,
                                       render_markdown, trained_result, worst_mistakes)

REPORT_DIR = "report"
FIGURES = {"curves": "figures/training_curves.png", "means": "figures/mean_images.png",
           "confusion": "figures/confusion_matrices.png",
           "weights": "figures/linear_weights.png", "mistakes": "figures/worst_mistakes.png",
           "schedule": "figures/cnn_schedule.png"}


def main() -> None:
    params = load_params()
    use_threads(params.base.threads)
    use_kernels(params.base.kernels)  # the predictions it draws: the same on every CPU
    meta, _, valid = load_tensors()
    digits, names = meta["digits"], meta["target_digits"]
    baseline, models, metrics, histories = read_model_outputs(meta)

    trained = {name: trained_result(name, *models[name], metrics[name], valid)
               for name in TRAINED}
    results = [*baseline_results(baseline, metrics["baseline"], valid), *trained.values()]

    with atomic_dir(REPORT_DIR) as out:
        figures.training_curves(
            histories,
            {f"baseline {k.upper()}": metrics["baseline"][k] for k in ("l1", "l2")},
            {name: trained[name].settings["loss"] for name in TRAINED},
            out / FIGURES["curves"])
        figures.mean_images(baseline["means"][targets_in_digit_order(digits)], digits,
                            out / FIGURES["means"])
        figures.confusion_matrices(
            {r.name: confusion_by_digit(r, valid, digits) for r in results},
            {r.name: r.metrics["accuracy"] for r in results}, digits, out / FIGURES["confusion"])
        initial, weights = linear_weights_before_and_after(*models["linear"])
        titles = ([f"output: {digits[0]} (+) vs {digits[1]} (−)"] if len(weights) == 1
                  else [f"output for {d}" for d in names])
        figures.linear_weights(initial, weights, titles, out / FIGURES["weights"])
        figures.worst_mistakes(  # the trained models: the baselines give no probabilities
            {name: worst_mistakes(r, valid, names, params.report.worst_mistakes)
             for name, r in trained.items()}, out / FIGURES["mistakes"])
        figures.one_cycle_schedule(trained["cnn"].settings["hypers"], out / FIGURES["schedule"],
                                   trained["cnn"].settings.get("schedule", "one_cycle"))
        write_text(out / "report.md", render_markdown(meta, results, metrics, FIGURES,
                                                      params.base.model_dump()))
    print(f"report: {REPORT_DIR}/report.md and {len(FIGURES)} figures", file=sys.stderr)


if __name__ == "__main__":
    run_stage("report", main)
