"""DVC's experiment queue, driven from Python: queue runs with params set, run the queue with
N workers, read back each experiment's params and metrics. And the named sets of params
that the docs, the tests and `make bench` share, each defined here once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import UserError

# The dvc beside this python (the project's venv), whatever PATH says; PATH's otherwise.
_BESIDE = Path(sys.executable).parent / "dvc"
DVC = str(_BESIDE) if _BESIDE.exists() else "dvc"


# Named sets of params, as `dvc exp run -S key=value` sets them. docs/experiments.md shows
# TEN_DIGITS as the command to run (tests/test_docs.py holds the page to it); the tests and
# `make bench` run them.
BOOK_DATA = {"data.source": "mnist", "data.split": "official"}  # real MNIST, the book's split
# All ten digits (the chapter's "further research" #2): the linear model and MLP shuffled,
# the MLP wider; the CNN as it is.
TEN_DIGITS = {"data.digits": list(range(10)), "data.split": "official",
              "train_linear.init": "torch", "train_linear.lr": 0.5,
              "train_linear.shuffle": True,
              "train_mlp.hidden": [128], "train_mlp.lr": 0.5, "train_mlp.epochs": 20,
              "train_mlp.shuffle": True}
# The reader's fastai finale (`python -m stages.finale`, docs/cnn.md#the-fastai-finale): all ten
# digits, 20% of MNIST's training set drawn to validate, resnet34 fine-tuned from ImageNet
# weights in batches of 32 with aug_transforms(); lr is the valley `python -m stages.lr_find
# train_cnn` suggests for these settings from scratch on real MNIST, as the write-up takes
# lr_find's (docs/cnn.md).
FASTAI_FINALE = {**TEN_DIGITS, "data.split": "random", "data.valid_pct": 0.2,
                 "train_cnn.arch": "resnet34", "train_cnn.weights": "imagenet",
                 "train_cnn.fit": "fine_tune", "train_cnn.epochs": 3,
                 "train_cnn.batch_size": 32, "train_cnn.lr": 0.0012,
                 "train_cnn.augment": True}
# The accuracies TEN_DIGITS reaches on the MNIST test set, as docs/experiments.md gives
# them: `make bench` fails below these.
TEN_DIGITS_FLOORS = {"linear": 0.90, "mlp": 0.975, "cnn": 0.985}


def set_param_args(settings: dict[str, object]) -> list[str]:
    """`-S key=value` for each setting, the value as YAML would write it inline."""
    def inline(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return "[" + ",".join(inline(v) for v in value) + "]"
        return str(value)
    return [arg for key, value in settings.items() for arg in ("-S", f"{key}={inline(value)}")]


@dataclass(frozen=True)
class Experiment:
    name: str
    params: dict   # params.yaml as the experiment ran it
    metrics: dict  # metrics file path -> its contents
    # Why it is not a result: DVC's error or its run's state ("failed", "queued", "running");
    # None for one that ran to the end. DVC shows a failed experiment with the metrics of
    # the commit it started from, which are not its own.
    failed: str | None = None


def dvc(*args: str) -> subprocess.CompletedProcess:
    """Run a dvc command in the current project; a failure is a UserError with its output."""
    result = subprocess.run([DVC, *args], capture_output=True, text=True)
    if result.returncode != 0:
        output = f":\n{result.stdout}{result.stderr}".rstrip()
        raise UserError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}){output}")
    return result


def queue(name: str, settings: dict[str, object]) -> None:
    """`dvc exp run --queue -n NAME -S key=value ...`"""
    dvc("exp", "run", "--queue", "-n", name, *set_param_args(settings))


def run_queue(jobs: int) -> None:
    """Run everything queued with `jobs` workers at once; DVC's log of each run streams to
    the terminal. Blocks until the queue is empty.

    Stopped (Ctrl-C, SIGTERM), it stops the queue too: DVC's workers are processes of their
    own that would go on running the experiments for minutes, holding DVC's lock."""
    args = ["exp", "run", "--run-all", "-j", str(jobs)]
    process = subprocess.Popen([DVC, *args])
    try:
        code = process.wait()
    except BaseException:
        stop_queue(process)
        raise
    if code != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed (exit {code})")


STOP_WAIT_S = 60  # for the workers to end once told to: a stage cleaning up, DVC's own


def stop_queue(follower: subprocess.Popen | None = None) -> None:
    """Stop this project's queue at once: the experiments still queued are removed, the
    running ones killed (DVC records them as failed) and the workers stopped; returns once
    no worker of this project is left. Signals wait until it is done."""
    from .threads import queue_worker_processes

    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        if follower is not None:  # `dvc exp run --run-all` would start new workers
            follower.terminate()
            follower.wait(timeout=STOP_WAIT_S)
        subprocess.run([DVC, "queue", "remove", "--queued"], capture_output=True)
        subprocess.run([DVC, "queue", "stop", "--kill"], capture_output=True)
        workers = queue_worker_processes(os.getcwd())
        _, alive = psutil.wait_procs(workers, timeout=STOP_WAIT_S)
        for worker in alive:
            worker.kill()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def experiments() -> list[Experiment]:
    """Every experiment of the current commit, from `dvc exp show --json`."""
    shown = json.loads(dvc("exp", "show", "--json").stdout)
    found = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            state = (exp.get("executor") or {}).get("state") or "success"
            error = (rev.get("error") or {}).get("msg")
            found.append(Experiment(
                name=exp.get("name") or rev.get("name") or rev["rev"][:7],
                params=(data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                metrics={path: entry.get("data", {})
                         for path, entry in (data.get("metrics") or {}).items()},
                failed=error or (None if state == "success" else f"its run is {state}")))
    return found
