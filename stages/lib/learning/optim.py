"""The optimizers, each a few lines to read: the chapter's `BasicOptim` (plain SGD) and
fastai's Adam, which `fit_one_cycle` trains the CNN with.

Both keep their hyperparameters as plain attributes (`lr`, and Adam's `mom`), so a schedule
sets them between batches. Ours rather than torch.optim's, whose optimizers import
torch._dynamo when built: 1.6 s of start-up per training stage, longer than the book's
training. (The CNN's speed-up, speedups.FusedAdam, calls torch's fused Adam kernel without
torch.optim, for the same reason.)
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class BasicOptim:
    """The chapter's `BasicOptim`: plain SGD, `p -= p.grad * lr`, then clear the gradients."""

    name = "sgd"  # as checkpoints record it

    def __init__(self, params: Iterable[nn.Parameter], lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            p -= p.grad * self.lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"]


def norm_bias_params(model: nn.Module) -> set[int]:
    """fastai's `norm_bias_params`: the parameters of normalisation layers and every bias
    (by id), which get no weight decay, and still train in a frozen layer group."""
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    found = {id(p) for m in model.modules() if isinstance(m, norm_types)
             for p in m.parameters(recurse=False)}
    return found | {id(p) for name, p in model.named_parameters() if name.endswith("bias")}


def decay_and_no_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters as fastai does: no weight decay on biases and normalisation layers."""
    no_decay = norm_bias_params(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return ([p for p in params if id(p) not in no_decay],
            [p for p in params if id(p) in no_decay])


class Adam:
    """fastai's Adam: β2 0.99, eps 1e-5, and true (decoupled) weight decay `p *= 1 - lr*wd`
    on every parameter but biases and normalisation layers.

    `mom` is β1; a one-cycle schedule moves it between batches, and the bias correction uses
    the current value, as fastai's does.

    `layer_groups` (fastai's parameter groups; default: one) each train at `lr` times their
    entry in `lr_mults`, which fine_tune's discriminative learning rates set.
    """

    name = "adam"  # as checkpoints record it

    def __init__(self, model: nn.Module, lr: float, wd: float = 0.01, mom: float = 0.9,
                 sqr_mom: float = 0.99, eps: float = 1e-5,
                 layer_groups: list[list[nn.Parameter]] | None = None):
        self.decay, self.no_decay = decay_and_no_decay(model)
        self.params = self.decay + self.no_decay
        self.lr, self.wd, self.mom, self.sqr_mom, self.eps = lr, wd, mom, sqr_mom, eps
        groups = layer_groups or [list(model.parameters())]
        self.group_of = {id(p): i for i, group in enumerate(groups) for p in group}
        self.lr_mults = [1.0] * len(groups)
        self.steps = 0
        self.grad_avg = [torch.zeros_like(p) for p in self.params]
        self.sqr_avg = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        """fastai's step, parameter by parameter: weight decay, the moving averages of the
        gradient and its square, then `p -= lr / debias1 * grad_avg /
        (sqrt(sqr_avg / debias2) + eps)`."""
        self.steps += 1
        debias1, debias2 = 1 - self.mom ** self.steps, 1 - self.sqr_mom ** self.steps
        n_decay = len(self.decay)
        for i, (p, grad_avg, sqr_avg) in enumerate(zip(self.params, self.grad_avg,
                                                       self.sqr_avg)):
            lr = self.lr * self.lr_mults[self.group_of[id(p)]]
            if i < n_decay:
                p.mul_(1 - lr * self.wd)
            grad_avg.mul_(self.mom).add_(p.grad, alpha=1 - self.mom)
            sqr_avg.mul_(self.sqr_mom).addcmul_(p.grad, p.grad, value=1 - self.sqr_mom)
            p.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt() + self.eps, value=-lr / debias1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"lr": self.lr, "mom": self.mom, "steps": self.steps,
                "grad_avg": [t.clone() for t in self.grad_avg],
                "sqr_avg": [t.clone() for t in self.sqr_avg]}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.mom, self.steps = state["lr"], state["mom"], state["steps"]
        for mine, saved in zip(self.grad_avg + self.sqr_avg, state["grad_avg"] + state["sqr_avg"]):
            mine.copy_(saved)
