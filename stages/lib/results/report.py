"""The report: every model's predictions on the validation set, and report.md around them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.raw import FALLBACK_WARNING, fell_back
from ..data.tensors import Split, as_inputs, targets_in_digit_order
from ..infra.files import read_json
from ..infra.provenance import ModelOutputs, check_one_run, mixed_settings
from ..learning.history import read_history
from ..learning.metrics import confusion_matrix
from ..learning.models import TRAINED, initial_model, load_checkpoint
from ..learning.predictions import batched_logits, predict, true_class_loss
from ..learning.similarity import class_distances, load_means, nearest_margin
from .book import book_figure, cnn_recipe, figure_text, is_book_data
from .caveats import caveats
from .markdown import markdown_table


@dataclass
class ModelResult:
    name: str              # as shown: "baseline L1", "linear", ...
    key: str               # as in book.BOOK_FIGURES: "baseline_l1", "linear", ...
    metrics: dict          # the stage's metrics (accuracy, balanced_accuracy, per_class)
    preds: torch.Tensor    # predicted target per validation image
    scores: torch.Tensor   # how wrong each prediction is: the higher, the worse a mistake
    score_name: str        # what `scores` is ("loss" or "margin")
    settings: dict         # what it was trained with, for the book lookup


def read_model_outputs(meta: dict) -> tuple[dict, dict, dict, dict]:
    """Every model stage's outputs: the baseline's checkpoint, each trained (model,
    checkpoint), each stage's metrics and each trained model's history; refused unless all
    come from one run on the tensors in `meta`."""
    metrics = {name: read_json(f"metrics/{name}.json", f"the {name} metrics")
               for name in ("baseline", *TRAINED)}
    baseline = load_means("models/baseline.pt")
    models = {name: load_checkpoint(f"models/{name}.pt", f"train_{name}") for name in TRAINED}
    histories = {name: read_history(f"plots/{name}.tsv") for name in TRAINED}
    check_one_run(meta, [
        ModelOutputs("baseline", Path("models/baseline.pt"), baseline,
                     Path("metrics/baseline.json"), metrics["baseline"]),
        *(ModelOutputs(f"train_{name}", Path(f"models/{name}.pt"), models[name][1],
                       Path(f"metrics/{name}.json"), metrics[name],
                       Path(f"plots/{name}.tsv"), histories[name]) for name in TRAINED)],
        reader="the report")
    return baseline, models, metrics, histories


def baseline_results(checkpoint: dict, metrics: dict, valid: Split) -> list[ModelResult]:
    results = []
    for kind in ("l1", "l2"):
        dists = class_distances(valid.images, checkpoint["means"], kind)
        results.append(ModelResult(f"baseline {kind.upper()}", f"baseline_{kind}", metrics[kind],
                                   dists.argmin(dim=1), nearest_margin(dists), "margin", {}))
    return results


def trained_result(name: str, model: torch.nn.Module, checkpoint: dict, metrics: dict,
                   valid: Split) -> ModelResult:
    logits = batched_logits(model, as_inputs(valid, torch.device("cpu"))[0])
    config = checkpoint["config"]
    settings = {**checkpoint["training"], "hidden": config["hidden"],
                **{k: config[k] for k in ("arch", "input_mean", "input_std") if k in config},
                # the file it started from, where `weights` may say only "imagenet"
                **({"weights": config["pretrained"]["file"]} if "pretrained" in config else {})}
    return ModelResult(name, name, metrics, predict(logits),
                       true_class_loss(logits, valid.targets), "loss", settings)


def linear_weights_before_and_after(model: torch.nn.Module, checkpoint: dict
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear model's weights as training started (rebuilt from the seed and init its
    checkpoint records) and as it ended, one row of 784 per output."""
    training = checkpoint["training"]
    start = initial_model(checkpoint["config"], training["seed"], training.get("init", "torch"))
    return start[0].weight.detach(), model[0].weight.detach()


def worst_mistakes(result: ModelResult, valid: Split, names: list[int], k: int):
    """The k wrong predictions with the highest score: (image, true, predicted, score)."""
    wrong = torch.nonzero(result.preds != valid.targets).flatten()
    order = wrong[result.scores[wrong].argsort(descending=True, stable=True)][:k]
    return [(valid.images[i], names[valid.targets[i]], names[result.preds[i]],
             f"{result.score_name} {result.scores[i]:.2f}") for i in order.tolist()]


def confusion_by_digit(result: ModelResult, valid: Split, digits: list[int]) -> torch.Tensor:
    """Confusion counts with rows/columns in the order of `digits` (not target values)."""
    counts = confusion_matrix(result.preds, valid.targets, len(digits))
    order = torch.tensor(targets_in_digit_order(digits))
    return counts[order][:, order]


# --- markdown --------------------------------------------------------------------------------

def cnn_input(settings: dict) -> str:
    """What the CNN is fed, as its config records it."""
    if isinstance(settings.get("input_mean"), list):
        return ("the CNN, started from ImageNet weights, takes the grey digit as the three "
                "equal channels they expect, normalised by ImageNet's mean and standard "
                "deviation per channel (input_mean, input_std), as fastai feeds MNIST.")
    return ("the CNN takes them standardised, (pixel − input_mean) / input_std, by the "
            "training images' own mean and standard deviation.")


def cnn_schedule(settings: dict) -> str:
    """How the CNN's schedule went, by its fit."""
    arch = settings.get("arch", "resnet18")
    if settings.get("fit") == "fine_tune":
        return (f"The {arch} trains as fastai's `fine_tune` does: one epoch of one-cycle with "
                f"the body frozen, warming up to its peak over 99% of its steps, then the "
                f"whole net unfrozen for its other epochs of one-cycle at half the peak, "
                f"warming up from a fifth of it over the first 30% of their steps; each layer "
                f"group at its own fraction of the rate drawn (the head's). The values below "
                f"are the ones the optimizer had at each step.")
    return (f"The {arch} trains as the book's `fit_one_cycle` does: the learning rate warms up "
            f"along a cosine from lr/25 to its peak over the first 25% of steps, then anneals "
            f"to lr/1e5, while Adam's β1 goes from 0.95 down to 0.85 and back. The values below "
            f"are the ones the optimizer had at each step.")


def results_table(results: list[ModelResult], meta: dict) -> str:
    digits = [str(d) for d in meta["digits"]]
    book = is_book_data(meta)
    header = ["model", "accuracy", "balanced accuracy", *(f"acc. {d}" for d in digits)]
    header += ["the book"] if book else []
    rows = []
    for r in results:
        cells = [r.name, f"{r.metrics['accuracy']:.4f}", f"{r.metrics['balanced_accuracy']:.4f}",
                 *(f"{r.metrics['per_class'][d]:.4f}" for d in digits)]
        if book:
            cells.append(figure_text(book_figure(r.key, r.settings, meta)))
        rows.append(cells)
    return markdown_table(header, rows)


def data_table(meta: dict) -> str:
    counts = meta["counts"]
    return markdown_table(["split", *meta["digits"], "total"],
                          [[split, *(counts[split][str(d)] for d in meta["digits"]),
                            sum(counts[split].values())] for split in ("train", "valid")])


def training_table(results: list[ModelResult], metrics: dict[str, dict]) -> str:
    keys = ("arch", "weights", "fit", "augment", "optimizer", "lr", "epochs", "batch_size",
            "shuffle", "loss", "init", "hidden", "wd", "input_mean", "input_std", "seed",
            "device", "threads", "kernels")
    rows = []
    for r in results:
        if r.key in metrics:
            shown = [r.settings.get(k) for k in keys]
            rows.append([r.name, *(v if v not in (None, []) else "—" for v in shown),
                         metrics[r.key]["train_loss"], metrics[r.key]["valid_loss"]])
    return markdown_table(["model", *keys, "final train loss", "final valid loss"], rows)


def render_markdown(meta: dict, results: list[ModelResult], metrics: dict[str, dict],
                    figures: dict[str, str], base: dict) -> str:
    """report.md; `base`: params.yaml's base section, to hold each model's recorded seed,
    device, threads and kernels to."""
    book_note = ("The data are the book's, so its figures stand beside ours where the "
                 "settings are the book's too, with the book's named where ours differ (the "
                 "book sets no seed: trained models agree within about ±0.005)."
                 if is_book_data(meta) else
                 "These are not the book's data settings (MNIST 3s and 7s, MNIST test set as "
                 "validation), so there is no book figure to compare with.")
    digits = ", ".join(str(d) for d in meta["digits"])
    warning = ([f"> **{FALLBACK_WARNING.replace(chr(10), ' ')}**"]
               if fell_back(meta["source"], meta.get("requested")) else [])
    cnn = next(r for r in results if r.key == "cnn")
    sections = [
        "# MNIST basics: results", *warning,
        f"Digits {digits} from **{meta['source']}**, validation split **{meta['split']}** "
        f"({meta['n_train']} training and {meta['n_valid']} validation images; every model "
        f"below was computed from these tensors, fingerprint `{meta['tensors']}`).",
        "## Models", results_table(results, meta),
        *(f"> **{line}**" for line in caveats(
            metrics["baseline"]["l1"], {r.key: (r.metrics, r.settings) for r in results
                                        if r.key in TRAINED}, meta["n_train"], meta["source"])),
        *(f"> {line}" for line in [cnn_recipe(cnn.settings, cnn.metrics)] if line),
        book_note,
        "Accuracy is pooled over the validation set; balanced accuracy is the mean of the "
        "per-class accuracies (the book's `(accuracy_3s + accuracy_7s) / 2`).",
        "## Data", data_table(meta),
        "## Training", training_table(results, metrics),
        *(f"> **{line}**" for line in mixed_settings(metrics, base)),
        "The linear model and MLP take the pixels in [0, 1], as the book's do; " + cnn_input(
            cnn.settings),
        f"![training curves]({figures['curves']})",
        "## The ideal digits",
        "The pixel-similarity baseline compares each image with the mean training image of "
        "each digit:", f"![mean images]({figures['means']})",
        "## The CNN's one-cycle schedule", cnn_schedule(cnn.settings),
        f"![one-cycle schedule]({figures['schedule']})",
        "## Confusion matrices", f"![confusion matrices]({figures['confusion']})",
        "## What the linear model looks at",
        "Each output's 784 weights drawn as a 28×28 image: red pixels push the output up, "
        "blue ones down. With the book's `randn` init (std 1) much of what shows is the "
        "initial noise; `train_linear.init: torch` starts near zero and shows the learnt "
        "strokes.", f"![linear weights]({figures['weights']})",
        "## Worst mistakes",
        "The validation images each trained model gets most confidently wrong, worst first "
        "(up to `report.worst_mistakes` per model, six to a row). Above each: its true digit, "
        "the model's answer, and the loss, −log p of the true digit (0.69 is a coin toss "
        "between two digits; 2.30 means the true digit got p = 0.1). The baselines are left "
        "out: nearness to a mean image is no probability.",
        f"![worst mistakes]({figures['mistakes']})",
    ]
    return "\n\n".join(sections) + "\n"
