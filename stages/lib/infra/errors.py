"""One kind of error for bad input, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import Callable

EXIT_USER_ERROR = 2
# A file each stage appends its timing to, when set (`make bench` sets it): how long the
# process took to reach main (starting Python, imports) and main's own work.
TIMES_ENV = "MNIST_STAGE_TIMES"


class UserError(Exception):
    """Bad input the user can fix: shown as one message, without a traceback."""


class Terminated(BaseException):
    """SIGTERM (`timeout`, a cancelled CI job, `kill`): unwinds like Ctrl-C's
    KeyboardInterrupt, so every temp file and folder is removed on the way out."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_stage(name: str, main: Callable[[], None], kind: str = "stage") -> None:
    """Run a stage's main (or a command's: `kind`); expected user errors exit non-zero with
    one clear line; Ctrl-C and SIGTERM leave the outputs as they were, and no temp files.

    Anything else is a bug and keeps its traceback.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    if kind == "stage" and in_main_thread:
        end_with_parent()
    try:
        with timed(name):
            _recover_outputs(name)
            main()
    except UserError as err:
        print(f"error in {kind} '{name}': {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except (KeyboardInterrupt, Terminated) as err:
        signum = signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM
        print(f"{kind} '{name}' stopped by {signal.Signals(signum).name}; no output was "
              "half-written and no temp file is left", file=sys.stderr)
        sys.exit(128 + signum)
    except BrokenPipeError:
        # The reader went away (`make metrics | head`): stop quietly, as Unix tools do. The
        # bytes still buffered for the closed pipe go nowhere instead of failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if kind == "stage" and exit_when_done:
        exit_now()


def end_with_parent() -> None:
    """SIGTERM when the parent (`dvc repro`, `make`) dies, and SIGHUP (a closed terminal)
    taken as SIGTERM: either way the stage stops as on Ctrl-C, its outputs as they were,
    instead of running on unseen and writing outputs its parent's next run writes too
    (Linux; elsewhere nothing changes)."""
    from stages import PARENT  # the parent as the process started

    signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != PARENT:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def _recover_outputs(name: str) -> None:
    """Before a stage or command reads or writes an output: finish the commit, or put back
    the folder, that a killed run left (files.recover_outputs), and say so."""
    from .files import recover_outputs  # files imports this module

    for line in recover_outputs():
        print(f"{name}: {line}", file=sys.stderr)


# A stage ends its process when its work is done (exit_now); the tests, which run stages
# inside their own process (tests/helpers.py's run_module), turn this off.
exit_when_done = True


def exit_now() -> None:
    """End a stage's process that has done its work: its outputs are written and closed.

    Python's teardown of a process that ran torch (freeing every module and object, one by
    one) takes 0.5 s after a training stage and 0.45 to 0.8 s after the report on the
    project's 2-core machine: a sixth of a small stage, for nothing a finished stage needs.
    What Python would still do that matters is done here: the exit handlers (logging's
    flush, finalizers) and flushing stdout and stderr."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class timed:
    """Appends `{"stage", "start_s", "work_s"}` to $MNIST_STAGE_TIMES, when set, after the
    block ends without an error: seconds from the process's start to the block (starting
    Python, imports), and in it."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        self.path = os.environ.get(TIMES_ENV)
        if self.path:  # a stage not being timed reads nothing
            self.start_s = seconds_since_process_start()
            self.begun = time.perf_counter()

    def __exit__(self, kind, value, traceback) -> None:
        if self.path and kind is None:
            record = {"stage": self.name, "start_s": self.start_s,
                      "work_s": round(time.perf_counter() - self.begun, 3)}
            with open(self.path, "a") as times:
                times.write(json.dumps(record) + "\n")


def seconds_since_process_start() -> float | None:
    """How long this process has run, to the clock tick (Linux's /proc; None elsewhere)."""
    try:
        stat = open("/proc/self/stat").read()
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return round(since_boot - ticks / os.sysconf("SC_CLK_TCK"), 3)
