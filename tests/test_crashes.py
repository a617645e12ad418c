"""A training stage killed outright (SIGKILL, a power cut) at any moment leaves its outputs
all old or all new, once the next command has run (files.recover_outputs): proved as
crash-safe storage is, by killing each training stage at many moments over its run, from
its first file operation to its last, and checking after each kill:

- nothing half-done is left: no temp file, backup, journal or set-aside folder;
- the checkpoint, metrics, history and DVCLive log are the old set, byte for byte, or a whole
  new one: the metrics computed from this checkpoint (its fingerprint) and holding the scores
  it records, the history and DVCLive's log of the same run, with this run's seed;
- the last good DVCLive log survives a rerun that then fails.

tests/crashes.py runs the stage and kills it (tests/crashes.py: what counts as a moment).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.lib.infra.files import recover_outputs
from stages.lib.infra.provenance import file_fingerprint, scores_edit
from tests.helpers import env_with, make_project, run_module, run_stage, set_params

pytestmark = [pytest.mark.pipeline, pytest.mark.long]

KILLS = 24  # per stage, spread over its file operations; the commit's are all among them
TINY = {"data.source": "mnist-5k", "train_linear.epochs": 4, "train_mlp.epochs": 4}


class Harness:
    """tests/crashes.py for one stage, in `project`."""

    def __init__(self, project: Path, module: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crashes", module], cwd=project, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env_with(PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        assert self.process.stdout.readline().strip() == "ready"

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def outputs(project: Path, name: str) -> dict[str, bytes]:
    files = [project / f"models/{name}.pt", project / f"metrics/{name}.json",
             project / f"plots/{name}.tsv"]
    files += sorted((project / "dvclive" / name).rglob("*"))
    return {str(f.relative_to(project)): f.read_bytes() for f in files if f.is_file()}


def leftovers(project: Path) -> list[str]:
    folders = [project] + [project / d for d in ("models", "metrics", "plots", "dvclive")]
    return [str(p.relative_to(project)) for folder in folders if folder.is_dir()
            for p in folder.iterdir() if p.name.startswith(".") and p.name not in (
                ".git", ".dvc", ".gitignore", ".dvcignore", ".ci", ".github")]


def whole_new_set(project: Path, name: str, seed: int) -> list[str]:
    """What does not add up in the outputs as one run's with `seed` (empty: they do)."""
    checkpoint_path = project / f"models/{name}.pt"
    metrics = json.loads((project / f"metrics/{name}.json").read_text())
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    problems = []
    if metrics.get("model") != file_fingerprint(checkpoint_path):
        problems.append("the metrics are not the checkpoint's")
    if (edit := scores_edit(metrics, checkpoint.get("metrics"))) is not None:
        problems.append(f"the metrics are not the scores the checkpoint records: {edit}")
    if metrics.get("seed") != seed:
        problems.append(f"seed {metrics.get('seed')}, not this run's {seed}")
    with open(project / f"plots/{name}.tsv") as handle:
        history = list(csv.DictReader(handle, delimiter="\t"))
    if len(history) != metrics["epochs"] or \
            abs(float(history[-1]["valid_loss"]) - metrics["valid_loss"]) > 1e-4:
        problems.append("the history is another run's")
    live = json.loads((project / "dvclive" / name / "metrics.json").read_text())
    if live.get("step") != metrics["epochs"] - 1 or \
            abs(live["valid_loss"] - metrics["valid_loss"]) > 1e-4:
        problems.append(f"DVCLive's log is another run's ({live})")
    return problems


def check_after_kill(project: Path, name: str, old: dict, seed: int) -> str:
    recover_outputs(project)  # what the next command does first
    assert leftovers(project) == []
    now = outputs(project, name)
    if now == old:
        return "old"
    assert whole_new_set(project, name, seed) == []
    return "new"


@pytest.mark.parametrize("stage, name", [("train_linear", "linear"), ("train_mlp", "mlp"),
                                         ("train_cnn", "cnn")])
def test_a_stage_killed_at_any_moment_leaves_its_outputs_all_old_or_all_new(tmp_path, stage,
                                                                            name):
    project = make_project(tmp_path / "project", TINY)
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    harness = Harness(project, f"stages.{stage}")
    try:
        total = int(harness.ask("count").split()[1])  # the first good set, seed 42
        assert whole_new_set(project, name, 42) == []
        # spread over the run; the last 20 operations (the commit) more densely
        points = sorted({1 + i * (total - 21) // 12 for i in range(13)}
                        | {total - 20 + i * 20 // (KILLS - 13) for i in range(KILLS - 13)})
        assert len(points) >= 20
        seen = {"old": 0, "new": 0}
        for i, point in enumerate(points):
            seed = 100 + i
            set_params(project, {"base.seed": seed})
            old = outputs(project, name)
            assert harness.ask(f"kill {point}") == "killed"
            seen[check_after_kill(project, name, old, seed)] += 1
        assert seen["old"] and seen["new"], seen  # kills before and after the commit point
    finally:
        harness.close()


def test_a_kill_mid_fit_then_a_failed_rerun_keeps_the_last_good_log(tmp_path):
    project = make_project(tmp_path / "project", TINY)
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    harness = Harness(project, "stages.train_linear")
    try:
        total = int(harness.ask("count").split()[1])
        good = outputs(project, "linear")
        set_params(project, {"base.seed": 7})
        assert harness.ask(f"kill {total // 2}") == "killed"  # mid-fit: a partial log in place
    finally:
        harness.close()
    set_params(project, {"base.device": "cuda"})  # the rerun fails (no GPU here)
    result = run_module(project, "stages.train_linear")
    assert result.returncode != 0 and "put back dvclive/linear" in result.stderr
    assert outputs(project, "linear") == good
    assert leftovers(project) == []
