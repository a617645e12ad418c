"""Hyperparameter schedules, fastai's (fastai.callback.schedule): each maps training progress
in [0, 1] to a value, which the Learner sets on the optimizer before every batch."""

from __future__ import annotations

import math
from typing import Callable

Schedule = Callable[[float], float]  # training progress in [0, 1] -> value


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
