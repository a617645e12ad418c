"""Accuracy as every metrics/*.json holds it (docs/design.md): pooled, balanced (the mean
over classes, the book's `(accuracy_3s + accuracy_7s) / 2`), and per class."""

from __future__ import annotations

import torch

from ..data.tensors import targets_in_digit_order

DECIMALS = 4


def per_class_accuracy(preds: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Accuracy within each target class, as a float64 tensor of length n_classes."""
    correct = torch.bincount(targets[preds == targets], minlength=n_classes).double()
    totals = torch.bincount(targets, minlength=n_classes).double()
    return correct / totals


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor,
                           digits: list[int]) -> dict:
    """The metric keys every metrics/*.json shares; per_class is keyed by digit."""
    preds, targets = preds.cpu(), targets.cpu()
    per_class = per_class_accuracy(preds, targets, len(digits))
    return {
        "accuracy": round((preds == targets).double().mean().item(), DECIMALS),
        "balanced_accuracy": round(per_class.mean().item(), DECIMALS),
        "per_class": {str(d): round(per_class[t].item(), DECIMALS)
                      for d, t in zip(digits, targets_in_digit_order(digits))},
    }


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """counts[t, p]: how many images of target t were predicted as p."""
    flat = targets.cpu() * n_classes + preds.cpu()
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)
