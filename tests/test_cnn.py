"""The resnet18 stage on real MNIST 3/7 with default params, and `python -m stages.lr_find`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from stages.lib.data.tensors import load_tensors
from stages.lib.learning.models import load_checkpoint
from stages.lib.learning.schedules import one_cycle
from tests.helpers import (copy_project, make_project, read_json, run, run_module, run_stage,
                           set_params)


def test_cnn_accuracy_on_real_mnist(book_project):
    project, result = book_project
    metrics = read_json(project / "metrics/cnn.json")
    assert metrics["n_valid"] == 2038 and metrics["per_class"].keys() == {"3", "7"}
    # Seed to seed, one epoch lands between 4 and 9 of 2038 wrong (docs/cnn.md); the
    # book's one run had 6 wrong (0.997).
    assert metrics["accuracy"] >= 0.995
    assert "train_cnn: accuracy" in result.stderr


def test_cnn_checkpoint_records_the_schedule_it_followed(book_project):
    project, _ = book_project
    _, checkpoint = load_checkpoint(project / "models/cnn.pt")
    training = checkpoint["training"]
    assert training["optimizer"] == "adam" and training["loss"] == "cross_entropy"
    steps = 12396 // training["batch_size"]  # the last, smaller batch is dropped
    assert len(training["hypers"]["lr"]) == steps
    schedule = one_cycle(training["lr"])
    assert training["hypers"]["lr"] == [schedule["lr"](s / steps) for s in range(steps)]
    assert training["hypers"]["mom"] == [schedule["mom"](s / steps) for s in range(steps)]
    # The input is standardised by the training pixels' own mean and std.
    pixels = load_tensors(project / "data/tensors")[1].images.double() / 255
    config = checkpoint["config"]
    assert abs(config["input_mean"] - pixels.mean().item()) <= 5e-5
    assert abs(config["input_std"] - pixels.std(correction=0).item()) <= 5e-5


@pytest.mark.pipeline
def test_cnn_retrains_bit_for_bit(tmp_path):
    """The CNN stage twice on the same data and params: the same bytes. On 3/7 of the
    5000-image sample (800 images to train), so that two runs take seconds; in this process,
    whose random state the first run has moved on (the linear model and MLP retrain through
    DVC, in fresh processes, in test_training.py)."""
    project = make_project(tmp_path / "project", {"data.source": "mnist-5k"})
    run_stage(project, "download", check=True)
    run_module(project, "stages.tensorise", check=True)
    run_module(project, "stages.train_cnn", check=True)
    before = {p: (project / p).read_bytes() for p in ("metrics/cnn.json", "plots/cnn.tsv")}
    weights = load_checkpoint(project / "models/cnn.pt")[0].state_dict()
    assert read_json(project / "metrics/cnn.json")["n_train"] == 800
    run_module(project, "stages.train_cnn", check=True)
    assert {p: (project / p).read_bytes() for p in before} == before
    again = load_checkpoint(project / "models/cnn.pt")[0].state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_cnn_params_are_validated(book_project, tmp_path):
    project = copy_project(book_project[0], tmp_path / "copy")
    set_params(project, {"train_cnn.wd": -0.1})
    result = run_module(project, "stages.train_cnn")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train_cnn.wd: Input should be greater than or equal to 0" in result.stderr


# Sweeps that end well below where each model's loss blows up (the CNN's Adam near lr 1, the
# MLP's SGD near 10), so that no CPU's rounding or thread count can stop them early: a sweep
# to fastai's 10 stops the CNN after 26 to 30 of 30 batches, and 27 are needed.
@pytest.mark.parametrize("stage,end_lr", [("train_mlp", "1"), ("train_cnn", "0.01")])
def test_lr_find_prints_a_suggestion_and_writes_a_plot(book_project, tmp_path, stage, end_lr):
    project = copy_project(book_project[0], tmp_path / "copy", commit=False)
    result = run_module(project, "stages.lr_find", stage, "--num-it", "30", "--end-lr", end_lr,
                        check=True)
    # fastai's schedule: batch i of n at start * (end / start) ** (i / n), the last short of end.
    last_lr = 1e-7 * (float(end_lr) / 1e-7) ** (29 / 30)
    assert f"lr_find {stage}: 30 batches from lr 1e-07 to {last_lr:.3g};" in result.stdout
    assert "valley suggests lr" in result.stdout
    assert f"dvc exp run -S {stage}.lr=" in result.stdout
    with Image.open(project / "lr_find" / f"{stage}.png") as png:
        assert png.format == "PNG" and png.width >= 400
    # Not a stage: nothing DVC tracks has changed.
    assert "modified" not in run(project, "dvc", "status").stdout


def test_lr_find_refuses_an_unknown_stage(book_project):
    result = run_module(book_project[0], "stages.lr_find", "train_cnnn")
    assert result.returncode == 2 and "unknown stage 'train_cnnn'" in result.stderr
