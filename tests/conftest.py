"""Shared fixtures: offline settings, generated MNIST-like data, a loopback mirror, and
temp copies of the project where the real pipeline runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import (ROOT, SHARED_MNIST, TEN_DIGITS, copy_project, run,
                           run_pipeline_project, serve_folder, set_params)

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


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """../shared/mnist, the real MNIST files; skipped when absent, but a failure under CI."""
    if not all((SHARED_MNIST / name).is_file() for name in (
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        reason = f"real MNIST not found at {SHARED_MNIST}"
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
    """The whole pipeline run once by `dvc repro` on real MNIST 3/7 with the book's params."""
    project = tmp_path_factory.mktemp("book") / "project"
    result = run_pipeline_project(project, {"data.source": "mnist", "data.split": "official"},
                                  mirrors=mnist_mirror_url)
    return project, result


@pytest.fixture(scope="session")
def ten_digit_project(tmp_path_factory, book_project):
    """book_project rerun by `dvc repro` on all ten digits with the README's settings."""
    project = copy_project(book_project[0], tmp_path_factory.mktemp("ten") / "project")
    set_params(project, TEN_DIGITS)
    return project, run(project, "dvc", "repro")


@pytest.fixture
def chdir(tmp_path, monkeypatch):
    """Run in an empty temp folder holding a copy of params.yaml."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path
