"""What every training stage does: build the model, fit it, save checkpoint, metrics, history."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch

from .dataset import Split, load_tensors, to_float
from .errors import UserError
from .files import together, write_json, write_text
from .learner import Learner, Optimizer, TrainingDiverged, batched_logits, loss_function, predict
from .metrics import DECIMALS, classification_metrics
from .models import book_init_, build_model, input_stats, n_outputs, save_checkpoint
from .optim import SGD, Adam
from .params import Params, TrainCNN, TrainLinear, TrainMLP
from .provenance import metrics_origin
from .threads import Threads, use_threads

if TYPE_CHECKING:
    from dvclive import Live

TrainingParams = TrainLinear | TrainMLP | TrainCNN

LIVE_DIR = Path("dvclive")  # dvclive/<name>/: the run as it trains, for DVC's plots
HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("base.device: cuda asked for, but torch sees no CUDA GPU; "
                        "use cpu or auto")
    return torch.device(name)


def as_inputs(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened float pixels in [0, 1] and int64 targets, on the device."""
    x = to_float(split.images.to(device)).view(len(split), -1)
    return x, split.targets.to(device)


def model_config(name: str, cfg: TrainingParams, digits: list[int], train: Split) -> dict:
    """What rebuilds the model: its kind and shape, and for the CNN the training pixels'
    mean and std it standardises its input with."""
    hidden = list(getattr(cfg, "hidden", []))
    config = {"kind": name, "n_outputs": n_outputs(name, digits), "hidden": hidden}
    return {**config, **input_stats(train.images)} if name == "cnn" else config


def loss_name(name: str, cfg: TrainingParams, n_classes: int) -> str:
    """The loss actually used: the CNN, and any model of three or more digits, use
    cross-entropy; the linear model and MLP on two digits use their `loss` param."""
    if name == "cnn" or n_classes > 2:
        return "cross_entropy"
    return cfg.loss


def make_optimizer(name: str, cfg: TrainingParams, model: torch.nn.Module) -> Optimizer:
    """The book's plain SGD for the linear model and MLP; fastai's Adam for the CNN."""
    if name == "cnn":
        return Adam(model, lr=cfg.lr, wd=cfg.wd)
    return SGD(model.parameters(), lr=cfg.lr)


def initial_model(config: dict, seed: int, init: str) -> torch.nn.Module:
    """The model as training starts: seeded, then the book's randn init where asked. The
    report rebuilds it from what a checkpoint records, to show what training changed."""
    torch.manual_seed(seed)
    model = build_model(config)
    if init == "book":
        book_init_(model)
    return model


@dataclass
class Prepared:
    """A training stage's model and data, set up as the stage trains them."""
    stage: str
    cfg: TrainingParams
    meta: dict
    config: dict           # what rebuilds the model (saved in the checkpoint)
    learner: Learner
    device: torch.device
    threads: Threads


def prepare(name: str, params: Params, log: TextIO | None = sys.stderr) -> Prepared:
    """Load the tensors and build the model, loss and optimizer of stage `train_<name>`."""
    stage = f"train_{name}"
    cfg = getattr(params, stage)
    device = resolve_device(params.base.device)
    threads = use_threads(params.base.threads)
    meta, train, valid = load_tensors()
    digits = meta["digits"]

    config = model_config(name, cfg, digits, train)
    model = initial_model(config, params.base.seed, getattr(cfg, "init", "torch")).to(device)

    (train_x, train_y), (valid_x, valid_y) = as_inputs(train, device), as_inputs(valid, device)
    generator = torch.Generator().manual_seed(params.base.seed) if cfg.shuffle else None
    learner = Learner(model, train_x, train_y, valid_x, valid_y,
                      loss_fn=loss_function(loss_name(name, cfg, len(digits))),
                      opt=make_optimizer(name, cfg, model), batch_size=cfg.batch_size,
                      generator=generator, drop_last=name == "cnn", log=log)
    return Prepared(stage, cfg, meta, config, learner, device, threads)


def history_tsv(history: list[dict]) -> str:
    rows = ["\t".join(HISTORY_COLUMNS)]
    for row in history:
        rows.append("\t".join(str(row["epoch"]) if col == "epoch" else f"{row[col]:.6f}"
                              for col in HISTORY_COLUMNS))
    return "\n".join(rows) + "\n"


def training_settings(prepared: Prepared, params: Params) -> dict:
    """What the checkpoint records of how the model was trained (and the book lookup reads)."""
    name, cfg, learner = prepared.config["kind"], prepared.cfg, prepared.learner
    settings = {**cfg.model_dump(exclude={"hidden"}), "seed": params.base.seed,
                "threads": prepared.threads.count,
                "loss": loss_name(name, cfg, len(prepared.meta["digits"]))}
    if name == "cnn":
        # The schedule as followed, one value per step, for the report to draw.
        settings.update(optimizer="adam", schedule="one_cycle",
                        hypers={key: [row[key] for row in learner.hypers]
                                for key in ("lr", "mom")})
    else:
        settings.update(optimizer="sgd")
    return settings


@contextlib.contextmanager
def live_log(name: str, learner: Learner) -> Iterator[Live]:
    """Log each epoch of the learner's fit through DVCLive into dvclive/<name>/ as it
    trains, so `dvc plots show`, DVC's VS Code extension and Studio can follow the run.
    A fit that fails leaves no log behind: it would stand beside the last good outputs."""
    from dvclive import Live  # here: the report and predict, importing this module, need not

    # dvcyaml=None: dvc.yaml is ours, and its plots section draws these files;
    # save_dvc_exp=False: `dvc exp run` records experiments, not each stage.
    try:
        live = Live(dir=str(LIVE_DIR / name), dvcyaml=None, save_dvc_exp=False)
    except (OSError, sqlite3.Error) as err:  # DVC's own databases, on a full disk
        raise UserError(f"could not start DVCLive's log in {LIVE_DIR / name}: {err}") from None

    def log_epoch(row: dict) -> None:
        for key in HISTORY_COLUMNS[1:]:
            live.log_metric(key, row[key])
        live.next_step()

    learner.on_epoch = log_epoch
    try:
        yield live
        live.end()
    except BaseException:
        shutil.rmtree(live.dir, ignore_errors=True)
        raise
    finally:
        learner.on_epoch = None


def train_stage(name: str, params: Params) -> None:
    """Train `name` ("linear", "mlp" or "cnn") with params.train_<name>; write its outputs:
    all of them new, or (when training or a write fails) all of them as they were."""
    prepared = prepare(name, params)
    stage, cfg, learner, meta = prepared.stage, prepared.cfg, prepared.learner, prepared.meta
    start = time.perf_counter()
    # Inside the log's block: a write that fails removes this run's log too.
    with live_log(name, learner) as live, together():
        try:
            history = (learner.fit_one_cycle(cfg.epochs, cfg.lr) if name == "cnn"
                       else learner.fit(cfg.epochs))
        except TrainingDiverged as err:
            raise UserError(f"training diverged with {stage}.lr = {cfg.lr}: {err}. Lower "
                            f"{stage}.lr; no checkpoint or metrics were written") from None
        if learner.hypers:  # a schedule: the learning rate changed every step
            live.log_plot("lr", learner.hypers, x="step", y="lr",
                          title=f"{stage}: learning rate per step (one-cycle)")
        seconds = time.perf_counter() - start
        metrics = final_metrics(prepared, history)
        model = save_checkpoint(f"models/{name}.pt", learner.model, prepared.config,
                                training_settings(prepared, params), meta)
        write_text(f"plots/{name}.tsv", history_tsv(history))
        write_json(f"metrics/{name}.json", {**metrics, **metrics_origin(meta, model)})
    print(f"{stage}: accuracy {metrics['accuracy']}, balanced {metrics['balanced_accuracy']}, "
          f"per class {metrics['per_class']} ({seconds:.1f} s on {prepared.device}, "
          f"{seconds / cfg.epochs:.2f} s/epoch, {prepared.threads})",
          file=sys.stderr)


def final_metrics(prepared: Prepared, history: list[dict]) -> dict:
    """metrics/<name>.json: the trained model's scores on the validation set, and what they
    were computed from."""
    learner, meta, last = prepared.learner, prepared.meta, history[-1]
    preds = predict(batched_logits(learner.model, learner.valid_x))
    return {**classification_metrics(preds, learner.valid_y, meta["digits"]),
            "train_loss": round(last["train_loss"], DECIMALS),
            "valid_loss": round(last["valid_loss"], DECIMALS),
            "epochs": prepared.cfg.epochs, "n_train": len(learner.train_y),
            "n_valid": len(learner.valid_y), "source": meta["source"],
            "split": meta["split"], "threads": prepared.threads.count}


def read_history(path: str | Path) -> list[dict]:
    """A history written by history_tsv, back as one dict per epoch."""
    lines = Path(path).read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != HISTORY_COLUMNS:
        raise UserError(f"{path} is not a training history (expected columns "
                        f"{', '.join(HISTORY_COLUMNS)})")
    return [{col: (int(v) if col == "epoch" else float(v))
             for col, v in zip(HISTORY_COLUMNS, line.split("\t"))} for line in lines[1:]]
