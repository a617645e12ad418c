"""Optimizers and learning-rate schedules of our own, each a few lines to read.

Both optimizers keep their hyperparameters as plain attributes (`lr`, and Adam's `mom`), so a
schedule sets them between batches. Ours rather than torch.optim's, whose optimizers import
torch._dynamo when built: 1.6 s of start-up per training stage, longer than the book's training.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

Schedule = Callable[[float], float]  # training progress in [0, 1] -> value


# --- optimizers ------------------------------------------------------------------------------

class SGD:
    """The chapter's `BasicOptim`: plain SGD, `p -= p.grad * lr`, then clear the gradients."""

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


def decay_and_no_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters as fastai does: no weight decay on biases and normalisation layers."""
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    no_decay = {id(p) for m in model.modules() if isinstance(m, norm_types)
                for p in m.parameters(recurse=False)}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return ([p for p in params if id(p) not in no_decay],
            [p for p in params if id(p) in no_decay])


class Adam:
    """fastai's Adam: β2 0.99, eps 1e-5, and true (decoupled) weight decay `p *= 1 - lr*wd`
    on every parameter but biases and normalisation layers.

    `mom` is β1; a one-cycle schedule moves it between batches, and the bias correction uses
    the current value, as fastai's does.
    """

    def __init__(self, model: nn.Module, lr: float, wd: float = 0.01, mom: float = 0.9,
                 sqr_mom: float = 0.99, eps: float = 1e-5):
        self.decay, self.no_decay = decay_and_no_decay(model)
        self.params = self.decay + self.no_decay
        self.lr, self.wd, self.mom, self.sqr_mom, self.eps = lr, wd, mom, sqr_mom, eps
        self.steps = 0
        self.grad_avg = [torch.zeros_like(p) for p in self.params]
        self.sqr_avg = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        """fastai's step, `p *= 1 - lr*wd`, then `p -= lr / debias1 * grad_avg /
        (sqrt(sqr_avg / debias2) + eps)`, in torch's fused AdamW kernel: the same formula in
        one pass over memory, 7 ms a step for resnet18 here where seven _foreach ops take 24."""
        self.steps += 1
        # The fused kernel reads the step count on the parameters' device (a GPU's, under
        # base.device: cuda), as torch.optim.Adam(fused=True) keeps it.
        step = [torch.tensor(float(self.steps), device=self.params[0].device)] * len(self.params)
        for params, wd, first in ((self.decay, self.wd, 0),
                                  (self.no_decay, 0.0, len(self.decay))):
            last = first + len(params)
            torch._fused_adamw_(params, [p.grad for p in params], self.grad_avg[first:last],
                                self.sqr_avg[first:last], [], step[first:last], lr=self.lr,
                                beta1=self.mom, beta2=self.sqr_mom, weight_decay=wd,
                                eps=self.eps, amsgrad=False, maximize=False)

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


# --- schedules (fastai's, from fastai.callback.schedule) ------------------------------------

def sched_cos(start: float, end: float) -> Schedule:
    """Cosine from `start` (pos 0) to `end` (pos 1)."""
    return lambda pos: start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_exp(start: float, end: float) -> Schedule:
    """Exponential from `start` to `end`: the learning-rate finder's sweep."""
    return lambda pos: start * (end / start) ** pos


def combined_cos(pct: float, start: float, middle: float, end: float) -> Schedule:
    """Cosine `start` -> `middle` over the first `pct` of training, then `middle` -> `end`."""
    warm, anneal = sched_cos(start, middle), sched_cos(middle, end)
    return lambda pos: warm(pos / pct) if pos < pct else anneal((pos - pct) / (1 - pct))


# fastai's fit_one_cycle defaults.
ONE_CYCLE = {"div": 25.0, "div_final": 1e5, "pct_start": 0.25, "moms": (0.95, 0.85, 0.95)}


def one_cycle(lr_max: float, div: float = ONE_CYCLE["div"],
              div_final: float = ONE_CYCLE["div_final"],
              pct_start: float = ONE_CYCLE["pct_start"],
              moms: tuple[float, float, float] = ONE_CYCLE["moms"]) -> dict[str, Schedule]:
    """fastai's 1cycle policy: lr warms up from lr_max/div to lr_max over `pct_start` of the
    steps, then anneals to lr_max/div_final; momentum moves the opposite way."""
    return {"lr": combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final),
            "mom": combined_cos(pct_start, *moms)}
