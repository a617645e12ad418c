"""The Learner, losses and models on tiny synthetic data."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from stages.lib.infra.errors import UserError
from stages.lib.learning.learner import Learner, TrainingDiverged
from stages.lib.learning.losses import (bce_loss, book_loss, cross_entropy_loss, loss_name,
                                        mnist_loss)
from stages.lib.learning.models import build_model, init_params, load_checkpoint, save_checkpoint
from stages.lib.learning.optim import BasicOptim
from stages.lib.learning.predictions import (batch_accuracy, predict, probabilities,
                                             true_class_loss)
from stages.lib.learning.training import live_log


def block_data(n=64, n_classes=2, seed=0):
    """Pixels in [0, 1]: noise, plus a bright block of 784 // n_classes pixels per class."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = 0.3 * torch.rand(n, 784, generator=generator)
    block = 784 // n_classes
    for c in range(n_classes):
        x[y == c, c * block:(c + 1) * block] += 0.7
    return x, y


def make_learner(model=None, lr=0.1, batch_size=16, generator=None, loss=mnist_loss, seed=0):
    torch.manual_seed(seed)
    x, y = block_data()
    model = model or build_model({"kind": "linear", "n_outputs": 1})
    return Learner(model, x[:48], y[:48], x[48:], y[48:], loss_fn=loss,
                   opt=BasicOptim(model.parameters(), lr=lr), batch_size=batch_size,
                   generator=generator, log=io.StringIO())


# --- losses and predictions ----------------------------------------------------------------

def test_mnist_loss_by_hand():
    logits = torch.tensor([[0.0], [0.0], [100.0], [100.0]])
    targets = torch.tensor([1, 0, 1, 0])
    # sigmoid: 0.5, 0.5, 1, 1 -> distances from the right side: 0.5, 0.5, 0, 1
    assert mnist_loss(logits, targets).item() == pytest.approx(0.5)
    assert mnist_loss(torch.tensor([[100.0]]), torch.tensor([1])).item() == pytest.approx(0)


def test_bce_matches_torch():
    logits, targets = torch.tensor([[0.3], [-1.2]]), torch.tensor([1, 0])
    expected = nn.functional.binary_cross_entropy(logits[:, 0].sigmoid(), targets.float())
    assert bce_loss(logits, targets).item() == pytest.approx(expected.item())


def test_loss_choice():
    assert book_loss("mnist", 2) is mnist_loss and book_loss("bce", 2) is bce_loss
    # Three or more digits use cross-entropy whatever `loss` says.
    assert book_loss("mnist", 10) is cross_entropy_loss and book_loss("bce", 3) is cross_entropy_loss
    # What a checkpoint records: the name of the function used.
    assert [loss_name(fn) for fn in (mnist_loss, bce_loss, cross_entropy_loss)] == [
        "mnist", "bce", "cross_entropy"]


def surest(logits):
    """The probability a model gives its own prediction."""
    return probabilities(logits).max(dim=1).values


def test_predict_and_the_probability_of_the_prediction():
    assert predict(torch.tensor([[2.0], [-1.0], [0.0]])).tolist() == [1, 0, 0]
    assert predict(torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])).tolist() == [1, 0]
    assert surest(torch.tensor([[0.0], [-100.0]])).tolist() == pytest.approx([0.5, 1.0])


def test_batch_accuracy_is_the_share_predicted_right():
    logits, targets = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]]), torch.tensor([1, 1, 1, 0])
    assert batch_accuracy(logits, targets).item() == 0.75
    assert batch_accuracy(torch.tensor([[0.1, 3.0], [5.0, 0.0]]), torch.tensor([1, 1])) == 0.5


def test_true_class_loss_ranks_mistakes_that_p_rounds_to_one():
    logits, targets = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]]), torch.tensor([2, 1])
    assert true_class_loss(logits, targets).tolist() == pytest.approx(
        nn.functional.cross_entropy(logits, targets, reduction="none").tolist())
    # One logit: the sigmoid's target 1, the rest target 0. Two mistakes both shown as
    # p 1.000 of the wrong class, 9 and 30 logits deep: their losses still tell them apart.
    one = torch.tensor([[9.0], [-30.0], [-2.0]])
    assert surest(one[:2]).tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    assert true_class_loss(one, torch.tensor([0, 1, 0])).tolist() == pytest.approx(
        [9.0001, 30.0, 0.126928], abs=1e-4)


# --- the Learner ---------------------------------------------------------------------------

def test_loss_goes_down_and_accuracy_up():
    learner = make_learner(lr=1.0)
    history = learner.fit(15)
    assert [row["epoch"] for row in history] == list(range(15))
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["valid_accuracy"] == 1.0


def test_a_step_moves_each_parameter_by_minus_lr_times_grad():
    learner = make_learner(lr=0.5, batch_size=48)  # one batch: one step per epoch
    before = [p.detach().clone() for p in learner.model.parameters()]
    loss = learner.loss_fn(learner.model(learner.train_x), learner.train_y)
    grads = torch.autograd.grad(loss, list(learner.model.parameters()))
    learner.train_epoch()
    for old, grad, new in zip(before, grads, learner.model.parameters()):
        assert torch.allclose(new, old - 0.5 * grad, atol=1e-7)


def test_gradients_are_zeroed_between_steps():
    """Two batches: the second step must use the second batch's gradient alone."""
    learner = make_learner(lr=0.5, batch_size=24)
    reference = build_model({"kind": "linear", "n_outputs": 1})
    reference.load_state_dict(learner.model.state_dict())
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for batch in (slice(0, 24), slice(24, 48)):
        opt.zero_grad()
        mnist_loss(reference(learner.train_x[batch]), learner.train_y[batch]).backward()
        opt.step()
    learner.train_epoch()
    for ours, expected in zip(learner.model.parameters(), reference.parameters()):
        assert torch.allclose(ours, expected, rtol=0, atol=1e-6)
        assert ours.grad is None


def test_training_is_deterministic():
    def train():
        torch.manual_seed(0)
        model = init_params(build_model({"kind": "mlp", "n_outputs": 1, "hidden": [8]}))
        learner = make_learner(model=model, lr=0.5, generator=torch.Generator().manual_seed(3))
        return learner.fit(4), learner.model.state_dict()

    (history_a, state_a), (history_b, state_b) = train(), train()
    assert history_a == history_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_shuffling_changes_batches_reproducibly():
    plain = make_learner().batches()
    assert plain[0] == slice(0, 16)
    first = make_learner(generator=torch.Generator().manual_seed(1)).batches()
    again = make_learner(generator=torch.Generator().manual_seed(1)).batches()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sorted(torch.cat(first).tolist()) == list(range(48))
    assert torch.cat(first).tolist() != list(range(48))


def test_multiclass_with_cross_entropy():
    x, y = block_data(90, n_classes=3)
    model = build_model({"kind": "mlp", "n_outputs": 3, "hidden": [16]})
    learner = Learner(model, x[:60], y[:60], x[60:], y[60:], loss_fn=cross_entropy_loss,
                      opt=BasicOptim(model.parameters(), lr=0.5), batch_size=10,
                      log=None)
    history = learner.fit(20)
    assert history[-1]["valid_accuracy"] == 1.0


def test_divergence_is_detected():
    learner = make_learner(lr=1e38, loss=bce_loss)
    with pytest.raises(TrainingDiverged, match="not finite at epoch 0"):
        learner.fit(3)


def test_prints_a_table_like_fastai():
    learner = make_learner()
    learner.fit(2)
    lines = learner.log.getvalue().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert lines[2].split()[0] == "1" and lines[2].endswith("s")


# --- models and checkpoints ----------------------------------------------------------------

def test_models_have_the_chapters_shapes():
    linear = build_model({"kind": "linear", "n_outputs": 1})
    assert [tuple(p.shape) for p in linear.parameters()] == [(1, 784), (1,)]
    mlp = build_model({"kind": "mlp", "n_outputs": 1, "hidden": [30]})
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    deep = build_model({"kind": "mlp", "n_outputs": 10, "hidden": [40, 20]})
    assert [tuple(p.shape) for p in deep.parameters()][::2] == [(40, 784), (20, 40), (10, 20)]


def test_init_params_draws_std_one_normals():
    model = build_model({"kind": "linear", "n_outputs": 1})
    torch.manual_seed(0)
    init_params(model)
    torch.manual_seed(0)
    expected_weights, expected_bias = torch.randn(1, 784), torch.randn(1)
    assert torch.equal(model[0].weight, expected_weights)
    assert torch.equal(model[0].bias, expected_bias)


def test_checkpoint_round_trip(tmp_path):
    config = {"kind": "mlp", "n_outputs": 1, "hidden": [5]}
    model = build_model(config)
    meta = {"digits": [3, 7], "target_digits": [7, 3], "tensors": "0123abcd", "n_train": 9}
    save_checkpoint(tmp_path / "m.pt", model, config, {"lr": 0.1}, meta, {"accuracy": 0.5})
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt")
    assert checkpoint["config"] == config and checkpoint["digits"] == [3, 7]
    assert checkpoint["target_digits"] == [7, 3] and checkpoint["tensors"] == "0123abcd"
    assert checkpoint["training"] == {"lr": 0.1} and checkpoint["metrics"] == {"accuracy": 0.5}
    x = torch.rand(4, 784)
    assert torch.equal(loaded(x), model(x))


def test_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint .*missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"means": torch.zeros(2)}, tmp_path / "baseline.pt")
    with pytest.raises(UserError, match="not a checkpoint this pipeline wrote"):
        load_checkpoint(tmp_path / "baseline.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole pickled module
    with pytest.raises(UserError, match="not a checkpoint this pipeline wrote"):
        load_checkpoint(tmp_path / "pickled.pt")
    good = {"kind": "linear", "n_outputs": 1, "hidden": []}
    save_checkpoint(tmp_path / "bad.pt", build_model({"kind": "mlp", "n_outputs": 1,
                                                      "hidden": [3]}), good, {},
                    {"digits": [3, 7], "target_digits": [7, 3], "tensors": "0123abcd"}, {})
    with pytest.raises(UserError, match="weights do not fit"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    from stages.lib.infra.device import resolve_device

    with pytest.raises(UserError, match="base.device: cuda asked for, but torch sees no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# --- DVCLive ------------------------------------------------------------------------------

def logged(folder, column):
    path = folder / "plots" / "metrics" / f"{column}.tsv"
    return path.read_text().splitlines()[1:] if path.exists() else []


def test_dvclive_log_grows_epoch_by_epoch_as_the_fit_runs(chdir):
    learner, seen = make_learner(), []
    with live_log("linear", learner) as live:
        log_epoch = learner.on_epoch

        def log_and_look(row):  # what `dvc plots show` would find at the end of each epoch
            log_epoch(row)
            seen.append(len(logged(chdir / "dvclive/linear", "valid_accuracy")))

        learner.on_epoch = log_and_look
        learner.fit(3)
    assert seen == [1, 2, 3]
    assert live.dir == "dvclive/linear" and learner.on_epoch is None
    rows = [line.split("\t") for line in logged(chdir / "dvclive/linear", "train_loss")]
    assert [int(step) for step, _ in rows] == [0, 1, 2]
    assert [float(v) for _, v in rows] == [row["train_loss"] for row in learner.history]
    # dvcyaml=None and save_dvc_exp=False: DVCLive writes no dvc.yaml and no experiment.
    assert sorted(p.name for p in chdir.iterdir()) == ["dvclive", "params.yaml"]


def test_a_failed_fit_leaves_no_dvclive_log(chdir):
    learner = make_learner(lr=1e38, loss=bce_loss)
    with pytest.raises(TrainingDiverged):
        with live_log("linear", learner):
            learner.fit(3)
    assert not (chdir / "dvclive" / "linear").exists()


def test_a_failed_or_stopped_fit_puts_the_last_good_log_back(chdir):
    def log_files():
        return {p.relative_to(chdir): p.read_bytes() for p in (chdir / "dvclive").rglob("*")
                if p.is_file()}

    good_learner = make_learner()
    with live_log("linear", good_learner):
        good_learner.fit(2)
    good = log_files()
    assert len(good) == 4  # metrics.json and a .tsv per logged column

    for error in (TrainingDiverged, KeyboardInterrupt):
        learner = make_learner(lr=1e38, loss=bce_loss) if error is TrainingDiverged \
            else make_learner()
        with pytest.raises(error):
            with live_log("linear", learner):
                learner.fit(3 if error is TrainingDiverged else 1)
                raise KeyboardInterrupt  # Ctrl-C, or SIGTERM's Terminated, mid-run
        assert log_files() == good
        assert [p.name for p in (chdir / "dvclive").iterdir()] == ["linear"]  # no temp left


def test_a_full_disk_mid_fit_is_one_message_and_the_last_good_log_stays(chdir, monkeypatch):
    from dvclive import Live

    good_learner = make_learner()
    with live_log("linear", good_learner):
        good_learner.fit(2)
    good = {p: p.read_bytes() for p in (chdir / "dvclive").rglob("*") if p.is_file()}
    real_next_step = Live.next_step

    def full_at_the_third_epoch(live):
        if live.step == 2:
            raise OSError(28, "No space left on device")
        real_next_step(live)

    monkeypatch.setattr(Live, "next_step", full_at_the_third_epoch)
    learner = make_learner()
    with pytest.raises(UserError, match="^could not write DVCLive's log in dvclive/linear: No "
                                        "space left on device; the outputs are left as they"):
        with live_log("linear", learner):
            learner.fit(4)
    assert {p: p.read_bytes() for p in (chdir / "dvclive").rglob("*") if p.is_file()} == good


def test_an_oserror_of_the_fit_itself_is_not_blamed_on_dvclive(chdir):
    learner = make_learner()
    with pytest.raises(FileNotFoundError, match="not DVCLive's"):
        with live_log("linear", learner):
            raise FileNotFoundError("the fit's own, not DVCLive's")
