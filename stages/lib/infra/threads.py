"""How many CPU threads torch uses in a stage: decided here, for every stage that computes.

torch starts one thread per core, which is right for a process that has the machine to
itself. DVC's experiment queue runs several at once (`dvc queue start -j N`,
`dvc exp run --run-all -j N`), and N processes with a thread per core each fight over the
cores: on 2 cores a 4-experiment sweep took 57.7 s with -j 2 against 36.7 s with -j 1. So
by default a stage run by a queue worker shares the cores with the other workers.

The thread count changes float rounding (results are bit-identical only between runs with
the same count), so every stage that uses this records the count in its metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from .errors import UserError

ENV_VAR = "OMP_NUM_THREADS"  # the standard override, read by torch itself at start-up
QUEUE_WORKER_COMMAND = "queue-worker"  # `dvc exp queue-worker NODE`, one process per worker


@dataclass(frozen=True)
class Threads:
    count: int
    why: str  # how the count was chosen, for the stage's log line

    def __str__(self) -> str:
        return f"{self.count} thread{'s' if self.count > 1 else ''} ({self.why})"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _worker_node(cmdline: list[str]) -> str | None:
    """The node name of a DVC queue worker's command line, None for any other process."""
    if QUEUE_WORKER_COMMAND in cmdline:
        at = cmdline.index(QUEUE_WORKER_COMMAND)
        return cmdline[at + 1] if at + 1 < len(cmdline) else QUEUE_WORKER_COMMAND
    return None


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def queue_worker_processes(project: str) -> list[psutil.Process]:
    """The DVC queue workers running experiments of the project at `project` (a worker runs
    in its project's root)."""
    found = []
    for process in psutil.process_iter():
        try:
            if _worker_node(_cmdline(process)) and process.cwd() == project:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def live_queue_workers() -> int:
    """How many DVC queue workers are alive on this machine (any project)."""
    nodes = {_worker_node(_cmdline(process)) for process in psutil.process_iter()}
    return len(nodes - {None})


def queue_workers() -> int:
    """How many DVC queue workers are alive on this machine, when this process was started
    by one; 0 when it was not (`dvc repro`, `dvc exp run` without the queue)."""
    if not any(_worker_node(_cmdline(parent)) for parent in psutil.Process().parents()):
        return 0
    return max(1, live_queue_workers())


def choose_threads(setting: int | str, environ: Mapping[str, str] = os.environ,
                   cores: int | None = None, workers: int | None = None) -> Threads:
    """base.threads as a number wins; with `auto`, OMP_NUM_THREADS when set, else the cores
    shared evenly among the queue's workers (all of them outside the queue)."""
    if setting != "auto":
        return Threads(int(setting), "base.threads")
    if environ.get(ENV_VAR, "").strip():
        value = environ[ENV_VAR].strip()
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{ENV_VAR}={value!r} is not a positive whole number; unset it "
                            f"or set base.threads in params.yaml")
        return Threads(int(value), ENV_VAR)
    cores = available_cores() if cores is None else cores
    workers = queue_workers() if workers is None else workers
    if workers > 1:
        count = max(1, cores // workers)
        return Threads(count, f"{cores} cores shared by {workers} DVC queue workers")
    return Threads(cores, f"all {cores} cores")


def use_threads(setting: int | str) -> Threads:
    """Set torch's intra-op thread count for this process, as choose_threads decides."""
    import torch  # here: check_params validates the setting without paying for torch

    threads = choose_threads(setting)
    torch.set_num_threads(threads.count)
    return threads
