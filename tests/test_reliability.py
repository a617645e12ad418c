"""Faults around the pipeline: interrupted writes, foreign checkpoints, recovery after a
failed run, and experiments running in parallel."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stages import tensorise
from stages.lib.infra import experiments
from stages.lib.infra.errors import UserError
from stages.lib.infra.files import (atomic_dir, atomic_open, read_yaml, remove_stale_temps,
                                    together, write_json, write_text)
from stages.lib.infra.threads import available_cores
from tests.helpers import (env_with, git, make_project, read_json, run, run_module, run_stage,
                           serve_slowly, set_params, stages_run, write_yaml)


class Interrupted(Exception):
    pass


def test_interrupted_file_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})
    with pytest.raises(Interrupted):
        with atomic_open(path, "w") as handle:
            handle.write('{"accuracy": 0.')
            raise Interrupted
    assert read_json(path) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Interrupted):
        with atomic_open(tmp_path / "model.pt") as handle:
            handle.write(b"half a checkpoint")
            raise Interrupted
    assert list(tmp_path.iterdir()) == []


def test_interrupted_folder_write_keeps_the_old_folder(tmp_path):
    with atomic_dir(tmp_path / "raw") as out:
        (out / "a.gz").write_bytes(b"old")
    with pytest.raises(Interrupted):
        with atomic_dir(tmp_path / "raw") as out:
            (out / "a.gz").write_bytes(b"new")
            (out / "b.gz").write_bytes(b"half")
            raise Interrupted
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["a.gz"]
    assert (tmp_path / "raw" / "a.gz").read_bytes() == b"old"


def hidden_entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def start_download(project, mirror: str) -> subprocess.Popen:
    """The download stage from a mirror trickling bytes, stopped once its temp folder
    exists (it is fetching into data/.raw.<pid>.<random>.tmp/)."""
    process = subprocess.Popen([sys.executable, "-m", "stages.download"], cwd=project,
                               env=env_with(mirror), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (project / "data").is_dir() or not hidden_entries(project / "data"):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    return process


@pytest.mark.pipeline
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, shared_mnist):
    project = make_project(tmp_path / "project", {"data.source": "mnist"})
    with serve_slowly(shared_mnist) as url:
        process = start_download(project, url)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stage 'download' stopped by SIGTERM; no output was half-written" in stderr
    assert "Traceback" not in stderr
    assert list((project / "data").iterdir()) == []


@pytest.mark.pipeline
def test_what_a_sigkill_leaves_is_removed_by_the_next_run(tmp_path, shared_mnist):
    project = make_project(tmp_path / "project", {"data.source": "mnist"})
    with serve_slowly(shared_mnist) as url:
        process = start_download(project, url)
        process.kill()
        process.communicate(timeout=30)
    leftover = hidden_entries(project / "data")
    assert len(leftover) == 1 and leftover[0].startswith(".raw.")  # SIGKILL: no clean-up
    run_stage(project, "download", mirrors=str(shared_mnist), check=True)
    assert [p.name for p in (project / "data").iterdir()] == ["raw"]


def test_stale_temps_of_dead_processes_go_and_those_of_live_ones_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = [f".metrics.json.{dead}.abc123.tmp", f".metrics.json.{os.getpid()}.def456.tmp",
             ".metrics.json.tmp", f".metrics.json.5.{dead}.x.tmp", f".other.json.{dead}.a.tmp"]
    for name in names:
        (tmp_path / name).write_text("partial")
    (tmp_path / f".metrics.json.{dead}.q.old").mkdir()
    removed = remove_stale_temps(tmp_path / "metrics.json")
    assert sorted(p.name for p in removed) == sorted([names[0], f".metrics.json.{dead}.q.old"])
    assert sorted(hidden_entries(tmp_path)) == sorted(names[1:])


def test_outputs_written_together_are_all_new_or_all_old(tmp_path, monkeypatch):
    write_text(tmp_path / "model.pt", "old model")
    write_text(tmp_path / "metrics.json", "old metrics")
    real_replace = os.replace

    def replace_fails_onto_metrics(source, target):
        if str(target).endswith("/metrics.json") and str(source).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_fails_onto_metrics)
    with pytest.raises(UserError, match="could not write .*metrics.json: No space left"):
        with together():
            write_text(tmp_path / "model.pt", "new model")  # its rename comes first
            write_text(tmp_path / "metrics.json", "new metrics")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "model.pt").read_text() == "old model"
    assert (tmp_path / "metrics.json").read_text() == "old metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.pt"]
    with together():
        write_text(tmp_path / "model.pt", "new model")
        assert (tmp_path / "model.pt").read_text() == "old model"  # until the block ends
    assert (tmp_path / "model.pt").read_text() == "new model"


def limit_file_size(limit: int):
    """For a child process: writes past `limit` bytes fail (EFBIG), as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.pipeline
def test_a_failed_write_is_one_message_and_leaves_the_stage_outputs_old(tmp_path):
    project = make_project(tmp_path / "project", {"data.source": "mnist-5k",
                                                  "train_mlp.hidden": [400]})
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    run_module(project, "stages.train_mlp", check=True)
    outputs = ("models/mlp.pt", "metrics/mlp.json", "plots/mlp.tsv")
    before = {p: (project / p).read_bytes() for p in outputs}
    set_params(project, {"train_mlp.lr": 0.05})
    # The checkpoint (1.3 MB) cannot be written; the smaller files could be (and DVCLive's
    # and DVC's databases, which a full disk would stop too).
    result = subprocess.run([sys.executable, "-m", "stages.train_mlp"], cwd=project,
                            env=env_with(), capture_output=True, text=True,
                            preexec_fn=limit_file_size(1_000_000))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "enforce fail" not in result.stderr
    assert ("error in stage 'train_mlp': could not write models/mlp.pt: File too large; "
            "the outputs are left as they were") in result.stderr
    assert {p: (project / p).read_bytes() for p in outputs} == before
    for folder in ("models", "metrics", "plots", "dvclive"):
        assert hidden_entries(project / folder) == []


@pytest.mark.pipeline
def test_stage_interrupted_while_saving_tensors(tmp_path, monkeypatch):
    """tensorise dies writing valid.pt: the tensors of the last good run stay, whole."""
    project = make_project(tmp_path / "project", {"data.source": "mnist-5k"})
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    before = {p.name: p.read_bytes() for p in (project / "data/tensors").iterdir()}

    real_save = torch.save

    def save_then_die(obj, handle, *args, **kwargs):
        if obj["targets"].numel() < 500:  # the valid split: die half-way through it
            handle.write(b"PK\x03\x04 partial")
            raise Interrupted("disk full")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.chdir(project)
    monkeypatch.setattr(torch, "save", save_then_die)
    set_params(project, {"data.digits": [1, 2]})
    with pytest.raises(Interrupted):
        tensorise.main()
    after = {p.name: p.read_bytes() for p in (project / "data/tensors").iterdir()}
    assert after == before
    assert not [p.name for p in (project / "data").iterdir() if p.name.startswith(".")]


def test_report_refuses_models_trained_on_other_tensors(book_copy):
    # The case: new digits tensorised, then only the report rerun.
    set_params(book_copy, {"data.digits": [4, 9]})
    run(book_copy, "dvc", "repro", "-s", "tensorise")
    report = (book_copy / "report/report.md").read_bytes()
    result = run_module(book_copy, "stages.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    tensors = read_json(book_copy / "data/tensors/meta.json")["tensors"]
    assert f"data/tensors holds digits [4, 9] from mnist (tensors {tensors})" in result.stderr
    for stage, files in {"baseline": ("models/baseline.pt", "metrics/baseline.json"),
                         "train_mlp": ("models/mlp.pt", "metrics/mlp.json"),
                         "train_cnn": ("models/cnn.pt", "metrics/cnn.json")}.items():
        for file in files:
            assert f"{file} was computed from tensors" in result.stderr
            assert f"(stage {stage})" in result.stderr
    assert "`dvc repro baseline train_linear train_mlp train_cnn`" in result.stderr
    assert (book_copy / "report/report.md").read_bytes() == report  # the old one, whole

    through_dvc = run(book_copy, "dvc", "repro", "-s", "report", check=False)
    assert through_dvc.returncode != 0
    assert "models/linear.pt was computed from tensors" in through_dvc.stderr


def test_report_refuses_metrics_and_history_of_another_run(book_copy):
    # A hand-copied metrics file: the right tensors, but not this checkpoint's numbers.
    (book_copy / "metrics/mlp.json").write_bytes((book_copy / "metrics/linear.json").read_bytes())
    result = run_module(book_copy, "stages.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "metrics/mlp.json was not computed from models/mlp.pt (stage train_mlp)" \
        in result.stderr
    assert "plots/mlp.tsv is not the history of the run that wrote metrics/mlp.json" \
        in result.stderr
    assert "linear.pt" not in result.stderr and "`dvc repro train_mlp`" in result.stderr


@pytest.mark.parametrize("swap", ["foreign", "missing", "garbage"])
def test_report_refuses_a_missing_or_foreign_checkpoint(book_copy, swap):
    checkpoint = book_copy / "models/mlp.pt"
    if swap == "foreign":
        checkpoint.write_bytes((book_copy / "models/baseline.pt").read_bytes())
    elif swap == "missing":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(b"\x00" * 64)
    result = run_module(book_copy, "stages.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = {"foreign": "is not a checkpoint this pipeline wrote (expected keys",
                "missing": "checkpoint models/mlp.pt not found; run `dvc repro train_mlp` first",
                "garbage": "is not a checkpoint this pipeline wrote"}[swap]
    assert expected in result.stderr


def test_reset_restores_the_last_good_outputs_after_a_failed_repro(book_copy):
    good = {p: (book_copy / p).read_bytes() for p in ("models/mlp.pt", "metrics/mlp.json",
                                                       "report/report.md")}
    set_params(book_copy, {"train_mlp.lr": 1e38, "train_mlp.loss": "bce"})
    failed = run(book_copy, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "training diverged with train_mlp.lr" in failed.stderr
    assert not (book_copy / "models/mlp.pt").exists()  # DVC clears outputs before a stage runs

    reset = run(book_copy, sys.executable, "-m", "stages.reset")  # `make reset`
    assert "Stage 'train_mlp' is cached - skipping run, checking out outputs" in reset.stdout
    assert "Running stage 'train_mlp'" not in reset.stdout
    for path, data in good.items():
        assert (book_copy / path).read_bytes() == data, path
    assert "Data and pipelines are up to date." in run(book_copy, "dvc", "status").stdout
    # DVC rewrote dvc.lock as the commit's and may say `git add dvc.lock`: reset says why not
    assert "dvc.lock and metrics/ are the last commit's: nothing to commit" in reset.stdout


@pytest.mark.long
def test_two_queued_experiments_run_in_parallel_correctly(book_copy, monkeypatch):
    # Through stages.lib.infra.experiments, as the seed study drives DVC's queue.
    monkeypatch.chdir(book_copy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # so base.threads: auto decides
    for lr in (0.05, 0.5):
        experiments.queue(f"lr-{lr}", {"train_mlp.lr": lr})
    experiments.run_queue(2)  # blocks until both ran
    status = run(book_copy, "dvc", "queue", "status").stdout
    assert status.count("Success") == 2, status
    parallel = {exp.params["train_mlp"]["lr"]: exp.metrics["metrics/mlp.json"]
                for exp in experiments.experiments()}
    assert set(parallel) == {0.05, 0.5}
    # Two workers share the 2 cores a thread each (base.threads: auto); the count is recorded.
    cores = available_cores()
    assert {m["threads"] for m in parallel.values()} == {max(1, cores // 2)}
    # The same experiment in the workspace: DVC's run cache gives back the queued run's MLP
    # and report without running them.
    cached = run(book_copy, "dvc", "exp", "run", "-S", "train_mlp.lr=0.5")
    assert stages_run(cached.stdout) == ["check_params"], cached.stdout
    assert "Stage 'train_mlp' is cached - skipping run" in cached.stdout
    assert "Stage 'report' is cached - skipping run" in cached.stdout
    # Run again for real, alone, with the same thread count (here set by the standard
    # variable): bit-identical metrics.
    alone = run(book_copy, "dvc", "exp", "run", "--force", "--single-item", "train_mlp",
                OMP_NUM_THREADS=str(max(1, cores // 2)))
    assert stages_run(alone.stdout) == ["train_mlp"], alone.stdout
    assert read_json(book_copy / "metrics/mlp.json") == parallel[0.5]
    assert parallel[0.05]["accuracy"] != parallel[0.5]["accuracy"]
    diff = json.loads(run(book_copy, "dvc", "metrics", "diff", "--json").stdout)
    assert "metrics/mlp.json" in diff and "metrics/linear.json" not in diff


@pytest.mark.pipeline
def test_a_full_disk_while_dvclive_logs_is_one_message_and_keeps_the_old_log(tmp_path):
    project = make_project(tmp_path / "project", {"data.source": "mnist-5k"})
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    run_module(project, "stages.train_linear", check=True)
    outputs = [p for folder in ("models", "metrics", "plots", "dvclive")
               for p in sorted((project / folder).rglob("*")) if p.is_file()]
    before = {p: p.read_bytes() for p in outputs}
    set_params(project, {"train_linear.lr": 0.5})
    # Past 600 bytes a write fails (EFBIG, as on a full disk): DVC's database that DVCLive
    # opens, long before the checkpoint is written.
    result = subprocess.run([sys.executable, "-m", "stages.train_linear"], cwd=project,
                            env=env_with(), capture_output=True, text=True,
                            preexec_fn=limit_file_size(600))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error in stage 'train_linear': could not write DVCLive's log in dvclive/linear: " \
        in result.stderr and "the outputs are left as they were" in result.stderr
    assert {p: p.read_bytes() for p in outputs} == before
    for folder in ("models", "metrics", "plots", "dvclive"):
        assert hidden_entries(project / folder) == []


def test_report_refuses_a_hand_edited_metrics_file(book_copy):
    # The case: the summary refused it, the report showed it as it was.
    path = book_copy / "metrics/mlp.json"
    metrics = read_json(path)
    path.write_text(json.dumps({**metrics, "accuracy": 0.999}, indent=2) + "\n")
    report = (book_copy / "report/report.md").read_bytes()
    result = run_module(book_copy, "stages.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"metrics/mlp.json does not hold the scores models/mlp.pt records: accuracy is "
            f"0.999 there but {metrics['accuracy']} in the checkpoint") in result.stderr
    assert (book_copy / "report/report.md").read_bytes() == report


def test_the_report_shows_each_models_settings_and_calls_out_a_mix(book_copy):
    report = (book_copy / "report/report.md").read_text()
    training = report.split("## Training")[1].split("##")[0]
    header = next(line for line in training.splitlines() if line.startswith("| model |"))
    assert "| seed | device | threads |" in header
    for name in ("linear", "mlp", "cnn"):
        row = next(line for line in training.splitlines() if line.startswith(f"| {name} |"))
        assert "| 42 | cpu |" in row
    assert "not all produced" not in report
    # base.seed changed, only the MLP retrained: it stands beside seed-42 models.
    set_params(book_copy, {"base.seed": 7})
    run(book_copy, "dvc", "repro", "-s", "train_mlp")
    run(book_copy, "dvc", "repro", "-s", "report")
    report = (book_copy / "report/report.md").read_text()
    assert ("The models were not all produced with the same seed (linear, cnn: 42; mlp: 7). "
            "Rerun them together: `dvc repro`.") in report
    summary = " ".join(run_module(book_copy, "stages.summary", check=True).stdout.split())
    assert "not all produced with the same seed (linear, cnn: 42; mlp: 7)" in summary


def output_files(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes()
            for folder in ("models", "metrics", "plots", "dvclive", "report")
            for p in sorted((project / folder).rglob("*")) if p.is_file()}


@pytest.mark.pipeline
def test_a_fresh_clone_runs_experiments_and_resets_without_losing_a_model(tmp_path):
    """The issue's case: a clone whose dvc.lock names checkpoints trained on another machine
    (which `dvc checkout` would delete), `make run`, an experiment, `make reset`."""
    origin = make_project(tmp_path / "origin", {"data.source": "mnist-5k",
                                                "train_linear.epochs": 2,
                                                "train_mlp.epochs": 2})
    run(origin, "dvc", "repro")
    lock = read_yaml(origin / "dvc.lock", "dvc.lock")
    for stage in lock["stages"].values():  # as trained elsewhere: hashes this cache lacks
        for out in stage.get("outs", []):
            if out["path"].startswith("models/"):
                out["md5"] = "f" * 32
    write_yaml(origin / "dvc.lock", lock)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "outputs of another machine")
    subprocess.run(["git", "clone", "-q", str(origin), str(tmp_path / "clone")], check=True)
    clone = tmp_path / "clone"

    run(clone, "dvc", "repro")  # `make run` on the fresh clone
    assert "Data and pipelines are up to date." in run(clone, "dvc", "status").stdout
    # The sample's one-epoch CNN: 800 images in batches of 128, below the baseline.
    report = (clone / "report/report.md").read_text()
    assert re.search(r"> \*\*cnn: accuracy 0\.\d+ is below the pixel-similarity baseline's "
                     r"0\.\d+; too few optimizer steps to mean much \(1 epoch\(s\) of 800 "
                     r"images in batches of 128: 6 optimizer steps\)\. What to do: train on real "
                     r"MNIST", report), report.split("## Models")[1][:800]
    trained = output_files(clone)
    experiment = run(clone, "dvc", "exp", "run", "-S", "train_mlp.lr=0.5")
    assert "Running stage 'train_mlp'" in experiment.stdout
    assert output_files(clone)["models/mlp.pt"] != trained["models/mlp.pt"]

    reset = run(clone, sys.executable, "-m", "stages.reset")  # `make reset`
    assert "Stage 'train_mlp' is cached - skipping run, checking out outputs" in reset.stdout
    assert "Running stage 'train_" not in reset.stdout  # nothing retrained, the CNN least
    assert "reset: dvc status: Data and pipelines are up to date." in reset.stderr
    assert output_files(clone) == trained  # every model back, byte for byte
    assert "lr: 0.5" not in (clone / "params.yaml").read_text()

    # Known before any stage runs: fails in check_params, before DVC deletes an output.
    for setting, message in (("base.device=cuda", "base.device: cuda asked for, but torch "
                                                  "sees no CUDA GPU"),
                             ("data.source=/no/such/folder", "no such folder exists")):
        if setting.startswith("base.device") and torch.cuda.is_available():
            continue
        failed = run(clone, "dvc", "exp", "run", "-S", setting, check=False)
        assert failed.returncode != 0 and "error in stage 'check_params': " in failed.stderr
        assert message in failed.stderr and "Running stage 'train_" not in failed.stdout
        assert output_files(clone) == trained
        run(clone, sys.executable, "-m", "stages.reset")  # undoes DVC's rewrite of params.yaml
        assert (clone / "params.yaml").read_text() == (origin / "params.yaml").read_text()
    assert output_files(clone) == trained
