"""The benchmark's training comparison on tiny data: the chapter's DataLoader loop and our
Learner must end at the same weights, or the timings compare different work."""

from __future__ import annotations

import torch

from bench.bench import epoch_flops, time_training
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import mnist_loss
from stages.lib.learning.optim import BasicOptim


def test_our_learner_and_the_books_loop_reach_identical_weights():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(600, 784, generator=generator)
    y = (x[:, :392].sum(1) > x[:, 392:].sum(1)).long()
    tensors = ((x[:500], y[:500]), (x[500:], y[500:]))
    for config, book_init in (({"kind": "linear", "n_outputs": 1}, True),
                              ({"kind": "mlp", "n_outputs": 1, "hidden": [8]}, False)):
        row = time_training("m", config, book_init, lr=0.5, epochs=2, tensors=tensors,
                            batch_size=64)
        assert row["max_weight_diff"] == 0.0 and row["same_final_weights"]
        assert row["ours_s_per_epoch"] > 0 and row["book_s_per_epoch"] > 0


def test_an_epochs_flops_count_every_training_batch_and_validation_image():
    """A linear model 784 -> 1: 2·784 FLOPs a forward per image, as many backward (the
    weight's gradient; the input takes none); two full batches of 32 (drop_last), 30
    validation images. Counting does not train the model it counts."""
    x, y = torch.rand(100, 784), torch.randint(0, 2, (100,))
    model = torch.nn.Sequential(torch.nn.Linear(784, 1))
    learner = Learner(model, x[:70], y[:70], x[70:], y[70:], loss_fn=mnist_loss,
                      opt=BasicOptim(model.parameters(), 0.1), batch_size=32, drop_last=True,
                      log=None)
    before = [p.detach().clone() for p in model.parameters()]
    per_image = 2 * 784
    assert epoch_flops(learner) == 2 * 32 * (per_image + per_image) + 30 * per_image
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())


def test_the_gpu_checks_train_the_project_s_params_on_cuda(tmp_path):
    """bench.gpu's copy of the project: params.yaml as committed but for base.device, valid;
    no outputs carried over that the stage's run could be mistaken for."""
    from bench.gpu import cuda_project
    from stages.lib.infra.files import parse_yaml, read_yaml
    from tests.helpers import ROOT

    project = cuda_project(tmp_path)
    params = parse_yaml((project / "params.yaml").read_text(), "params.yaml")
    committed = read_yaml(ROOT / "params.yaml", "params.yaml")
    assert params["base"].pop("device") == "cuda"
    committed["base"].pop("device")
    assert params == committed
    assert (project / "stages" / "train_cnn.py").is_file()
    assert not (project / "metrics").exists() and not (project / "models").exists()
