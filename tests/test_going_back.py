"""The way back: git's index checked against the files (stages/lib/infra/gitindex.py), and
`make reset` keeping a params.yaml that differs from HEAD's and refusing uncommitted code
(stages/reset.py), on small git repositories, without running the pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from stages.lib.infra.errors import UserError
from stages.lib.infra.gitindex import hidden_changes, repair_hidden_changes
from tests.helpers import ROOT, git


def repo(path):
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    return path


def status(path) -> str:
    return git(path, "status", "--short").rstrip("\n")


def test_a_change_git_s_index_hides_is_found_repaired_and_said(tmp_path, monkeypatch, capsys):
    project = repo(tmp_path / "p")
    git(project, "config", "core.trustctime", "false")  # to forge the stale entry below
    lock = project / "dvc.lock"
    lock.write_text("md5: one\n")
    past = os.stat(lock).st_mtime - 100
    os.utime(lock, (past, past))
    git(project, "add", "dvc.lock")
    git(project, "commit", "-qm", "one")
    # As DVC 3.67.1 leaves it after a failed `dvc exp run`: the index holds HEAD's blob beside
    # the stat data of a file whose content is another (same size, same mtime, same inode).
    lock.write_text("md5: two\n")
    os.utime(lock, (past, past))
    assert status(project) == ""  # git is fooled
    monkeypatch.chdir(project)
    assert [path for _, _, path in hidden_changes()] == ["dvc.lock"]
    assert repair_hidden_changes("metrics") == ["dvc.lock"]
    assert status(project) == " M dvc.lock"
    assert git(project, "diff", "--cached") == ""  # nothing staged by the repair
    assert ("metrics: git's index hid changes to dvc.lock (`git status` did not list them; "
            "DVC 3.67.1 leaves this after a failed `dvc exp run`); repaired: `git status` "
            "lists them now") in capsys.readouterr().err
    assert hidden_changes() == [] and repair_hidden_changes("metrics") == []


def test_outside_a_git_repository_there_is_nothing_to_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hidden_changes() == [] and repair_hidden_changes("metrics") == []


@pytest.fixture
def pipeline_repo(tmp_path, monkeypatch):
    """A repository with the project's dvc.yaml, params.yaml and one stage's code."""
    project = repo(tmp_path / "p")
    for name in ("dvc.yaml", "params.yaml", "stages/train_mlp.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    (project / "notes.md").write_text("mine\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "init")
    monkeypatch.chdir(project)
    return project


def test_reset_keeps_an_edited_params_yaml_in_git_s_stash(pipeline_repo, capsys):
    from stages.reset import keep_edits

    committed = (pipeline_repo / "params.yaml").read_text()
    edited = committed.replace("seed: 42", "seed: 7")
    assert edited != committed
    (pipeline_repo / "params.yaml").write_text(edited)
    git(pipeline_repo, "add", "params.yaml")  # staged: the index is not HEAD either
    (pipeline_repo / "notes.md").write_text("mine, edited\n")  # not the pipeline's: left be
    keep_edits()
    assert (pipeline_repo / "params.yaml").read_text() == committed
    assert status(pipeline_repo) == " M notes.md"
    err = capsys.readouterr().err
    message = err.split('kept in git\'s stash as "')[1].split('"')[0]
    assert message.startswith("make reset ") and message.endswith(": params.yaml as it was")
    assert message in git(pipeline_repo, "stash", "list")
    git(pipeline_repo, "stash", "pop", "-q")  # as the message says: the edit comes back
    assert (pipeline_repo / "params.yaml").read_text() == edited


def test_reset_refuses_uncommitted_code_and_changes_nothing(pipeline_repo):
    from stages.reset import keep_edits

    code = pipeline_repo / "stages/train_mlp.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    params = (pipeline_repo / "params.yaml").read_text().replace("seed: 42", "seed: 7")
    (pipeline_repo / "params.yaml").write_text(params)
    with pytest.raises(UserError, match=r"stages/train_mlp.py differs from HEAD \(uncommitted, "
                                        r"staged or not\); `make reset` trains what HEAD holds"):
        keep_edits()
    assert (pipeline_repo / "params.yaml").read_text() == params  # nothing changed
    assert git(pipeline_repo, "stash", "list") == ""
    assert subprocess.run(["git", "diff", "--quiet", "--", "stages/train_mlp.py"],
                          cwd=pipeline_repo).returncode == 1


STEP = """
from stages import reset
from stages.lib.infra.errors import run_stage

def main():
    reset.end_with_parent()
    reset.step("sh", "-c", "sleep 300 & echo $! > grandchild; wait")

run_stage("reset", main, kind="command")
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "parent killed"])
def test_stopping_reset_stops_everything_it_started(tmp_path, how):
    """`make reset` stopped with SIGTERM, by a closed terminal (SIGHUP), or by its parent
    (`make`) being killed alone: the step it was running (here a shell and its `sleep`, as
    DVC and its stage) is stopped with it, nothing left running."""
    import signal
    import sys
    import time

    import psutil

    from tests.helpers import env_with

    (tmp_path / "step.py").write_text(STEP)
    env = env_with(PYTHONPATH=str(ROOT))
    if how == "parent killed":  # the parent, as `make` is, killed alone
        parent = subprocess.Popen(["sh", "-c", f"{sys.executable} step.py & wait"],
                                  cwd=tmp_path, env=env)
    else:
        parent = subprocess.Popen([sys.executable, "step.py"], cwd=tmp_path, env=env,
                                  stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "grandchild").is_file() or not (tmp_path / "grandchild").read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    sleeper = psutil.Process(int((tmp_path / "grandchild").read_text()))
    # The reset process: the shell's child, or (not to be reaped by psutil here) our own.
    reset = [p for p in psutil.Process(parent.pid).children(recursive=True)
             if "step.py" in " ".join(p.cmdline())] if how == "parent killed" else []
    if how == "parent killed":
        parent.kill()
    else:
        parent.send_signal(getattr(signal, how))
    gone, alive = psutil.wait_procs([sleeper, *reset], timeout=30)
    assert alive == [], alive
    if how != "parent killed":
        _, err = parent.communicate(timeout=30)
        assert parent.returncode == 128 + signal.SIGTERM and "Traceback" not in err
        assert "command 'reset' stopped by SIGTERM" in err
