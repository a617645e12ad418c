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
from .predictions import batch_accuracy, batched_logits
from .schedules import Schedule, one_cycle


class Optimizer(Protocol):
    """What the Learner asks of an optimizer (optim.BasicOptim, optim.Adam): a step, clearing
    the gradients, and hyperparameters as attributes a schedule can set (`lr`, `mom`)."""
    name: str
    lr: float

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
            xb, yb = self.train_x[index], self.train_y[index]
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

    def fit_one_cycle(self, epochs: int, lr_max: float) -> list[dict]:
        """fastai's `fit_one_cycle(epochs, lr_max)`, with its defaults (schedules.one_cycle)."""
        self.schedule = "one_cycle"
        return self.fit(epochs, one_cycle(lr_max))

    def _finite(self, *losses: float) -> bool:
        # Weights too: a saturated sigmoid keeps mnist_loss finite while weights blow up.
        return all(torch.isfinite(torch.tensor(losses))) and all(
            torch.isfinite(p).all() for p in self.model.parameters())

    def _print_row(self, *cells) -> None:
        if self.log is not None:
            print("  ".join(f"{str(c):<10}" for c in cells).rstrip(), file=self.log, flush=True)
