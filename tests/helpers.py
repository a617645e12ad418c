"""Helpers for the tests: tiny MNIST-like data in every accepted layout, a loopback
HTTP mirror, and a temp git+DVC copy of the project to run stages and `dvc repro` in."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import os
import runpy
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages.lib.infra import errors
from stages.lib.infra.experiments import DVC, TEN_DIGITS
from stages.lib.infra.files import read_yaml

ROOT = Path(__file__).resolve().parents[1]
# The real MNIST files: ../shared/mnist beside the checkout, or MNIST_TEST_DATA (the GitHub
# workflow points it at what `dvc repro download` fetched).
SHARED_MNIST = Path(os.environ.get("MNIST_TEST_DATA", ROOT.parent / "shared" / "mnist"))
# The ten-digit settings (stages/lib/infra/experiments.py) offline: data.source auto falls back to the 5000-image sample (no test set,
# so split auto picks a random validation split). One epoch on 4000 images is 31 one-cycle
# steps at batch 128: too few for lr 0.1 (0.30 accuracy); batch 64 at lr 0.01 reaches 0.93.
TEN_DIGITS_5K = {**TEN_DIGITS, "data.source": "auto", "data.split": "auto",
                 "train_cnn.lr": 0.01, "train_cnn.batch_size": 64}
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", ".dvc/config", ".dvc/.gitignore",
                 ".dvc/plots", ".dvcignore", ".gitignore")


# --- tiny data -----------------------------------------------------------------------------

def tiny_digits(per_digit: int = 4, digits=range(10), seed: int = 0):
    """Random 28×28 uint8 images with labels, `per_digit` of each digit, interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.array([d for _ in range(per_digit) for d in digits], dtype=np.uint8)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    return images, labels


def write_idx_folder(folder: Path, train=None, test=None) -> dict[str, Path]:
    """The four MNIST .gz files of tiny data; returns their paths by canonical name."""
    from stages.lib.data.idx import idx_bytes

    folder.mkdir(parents=True, exist_ok=True)
    train = train if train is not None else tiny_digits(4, seed=1)
    test = test if test is not None else tiny_digits(2, seed=2)
    paths = {}
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
            paths[path.name] = path
    return paths


def canonical_digests_of(paths: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """A CANONICAL_FILES table for generated files, to stand in for the real one."""
    from stages.lib.infra.files import file_digests

    return {name: tuple(file_digests(path)[k] for k in ("md5", "sha256"))
            for name, path in paths.items()}


def write_png_folder(folder: Path, layout: str, digits=(3, 7), per_digit=3,
                     size=(28, 28), mode="L") -> Path:
    """fast.ai's mnist_sample (train/valid) or mnist_png (training/testing) layout."""
    from PIL import Image

    splits = {"mnist_sample": ("train", "valid"), "mnist_png": ("training", "testing")}[layout]
    rng = np.random.default_rng(0)
    for split in splits:
        for digit in digits:
            digit_dir = folder / split / str(digit)
            digit_dir.mkdir(parents=True)
            for i in range(per_digit):
                pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").convert(mode).save(digit_dir / f"{i * 10 + digit}.png")
    return folder


# --- a loopback mirror ---------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


@contextlib.contextmanager
def serve_folder(folder: Path, handler_class: type = _QuietHandler):
    """Serve `folder` on 127.0.0.1 (a free port) for the duration; yields its base URL."""
    handler = functools.partial(handler_class, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _TrickleHandler(_QuietHandler):
    def copyfile(self, source, outputfile):  # 64 bytes every 0.2 s
        with contextlib.suppress(ConnectionError):  # the client gave up: as it should
            while chunk := source.read(64):
                outputfile.write(chunk)
                outputfile.flush()
                time.sleep(0.2)


def serve_slowly(folder: Path):
    """Serve `folder` a few bytes at a time: each read gets data well within any per-read
    timeout, but a file takes for ever. Yields the base URL."""
    return serve_folder(folder, _TrickleHandler)


class _EndlessHandler(_QuietHandler):
    def send_head(self):  # every file endless: no Content-Length, zeros until the client stops
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return io.BytesIO()

    def copyfile(self, source, outputfile):
        with contextlib.suppress(ConnectionError):
            while True:
                outputfile.write(b"\0" * 65536)


def serve_endlessly(folder: Path):
    """A mirror whose every file never ends (no Content-Length, zeros for ever). Yields its
    base URL."""
    return serve_folder(folder, _EndlessHandler)


@contextlib.contextmanager
def silent_server():
    """A mirror that accepts connections and never answers. Yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.close()


# --- a temp copy of the project ------------------------------------------------------------

def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True,
                          text=True).stdout


def make_project(project: Path, params: dict | None = None) -> Path:
    """Copy the pipeline's files into a fresh git repo at `project` and commit them."""
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        source, target = ROOT / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    if params:
        set_params(project, params)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project")
    return project


def set_params(project: Path, updates: dict) -> None:
    """Set dotted keys in the project's params.yaml, e.g. {"train_mlp.lr": 0.5}."""
    path = project / "params.yaml"
    params = read_yaml(path, "params")
    for dotted, value in updates.items():
        section, key = dotted.split(".")
        params[section][key] = value
    write_yaml(path, params)


def write_yaml(path: Path, data) -> None:
    """Write YAML as DVC would (ruamel.yaml), keys in their order."""
    from ruamel.yaml import YAML

    with open(path, "w") as handle:
        YAML(typ="safe", pure=True).dump(data, handle)


def env_with(mirrors: str | None = None, **extra: str | None) -> dict[str, str]:
    """The test environment with `extra` set (a None value removes the variable)."""
    env = {**os.environ, **extra}
    for name in [name for name, value in env.items() if value is None]:
        del env[name]
    env.pop("MNIST_MIRRORS", None)
    if mirrors is not None:
        env["MNIST_MIRRORS"] = mirrors
    return env


def run(project: Path, *command: str, mirrors: str | None = None, check: bool = True,
        **extra_env: str | None) -> subprocess.CompletedProcess:
    """Run a command (e.g. "dvc", "repro") in the project with the test environment."""
    if command[0] == "dvc":
        command = (DVC, *command[1:])
    result = subprocess.run(command, cwd=project, capture_output=True, text=True,
                            env=env_with(mirrors, **extra_env))
    return checked(result) if check else result


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, or an AssertionError with its output when it failed."""
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def run_stage(project: Path, stage: str, mirrors: str | None = None,
              check: bool = False) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", f"stages.{stage}", mirrors=mirrors, check=check)


def run_module(project: Path, module: str, *args: str,
               check: bool = False) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in `project`, run inside this test process: the same code,
    output and exit status, without a new interpreter importing torch and torchvision again
    (1.6 to 3.3 CPU-s, most of what a failing stage or a prediction costs). For tests of what
    a command says and writes; signals, environment variables and DVC running the stages are
    tested through real processes (`run`, `run_stage`)."""
    out, err = io.StringIO(), io.StringIO()
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [module, *args]
    os.chdir(project)
    errors.exit_when_done = False  # a stage returns here instead of ending this process
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with warnings.catch_warnings():  # a module a test imported runs afresh, as with -m
                warnings.filterwarnings("ignore", "'stages.", RuntimeWarning)
                code = _exit_status(lambda: runpy.run_module(module, run_name="__main__",
                                                             alter_sys=True))
    finally:
        errors.exit_when_done = True
        sys.argv = argv
        os.chdir(cwd)
    result = subprocess.CompletedProcess(["python", "-m", module, *args], code,
                                         out.getvalue(), err.getvalue())
    return checked(result) if check else result


def _exit_status(main: Callable[[], object]) -> int:
    """What the interpreter would exit with after `main`, printing what it would print."""
    try:
        main()
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - a bug: its traceback, as the interpreter shows it
        traceback.print_exc()
        return 1
    return 0


def run_pipeline_project(project: Path, params: dict, mirrors: str | None = None,
                         niceness: int = 0, **extra_env: str | None):
    """`dvc repro` in a new project; a positive `niceness` gives it the CPU others leave."""
    make_project(project, params)
    nice = ("nice", "-n", str(niceness)) if niceness else ()
    return run(project, *nice, DVC, "repro", mirrors=mirrors, **extra_env)


def committed_threads() -> int:
    """The thread count the committed dvc.lock was computed with (metrics/cnn.json records
    it): a run with another count computes other bits for the CNN (docs/performance.md)."""
    return read_json(ROOT / "metrics" / "cnn.json")["threads"]


def read_json(path: Path):
    import json

    return json.loads(Path(path).read_text())


def copy_project(source: Path, target: Path, commit: bool = True) -> Path:
    """A copy of a project that has run (outputs and DVC cache included), committed."""
    shutil.copytree(source, target, symlinks=True)
    if commit:
        git(target, "add", "-A")
        git(target, "commit", "-qm", "ran")
    return target


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` says it ran, in order."""
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")]
