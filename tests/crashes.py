"""Kills a stage outright at chosen moments, as a power cut or SIGKILL would: the harness of
tests/test_crashes.py, run in a project folder.

    python -m tests.crashes stages.train_linear

It imports the stage once, then reads commands from stdin, one per line, and answers each
on stdout:
    count  -> run the stage to its end; answers `ops N`, the file operations it made
    kill N -> run the stage, SIGKILLed just before its Nth file operation; answers `killed`,
              or `finished` when it made fewer than N
A file operation is any call that changes the project's files: opening one to write,
renaming, removing, making a folder or a temp, syncing. Each run is a fork of the harness,
so a kill costs the stage's work, not Python's and torch's start. The harness itself never
computes (no thread pool to carry into a fork).
"""

from __future__ import annotations

import builtins
import os
import runpy
import shutil
import signal
import sys
import tempfile
from pathlib import Path

PROJECT = Path.cwd().resolve()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _in_project(path) -> bool:
    try:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(PROJECT)
    except TypeError:  # a file descriptor
        return True


class Counter:
    """Counts the file operations in the project; SIGKILLs this process at the `kill_at`th,
    before it happens."""

    def __init__(self, kill_at: int | None):
        self.kill_at, self.ops = kill_at, 0

    def op(self) -> None:
        self.ops += 1
        if self.kill_at is not None and self.ops >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, module, name: str, *, paths: int = 1, writes=None) -> None:
        real = getattr(module, name)

        def counted(*args, **kwargs):
            targets = args[:paths] or [kwargs.get("dir", PROJECT)]
            if (writes is None or writes(*args, **kwargs)) and any(map(_in_project, targets)):
                self.op()
            return real(*args, **kwargs)

        setattr(module, name, counted)

    def install(self) -> None:
        self.wrap(builtins, "open", writes=lambda file, mode="r", *a, **k: any(
            c in mode for c in "wax+"))
        self.wrap(os, "open", writes=lambda path, flags, *a, **k: bool(flags & _WRITE_FLAGS))
        for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "makedirs"):
            self.wrap(os, name)
        self.wrap(os, "fsync", paths=0)
        self.wrap(shutil, "rmtree")
        self.wrap(tempfile, "mkstemp", paths=0)
        self.wrap(tempfile, "mkdtemp", paths=0)


def run_once(module: str, kill_at: int | None, report: int) -> None:
    """The child: the stage as `python -m` runs it, counted; its op count to `report`."""
    import stages
    from stages.lib.infra import errors

    stages.PARENT = os.getppid()  # this fork's parent is the harness, not the harness's
    errors.exit_when_done = False  # return here, to report the count
    os.dup2(2, 1)  # the stage's output to stderr: stdout answers the test
    counter = Counter(kill_at)
    counter.install()
    sys.argv = [module]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    os.write(report, f"{counter.ops}\n".encode())
    os._exit(code)


def main(module: str) -> None:
    import torch  # noqa: F401  (imported once here; each fork starts with it)
    import dvclive  # noqa: F401
    runpy.run_module(module, run_name="not_main")  # the stage's own imports
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        kill_at = None if command[0] == "count" else int(command[1])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            sys.stdin.close()
            run_once(module, kill_at, write)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        ops = os.read(read, 64).decode().strip()
        os.close(read)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            print("killed", flush=True)
        elif os.WEXITSTATUS(status) != 0:
            print(f"failed {os.WEXITSTATUS(status)}", flush=True)
        else:
            print(f"ops {ops}" if kill_at is None else "finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
