"""The linear and MLP stages on real MNIST: the book's accuracy, reproducibility, clear
failure on divergence, and DVC rerunning only what a param change touches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from stages.lib.learning.models import load_checkpoint
from stages.lib.learning.history import HISTORY_COLUMNS, read_history
from tests.helpers import read_json, run, run_module, set_params, stages_run

BOOK = {"linear": 0.9696, "mlp": 0.9828}
TOLERANCE = {"linear": 0.01, "mlp": 0.005}


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_reaches_the_books_accuracy(book_project, name):  # the CNN: test_cnn.py
    project, _ = book_project
    metrics = read_json(project / f"metrics/{name}.json")
    assert metrics["accuracy"] == pytest.approx(BOOK[name], abs=TOLERANCE[name])
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "per_class", "n_train", "n_valid",
                            "source", "train_loss", "valid_loss", "epochs"}
    assert metrics["per_class"].keys() == {"3", "7"}


@pytest.mark.parametrize("name, epochs", [("linear", 21), ("mlp", 40), ("cnn", 1)])
def test_history_has_one_row_per_epoch(book_project, name, epochs):
    project, _ = book_project
    lines = (project / f"plots/{name}.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(HISTORY_COLUMNS)
    assert len(lines) == epochs + 1
    last = dict(zip(HISTORY_COLUMNS, lines[-1].split("\t")))
    metrics = read_json(project / f"metrics/{name}.json")
    assert float(last["valid_accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-4)
    # DVCLive's log of the same fit (what `dvc plots show` draws): the same epochs and values.
    history = read_history(project / f"plots/{name}.tsv")
    for column in HISTORY_COLUMNS[1:]:
        logged = (project / f"dvclive/{name}/plots/metrics/{column}.tsv").read_text()
        rows = [line.split("\t") for line in logged.splitlines()]
        assert rows[0] == ["step", column]
        assert [int(step) for step, _ in rows[1:]] == [row["epoch"] for row in history]
        assert [float(v) for _, v in rows[1:]] == pytest.approx(
            [row[column] for row in history], abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "mlp", "cnn"])
def test_checkpoint_rebuilds_the_trained_model(book_project, name):
    project, _ = book_project
    model, checkpoint = load_checkpoint(project / f"models/{name}.pt")
    valid = torch.load(project / "data/tensors/valid.pt", weights_only=True)
    with torch.no_grad():
        logits = model(valid["images"].view(-1, 784).float() / 255)
    # One logit (sigmoid > 0.5) for the linear model and MLP; two, argmax, for the CNN.
    preds = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    accuracy = (preds == valid["targets"]).double().mean().item()
    assert round(accuracy, 4) == read_json(project / f"metrics/{name}.json")["accuracy"]
    assert checkpoint["digits"] == [3, 7]


def test_metrics_show_lists_all_three_models(book_project):
    project, _ = book_project
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json").stdout)[""]["data"]
    assert {"metrics/baseline.json", "metrics/linear.json", "metrics/mlp.json",
            "metrics/cnn.json"} <= set(shown)


def test_retraining_gives_identical_checkpoints_and_metrics(book_copy):
    before = {path: (book_copy / path).read_bytes() for path in (
        "models/linear.pt", "metrics/linear.json", "models/mlp.pt", "metrics/mlp.json",
        "plots/mlp.tsv")}
    threads = str(read_json(book_copy / "metrics/mlp.json")["threads"])  # as it first ran
    run(book_copy, "dvc", "repro", "--force", "--single-item", "train_linear", "train_mlp",
        OMP_NUM_THREADS=threads)
    for path, data in before.items():
        assert (book_copy / path).read_bytes() == data, path


def test_exp_run_with_a_typo_fails(book_copy):
    result = run(book_copy, "dvc", "exp", "run", "-S", "train_mlp.lrr=0.5", check=False)
    assert result.returncode != 0
    assert "lrr" in result.stderr + result.stdout


@pytest.mark.parametrize("stage", ["train_linear", "train_mlp"])
def test_divergence_names_stage_and_lr_and_writes_nothing(book_copy, stage):
    name = stage.removeprefix("train_")
    set_params(book_copy, {f"{stage}.lr": 1e38, f"{stage}.loss": "bce"})
    for path in (f"models/{name}.pt", f"metrics/{name}.json", f"plots/{name}.tsv"):
        (book_copy / path).unlink()
    shutil.rmtree(book_copy / f"dvclive/{name}")  # as DVC clears a stage's outputs
    result = run_module(book_copy, f"stages.{stage}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"training diverged with {stage}.lr = 1e+38" in result.stderr
    for path in (f"models/{name}.pt", f"metrics/{name}.json", f"plots/{name}.tsv",
                 f"dvclive/{name}"):
        assert not (book_copy / path).exists()


def test_a_weight_decay_that_blows_up_is_named_not_the_lr(book_copy):
    set_params(book_copy, {"train_cnn.wd": 1e308})
    result = run_module(book_copy, "stages.train_cnn")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training diverged with train_cnn.wd = 1e+308 and train_cnn.lr = 0.005" \
        in result.stderr
    assert "lr × wd is 5e+305: the weight decay step multiplies each weight by 1 - lr × wd, " \
           "so it alone blows up the weights. Lower train_cnn.wd" in result.stderr
    assert "Lower train_cnn.lr" not in result.stderr


def test_all_ten_digits_train_and_report_every_digit(ten_digit_project):
    project, result = ten_digit_project
    assert stages_run(result.stdout) == ["check_params", "download", "tensorise", "baseline",
                                         "train_linear", "train_mlp", "train_cnn", "report"]
    # mnist-5k: 4000 images to train, 1000 to validate. The documented figures on all of
    # MNIST (experiments.TEN_DIGITS_FLOORS) are asserted by `make bench`.
    for name, bound in {"linear": 0.80, "mlp": 0.90, "cnn": 0.85}.items():
        metrics = read_json(project / f"metrics/{name}.json")
        assert (metrics["n_train"], metrics["n_valid"]) == (4000, 1000), name
        assert len(metrics["per_class"]) == 10 and metrics["accuracy"] >= bound, name
    assert read_json(project / "metrics/cnn.json")["epochs"] == 1
    report = (project / "report/report.md").read_text()
    assert "| acc. 0 |" in report and "| acc. 9 |" in report
    assert "no book figure" in report
    # The run fell back offline: the report says so before anything else (#10).
    assert read_json(project / "data/tensors/meta.json")["requested"] == "auto"
    assert report.splitlines()[2].startswith(
        "> **WARNING: these numbers are from mnist-5k, the 5000-image sample the download "
        "fell back to")
