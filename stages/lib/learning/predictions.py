"""From a model's outputs (logits) to answers: the predicted class, probabilities, accuracy,
and how wrong each answer is. Shared by training, the report and `predict`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The model's outputs for x in evaluation mode, a batch at a time to bound memory."""
    model.eval()
    return torch.cat([model(chunk) for chunk in x.split(batch_size)])


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Target class per row: sigmoid > 0.5 for one logit, argmax for several."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def batch_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's `batch_accuracy`: the share of predictions that are right (float64)."""
    return (predict(logits) == targets).double().mean()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """N×classes probabilities, one column per target value: a single logit is the
    sigmoid's probability of target 1, so target 0 gets the rest."""
    if logits.shape[1] == 1:
        p = logits[:, 0].sigmoid()
        return torch.stack([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def true_class_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, −log of the probability the model gives the true class. Unlike that
    probability it does not round to 1.000 for the surest mistakes, so it can rank them."""
    if logits.shape[1] == 1:
        log_p = torch.stack([F.logsigmoid(-logits[:, 0]), F.logsigmoid(logits[:, 0])], dim=1)
    else:
        log_p = logits.log_softmax(dim=1)
    return -log_p.gather(1, targets[:, None])[:, 0]
