"""fastai's learning-rate finder (`Learner.lr_find`), on our Learner.

Train for up to `num_it` batches while the learning rate grows exponentially from `start_lr`
to `end_lr`, record a smoothed loss, stop once it passes 4× the best, then put the model,
the optimizer and the shuffling back as they were. The suggestion is fastai's `valley`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from ..infra.errors import UserError
from .learner import Learner
from .schedules import sched_exp

# fastai's defaults: lr_find(start_lr=1e-7, end_lr=10, num_it=100), AvgSmoothLoss(beta=0.98).
START_LR, END_LR, NUM_IT, BETA = 1e-7, 10.0, 100, 0.98


@dataclass
class LRFind:
    lrs: list[float]      # the learning rate of each batch
    losses: list[float]   # the smoothed training loss after it
    suggestion: float     # fastai's `valley`
    suggestion_loss: float


MIN_POINTS = 20  # of the smoothed curve, for `valley` to find a slope in rather than noise
# The fewest batches that leave MIN_POINTS: a tenth and 5 more are dropped.
MIN_NUM_IT = 30
# The most: `valley` is quadratic in the points, and a sweep is meant to take seconds.
MAX_NUM_IT = 1000


def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's `valley`: the index a third-and-a-half of the way along the longest run of
    points over which the loss keeps falling (a longest decreasing subsequence)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def sweep(learner: Learner, start_lr: float, end_lr: float, num_it: int,
          beta: float) -> tuple[list[float], list[float]]:
    """Train batch after batch at growing learning rates; (lrs, smoothed losses).

    The loss is fastai's AvgSmoothLoss: a moving average divided by 1 - beta^n, so that its
    first values are not biased towards the average's start at 0.
    """
    schedule = sched_exp(start_lr, end_lr)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    learner.model.train()
    while True:
        for index in learner.batches():
            learner.opt.lr = schedule(len(lrs) / num_it)
            loss = learner.one_batch(*learner.training_batch(index)).item()
            avg = beta * avg + (1 - beta) * loss
            lrs.append(learner.opt.lr)
            losses.append(avg / (1 - beta ** len(lrs)))
            best = min(best, losses[-1])
            if not math.isfinite(losses[-1]) or losses[-1] > 4 * best or len(lrs) >= num_it:
                return lrs, losses


def lr_find(learner: Learner, start_lr: float = START_LR, end_lr: float = END_LR,
            num_it: int = NUM_IT, beta: float = BETA) -> LRFind:
    """Run the finder; the learner's model, optimizer and shuffling are restored after."""
    model_state = copy.deepcopy(learner.model.state_dict())
    opt_state = copy.deepcopy(learner.opt.state_dict())
    rng_state = learner.generator.get_state() if learner.generator is not None else None
    try:
        lrs, losses = sweep(learner, start_lr, end_lr, num_it, beta)
    finally:
        learner.model.load_state_dict(model_state)
        learner.opt.load_state_dict(opt_state)
        learner.opt.zero_grad()
        if rng_state is not None:
            learner.generator.set_state(rng_state)
    # As fastai: skip the first tenth and the last 5 points, and anything from a NaN on.
    kept = [(lr, loss) for lr, loss in zip(lrs, losses)][num_it // 10:-5]
    finite = next((i for i, (_, loss) in enumerate(kept) if not math.isfinite(loss)), len(kept))
    kept = kept[:finite]
    if len(kept) < MIN_POINTS:
        why = (f"the loss diverged after {len(lrs)} of {num_it} batches (at lr "
               f"{lrs[-1]:.3g})" if len(lrs) < num_it else f"the sweep took {num_it} batches")
        raise UserError(f"{why}: once the first tenth and the last 5 are dropped, "
                        f"{len(kept)} points are left, too few to suggest a learning rate from "
                        f"(it takes {MIN_POINTS}); sweep more batches (--num-it {NUM_IT}) or "
                        f"stop lower (--end-lr {lrs[-1] / 10:.2g})")
    index = valley([lr for lr, _ in kept], [loss for _, loss in kept])
    return LRFind(lrs, losses, kept[index][0], kept[index][1])
