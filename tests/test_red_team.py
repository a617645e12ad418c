"""The pipeline's red team, round four (docs/what-happens-when.md, "Found by the red team"):
each case a way a killed process, an odd file or an odd argument got a traceback, a hang,
a lost output or a wrong word out of the project. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stages.lib.data.raw import check_manifest
from stages.lib.data.tensors import load_tensors
from stages.lib.infra.errors import UserError
from stages.lib.infra.files import recover_outputs, together, write_text
from tests.helpers import ROOT, env_with, make_project, run_module, run_stage, set_params


def dead_owner() -> str:
    """The owner part (pid-start) of a temp whose process is gone."""
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{process.pid}-1"


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- killed or stopped at an odd moment ----------------------------------------------------

def test_a_folder_swap_killed_between_its_renames_puts_the_old_folder_back(tmp_path):
    """tensorise, download and the report swap a whole folder in: a kill after the old one
    was moved aside and before the new one took its place left neither, and the next
    command removed both."""
    owner = dead_owner()
    aside = tmp_path / "data" / f".tensors.{owner}.abcd1234.old"
    (aside / "tensors").mkdir(parents=True)
    (aside / "tensors" / "meta.json").write_text("old")
    new = tmp_path / "data" / f".tensors.{owner}.efgh5678.tmp"
    new.mkdir()
    (new / "meta.json").write_text("new, unfinished")
    repaired = recover_outputs(tmp_path)
    assert (tmp_path / "data/tensors/meta.json").read_text() == "old"
    assert hidden(tmp_path / "data") == []
    assert repaired == ["put back data/tensors as it was before a run that was stopped"]


def commit_then(signum: int, at_rename: int, folder: Path) -> subprocess.CompletedProcess:
    """A process writing two outputs together, sent `signum` at its `at_rename`th rename."""
    script = f"""
import os, signal, sys
from pathlib import Path
from stages.lib.infra.errors import run_stage
from stages.lib.infra.files import together, write_text
real, count = os.replace, [0]
def replace(*args):
    count[0] += 1
    if count[0] == {at_rename}:
        os.kill(os.getpid(), {signum})
    return real(*args)
os.replace = replace
def main():
    with together():
        write_text("models/m.pt", "new model")
        write_text("metrics/m.json", "new metrics")
run_stage("writer", main)
"""
    return subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True,
                          text=True, env=env_with(PYTHONPATH=str(ROOT)))


def old_outputs(folder: Path) -> None:
    for name, text in (("models/m.pt", "old model"), ("metrics/m.json", "old metrics")):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ctrl_c_or_sigterm_during_a_commit_waits_for_its_last_rename(tmp_path, signum):
    """Before: the signal's exception cut the commit between two renames, the model was
    gone, and the stage said `no output was half-written`."""
    old_outputs(tmp_path)
    result = commit_then(signum, 3, tmp_path)  # the 3rd rename: the old model set aside
    assert result.returncode == 128 + signum, result.stderr
    assert "no output was half-written" in result.stderr
    assert (tmp_path / "models/m.pt").read_text() == "new model"
    assert (tmp_path / "metrics/m.json").read_text() == "new metrics"
    assert hidden(tmp_path) == hidden(tmp_path / "models") == hidden(tmp_path / "metrics") == []


def test_a_killed_commit_is_dropped_when_its_files_were_written_again_since(tmp_path):
    """Before: the next command finished a commit a SIGKILL had cut, long after `dvc repro`
    had restored the outputs from its cache, putting the abandoned run's files back."""
    old_outputs(tmp_path)
    result = commit_then(signal.SIGKILL, 3, tmp_path)
    assert result.returncode == -signal.SIGKILL
    for name in ("models/m.pt", "metrics/m.json"):  # what `dvc checkout` would put there
        (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / name).write_text("restored")
    repaired = recover_outputs(tmp_path)
    assert repaired == ["dropped the commit of models/m.pt, metrics/m.json that a stopped "
                        "process left half done: those files were written again since"]
    assert (tmp_path / "models/m.pt").read_text() == "restored"
    assert (tmp_path / "metrics/m.json").read_text() == "restored"
    assert hidden(tmp_path) == hidden(tmp_path / "models") == hidden(tmp_path / "metrics") == []


def test_a_temp_whose_pid_a_new_process_took_is_still_stale(tmp_path):
    """A temp is its writer's by pid and start time: after a reboot (or by chance) a new
    process with the same pid kept the dead one's journal and temps alive. Before: the
    temps were named by pid alone."""
    from stages.lib.infra.files import _owner

    pid, started = os.getpid(), _owner().split("-")[1]
    reused = tmp_path / "models" / f".m.pt.{pid}-1.abcd1234.tmp"  # this pid, not its start
    reused.parent.mkdir()
    reused.write_text("a dead writer's")
    ours = tmp_path / "models" / f".m.pt.{pid}-{started}.efgh5678.tmp"
    ours.write_text("a live writer's")
    recover_outputs(tmp_path)
    assert hidden(tmp_path / "models") == [ours.name]


@pytest.mark.pipeline
def test_a_stage_whose_parent_dies_stops_and_leaves_its_outputs(tmp_path):
    """`dvc repro` or `make run` killed: the stage ran on for a minute, unseen, and wrote
    outputs the next run was writing too (two runs' DVCLive logs interleaved)."""
    project = make_project(tmp_path / "project", {"data.source": "mnist-5k"})
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    run_module(project, "stages.train_mlp", check=True)
    before = {p: (project / p).read_bytes() for p in ("models/mlp.pt", "metrics/mlp.json")}
    set_params(project, {"train_mlp.epochs": 100000})
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable,"
         " '-m', 'stages.train_mlp']); time.sleep(600)"], cwd=project, env=env_with())
    deadline = time.monotonic() + 60
    while not (children := psutil.Process(parent.pid).children()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stage = children[0]
    try:
        time.sleep(1)  # whether it is still importing or already training
        parent.kill()
        parent.wait()
        stage.wait(timeout=60)  # not this test's child: its status is its dead parent's
    finally:
        if stage.is_running():
            stage.kill()
    assert {p: (project / p).read_bytes() for p in before} == before
    assert hidden(project / "models") == [".gitignore"] or hidden(project / "models") == []


# --- odd files -------------------------------------------------------------------------------

@pytest.mark.parametrize("odd, expected", [
    ("folder", "params.yaml: is a folder, not a text file"),
    ("fifo", "params.yaml: is a FIFO (named pipe), not a text file"),
    ("device", "params.yaml: is a device, not a text file"),
    ("deep", "params.yaml: nests too deep to be read"),
])
def test_a_params_yaml_that_is_not_a_yaml_file_is_one_line(tmp_path, odd, expected):
    """Before: a traceback at import (a folder), a hang (a FIFO), the memory filled
    (/dev/zero), a RecursionError (10 kB of brackets)."""
    project = make_project(tmp_path / "project")
    params = project / "params.yaml"
    params.unlink()
    if odd == "folder":
        params.mkdir()
    elif odd == "fifo":
        os.mkfifo(params)
    elif odd == "device":
        params.symlink_to("/dev/zero")
    else:
        params.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    result = subprocess.run([sys.executable, "-m", "stages.check_params"], cwd=project,
                            capture_output=True, text=True, timeout=60, env=env_with())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error in stage 'check_params': {expected}" in result.stderr


def summary_of(folder: Path) -> subprocess.CompletedProcess:
    return run_module(folder, "stages.summary")


def test_a_params_yaml_of_another_shape_leaves_the_summary_as_it_is(tmp_path):
    from tests.test_summary import write_run

    write_run(tmp_path)
    for text in ("- 1\n", "base: 5\n"):
        (tmp_path / "params.yaml").write_text(text)
        result = summary_of(tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("edit, expected", [
    (lambda m: {**m, "accuracy": "0.9828"},
     "metrics/mlp.json: accuracy is '0.9828' (expected a number from 0 to 1)"),
    (lambda m: [1], "metrics/mlp.json holds list, not the mapping train_mlp writes"),
    (lambda m: {}, "metrics/mlp.json: accuracy is None (expected a number from 0 to 1)"),
])
def test_a_metrics_file_of_another_shape_is_named(tmp_path, edit, expected):
    """Edited, then recorded by `dvc commit -f`. Before: tracebacks, or `{}` blamed on the
    tensors of all four stages."""
    import hashlib

    from stages.lib.infra.files import read_yaml
    from tests.helpers import write_yaml
    from tests.test_summary import write_run

    write_run(tmp_path)
    path = tmp_path / "metrics/mlp.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    lock = read_yaml(tmp_path / "dvc.lock", "dvc.lock")
    lock["stages"]["train_mlp"]["outs"][0]["md5"] = hashlib.md5(path.read_bytes()).hexdigest()
    write_yaml(tmp_path / "dvc.lock", lock)
    result = summary_of(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error in command 'summary': {expected}" in result.stderr


def test_params_of_another_shape_in_dvc_lock_are_one_line(tmp_path):
    from stages.lib.infra.files import read_yaml
    from tests.helpers import write_yaml
    from tests.test_summary import write_run

    write_run(tmp_path)
    lock = read_yaml(tmp_path / "dvc.lock", "dvc.lock")
    lock["stages"]["tensorise"]["params"]["params.yaml"]["data.digits"] = 5
    write_yaml(tmp_path / "dvc.lock", lock)
    result = summary_of(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("dvc.lock records data.digits: 5 for stage 'tensorise' (expected a list of "
            "digits)") in result.stderr


def test_a_huge_checkpoint_is_not_read_by_the_summary(tmp_path):
    """Before: a 30 GB sparse models/cnn.pt was read whole (a MemoryError traceback)."""
    from tests.test_summary import write_run

    write_run(tmp_path)
    (tmp_path / "models").mkdir()
    with open(tmp_path / "models/cnn.pt", "wb") as handle:
        handle.truncate(30 * 2**30)  # sparse: no disk, no memory
    start = time.monotonic()
    result = summary_of(tmp_path)
    assert time.monotonic() - start < 20
    assert "Not shown: models/cnn.pt: 30.0 GiB, over the 512 MiB a checkpoint of this " \
           "pipeline takes." in " ".join(result.stdout.split())
    assert "Traceback" not in result.stderr


def test_the_summary_says_when_the_report_is_not_there(tmp_path):
    from tests.test_summary import write_run

    write_run(tmp_path)
    assert "Details: report/report.md (not here: `dvc repro report`)" in summary_of(
        tmp_path).stdout


def test_an_output_replaced_by_a_folder_is_replaced_by_the_new_file(tmp_path):
    """Before: the stage trained, then failed in its commit with a traceback, and left a
    journal that wedged every later command."""
    (tmp_path / "models" / "m.pt").mkdir(parents=True)
    with together():
        write_text(tmp_path / "models" / "m.pt", "new model")
    assert (tmp_path / "models" / "m.pt").read_text() == "new model"
    assert hidden(tmp_path) == hidden(tmp_path / "models") == []


def test_a_stale_temp_folder_in_the_project_root_is_tidied_without_an_error(tmp_path):
    """Before: the next command removed it, then looked inside it: `could not repair what a
    stopped run left: No such file or directory`."""
    (tmp_path / f".report.{dead_owner()}.abcd1234.tmp" / "figures").mkdir(parents=True)
    (tmp_path / "report").mkdir()
    recover_outputs(tmp_path)
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("meta", [{}, []])
def test_a_tensor_metadata_file_of_another_shape_is_named(tmp_path, meta):
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="meta.json is not the metadata tensorise writes"):
        load_tensors(tmp_path)


@pytest.mark.parametrize("manifest", [[], {}, {"files": 5}])
def test_a_manifest_of_another_shape_is_named(tmp_path, manifest):
    with pytest.raises(UserError, match="manifest.json is not the manifest the download stage "
                                        "writes; rerun `dvc repro download`"):
        check_manifest(tmp_path, manifest)


def test_a_manifest_that_is_not_the_download_s_does_not_stop_make_run(tmp_path, monkeypatch):
    from stages.refetch import last_download_fell_back

    manifest = tmp_path / "manifest.json"
    for text in ("[]", "[" * 100000 + "]" * 100000):
        manifest.write_text(text)
        assert last_download_fell_back(manifest) is False


def test_a_fifo_for_a_metrics_file_or_the_tensor_metadata_is_not_waited_on(tmp_path,
                                                                          monkeypatch):
    """Before: predict and the server's /api/models waited for ever on a FIFO."""
    from stages.lib.own_digits.classify import Classifier, recorded_accuracy, tensors_meta

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    os.mkfifo(tmp_path / "metrics/linear.json")
    (tmp_path / "data/tensors").mkdir(parents=True)
    os.mkfifo(tmp_path / "data/tensors/meta.json")
    signal.alarm(20)  # a hang fails the test instead of stalling the suite
    try:
        linear = Classifier("linear", Path("models/linear.pt"), "abcd", None, "linear",
                            [3, 7], [7, 3], {})
        assert recorded_accuracy(linear) == (
            None, "metrics/linear.json: is a FIFO (named pipe), not a text file")
        assert tensors_meta() is None
    finally:
        signal.alarm(0)


def test_lr_find_refuses_an_out_path_it_cannot_write_before_the_sweep(capsys):
    """Before: two minutes of the CNN's sweep, then `File exists`."""
    from stages.lr_find import parse_args

    with pytest.raises(SystemExit) as exit:
        parse_args(["train_cnn", "--out", str(ROOT / "README.md" / "plot.png")])
    assert exit.value.code == 2
    assert "README.md is a file, not a folder" in capsys.readouterr().err


def test_a_host_with_a_name_part_over_63_characters_is_one_line():
    from stages.lib.own_digits.server import listen

    with pytest.raises(UserError, match="not an address of this machine \\(a part of the name "
                                        "is over 63 characters\\)"):
        listen("a" * 64, 0)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")
def test_the_bracketed_ipv6_loopback_the_docs_name_is_listened_on():
    from stages.lib.own_digits.server import listen

    try:
        sock = listen("[::1]", 0)
    except UserError as err:
        if "Cannot assign" in str(err) or "not available" in str(err):
            pytest.skip(f"no IPv6 loopback here: {err}")
        raise
    assert sock.getsockname()[0] == "::1"
    sock.close()


def test_a_full_disk_in_a_folder_swap_names_the_folder_not_its_temp(tmp_path):
    """Before: `could not write .report.22275.q9ry7_b6.tmp/figures/mean_images.png: No space
    left on device`, a path the reader never sees."""
    from stages.lib.infra.files import WriteFailed, atomic_dir

    def full(folder: Path) -> None:
        raise WriteFailed(folder / "figures" / "mean_images.png",
                          OSError(28, "No space left on device"))

    with pytest.raises(UserError) as err:
        with atomic_dir(tmp_path / "report") as tmp:
            full(tmp)
    assert str(err.value).startswith(f"could not write {tmp_path / 'report'}/figures/"
                                     f"mean_images.png: No space left on device")
    assert hidden(tmp_path) == []


def test_a_folder_swap_that_cannot_rename_leaves_no_empty_temp_folder(tmp_path, monkeypatch):
    """Before: an EBUSY (the folder a mount point) left an empty .report.<pid>.*.old/."""
    from stages.lib.infra.files import atomic_dir

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("old")
    real = os.replace

    def busy(source, target):
        if str(source).endswith(".tmp"):
            raise OSError(16, "Device or resource busy")
        return real(source, target)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(UserError, match="Device or resource busy"):
        with atomic_dir(tmp_path / "report") as tmp:
            (tmp / "report.md").write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "report" / "report.md").read_text() == "old"
    assert hidden(tmp_path) == []


def test_a_seed_study_that_cannot_write_its_rows_keeps_its_old_summary(tmp_path, monkeypatch):
    """summary.md and runs.tsv are replaced together. Before: a new summary.md beside the
    old runs.tsv (or none), and `the outputs are left as they were`."""
    import pandas as pd

    from stages import seed_study

    monkeypatch.setattr(seed_study, "OUT_DIR", tmp_path)
    (tmp_path / "summary.md").write_text("old summary")
    real = os.replace

    def full_onto_runs(source, target):  # the disk full as runs.tsv is put in place
        if str(target).endswith("runs.tsv") and str(source).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(os, "replace", full_onto_runs)
    runs = pd.DataFrame({"seed": [0, 1], "cnn": [0.99, 0.98]})
    monkeypatch.setattr(seed_study.experiments, "experiments",
                        lambda: [type("E", (), {"name": n})() for n in ("seed-0", "seed-1")])
    monkeypatch.setattr(seed_study, "succeeded", lambda ran: (ran, []))
    monkeypatch.setattr(seed_study, "study_frame", lambda good: runs)
    monkeypatch.setattr(seed_study, "summarise", lambda frame: frame)
    monkeypatch.setattr(seed_study, "summary_markdown", lambda frame: "new table")
    monkeypatch.setattr(seed_study, "runs_markdown", lambda frame: "new rows")
    with pytest.raises(UserError, match="runs.tsv: No space left on device"):
        seed_study.write_summary({0: "seed-0", 1: "seed-1"}, "a study")
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "summary.md").read_text() == "old summary"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("odd", ["fifo", "huge"])
def test_a_metrics_file_that_is_a_fifo_or_huge_is_named_by_the_summary(tmp_path, odd):
    """Before: a FIFO was `not found`, and a 30 GB sparse file was read whole."""
    from tests.test_summary import write_run

    write_run(tmp_path)
    path = tmp_path / "metrics/mlp.json"
    path.unlink()
    if odd == "fifo":
        os.mkfifo(path)
        expected = "metrics/mlp.json: is a FIFO (named pipe), not a text file"
    else:
        with open(path, "wb") as handle:
            handle.truncate(30 * 2**30)
        expected = "metrics/mlp.json: over 16 MiB, not a file this pipeline writes or reads"
    signal.alarm(30)
    try:
        result = summary_of(tmp_path)
    finally:
        signal.alarm(0)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error in command 'summary': {expected}" in result.stderr


def test_a_dvc_lock_that_is_a_fifo_is_named_not_waited_on(tmp_path):
    from tests.test_summary import write_run

    write_run(tmp_path)
    (tmp_path / "dvc.lock").unlink()
    os.mkfifo(tmp_path / "dvc.lock")
    signal.alarm(30)
    try:
        result = summary_of(tmp_path)
    finally:
        signal.alarm(0)
    assert result.returncode == 2
    assert "dvc.lock: is a FIFO (named pipe), not a text file" in result.stderr


def test_a_huge_tensor_metadata_file_is_not_read_by_predict(tmp_path, monkeypatch):
    """Before: a 30 GB sparse data/tensors/meta.json was read whole by predict and serve."""
    from stages.lib.own_digits.classify import tensors_meta

    (tmp_path / "meta.json").touch()
    with open(tmp_path / "meta.json", "wb") as handle:
        handle.truncate(30 * 2**30)
    start = time.monotonic()
    assert tensors_meta(tmp_path / "meta.json") is None
    assert time.monotonic() - start < 5


def test_a_step_of_the_wall_clock_does_not_make_a_running_writer_s_temps_stale(tmp_path,
                                                                             monkeypatch):
    """A temp's owner is its writer's pid and start in clock ticks since boot. Before, the
    start was psutil's create_time, which a step of the wall clock (NTP, a resumed VM) moves:
    the next command then took a running stage's temps for a dead one's and removed them."""
    from stages.lib.infra.files import _owner

    ours = tmp_path / "models" / f".m.pt.{_owner()}.abcd1234.tmp"
    ours.parent.mkdir()
    ours.write_text("a running writer's")
    real = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 3600)
    recover_outputs(tmp_path)
    assert ours.exists()
