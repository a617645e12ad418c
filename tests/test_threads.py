"""The thread policy (stages/lib/infra/threads.py) and the seed study's summary."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stages.lib.infra.errors import UserError
from stages.lib.infra.files import read_yaml
from stages.lib.infra.experiments import Experiment
from stages.lib.infra.params import validate_params
from stages.lib.results.seed_study import (runs_markdown, study_frame, succeeded, summarise,
                                           summary_markdown)
from stages.lib.infra.threads import _worker_node, choose_threads, queue_workers
from tests.helpers import ROOT, run_module


@pytest.mark.parametrize("workers, cores, expected", [
    (0, 2, 2), (1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_auto_shares_the_cores_among_queue_workers(workers, cores, expected):
    threads = choose_threads("auto", environ={}, cores=cores, workers=workers)
    assert threads.count == expected
    assert ("queue workers" in threads.why) == (workers > 1)


def test_base_threads_wins_over_the_environment_and_the_queue():
    threads = choose_threads(3, environ={"OMP_NUM_THREADS": "1"}, cores=2, workers=2)
    assert (threads.count, threads.why) == (3, "base.threads")
    assert str(threads) == "3 threads (base.threads)"


def test_omp_num_threads_sets_auto():
    threads = choose_threads("auto", environ={"OMP_NUM_THREADS": " 1 "}, cores=8, workers=0)
    assert (threads.count, threads.why) == (1, "OMP_NUM_THREADS")
    assert str(threads) == "1 thread (OMP_NUM_THREADS)"


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_omp_num_threads_is_named(value):
    with pytest.raises(UserError, match=f"OMP_NUM_THREADS={value!r} is not a positive"):
        choose_threads("auto", environ={"OMP_NUM_THREADS": value}, cores=2, workers=0)


def test_queue_workers_are_found_by_their_command_line():
    assert _worker_node(["/venv/bin/python", "/venv/bin/dvc", "exp", "queue-worker",
                         "dvc-exp-cbe19c-2@localhost"]) == "dvc-exp-cbe19c-2@localhost"
    assert _worker_node(["python", "-m", "stages.train_mlp"]) is None
    assert queue_workers() == 0  # pytest was not started by a queue worker


@pytest.mark.parametrize("value, ok", [("auto", True), (1, True), (16, True), (0, False),
                                       ("all", False), (1.5, False), (True, False)])
def test_base_threads_is_validated(value, ok):
    raw = read_yaml(ROOT / "params.yaml", "params")
    raw["base"]["threads"] = value
    if ok:
        assert validate_params(raw).base.threads == value
    else:
        with pytest.raises(UserError, match="base.threads"):
            validate_params(raw)


# --- the seed study's summary ------------------------------------------------------------------

def experiment(seed: int, accuracies: dict[str, float], digits=("3", "7")) -> Experiment:
    params = read_yaml(ROOT / "params.yaml", "params")
    params["base"]["seed"] = seed
    data = {"source": "mnist", "split": "official", "threads": 1, "kernels": "portable",
            "per_class": {d: 0.9 for d in digits}}
    metrics = {f"metrics/{name}.json": {**data, "accuracy": value, "seed": seed}
               for name, value in accuracies.items() if name != "baseline"}
    metrics["metrics/baseline.json"] = {**data, "l1": {
        "accuracy": 0.9514, "balanced_accuracy": accuracies["baseline"],
        "per_class": {d: 0.9 for d in digits}}}
    return Experiment(name=f"seed-{seed}", params=params, metrics=metrics)


def test_an_experiment_without_a_models_metrics_is_named_not_a_traceback():
    broken = experiment(1, {"baseline": 0.9511, "linear": 0.97, "mlp": 0.985, "cnn": 0.996})
    del broken.metrics["metrics/cnn.json"]  # as a queued run that failed leaves it
    with pytest.raises(UserError, match=r"experiment seed-1 has no metrics/cnn.json: did it "
                                        r"fail\? \(`dvc queue logs seed-1`\)"):
        study_frame([broken])


def test_a_failed_experiment_is_never_a_result():
    ok = [experiment(s, {"baseline": 0.9511, "linear": 0.97 + s / 100, "mlp": 0.985,
                         "cnn": 0.996}) for s in (0, 1)]
    # DVC shows a failed experiment with the metrics of the commit it started from.
    failed = replace(experiment(2, {"baseline": 0.9511, "linear": 0.97, "mlp": 0.985,
                                    "cnn": 0.996}), failed="Experiment run failed")
    good, lines = succeeded([*ok, failed])
    assert good == ok and lines == [
        "seed-2: not a result (Experiment run failed; see `dvc queue logs seed-2`)"]
    assert set(study_frame(good)["seed"]) == {0, 1}


def test_two_experiments_with_the_very_same_metrics_are_one_run_not_two_seeds():
    same = experiment(0, {"baseline": 0.9511, "linear": 0.97, "mlp": 0.985, "cnn": 0.996})
    with pytest.raises(UserError, match=r"experiments seed-0 and seed-0b have the very same "
                                        r"metrics, every file: one run counted twice"):
        study_frame([same, replace(same, name="seed-0b")])


def test_metrics_computed_with_another_seed_are_not_the_experiment_s():
    other = experiment(2, {"baseline": 0.9511, "linear": 0.97, "mlp": 0.985, "cnn": 0.996})
    other.metrics["metrics/mlp.json"]["seed"] = 42  # the workspace's, as a failed run shows
    with pytest.raises(UserError, match=r"experiment seed-2's metrics/mlp.json was computed "
                                        r"with seed 42, not its seed 2: not its result"):
        study_frame([other])


def test_the_seed_study_with_a_failed_seed_exits_non_zero_and_says_which(tmp_path, monkeypatch):
    from stages.lib.infra import experiments as dvc_experiments

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    ran = [experiment(s, {"baseline": 0.9511, "linear": 0.97 + s / 100, "mlp": 0.985,
                          "cnn": 0.996}) for s in (0, 1, 2)]
    ran[2] = replace(ran[2], failed="Experiment run failed")
    shown = iter([[], ran])  # none before the study (names free), then its three
    monkeypatch.setattr(dvc_experiments, "experiments", lambda: next(shown))
    monkeypatch.setattr(dvc_experiments, "queue", lambda name, settings: None)
    monkeypatch.setattr(dvc_experiments, "run_queue", lambda jobs: None)
    result = run_module(tmp_path, "stages.seed_study", "--seeds", "0", "1", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        "1 of 3 experiments are not results (the summary above leaves them out):\n"
        "seed-2: not a result (Experiment run failed; see `dvc queue logs seed-2`)")
    assert "| linear | accuracy | 2 |" in result.stdout  # seeds 0 and 1 only
    summary = (tmp_path / "seed_study" / "summary.md").read_text()
    assert "## Not results\n\n- seed-2: not a result" in summary
    runs = (tmp_path / "seed_study" / "runs.tsv").read_text()
    assert "seed-2" not in runs and "seed-1" in runs


def test_summary_gives_mean_sd_range_and_the_book_per_model():
    exps = [experiment(0, {"baseline": 0.9511, "linear": 0.97, "mlp": 0.985, "cnn": 0.996}),
            experiment(1, {"baseline": 0.9511, "linear": 0.96, "mlp": 0.99, "cnn": 0.998}),
            experiment(2, {"baseline": 0.9511, "linear": 0.98, "mlp": 0.985, "cnn": 0.997})]
    summary = summarise(study_frame(exps)).set_index("model")
    assert list(summary.index) == ["baseline_l1", "linear", "mlp", "cnn"]
    linear = summary.loc["linear"]
    assert (linear["seeds"], linear["min"], linear["max"]) == (3, 0.96, 0.98)
    assert linear["mean"] == pytest.approx(0.97) and linear["sd"] == pytest.approx(0.01)
    assert linear["book"] == 0.9696 and linear["book within seeds' range"] == "yes"
    assert summary.loc["mlp", "book within seeds' range"] == "no (below)"  # 0.9828 < 0.985
    assert summary.loc["cnn", "book within seeds' range"] == "yes"  # 0.996 <= 0.997 <= 0.998
    assert summary.loc["baseline_l1", "metric"] == "balanced_accuracy"
    assert summary.loc["baseline_l1", "sd"] == 0.0
    assert summary.loc["cnn", "book"] == 0.997
    text = summary_markdown(summarise(study_frame(exps)))
    assert "| linear | accuracy | 3 | 0.9700 | 0.0100 | 0.9600 | 0.9800 | 0.9696 | yes |" in text
    runs = runs_markdown(study_frame(exps)).splitlines()
    assert runs[0] == "| seed | baseline_l1 | linear | mlp | cnn | threads | kernels |"
    assert runs[2] == "| 0 | 0.9511 | 0.9700 | 0.9850 | 0.9960 | 1 | portable |"


def test_summary_says_which_side_of_the_seeds_range_the_book_is_on():
    exps = [experiment(s, {"baseline": 0.9511, "linear": 0.95, "mlp": 0.99, "cnn": 0.998})
            for s in (0, 1)]
    place = summarise(study_frame(exps)).set_index("model")["book within seeds' range"]
    assert place.to_dict() == {"baseline_l1": "yes", "linear": "no (above)",
                               "mlp": "no (below)", "cnn": "no (below)"}


def test_summary_has_no_book_figure_for_other_digits():
    exps = [experiment(s, {"baseline": 0.99, "linear": 0.97, "mlp": 0.98, "cnn": 0.99},
                       digits=("4", "8")) for s in (0, 1)]
    summary = summarise(study_frame(exps))
    assert summary["book"].map(math.isnan).all()
    assert set(summary["book within seeds' range"]) == {"—"}


def test_seed_study_names_what_is_missing_and_refuses_too_few_seeds(book_copy):
    summarise = run_module(book_copy, "stages.seed_study", "--summarise", "--seeds", "0", "1")
    assert summarise.returncode == 2 and "Traceback" not in summarise.stderr
    assert "no experiment seed-0, seed-1 here" in summarise.stderr
    assert "dvc exp pull REMOTE seed-0 seed-1" in summarise.stderr
    one = run_module(book_copy, "stages.seed_study", "--seeds", "3")
    assert one.returncode == 2 and "--seeds needs two or more distinct seeds" in one.stderr


@pytest.mark.pipeline
def test_stopping_the_seed_study_stops_its_experiments_and_its_advice_works(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from stages.lib.infra.threads import queue_worker_processes
    from tests.helpers import env_with, make_project, run

    project = make_project(tmp_path / "project", {"data.source": "mnist-5k",
                                                  "train_mlp.epochs": 2})
    study = subprocess.Popen([sys.executable, "-m", "stages.seed_study", "--seeds", "0", "1",
                              "2", "-j", "1"], cwd=project, env=env_with(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "Running" not in run(project, "dvc", "queue", "status").stdout:
        assert time.monotonic() < deadline and study.poll() is None
        time.sleep(1)
    time.sleep(3)  # into the first experiment's stages
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert "seed_study: stopped DVC's queue: its workers are gone and nothing runs on." in err
    assert "removed before they started: seed-1, seed-2" in err
    assert queue_worker_processes(str(project)) == []
    status = run(project, "dvc", "queue", "status").stdout
    assert "Running" not in status and "Queued" not in status
    advice = next(line for line in err.splitlines() if "before the next study:" in line)
    command = advice.split("before the next study: ")[1].split()
    assert command[:3] == ["dvc", "exp", "remove"] and "seed-0" in command
    run(project, *command)  # as printed: not blocked by DVC's lock
    assert "seed-0" not in run(project, "dvc", "exp", "show", "--no-pager").stdout
