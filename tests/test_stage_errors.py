"""Stages run as the user runs them (`python -m stages.<name>`): bad input stops them with
one clear line, exit code 2, no traceback, and nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import (ROOT, make_project, read_json, run, run_module, run_stage,
                           set_params, stages_run, write_idx_folder)


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project")


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error in stage" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def corrupted_mirror(shared_mnist, folder, name, how):
    folder.mkdir()
    for file in shared_mnist.glob("*.gz"):
        shutil.copy(file, folder / file.name)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2] if how == "truncate"
                                else data[:100] + b"\x00" * 8 + data[108:])
    return folder


@pytest.mark.pipeline
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupted_mirror_file_is_rejected_and_nothing_written(project, shared_mnist, tmp_path,
                                                                how):
    set_params(project, {"data.source": "mnist"})
    mirror = corrupted_mirror(shared_mnist, tmp_path / "mirror", "train-labels-idx1-ubyte.gz",
                              how)
    result = run_stage(project, "download", mirrors=str(mirror))
    assert_user_error(result, "could not get a verified copy of train-labels-idx1-ubyte.gz",
                      f"{mirror} -> train-labels-idx1-ubyte.gz: md5")
    assert not (project / "data" / "raw").exists()
    assert not any((project / "data").glob(".raw.*"))


@pytest.mark.pipeline
def test_second_mirror_used_when_first_is_corrupted(project, shared_mnist, tmp_path,
                                                     mnist_mirror_url):
    set_params(project, {"data.source": "mnist"})
    mirror = corrupted_mirror(shared_mnist, tmp_path / "mirror", "t10k-images-idx3-ubyte.gz",
                              "flip")
    result = run_stage(project, "download", mirrors=f"{mirror},{mnist_mirror_url}", check=True)
    assert f"t10k-images-idx3-ubyte.gz: verified (from {mnist_mirror_url})" in result.stderr
    assert read_json(project / "data/raw/manifest.json")["source"] == "mnist"


@pytest.mark.pipeline
def test_offline_auto_falls_back_to_mnist_5k_loudly(project):
    result = run_stage(project, "download", check=True)
    assert "WARNING: full MNIST could not be downloaded" in result.stderr
    manifest = read_json(project / "data/raw/manifest.json")
    assert manifest["source"] == "mnist-5k" and manifest["requested"] == "auto"
    assert manifest["splits"] == ["train"]


@pytest.mark.pipeline
def test_official_split_with_mnist_5k_is_an_error(project):
    set_params(project, {"data.source": "mnist-5k", "data.split": "official"})
    run_stage(project, "download", check=True)
    result = run_module(project, "stages.tensorise")
    assert_user_error(result, "data.split: official needs the MNIST test set")
    assert not (project / "data" / "tensors").exists()


@pytest.mark.pipeline
def test_invalid_params_stop_a_stage_before_any_work(project):
    set_params(project, {"data.digits": [3]})
    result = run_stage(project, "download")
    assert_user_error(result, "params.yaml is not valid", "data.digits: needs two or more")
    assert not (project / "data").exists()


@pytest.mark.pipeline
def test_missing_local_folder(project, tmp_path):
    set_params(project, {"data.source": str(tmp_path / "no-such-folder")})
    assert_user_error(run_stage(project, "download"), "no-such-folder' is not a known source")


@pytest.mark.pipeline
def test_tensorise_refuses_raw_files_the_manifest_does_not_list(project):
    set_params(project, {"data.source": "mnist-5k"})
    run_stage(project, "download", check=True)
    labels = project / "data/raw/train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-20])  # changed since the download: damaged
    assert_user_error(run_module(project, "stages.tensorise"),
                      "data/raw/train-labels-idx1-ubyte.gz is not the file data/raw/manifest.json "
                      "lists (its sha256 differs)", "rerun `dvc repro download`")
    labels.unlink()
    assert_user_error(run_module(project, "stages.tensorise"),
                      "train-labels-idx1-ubyte.gz is missing, though data/raw/manifest.json")


def test_a_manifest_that_is_not_utf8_is_named(project):
    manifest = project / "data/raw/manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b'{"source": "mnist", "note": "caf\xe9"}\n')
    assert_user_error(run_module(project, "stages.tensorise"),
                      "data/raw/manifest.json is not UTF-8 text: byte 0xe9 on line 1")


def test_tensorise_before_download(project):
    assert_user_error(run_module(project, "stages.tensorise"), "the download manifest not found")


@pytest.mark.pipeline
def test_dvc_repro_fails_on_a_hand_typo_no_stage_would_rerun_for(project):
    # `report.worst_mistakess`: no stage lists it, so without the check_params stage DVC
    # would rerun nothing and exit 0. The check runs first: no data is fetched.
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(
        "worst_mistakes: 12", "worst_mistakes: 12\n  worst_mistakess: 6"))
    result = run(project, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "error in stage 'check_params'" in result.stderr
    assert "report.worst_mistakess: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert stages_run(result.stdout) == ["check_params"]
    assert not (project / "data").exists()


@pytest.mark.parametrize("params,env,message", [
    ({"base.device": "cuda"}, {}, "base.device: cuda asked for, but torch sees no CUDA GPU"),
    ({"data.source": "/no/such/folder"}, {}, "data.source: '/no/such/folder' is not a known "
                                             "source (auto, mnist, mnist-5k) and no such folder"),
    ({}, {"OMP_NUM_THREADS": "four"}, "OMP_NUM_THREADS='four' is not a positive whole number"),
    ({"data.source": "mnist"}, {"MNIST_DEADLINE": "soon"}, "MNIST_DEADLINE='soon' is not a "
                                                           "positive number"),
])
def test_what_is_known_before_a_stage_runs_fails_in_check_params(project, monkeypatch, params,
                                                                  env, message):
    import torch

    if params.get("base.device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    set_params(project, params)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_module(project, "stages.check_params")
    assert_user_error(result, f"error in stage 'check_params': {message}")


def test_check_params_passes_what_the_stages_would_accept(project, tmp_path):
    folder = tmp_path / "mnist"
    write_idx_folder(folder)
    set_params(project, {"data.source": str(folder), "base.threads": 1})
    assert run_module(project, "stages.check_params").returncode == 0


def test_a_stage_records_its_start_and_work_where_asked(project, tmp_path):
    """MNIST_STAGE_TIMES (make bench sets it): a line per stage that ran to the end, none
    for one that failed."""
    times = tmp_path / "times.jsonl"
    for source in ("mnist", "nowhere"):
        set_params(project, {"data.source": source})
        run(project, sys.executable, "-m", "stages.check_params", check=False,
            MNIST_STAGE_TIMES=str(times))
    (record,) = [json.loads(line) for line in times.read_text().splitlines()]
    assert record["stage"] == "check_params" and set(record) == {"stage", "start_s", "work_s"}
    assert 0 < record["start_s"] < 30 and 0 <= record["work_s"] < 30


@pytest.mark.parametrize("stage", ["check_params", "download", "summary"])
def test_what_needs_no_torch_does_not_import_it(stage):
    """`import torch` costs a stage 1.7 s: validating params, the download and the summary
    do without it."""
    code = f"import sys, stages.{stage}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"


def test_check_params_validates_without_torch(project):
    # (printed by an exit handler: a stage ends its process as its work is done)
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch' in sys.modules)); "
            "runpy.run_module('stages.check_params', run_name='__main__')")
    assert run(project, sys.executable, "-c", code).stdout.strip() == "False"


def test_a_stage_that_is_done_ends_its_process_with_exit_handlers_run_and_output_flushed(
        project):
    """exit_now skips Python's teardown (0.5 s after torch), not what a stage's caller sees:
    exit status 0, every line written, the exit handlers run (logging's, finalizers)."""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('handlers ran')); "
            "sys.stdout.write('buffered, not flushed'); "
            "runpy.run_module('stages.check_params', run_name='__main__'); print('not reached')")
    result = run(project, sys.executable, "-c", code)
    assert result.returncode == 0 and result.stdout == "buffered, not flushedhandlers ran\n"


def test_a_command_whose_reader_goes_away_stops_quietly(project):
    """`make metrics | head -3`: once head has its lines, the command stops with 141 (as
    Unix tools do on SIGPIPE) and no BrokenPipeError traceback."""
    code = ("from stages.lib.infra.errors import run_stage; "
            "run_stage('summary', lambda: [print('row', i) for i in range(200_000)], "
            "kind='command')")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=project, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == "row 0\n"
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_a_stage_run_outside_the_venv_says_where_the_packages_are():
    # python -S: no site-packages, as the system Python in a shell where the venv is not
    # active; one line instead of a ModuleNotFoundError from deep in a stage's imports.
    result = subprocess.run([sys.executable, "-S", "-m", "stages.predict", "seven.png"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "lacks the project's packages (torch, psutil" in result.stderr
    assert "`. .venv/bin/activate`" in result.stderr
