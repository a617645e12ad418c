"""The report's PNG figures, drawn offline with matplotlib (Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no browser, no CDN

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator  # noqa: E402
import torch  # noqa: E402

from ..infra.files import atomic_open  # noqa: E402

DPI = 110
MODEL_COLOURS = {"linear": "tab:blue", "mlp": "tab:orange", "cnn": "tab:green"}


def save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)


LOSS_NAMES = {"mnist": "the book's mnist_loss", "bce": "binary cross-entropy",
              "cross_entropy": "cross-entropy"}


def _outside_legend(ax) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def _zoomed_accuracy_limits(finals: list[float]) -> tuple[float, float]:
    """From just below the lowest final accuracy to just above the highest: where the models
    differ, rather than 0.5 to 1 (the first epochs fall below and are cut off)."""
    low = math.floor((min(finals) - 0.01) * 100) / 100
    high = min(1.0, math.ceil((max(finals) + 0.005) * 100) / 100)
    return max(0.0, min(low, high - 0.03)), high


def loss_label(losses: dict[str, str]) -> str:
    """Each model's own loss, one line per kind: "the book's mnist_loss (linear, mlp)"."""
    by_loss: dict[str, list[str]] = {}
    for model, loss in losses.items():
        by_loss.setdefault(LOSS_NAMES.get(loss, loss), []).append(model)
    return "\n".join(f"{loss} ({', '.join(models)})" for loss, models in by_loss.items())


def training_curves(histories: dict[str, list[dict]], baselines: dict[str, dict],
                    losses: dict[str, str], path: Path) -> None:
    """Validation accuracy (zoomed on where the models end) and train/valid loss per epoch;
    the baselines, which do not train, as horizontal lines at their accuracy."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(13, 4.4))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        colour = MODEL_COLOURS.get(name)
        marker = "o" if len(rows) == 1 else None  # a one-epoch model is a point, not a line
        acc_ax.plot(epochs, [r["valid_accuracy"] for r in rows], color=colour, label=name,
                    marker=marker)
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], color=colour, marker=marker,
                     label=f"{name} train")
        loss_ax.plot(epochs, [r["valid_loss"] for r in rows], color=colour, linestyle="--",
                     marker=marker, mfc="none", label=f"{name} valid")
    for (label, scores), style in zip(baselines.items(), (":", "-.")):
        acc_ax.axhline(scores["accuracy"], color="grey", linestyle=style,
                       label=f"{label}: {scores['accuracy']:.4f}\n"
                             f"(balanced {scores['balanced_accuracy']:.4f})")
    finals = [rows[-1]["valid_accuracy"] for rows in histories.values() if rows]
    acc_ax.set_ylim(*_zoomed_accuracy_limits(
        finals + [s["accuracy"] for s in baselines.values()]))
    acc_ax.set(title="Validation accuracy (zoomed on the final values)", xlabel="epoch",
               ylabel="accuracy")
    loss_ax.set(title="Loss (log scale), each model its own", xlabel="epoch",
                ylabel=loss_label(losses), yscale="log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    loss_ax.yaxis.set_major_formatter(plain)
    loss_ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    loss_ax.yaxis.set_minor_formatter(plain)
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _outside_legend(ax)
    save(fig, path)


def one_cycle_schedule(hypers: dict[str, list[float]], path: Path,
                       schedule: str = "one_cycle") -> None:
    """The learning rate and momentum (Adam's β1) the CNN was trained with, step by step
    (for fine_tune, the head's learning rate: the other layer groups' are fractions of it)."""
    fig, (lr_ax, mom_ax) = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = range(len(hypers["lr"]))
    lr_ax.plot(steps, hypers["lr"], color=MODEL_COLOURS["cnn"])
    lr_ax.set(title=f"Learning rate (peak {max(hypers['lr']):g})", xlabel="training step",
              ylabel="learning rate")
    mom_ax.plot(steps, hypers["mom"], color=MODEL_COLOURS["cnn"])
    mom_ax.set(title="Momentum (Adam's β1)", xlabel="training step", ylabel="β1")
    for ax in (lr_ax, mom_ax):
        ax.grid(alpha=0.3)
    fig.suptitle("CNN: the one-cycle schedule it followed" if schedule != "fine_tune" else
                 "CNN: fine_tune's two one-cycle schedules, frozen then unfrozen (the head's lr)")
    save(fig, path)


def lr_find_plot(lrs: list[float], losses: list[float], suggestion: float,
                 suggestion_loss: float, title: str, path: Path, skip_end: int = 5) -> None:
    """Smoothed loss against learning rate (log axis), fastai's `valley` marked; the last
    `skip_end` points are left out, as fastai's plot does, since the loss shoots up there."""
    shown = slice(None, -skip_end if len(lrs) > skip_end else None)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(lrs[shown], losses[shown], color="tab:blue")
    ax.plot([suggestion], [suggestion_loss], "o", color="tab:red", ms=8,
            label=f"valley: lr {suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss (smoothed)",
           title=f"Learning-rate finder: {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)


def _image_grid(n: int, max_cols: int, cell: float = 1.6):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def mean_images(means: torch.Tensor, labels: list[int], path: Path) -> None:
    """The chapter's "ideal" digits: the mean training image of each class."""
    fig, axes = _image_grid(len(labels), max_cols=5, cell=2.0)
    for ax, image, digit in zip(axes, means, labels):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"ideal {digit}")
    fig.suptitle("Mean training image per digit")
    save(fig, path)


def confusion_matrices(matrices: dict[str, torch.Tensor], accuracies: dict[str, float],
                       labels: list[int], path: Path) -> None:
    """One confusion matrix per model, titled with its accuracy; rows are the true digit,
    columns the prediction."""
    n = len(labels)
    size = 3.4 if n <= 3 else 5.0
    cols = min(len(matrices), 2 if n > 3 else 3)
    rows = math.ceil(len(matrices) / cols)
    # constrained: makes room for the two-line titles, which tight_layout let overlap.
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.4)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    for ax, (name, counts) in zip(axes.flat, matrices.items()):
        ax.imshow(counts, cmap="Blues")
        ax.set(xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n),
               xticklabels=labels, yticklabels=labels)
        ax.set_title(f"{name}\naccuracy {accuracies[name]:.4f}", fontsize=11)
        top = counts.max().item()
        for (i, j), value in zip(torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
                                 counts.flatten().tolist()):
            ax.text(j, i, str(value), ha="center", va="center",
                    fontsize=13 if n <= 3 else 8,
                    color="white" if value > top / 2 else "black")
    save(fig, path, tight=False)


def _weights_image(fig, ax, weights: torch.Tensor, title: str) -> None:
    limit = weights.abs().max().item() or 1.0
    shown = ax.imshow(weights.view(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)


def linear_weights(initial: torch.Tensor, trained: torch.Tensor, titles: list[str],
                   path: Path) -> None:
    """Each output's 784 weights as a 28×28 image (red pushes towards the output, blue away).
    What training learnt is the change from the initial weights: with the book's randn init
    the trained weights are mostly that initial noise, so the change is drawn. For a single
    output, the initial and trained weights are drawn beside it."""
    learnt = trained - initial
    if len(titles) == 1:
        fig, axes = _image_grid(3, max_cols=3, cell=3.4)
        panels = [(initial[0], "initial weights"), (trained[0], "trained weights"),
                  (learnt[0], "learnt: trained − initial")]
        fig.suptitle(f"Linear model, {titles[0]}")
    else:
        fig, axes = _image_grid(len(titles), max_cols=5, cell=3.0)
        panels = [(row, title) for row, title in zip(learnt, titles)]
        fig.suptitle("Linear model: what training learnt (trained − initial weights)")
    for ax, (weights, title) in zip(axes, panels):
        _weights_image(fig, ax, weights, title)
    save(fig, path)


def image_strip(images: list[torch.Tensor], pad: int = 4, fill: int = 0) -> torch.Tensor:
    """Images side by side in one array, `pad` pixels apart: one imshow instead of many axes."""
    height = max(image.shape[0] for image in images)
    gap = torch.full((height, pad), fill, dtype=images[0].dtype)
    parts = [part for image in images for part in (image, gap)][:-1]
    return torch.cat(parts, dim=1)


def _strips(rows: dict[str, list], per_strip: int) -> list[tuple[str, list]]:
    """Each model's items cut into strips of `per_strip`, the model named on its first."""
    strips = []
    for name, items in rows.items():
        chunks = [items[i:i + per_strip] for i in range(0, len(items), per_strip)] or [[]]
        strips += [(name if i == 0 else "", chunk) for i, chunk in enumerate(chunks)]
    return strips


def worst_mistakes(rows: dict[str, list[tuple[torch.Tensor, int, int, str]]],
                   path: Path, per_strip: int = 6) -> None:
    """Per model, its worst mistakes by loss: (image, true, pred, caption), `per_strip` to a
    row so that the captions stay readable at the size a report is read at."""
    strips = _strips(rows, per_strip)
    width, strip_height = 28 + 6, 2.0
    fig, axes = plt.subplots(len(strips), 1, figsize=(per_strip * 1.55 + 0.9,
                                                      len(strips) * strip_height + 0.4),
                             squeeze=False)
    for ax, (name, mistakes) in zip(axes[:, 0], strips):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=11, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlim(-2, per_strip * width - 4)
        if not mistakes:
            ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.imshow(image_strip([m[0] for m in mistakes], pad=6, fill=0), cmap="gray_r", vmin=0,
                  vmax=255, extent=(0, len(mistakes) * width - 6, 28, 0))
        for i, (_, true, pred, caption) in enumerate(mistakes):
            ax.text(i * width + 14, -2, f"true {true}, said {pred}\n{caption}", ha="center",
                    va="bottom", fontsize=9)
    fig.suptitle("Worst mistakes on the validation set, by loss (−log p of the true digit)",
                 fontsize=11)
    # A fixed layout: tight_layout measures every text box and costs more than the drawing.
    height = len(strips) * strip_height + 0.4
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 1.1 / height, bottom=0.01,
                        hspace=0.55)
    save(fig, path, tight=False)
