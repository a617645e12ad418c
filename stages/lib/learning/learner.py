"""Our own Learner: the chapter's training loop, with nothing hidden.

`fit` runs, per batch: predict, loss, backward, step, zero grad; then validates. Batches are
cut from tensors by index (slices when not shuffling), never from a list of tuples.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, TextIO

import torch
from torch import nn

from .losses import LossFn
from .optim import norm_bias_params
from .predictions import batch_accuracy, batched_logits
from .schedules import ONE_CYCLE, Schedule, one_cycle


class Optimizer(Protocol):
    """What the Learner asks of an optimizer (optim.BasicOptim, optim.Adam): a step, clearing
    the gradients, and hyperparameters as attributes a schedule can set (`lr`, `mom`)."""
    name: str
    lr: float
    lr_mults: list[float]  # each layer group's lr, as a multiple of `lr`

    def step(self) -> None: ...
    def zero_grad(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TrainingDiverged(RuntimeError):
    def __init__(self, epoch: int, train_loss: float, valid_loss: float):
        super().__init__(f"loss or weights not finite at epoch {epoch} "
                         f"(train_loss {train_loss}, valid_loss {valid_loss})")
        self.epoch = epoch


@dataclass
class Learner:
    model: nn.Module
    train_x: torch.Tensor   # float, N×784
    train_y: torch.Tensor   # int64 targets, N
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    loss_fn: LossFn
    opt: Optimizer
    batch_size: int = 256
    generator: torch.Generator | None = None  # set: shuffle every epoch with it
    drop_last: bool = False  # fastai's training loader drops the last, smaller batch
    log: TextIO | None = field(default=sys.stdout)
    on_epoch: Callable[[dict], None] | None = None     # given each epoch's history row
    history: list[dict] = field(default_factory=list)  # one row per epoch
    hypers: list[dict] = field(default_factory=list)   # scheduled values, one row per step
    schedule: str | None = None                        # the name of the schedule they follow
    steps: int = 0                                     # batches trained on so far
    batch_tfm: Callable[[torch.Tensor], torch.Tensor] | None = None  # training batches only
    # fine_tune's: fastai's parameter groups (body to head), and what builds a fresh
    # optimizer over the parameters that train
    layer_groups: list[list[nn.Parameter]] | None = None
    opt_func: Callable[[], Optimizer] | None = None

    def batches(self) -> list[torch.Tensor] | list[slice]:
        n = len(self.train_y)
        stop = n - n % self.batch_size if self.drop_last and n >= self.batch_size else n
        if self.generator is None:
            return [slice(i, min(i + self.batch_size, stop))
                    for i in range(0, stop, self.batch_size)]
        order = torch.randperm(n, generator=self.generator).to(self.train_y.device)
        return list(order[:stop].split(self.batch_size))

    def n_batches(self) -> int:
        n = len(self.train_y)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def training_batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images and targets at `index`, the images through `batch_tfm`
        (augmentation: training batches only, never validation)."""
        xb, yb = self.train_x[index], self.train_y[index]
        return (xb if self.batch_tfm is None else self.batch_tfm(xb)), yb

    def one_batch(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One step: predict, loss, backward, step, zero grad; returns the (detached) loss."""
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss.detach()

    def train_epoch(self, schedules: dict[str, Schedule] | None = None,
                    total_steps: int = 0, first_step: int = 0) -> float:
        """One pass over the training data; `schedules` set hyperparameters before each batch
        from the progress through the fit's `total_steps` since its `first_step`, as fastai's
        ParamScheduler does."""
        self.model.train()
        total = torch.zeros((), device=self.train_y.device)
        count = 0
        for index in self.batches():
            if schedules:
                self.set_hypers(schedules, (self.steps - first_step) / total_steps)
            xb, yb = self.training_batch(index)
            # Summed on the device: no per-batch .item() sync.
            total += self.one_batch(xb, yb) * len(yb)
            count += len(yb)
            self.steps += 1
        return total.item() / count

    def set_hypers(self, schedules: dict[str, Schedule], pos: float) -> None:
        values = {name: schedule(pos) for name, schedule in schedules.items()}
        for name, value in values.items():
            setattr(self.opt, name, value)
        self.hypers.append({"step": self.steps, **values})

    def validate(self) -> tuple[float, float]:
        logits = batched_logits(self.model, self.valid_x)
        loss = self.loss_fn(logits, self.valid_y).item()
        accuracy = batch_accuracy(logits, self.valid_y).item()
        return loss, accuracy

    def fit(self, epochs: int, schedules: dict[str, Schedule] | None = None) -> list[dict]:
        """Train for `epochs` at the optimizer's settings, or following `schedules`."""
        total_steps, first_step = epochs * self.n_batches(), self.steps
        self._print_row("epoch", "train_loss", "valid_loss", "accuracy", "time")
        for _ in range(epochs):
            start = time.perf_counter()
            train_loss = self.train_epoch(schedules, total_steps, first_step)
            valid_loss, accuracy = self.validate()
            epoch = len(self.history)
            if not self._finite(train_loss, valid_loss):
                raise TrainingDiverged(epoch, train_loss, valid_loss)
            seconds = time.perf_counter() - start
            self.history.append({"epoch": epoch, "train_loss": train_loss,
                                 "valid_loss": valid_loss, "valid_accuracy": accuracy})
            self._print_row(epoch, f"{train_loss:.6f}", f"{valid_loss:.6f}",
                            f"{accuracy:.6f}", f"{seconds:.2f}s")
            if self.on_epoch is not None:
                self.on_epoch(self.history[-1])
        return self.history

    def fit_one_cycle(self, epochs: int, lr_max: float | slice,
                      pct_start: float = ONE_CYCLE["pct_start"],
                      div: float = ONE_CYCLE["div"]) -> list[dict]:
        """fastai's `fit_one_cycle(epochs, lr_max)`, with its defaults (schedules.one_cycle).
        A slice of learning rates spreads them over the layer groups, as fastai does
        (`lr_range`): each group follows the one-cycle schedule of its own peak."""
        self.schedule = "one_cycle"
        peaks = self.lr_range(lr_max)
        self.opt.lr_mults = [peak / peaks[-1] for peak in peaks]
        return self.fit(epochs, one_cycle(peaks[-1], div=div, pct_start=pct_start))

    def lr_range(self, lr: float | slice) -> list[float]:
        """fastai's `Learner.lr_range`: a float for every layer group; `slice(lr)`, lr/10
        for every group but the last; `slice(start, stop)`, geometrically spread from start
        to stop (`even_mults`)."""
        n = len(self.layer_groups or [None])
        if not isinstance(lr, slice):
            return [lr] * n
        if lr.start is None:
            return [lr.stop / 10] * (n - 1) + [lr.stop]
        if n == 1:
            return [lr.stop]
        step = (lr.stop / lr.start) ** (1 / (n - 1))
        return [lr.start * step ** i for i in range(n)]

    def freeze_to(self, n: int) -> None:
        """fastai's `freeze_to`: the layer groups before `n` stop training but for their
        BatchNorm layers and biases (fastai's `train_bn`: a body's BatchNorm statistics must
        follow the new data), and the optimizer starts afresh, as fastai clears its state."""
        if self.layer_groups is None or self.opt_func is None:
            raise ValueError("freezing needs the Learner's layer_groups and opt_func")
        trains_frozen = norm_bias_params(self.model)
        for i, group in enumerate(self.layer_groups):
            for p in group:
                p.requires_grad_(i >= n or id(p) in trains_frozen)
        self.opt = self.opt_func()

    def freeze(self) -> None:
        """fastai's `freeze`: only the last layer group (the new head) trains, and the
        BatchNorm layers."""
        self.freeze_to(-1 % len(self.layer_groups or [None]))

    def unfreeze(self) -> None:
        self.freeze_to(0)

    def fine_tune(self, epochs: int, base_lr: float, freeze_epochs: int = 1,
                  lr_mult: float = 100, pct_start: float = 0.3, div: float = 5.0
                  ) -> list[dict]:
        """fastai's `fine_tune`, step for step: `freeze_epochs` of one-cycle with the body
        frozen, at `base_lr` for the head (`slice(base_lr)`, warming up over 99% of the
        steps); then, unfrozen, `epochs` of one-cycle at half that, the layer groups' peaks
        spread from base_lr/2/lr_mult (the body's first layers) to base_lr/2 (the head)."""
        self.freeze()
        self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)
        base_lr /= 2
        self.unfreeze()
        self.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start,
                           div=div)
        self.schedule = "fine_tune"
        return self.history

    def _finite(self, *losses: float) -> bool:
        # Weights too: a saturated sigmoid keeps mnist_loss finite while weights blow up.
        return all(torch.isfinite(torch.tensor(losses))) and all(
            torch.isfinite(p).all() for p in self.model.parameters())

    def _print_row(self, *cells) -> None:
        if self.log is not None:
            print("  ".join(f"{str(c):<10}" for c in cells).rstrip(), file=self.log, flush=True)
