"""The losses the models train with: the book's `mnist_loss`, and cross-entropy in its two
forms (one logit for two digits, one per class otherwise)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mnist_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's `mnist_loss`: how far the sigmoid is from the right side, averaged."""
    preds = logits[:, 0].sigmoid()
    return torch.where(targets == 1, 1 - preds, preds).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the one logit (targets 0 and 1)."""
    return F.binary_cross_entropy_with_logits(logits[:, 0], targets.float())


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's `F.cross_entropy`: one logit per class."""
    return F.cross_entropy(logits, targets)


LOSSES = {"mnist": mnist_loss, "bce": bce_loss, "cross_entropy": cross_entropy_loss}


def book_loss(loss: str, n_classes: int) -> LossFn:
    """The linear model's and MLP's loss: their `loss` param (`mnist`, the book's, or `bce`)
    on two digits, which they answer with one logit; cross-entropy for three or more."""
    return LOSSES[loss if n_classes == 2 else "cross_entropy"]


def loss_name(loss_fn: LossFn) -> str:
    """The name a checkpoint records for the loss a model was trained with."""
    return next(name for name, fn in LOSSES.items() if fn is loss_fn)
