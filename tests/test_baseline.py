"""Pixel similarity on hand-built images where the answer is known, and the book's exact
figures on real MNIST 3/7."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.lib.learning.metrics import classification_metrics, confusion_matrix, per_class_accuracy
from stages.lib.learning.similarity import class_means, distances, predict_nearest
from tests.helpers import read_json, run


def flat(value: float, n: int = 1) -> torch.Tensor:
    """n uint8 images with every pixel at `value` (0-255)."""
    return torch.full((n, 28, 28), value, dtype=torch.uint8)


def test_class_means_are_per_class_pixel_means():
    images = torch.cat([flat(0), flat(100), flat(51), flat(153)])
    targets = torch.tensor([0, 0, 1, 1])
    means = class_means(images, targets, 2)
    assert means.shape == (2, 28, 28)
    assert torch.allclose(means[0], torch.full((28, 28), 50 / 255))
    assert torch.allclose(means[1], torch.full((28, 28), 102 / 255))


def test_distances_by_hand():
    means = torch.stack([torch.zeros(28, 28), torch.full((28, 28), 0.5)])
    x = torch.zeros(1, 28, 28)
    x[0, 0, 0] = 1.0  # one pixel off from mean 0, every pixel 0.5 off from mean 1
    l1, l2 = distances(x, means, "l1")[0], distances(x, means, "l2")[0]
    assert l1.tolist() == pytest.approx([1 / 784, (0.5 * 783 + 0.5) / 784])
    assert l2.tolist() == pytest.approx([(1 / 784) ** 0.5, 0.5])


def test_the_l2_distance_is_the_exact_float32_root():
    # torch's float32 sqrt misses the exact root in the last bit for about 15% of values,
    # and which ones depends on the CPU; the L2 distance must not (numpy's root is IEEE's
    # correctly rounded one on every CPU).
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 28, 28, generator=generator)
    means = torch.rand(1, 10, 28, 28, generator=generator)
    squares = (images - means).square().mean((-1, -2))
    assert torch.equal(distances(images[:, 0], means[0], "l2"),
                       torch.from_numpy(np.sqrt(squares.numpy())))


def test_l1_and_l2_can_disagree():
    """A single bright pixel: near mean 0 by L1, nearer a uniformly shifted mean by L2."""
    means = torch.stack([torch.zeros(28, 28), torch.full((28, 28), 0.05)])
    x = torch.full((1, 28, 28), 0.05)
    x[0, 0, 0] = 1.0
    images = (x * 255).round().to(torch.uint8)
    assert predict_nearest(images, means, "l1").tolist() == [1]
    x_sparse = torch.zeros(1, 28, 28)
    x_sparse[0, 0, :20] = 1.0
    images = (x_sparse * 255).to(torch.uint8)
    assert predict_nearest(images, means, "l1").tolist() == [0]
    assert predict_nearest(images, means, "l2").tolist() == [1]


def test_two_class_tie_free_predictions():
    train = torch.cat([flat(20, 3), flat(220, 3)])
    means = class_means(train, torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    valid = torch.cat([flat(0), flat(100), flat(130), flat(255)])
    for kind in ("l1", "l2"):
        assert predict_nearest(valid, means, kind).tolist() == [0, 0, 1, 1]


def test_three_classes():
    train = torch.cat([flat(0, 2), flat(128, 2), flat(255, 2)])
    means = class_means(train, torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    valid = torch.cat([flat(250), flat(10), flat(120), flat(200)])
    assert predict_nearest(valid, means, "l1").tolist() == [2, 0, 1, 2]
    assert predict_nearest(valid, means, "l2").tolist() == [2, 0, 1, 2]


def test_batching_does_not_change_predictions():
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=generator)
    means = class_means(train, torch.arange(30) % 3, 3)
    valid = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=generator)
    for kind in ("l1", "l2"):
        assert torch.equal(predict_nearest(valid, means, kind, batch_size=7),
                           predict_nearest(valid, means, kind, batch_size=1000))


def test_metrics_pooled_balanced_and_per_class():
    # digits [3, 7]: target 1 is a 3, target 0 is a 7. Three 3s (2 right), one 7 (right).
    targets = torch.tensor([1, 1, 1, 0])
    preds = torch.tensor([1, 1, 0, 0])
    metrics = classification_metrics(preds, targets, [3, 7])
    assert metrics == {"accuracy": 0.75, "balanced_accuracy": 0.8333,
                       "per_class": {"3": 0.6667, "7": 1.0}}
    assert per_class_accuracy(preds, targets, 2).tolist() == [1.0, pytest.approx(2 / 3)]
    assert confusion_matrix(preds, targets, 2).tolist() == [[1, 0], [1, 2]]


def test_baseline_reproduces_the_book_on_real_mnist(book_project):
    project, _ = book_project
    metrics = read_json(project / "metrics/baseline.json")
    assert metrics["l1"]["per_class"] == {"3": 0.9168, "7": 0.9854}
    assert metrics["l1"]["balanced_accuracy"] == 0.9511
    assert metrics["l1"]["accuracy"] == 0.9514
    assert metrics["l2"]["accuracy"] > 0.95
    assert (metrics["n_train"], metrics["n_valid"], metrics["source"]) == (12396, 2038, "mnist")
    checkpoint = torch.load(project / "models/baseline.pt", weights_only=True)
    assert checkpoint["means"].shape == (2, 28, 28)
    assert checkpoint["digits"] == [3, 7] and checkpoint["target_digits"] == [7, 3]


def test_dvc_metrics_show_reads_the_baseline(book_copy):
    shown = json.loads(run(book_copy, "dvc", "metrics", "show", "--json").stdout)
    baseline = shown[""]["data"]["metrics/baseline.json"]["data"]
    assert baseline["l1"]["per_class"] == {"3": 0.9168, "7": 0.9854}
    table = run(book_copy, "dvc", "metrics", "show").stdout
    assert "metrics/baseline.json" in table and "0.9511" in table
