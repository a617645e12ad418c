"""Shared fixtures: offline settings, generated MNIST-like data, a loopback mirror, and
temp copies of the project where the real pipeline runs."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

# The tests hold the portable kernels to what they compute on every CPU, whatever params.yaml
# says: pinned before torch loads (stages/lib/infra/kernels.py).
from stages.lib.infra.kernels import cpu_name, pin

pin("portable")

import torch  # noqa: E402 - after the kernels are pinned

from stages.lib.infra.threads import ENV_VAR, available_cores  # noqa: E402
from tests.helpers import (ROOT, SHARED_MNIST, TEN_DIGITS_5K, committed_threads,  # noqa: E402
                           copy_project, run_pipeline_project, serve_folder)

# Tests never touch the network: DVC stays offline, and the download stage is told to skip
# the public mirrors (only MNIST_MIRRORS set by a test is tried).
os.environ.update(DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="1", MPLBACKEND="Agg",
                  MNIST_OFFLINE="1")
os.environ.pop("MNIST_MIRRORS", None)
# Temp repos commit (and `dvc exp run` makes commits) on machines with no git identity.
for var, value in (("GIT_AUTHOR_NAME", "tests"), ("GIT_AUTHOR_EMAIL", "tests@localhost"),
                   ("GIT_COMMITTER_NAME", "tests"), ("GIT_COMMITTER_EMAIL", "tests@localhost")):
    os.environ.setdefault(var, value)
# Stages run as `python -m ...` inside dvc: make that the python running the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# pytest-xdist runs the tests in several processes at once: each gets an equal share of the
# cores, through the variable the stages' thread policy honours, so they don't oversubscribe.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and not os.environ.get(ENV_VAR):
    os.environ[ENV_VAR] = str(max(1, available_cores() // _WORKERS))
if os.environ.get(ENV_VAR):
    torch.set_num_threads(int(os.environ[ENV_VAR]))


def shared_root(tmp_path_factory) -> Path:
    """The session's temp folder that every xdist worker sees (the workers' own are in it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if "PYTEST_XDIST_WORKER" in os.environ else root


def shared_run(root: Path, name: str, build: Callable[[Path], subprocess.CompletedProcess]):
    """An expensive pipeline run made once per test session, shared by every xdist worker:
    the first to ask builds it under a lock in `root`, the others wait and reuse it.
    Returns (project, the build's CompletedProcess)."""
    folder, record = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            result = build(folder / "project")
            record.write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                          "stdout": result.stdout, "stderr": result.stderr}))
        return folder / "project", subprocess.CompletedProcess(**json.loads(record.read_text()))


def build_book(project: Path, mirror_url: str) -> subprocess.CompletedProcess:
    # A fresh clone's run: the committed params.yaml as it is (data.source auto finds real
    # MNIST at the mirror) and the thread count of the committed dvc.lock, so that
    # test_pipeline can hold this run to it, bit for bit.
    return run_pipeline_project(project, {}, mirrors=mirror_url,
                                OMP_NUM_THREADS=str(committed_threads()))


def build_ten(project: Path) -> subprocess.CompletedProcess:
    # Few tests wait for this run and most wait for the book's, which runs beside it on one
    # thread: this one takes only the CPU left over, so the book's is done sooner.
    return run_pipeline_project(project, TEN_DIGITS_5K, niceness=10)


def _prebuild(root: Path, name: str) -> None:
    """Build a shared run in the background; a failure is left for its fixture to report."""
    try:
        if name == "ten_digit_project":
            shared_run(root, "ten", build_ten)
        elif SHARED_MNIST.is_dir():
            with serve_folder(SHARED_MNIST) as url:
                shared_run(root, "book", lambda project: build_book(project, url))
    except Exception:  # noqa: BLE001 - the fixture rebuilds and fails with the real error
        pass


_PREBUILDS: list[threading.Thread] = []
SHARED_FIXTURES = ("book_project", "ten_digit_project")


def _waits_for(item) -> tuple[int, bool]:
    """0: needs no shared run; 1: the ten-digit run (built sooner); 2: the book's. Within
    each, the tests marked `long` first, so that none of them is left to finish alone."""
    fixtures = item.fixturenames
    shared = 2 if "book_project" in fixtures else 1 if "ten_digit_project" in fixtures else 0
    return shared, item.get_closest_marker("long") is None


def pytest_report_header(config):
    """Every run names its CPU: the real-data tests hold this machine to the committed bits,
    so a run's output says which CPU passed (or failed) them."""
    return f"cpu: {cpu_name()}, {available_cores()} cores; kernels pinned: portable"


def pytest_itemcollected(item):
    """A test on a shared pipeline run is a `pipeline` test, as are those marked so by hand
    (they run DVC or the stages in new processes): `make test-fast` leaves them all out.
    Marked as collected, so pytest's -m filter sees it."""
    if any(name in getattr(item, "fixturenames", ()) for name in SHARED_FIXTURES):
        item.add_marker(pytest.mark.pipeline)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Under xdist: the quick tests first, and the shared real-data runs started in the
    background at once, so no worker sits waiting for a run another is building. After
    pytest's -m filter: a run that leaves out the pipeline tests builds no pipeline run."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    items.sort(key=_waits_for)  # the same order in every worker, as xdist requires
    # A hook gets no fixtures: the config's factory is the session's tmp_path_factory.
    root = shared_root(config._tmp_path_factory)
    for name in SHARED_FIXTURES:
        if any(name in item.fixturenames for item in items):
            thread = threading.Thread(target=_prebuild, args=(root, name), daemon=True)
            thread.start()
            _PREBUILDS.append(thread)
    # The book's run, one thread long, is what most tests wait for: the tests themselves
    # (this thread, and what it starts) yield the CPU to it. On Linux a niceness is a
    # thread's own, so the build threads just started, and their processes, keep theirs.
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 3)


def pytest_sessionfinish(session):
    for thread in _PREBUILDS:  # never leave a build running behind a finished worker
        thread.join()


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """../shared/mnist, the real MNIST files; skipped when absent, but a failure under CI."""
    if not all((SHARED_MNIST / name).is_file() for name in (
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        reason = (f"real MNIST not found at {SHARED_MNIST}; set MNIST_TEST_DATA to a folder "
                  f"holding its four .gz files")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the real-data tests")
        pytest.skip(reason)
    return SHARED_MNIST


@pytest.fixture(scope="session")
def mnist_mirror_url(shared_mnist):
    """../shared/mnist served over loopback HTTP, so the real URL + checksum path runs."""
    with serve_folder(shared_mnist) as url:
        yield url


@pytest.fixture(scope="session")
def book_project(tmp_path_factory, mnist_mirror_url):
    """The whole pipeline run once by `dvc repro` on real MNIST 3/7 with the book's params.
    Shared by all tests (and xdist workers): run dvc commands in a copy (book_copy)."""
    return shared_run(shared_root(tmp_path_factory), "book",
                      lambda project: build_book(project, mnist_mirror_url))


@pytest.fixture
def book_copy(book_project, tmp_path):
    return copy_project(book_project[0], tmp_path / "copy")


@pytest.fixture(scope="session")
def ten_digit_project(tmp_path_factory):
    """All ten digits with the documented training settings, offline: data.source auto falls
    back to mnist-5k (500 images a digit, 4000 to train). The ten-class path and the fallback
    end to end. The run on all of MNIST is checked by `make bench`, whose ten-digit
    pipeline asserts the accuracies docs/experiments.md gives."""
    return shared_run(shared_root(tmp_path_factory), "ten", build_ten)


@pytest.fixture
def chdir(tmp_path, monkeypatch):
    """Run in an empty temp folder holding a copy of params.yaml."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path
