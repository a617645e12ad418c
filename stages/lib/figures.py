"""The report's PNG figures, drawn offline with matplotlib (Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no browser, no CDN

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import atomic_open  # noqa: E402

DPI = 110
MODEL_COLOURS = {"linear": "tab:blue", "mlp": "tab:orange", "cnn": "tab:green"}


def save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def training_curves(histories: dict[str, list[dict]], baselines: dict[str, float],
                    path: Path) -> None:
    """Validation accuracy and train/valid loss per epoch, baselines as horizontal lines."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    for (label, value), style in zip(baselines.items(), (":", "-.")):
        acc_ax.axhline(value, color="grey", linestyle=style, label=f"{label} ({value:.4f})")
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)


def one_cycle_schedule(hypers: dict[str, list[float]], path: Path) -> None:
    """The learning rate and momentum (Adam's β1) the CNN was trained with, step by step."""
    fig, (lr_ax, mom_ax) = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = range(len(hypers["lr"]))
    lr_ax.plot(steps, hypers["lr"], color=MODEL_COLOURS["cnn"])
    lr_ax.set(title=f"Learning rate (peak {max(hypers['lr']):g})", xlabel="training step",
              ylabel="learning rate")
    mom_ax.plot(steps, hypers["mom"], color=MODEL_COLOURS["cnn"])
    mom_ax.set(title="Momentum (Adam's β1)", xlabel="training step", ylabel="β1")
    for ax in (lr_ax, mom_ax):
        ax.grid(alpha=0.3)
    fig.suptitle("CNN: the one-cycle schedule it followed")
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


def confusion_matrices(matrices: dict[str, torch.Tensor], labels: list[int],
                       path: Path) -> None:
    """One confusion matrix per model; rows are the true digit, columns the prediction."""
    n = len(labels)
    size = 3.2 if n <= 3 else 4.6
    cols = min(len(matrices), 2 if n > 3 else 4)
    rows = math.ceil(len(matrices) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.axis("off")
    for ax, (name, counts) in zip(axes.flat, matrices.items()):
        ax.imshow(counts, cmap="Blues")
        ax.set(title=name, xlabel="predicted", ylabel="true", xticks=range(n),
               yticks=range(n), xticklabels=labels, yticklabels=labels)
        top = counts.max().item()
        for (i, j), value in zip(torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
                                 counts.flatten().tolist()):
            ax.text(j, i, str(value), ha="center", va="center",
                    fontsize=8 if n <= 3 else 6,
                    color="white" if value > top / 2 else "black")
    save(fig, path)


def linear_weights(weights: torch.Tensor, titles: list[str], path: Path) -> None:
    """Each output's 784 weights as a 28×28 image: red pushes towards, blue away."""
    fig, axes = _image_grid(len(titles), max_cols=5, cell=2.4)
    for ax, row, title in zip(axes, weights, titles):
        limit = row.abs().max().item() or 1.0
        shown = ax.imshow(row.view(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Linear model weights")
    save(fig, path)


def image_strip(images: list[torch.Tensor], pad: int = 4, fill: int = 0) -> torch.Tensor:
    """Images side by side in one array, `pad` pixels apart: one imshow instead of many axes."""
    height = max(image.shape[0] for image in images)
    gap = torch.full((height, pad), fill, dtype=images[0].dtype)
    parts = [part for image in images for part in (image, gap)][:-1]
    return torch.cat(parts, dim=1)


def worst_mistakes(rows: dict[str, list[tuple[torch.Tensor, int, int, str]]],
                   path: Path) -> None:
    """Per model, the wrong predictions it was most confident of: (image, true, pred, score)."""
    n_cols = max((len(r) for r in rows.values()), default=1) or 1
    width = 28 + 4
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(n_cols * 1.3, 6), len(rows) * 1.9),
                             squeeze=False)
    for ax, (name, mistakes) in zip(axes[:, 0], rows.items()):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=9, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_visible(False)
        if not mistakes:
            ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.imshow(image_strip([m[0] for m in mistakes], fill=0), cmap="gray_r", vmin=0,
                  vmax=255, extent=(0, len(mistakes) * width - 4, 28, 0))
        ax.set_xlim(-2, n_cols * width - 2)
        for i, (_, true, pred, score) in enumerate(mistakes):
            ax.text(i * width + 14, -2, f"true {true}, pred {pred}\n{score}", ha="center",
                    va="bottom", fontsize=6.5)
    fig.suptitle("Most confident mistakes on the validation set")
    # A fixed layout: tight_layout measures every text box and costs more than the drawing.
    fig.subplots_adjust(left=0.08, right=0.99, top=1 - 0.55 / (len(rows) * 1.9), bottom=0.02,
                        hspace=0.45)
    save(fig, path, tight=False)
