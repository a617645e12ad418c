"""What the three training stages do alike around their own recipe (stages/train_*.py):
set up threads, device and data, log each epoch through DVCLive while the recipe's Learner
fits, then save the checkpoint, metrics and history, all of them new or (when training or a
write fails) all of them as they were."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.tensors import Split, as_inputs, load_tensors
from ..infra.device import resolve_device
from ..infra.errors import UserError
from ..infra.files import set_aside, together, write_json, write_text
from ..infra.kernels import use_kernels
from ..infra.params import Params
from ..infra.provenance import metrics_origin
from ..infra.threads import use_threads
from .history import HISTORY_COLUMNS, history_tsv
from .metrics import DECIMALS, classification_metrics
from .learner import Learner, TrainingDiverged
from .losses import loss_name
from .models import save_checkpoint
from .predictions import batched_logits, predict

if TYPE_CHECKING:
    from dvclive import Live

LIVE_DIR = Path("dvclive")  # dvclive/<name>/: the run as it trains, for DVC's plots


@dataclass
class TrainingData:
    """data/tensors as a training stage uses them: the splits, and their flat float pixels
    and targets on the device (the book's train_x, train_y, valid_x, valid_y)."""
    meta: dict
    train: Split
    valid: Split
    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor

    @property
    def digits(self) -> list[int]:
        return self.meta["digits"]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """train_x, train_y, valid_x, valid_y: what a Learner is given."""
        return self.train_x, self.train_y, self.valid_x, self.valid_y


def load_training_data(device: torch.device) -> TrainingData:
    meta, train, valid = load_tensors()
    return TrainingData(meta, train, valid, *as_inputs(train, device), *as_inputs(valid, device))


def shuffling(shuffle: bool, seed: int) -> torch.Generator | None:
    """What reshuffles the training set every epoch (from the seed), or None: the book's
    order, all of one digit, then the next."""
    return torch.Generator().manual_seed(seed) if shuffle else None


class TrainingRun:
    """One run of a training stage: `TrainingRun(stage, params)` sets torch's threads, checks
    its kernels, picks the device and loads the tensors; the recipe builds its Learner on `run.data`; inside
    `with run.recorded(learner):` it fits and calls `run.save(learner, config)`."""

    def __init__(self, stage: str, params: Params):
        self.stage, self.name = stage, stage.removeprefix("train_")
        self.cfg = getattr(params, stage)
        self.seed = params.base.seed
        self.device = resolve_device(params.base.device)
        self.threads = use_threads(params.base.threads)
        self.kernels = use_kernels(params.base.kernels)
        self.data = load_training_data(self.device)
        self.metrics: dict | None = None

    def _decay(self) -> float:
        """lr × wd: at 1 or more, the weight decay step alone (each weight times 1 - lr·wd)
        flips or blows up the weights, whatever the gradients do."""
        return self.cfg.lr * (getattr(self.cfg, "wd", 0) or 0)

    def divergence_cause(self) -> str:
        if self._decay() >= 1:
            return (f"training diverged with {self.stage}.wd = {self.cfg.wd} and "
                    f"{self.stage}.lr = {self.cfg.lr}")
        return f"training diverged with {self.stage}.lr = {self.cfg.lr}"

    def divergence_advice(self) -> str:
        if self._decay() >= 1:
            return (f"lr × wd is {self._decay():.3g}: the weight decay step multiplies each "
                    f"weight by 1 - lr × wd, so it alone blows up the weights. Lower "
                    f"{self.stage}.wd (lr × wd well under 1)")
        return f"Lower {self.stage}.lr"

    @contextlib.contextmanager
    def recorded(self, learner: Learner) -> Iterator[None]:
        """DVCLive logs each epoch of the block's fit; what the block saves replaces the old
        outputs at its end, DVCLive's log included, or (it fails, or is killed) nothing
        does."""
        start = time.perf_counter()
        # together outside: DVCLive's finished log is one of the set the commit puts in place
        with together(), live_log(self.name, learner) as live:
            try:
                yield
            except TrainingDiverged as err:
                raise UserError(f"{self.divergence_cause()}: {err}. "
                                f"{self.divergence_advice()}; no checkpoint or metrics were "
                                f"written") from None
            if learner.schedule:  # the learning rate changed every step
                with _log_writes(LIVE_DIR / self.name):
                    live.log_plot("lr", learner.hypers, x="step", y="lr",
                                  title=f"{self.stage}: learning rate per step "
                                        f"({learner.schedule.replace('_', '-')})")
        if self.metrics is None:
            raise RuntimeError(f"{self.stage}: the recipe fitted but did not save")
        seconds = time.perf_counter() - start
        m = self.metrics
        print(f"{self.stage}: accuracy {m['accuracy']}, balanced {m['balanced_accuracy']}, "
              f"per class {m['per_class']} ({seconds:.1f} s on {self.device}, "
              f"{seconds / len(learner.history):.2f} s/epoch, {self.threads}, {self.kernels})",
              file=sys.stderr)

    def save(self, learner: Learner, config: dict) -> None:
        """models/<name>.pt (the weights, `config` to rebuild the model, how it was trained,
        on which tensors), metrics/<name>.json and plots/<name>.tsv."""
        meta = self.data.meta
        metrics = {**final_metrics(learner, meta), **self.settings(),
                   **pretrained_file(config)}
        fingerprint = save_checkpoint(f"models/{self.name}.pt", learner.model, config,
                                      self.training_record(learner), meta, metrics)
        write_text(f"plots/{self.name}.tsv", history_tsv(learner.history))
        write_json(f"metrics/{self.name}.json", {**metrics, **metrics_origin(meta, fingerprint)})
        self.metrics = metrics

    def settings(self) -> dict:
        """What produced these numbers besides the params: the seed, the device it ran on
        (`auto` resolved), the thread count and the kernels (results are bit-identical only
        between runs with the same four)."""
        return {"seed": self.seed, "device": self.device.type, "threads": self.threads.count,
                "kernels": self.kernels.setting}

    def training_record(self, learner: Learner) -> dict:
        """What the checkpoint records of how the model was trained: the stage's params, the
        seed, device, threads, kernels, loss and optimizer; for a scheduled fit, the schedule as
        followed, one value per step, for the report to draw."""
        record = {**self.cfg.model_dump(exclude={"hidden"}), **self.settings(),
                  "loss": loss_name(learner.loss_fn), "optimizer": learner.opt.name}
        if learner.schedule:
            record.update(schedule=learner.schedule,
                          hypers={key: [row[key] for row in learner.hypers]
                                  for key in learner.hypers[0] if key != "step"})
        return record


def pretrained_file(config: dict) -> dict:
    """What metrics/<name>.json says of the weights a model started from: the file's name
    (its SHA-256 and whether torchvision published it: in the checkpoint), or nothing for a
    model trained from scratch."""
    return {"pretrained": config["pretrained"]["file"]} if "pretrained" in config else {}


def final_metrics(learner: Learner, meta: dict) -> dict:
    """metrics/<name>.json: the trained model's scores on the validation set, and what they
    were computed from: the data, and the epochs and optimizer steps it trained for
    (fine_tune's frozen epoch counted: one more epoch than train_cnn.epochs)."""
    last = learner.history[-1]
    preds = predict(batched_logits(learner.model, learner.valid_x))
    return {**classification_metrics(preds, learner.valid_y, meta["digits"]),
            "train_loss": round(last["train_loss"], DECIMALS),
            "valid_loss": round(last["valid_loss"], DECIMALS),
            "epochs": len(learner.history), "steps": learner.steps,
            "n_train": len(learner.train_y),
            "n_valid": len(learner.valid_y), "source": meta["source"],
            "split": meta["split"]}


@contextlib.contextmanager
def live_log(name: str, learner: Learner) -> Iterator[Live]:
    """Log each epoch of the learner's fit through DVCLive into dvclive/<name>/ as it
    trains, so `dvc plots show`, DVC's VS Code extension and Studio can follow the run.

    DVCLive empties its folder when it starts, so the last good run's log is set aside
    while it trains and put back if the fit fails or is stopped, beside the last good
    outputs. A write DVCLive cannot make (a full disk) is one message naming the folder.
    """
    from dvclive import Live  # here: lr_find, importing this module, need not

    folder = LIVE_DIR / name
    with set_aside(folder):
        with _log_writes(folder):
            # dvcyaml=None: dvc.yaml is ours, and its plots section draws these files;
            # save_dvc_exp=False: `dvc exp run` records experiments, not each stage.
            live = Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False)

        def log_epoch(row: dict) -> None:
            with _log_writes(folder):
                for key in HISTORY_COLUMNS[1:]:
                    live.log_metric(key, row[key])
                live.next_step()

        learner.on_epoch = log_epoch
        try:
            yield live  # the fit's own errors pass as they are, not as DVCLive's
            with _log_writes(folder):
                live.end()
        finally:
            learner.on_epoch = None


@contextlib.contextmanager
def _log_writes(folder: Path) -> Iterator[None]:
    """DVCLive's writes (and DVC's databases it touches), failing as one UserError."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        cause = getattr(err, "strerror", None) or str(err)
        raise UserError(f"could not write DVCLive's log in {folder}: {cause}; the outputs "
                        f"are left as they were") from None
