"""Our Adam, fastai's one-cycle schedule and the learning-rate finder, checked against the
formulas fastai documents (docs/book.md), on tiny data."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from stages.lib.infra.errors import UserError
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import bce_loss, cross_entropy_loss
from stages.lib.learning.lr_find import lr_find, valley
from stages.lib.learning.models import build_model, input_stats
from stages.lib.learning.optim import Adam, BasicOptim, decay_and_no_decay
from stages.lib.learning.schedules import combined_cos, one_cycle, sched_exp
from stages.lib.learning.speedups import speed_up
from tests.test_learner import block_data, make_learner


# --- the one-cycle schedule ------------------------------------------------------------------

@pytest.mark.parametrize("pos", [0.0, 0.1, 0.125, 0.2, 0.25, 0.4, 0.625, 0.9, 1.0])
def test_one_cycle_follows_fastais_formulas(pos):
    lr_max = 0.1
    schedule = one_cycle(lr_max)

    def cos(start, end, p):  # fastai's sched_cos
        return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2

    if pos < 0.25:
        lr, mom = cos(lr_max / 25, lr_max, pos / 0.25), cos(0.95, 0.85, pos / 0.25)
    else:
        p = (pos - 0.25) / 0.75
        lr, mom = cos(lr_max, lr_max / 1e5, p), cos(0.85, 0.95, p)
    assert schedule["lr"](pos) == pytest.approx(lr, rel=1e-12)
    assert schedule["mom"](pos) == pytest.approx(mom, rel=1e-12)


def test_one_cycle_landmarks():
    schedule = one_cycle(0.1)
    assert schedule["lr"](0) == pytest.approx(0.1 / 25)        # warm-up starts at lr_max/25
    assert schedule["lr"](0.125) == pytest.approx((0.004 + 0.1) / 2)  # half-way up the cosine
    assert schedule["lr"](0.25) == pytest.approx(0.1)          # the peak at 25% of the steps
    assert schedule["lr"](1.0) == pytest.approx(0.1 / 1e5)     # annealed to lr_max/1e5
    assert [schedule["mom"](p) for p in (0, 0.25, 1)] == pytest.approx([0.95, 0.85, 0.95])
    lrs = [schedule["lr"](i / 100) for i in range(101)]
    assert lrs[:26] == sorted(lrs[:26]) and lrs[25:] == sorted(lrs[25:], reverse=True)


def test_exponential_sweep():
    schedule = sched_exp(1e-7, 10)
    assert schedule(0) == pytest.approx(1e-7)
    assert schedule(0.5) == pytest.approx(math.sqrt(1e-7 * 10))
    assert schedule(1) == pytest.approx(10)


def test_fit_one_cycle_sets_the_schedule_before_every_batch():
    x, y = block_data(64, n_classes=2)
    model = build_model({"kind": "mlp", "n_outputs": 2, "hidden": [8]})
    learner = Learner(model, x[:48], y[:48], x[48:], y[48:], cross_entropy_loss,
                      Adam(model, lr=0.01), batch_size=10, drop_last=True, log=None)
    learner.fit_one_cycle(2, 0.01)
    schedule = combined_cos(0.25, 0.01 / 25, 0.01, 0.01 / 1e5)
    total = 2 * 4  # 48 // 10 batches per epoch, the smaller last one dropped
    assert [row["step"] for row in learner.hypers] == list(range(total))
    assert [row["lr"] for row in learner.hypers] == [schedule(s / total) for s in range(total)]
    assert learner.opt.lr == learner.hypers[-1]["lr"]
    # A second fit starts its own schedule from the beginning.
    learner.fit_one_cycle(1, 0.01)
    assert learner.hypers[total]["lr"] == pytest.approx(0.01 / 25)


# --- Adam --------------------------------------------------------------------------------------

def fastai_adam_reference(p, grads, lr, mom, wd, sqr_mom=0.99, eps=1e-5, decay=True):
    """fastai's Adam written out for one parameter: weight decay, then the averaged step."""
    grad_avg, sqr_avg = torch.zeros_like(p), torch.zeros_like(p)
    for step, grad in enumerate(grads, start=1):
        if decay:
            p = p * (1 - lr * wd)
        grad_avg = mom * grad_avg + (1 - mom) * grad
        sqr_avg = sqr_mom * sqr_avg + (1 - sqr_mom) * grad * grad
        debias1, debias2 = 1 - mom ** step, 1 - sqr_mom ** step
        p = p - lr / debias1 * grad_avg / ((sqr_avg / debias2).sqrt() + eps)
    return p


def test_adam_matches_fastais_formulas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: [torch.randn_like(p) for _ in range(4)] for n, p in model.named_parameters()}
    opt = Adam(model, lr=0.05, wd=0.1, mom=0.9)
    for i in range(4):
        for n, p in model.named_parameters():
            p.grad = grads[n][i].clone()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        decay = n == "0.weight"  # not biases, not BatchNorm
        expected = fastai_adam_reference(start[n], grads[n], 0.05, 0.9, 0.1, decay=decay)
        assert torch.allclose(p, expected, atol=1e-6), n
        assert p.grad is None


def test_no_weight_decay_on_biases_and_norm_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))
    decay, no_decay = decay_and_no_decay(model)
    assert {id(p) for p in decay} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay) == 4  # conv bias, BatchNorm weight and bias, linear bias


# --- the learning-rate finder -------------------------------------------------------------------

def test_valley_is_a_third_and_a_half_along_the_longest_fall():
    losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 3.0, 9.0]  # falls from index 0 to 6
    lrs = [10.0 ** i for i in range(len(losses))]
    # fastai: max_start = max_end - lds[max_end] = 6 - 7 = -1; sections = 7 / 3;
    # idx = -1 + int(2.33) + int(1.17) = 2
    assert valley(lrs, losses) == 2


@pytest.mark.parametrize("make", [
    lambda: make_learner(lr=0.1, batch_size=8, generator=torch.Generator().manual_seed(2)),
    lambda: adam_learner(), lambda: cnn_learner(fast=True)])
def test_lr_find_restores_model_optimizer_and_shuffling(make):
    learner = make()
    model_before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    opt_before = learner.opt.state_dict()
    rng_before = learner.generator.get_state() if learner.generator is not None else None
    found = lr_find(learner, num_it=30)
    assert len(found.lrs) == len(found.losses) <= 30
    assert all(torch.equal(v, model_before[k]) for k, v in learner.model.state_dict().items())
    assert same_state(learner.opt.state_dict(), opt_before)
    if rng_before is not None:
        assert torch.equal(learner.generator.get_state(), rng_before)
    assert found.lrs[0] == pytest.approx(1e-7) and found.lrs == sorted(found.lrs)
    assert 1e-7 < found.suggestion < 10


def same_state(a, b) -> bool:
    """Whether two optimizer states (dicts, lists, tensors, numbers) are equal throughout."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


def noisy_learner():
    """BCE (the book's mnist_loss is bounded by 1, so it cannot pass 4× its best) on shuffled
    labels, which no model fits: large steps then blow the loss up instead of saturating."""
    learner = make_learner(batch_size=8, loss=bce_loss)
    learner.train_y = learner.train_y[torch.randperm(48, generator=torch.Generator().manual_seed(0))]
    return learner


def test_lr_find_stops_once_the_loss_passes_four_times_the_best():
    learner = noisy_learner()
    found = lr_find(learner, num_it=100)
    assert len(found.lrs) < 100  # lr 10 on this data blows the loss up
    best = min(found.losses[:-1])
    assert found.losses[-1] > 4 * best or not math.isfinite(found.losses[-1])
    assert all(loss <= 4 * best for loss in found.losses[:-1])


def test_lr_find_smooths_with_a_bias_corrected_average():
    learner = make_learner(batch_size=48)  # one batch an epoch: each step sees the same data
    first_loss = learner.loss_fn(learner.model(learner.train_x), learner.train_y).item()
    found = lr_find(learner, num_it=30)
    # Bias correction makes the first smoothed value the first loss itself, not 2% of it.
    assert found.losses[0] == pytest.approx(first_loss, rel=1e-6)


def test_lr_find_that_diverges_at_once_is_a_clear_error():
    learner = noisy_learner()
    with pytest.raises(UserError) as error:
        lr_find(learner, start_lr=1e6, end_lr=1e9, num_it=100)
    message = str(error.value)
    assert message.startswith("the loss diverged after ")
    assert ": once the first tenth and the last 5 are dropped, " in message
    assert "too few to suggest a learning rate from (it takes 20); sweep more batches " \
           "(--num-it 100) or stop lower (--end-lr " in message


# --- the CNN ------------------------------------------------------------------------------------

def adam_learner():
    """A small MLP under Adam and one-cycle's hyperparameters (the plain Adam's state)."""
    torch.manual_seed(0)
    x, y = block_data(64, n_classes=2)
    model = build_model({"kind": "mlp", "n_outputs": 2, "hidden": [8]})
    return Learner(model, x[:48], y[:48], x[48:], y[48:], cross_entropy_loss,
                   Adam(model, lr=0.01), batch_size=8, drop_last=True, log=None)


def cnn_learner(n_classes=2, fast=False):
    """A small CNN learner as train_cnn builds it; `fast`: with its speed-ups on."""
    torch.manual_seed(0)
    x, y = block_data(40, n_classes=n_classes)
    model = build_model({"kind": "cnn", "n_outputs": n_classes})
    opt = Adam(model, lr=1e-3)
    if fast:
        model, opt = speed_up(model, opt)
    return Learner(model, x[:32], y[:32], x[32:], y[32:], cross_entropy_loss, opt,
                   batch_size=8, drop_last=True, log=io.StringIO())


def test_cnn_is_resnet18_taking_one_grey_channel():
    model = build_model({"kind": "cnn", "n_outputs": 10})
    net = model[1]
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 11_175_370  # resnet18, 1 in, 10 out
    assert model.eval()(torch.rand(3, 784)).shape == (3, 10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_our_resnets_are_torchvisions_weight_for_weight(arch):
    """stages/lib/learning/resnet.py, a copy of torchvision's: the same modules in the same
    order, and from one seed the same weights and the same answers, bit for bit."""
    import torchvision.models

    from stages.lib.learning.models import ARCHITECTURES

    for seed in (0, 42):
        torch.manual_seed(seed)
        theirs = getattr(torchvision.models, arch)(weights=None, num_classes=2)
        torch.manual_seed(seed)
        ours = ARCHITECTURES[arch](num_classes=2)
        assert [name for name, _ in ours.named_modules()] == \
               [name for name, _ in theirs.named_modules()]
        state, their_state = ours.state_dict(), theirs.state_dict()
        assert list(state) == list(their_state)
        assert all(torch.equal(state[k], their_state[k]) for k in state)
        x = torch.randn(4, 3, 28, 28)
        assert torch.equal(ours.train()(x), theirs.train()(x))


def test_train_cnn_arch_chooses_the_architecture_and_the_checkpoint_records_it(tmp_path):
    """train_cnn.arch: resnet34 has 3, 4, 6 and 3 blocks where resnet18 has 2 of each; the
    config says which, a checkpoint rebuilds it, and one without `arch` (from before the
    choice) is resnet18. An arch that is not one of them, or on a model that is not a CNN, is
    refused by name."""
    from stages.lib.learning.models import checkpoint_problems, load_checkpoint, save_checkpoint

    config = {"kind": "cnn", "arch": "resnet34", "n_outputs": 2, "hidden": []}
    model = build_model(config)
    net = model[1]
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == \
        [3, 4, 6, 3]
    # torchvision's 21,797,672, less conv1's two other colours (6,272) and fc's 998 other classes
    assert sum(p.numel() for p in model.parameters()) == 21_279_426
    meta = {"digits": [3, 7], "target_digits": [7, 3], "tensors": "t"}
    save_checkpoint(tmp_path / "cnn.pt", model, config, {}, meta, {})
    again, checkpoint = load_checkpoint(tmp_path / "cnn.pt")
    assert checkpoint["config"]["arch"] == "resnet34" and len(again[1].layer3) == 6
    older = build_model({"kind": "cnn", "n_outputs": 2, "hidden": []})
    assert [len(layer) for layer in (older[1].layer1, older[1].layer4)] == [2, 2]
    for bad in ({**config, "arch": "resnet50"},
                {"kind": "mlp", "arch": "resnet18", "n_outputs": 1, "hidden": [4]}):
        problems = checkpoint_problems({**meta, "config": bad, "state_dict": {}})
        assert f"config.arch is {bad['arch']!r} (expected resnet18 or resnet34, for a cnn)" \
            in problems


def test_cnn_standardises_its_input_with_the_stats_its_config_records():
    images = torch.tensor([[0, 255], [255, 255]], dtype=torch.uint8)  # pixels 0, 1, 1, 1
    assert input_stats(images) == {"input_mean": 0.75, "input_std": 0.433}  # √(3/16)
    model = build_model({"kind": "cnn", "n_outputs": 2, "input_mean": 0.5, "input_std": 0.25})
    x = torch.rand(3, 784)
    assert torch.equal(model[0](x), ((x - 0.5) / 0.25).view(3, 1, 28, 28))
    # A checkpoint from before the CNN standardised: the model it was trained as.
    assert torch.equal(build_model({"kind": "cnn", "n_outputs": 2})[0](x), x.view(3, 1, 28, 28))


def test_blank_training_images_are_an_error_not_nan():
    with pytest.raises(UserError, match="all one shade .*every pixel 0.0000"):
        input_stats(torch.zeros(5, 28, 28, dtype=torch.uint8))


def test_the_chapters_cnn_is_plain_pytorch():
    """The model the report and predict rebuild has nn.Conv2d's own convs; the speed-ups are
    train_cnn's, switched on in its recipe (tests/test_speedups.py)."""
    model = build_model({"kind": "cnn", "n_outputs": 2})
    assert {type(m) for m in model.modules() if isinstance(m, nn.Conv2d)} == {nn.Conv2d}


def test_cnn_batchnorm_uses_batch_stats_in_training_and_running_stats_after():
    learner = cnn_learner()
    bn = learner.model[1].bn1
    before = bn.running_mean.clone()
    learner.fit_one_cycle(1, 1e-3)
    assert not torch.equal(bn.running_mean, before)  # updated while training
    frozen = bn.running_mean.clone()
    learner.validate()
    assert not learner.model.training and torch.equal(bn.running_mean, frozen)


def learner_on(device: str, dtype: torch.dtype = torch.float32) -> Learner:
    """cnn_learner with train_cnn's speed-ups, its model and data on `device`."""
    learner = cnn_learner()
    learner.model.to(device=device, dtype=dtype)
    learner.model, learner.opt = speed_up(learner.model, Adam(learner.model, lr=1e-3))
    for name in ("train_x", "valid_x"):
        setattr(learner, name, getattr(learner, name).to(device=device, dtype=dtype))
    for name in ("train_y", "valid_y"):
        setattr(learner, name, getattr(learner, name).to(device))
    return learner


def one_step(learner: Learner) -> tuple[torch.Tensor, dict, dict]:
    """The first batch's logits and gradients, then the weights after the optimizer's step."""
    x, y = learner.train_x[:learner.batch_size], learner.train_y[:learner.batch_size]
    logits = learner.model(x)
    learner.loss_fn(logits, y).backward()
    grads = {n: p.grad.detach().cpu().clone() for n, p in learner.model.named_parameters()}
    learner.opt.step()
    return logits.detach().cpu(), grads, {n: v.cpu() for n, v in
                                          learner.model.state_dict().items()}


def assert_same_but_rounding(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    scale = want.abs().max().item() if want.is_floating_point() and want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cnn_trains_on_a_gpu_as_on_the_cpu(monkeypatch):
    """base.device: cuda, with train_cnn's speed-ups (channels-last on both devices).

    One step, in float64 on both devices: the same logits, gradients and optimizer step, to
    float64's rounding. Not in float32: there a ReLU whose input is within rounding of zero
    can take the other side on the other device, and the gradient behind it changes by the
    whole gradient it passes (seen on an H200: one of layer3's ReLUs, an input of 4.5e-6
    where the largest was 6.6, moved a gradient by 7.6%; docs/performance.md#gpu).

    A whole fit in float32 (TF32, which rounds more, off): the same losses, and the same
    weights but for a few: Adam moves a weight by about lr whatever its gradient's size, so
    where rounding flips the sign of a gradient near zero the devices part by 2 lr at that
    step (seen on an H200: 3 of conv1's 3136 weights, by 0.0019 with lr 1e-3)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu_logits, cpu_grads, cpu_weights = one_step(learner_on("cpu", torch.float64))
    gpu_logits, gpu_grads, gpu_weights = one_step(learner_on("cuda", torch.float64))
    assert_same_but_rounding(gpu_logits, cpu_logits, rtol=1e-9)
    for name, grad in cpu_grads.items():
        assert_same_but_rounding(gpu_grads[name], grad, rtol=1e-9)
    for name, weight in cpu_weights.items():
        assert_same_but_rounding(gpu_weights[name], weight, rtol=1e-9)

    fits = {}
    for device in ("cpu", "cuda"):
        learner = learner_on(device)
        history = learner.fit_one_cycle(1, 1e-3)
        fits[device] = (history[-1], learner.n_batches(), learner.model)
    (cpu_end, n_steps, cpu_model), (gpu_end, _, gpu_model) = fits.values()
    for loss in ("train_loss", "valid_loss"):
        assert gpu_end[loss] == pytest.approx(cpu_end[loss], rel=1e-2)
    lr, gpu_weights = 1e-3, dict(gpu_model.named_parameters())
    for key, value in cpu_model.named_parameters():
        apart = (gpu_weights[key].detach().cpu() - value.detach()).abs()
        assert apart.max() <= 2 * lr * n_steps, key  # at worst a sign flip at every step
        assert (apart > lr).float().mean() <= 0.01, key  # and for a few weights only
    # BatchNorm's running statistics: averages of activations, not steps of Adam
    gpu_buffers = dict(gpu_model.named_buffers())
    for key, value in cpu_model.named_buffers():
        if value.is_floating_point():
            assert_same_but_rounding(gpu_buffers[key].cpu(), value, rtol=0.05)
        else:
            assert torch.equal(gpu_buffers[key].cpu(), value), key  # the batch count


def test_drop_last_skips_the_smaller_last_batch():
    learner = make_learner(batch_size=20)  # 48 training items
    assert [(b.start, b.stop) for b in learner.batches()] == [(0, 20), (20, 40), (40, 48)]
    learner.drop_last = True
    assert [(b.start, b.stop) for b in learner.batches()] == [(0, 20), (20, 40)]
    assert learner.n_batches() == 2
    learner.generator = torch.Generator().manual_seed(0)
    assert [len(b) for b in learner.batches()] == [20, 20]


def test_basic_optim_state_round_trip():
    model = nn.Linear(2, 1)
    opt = BasicOptim(model.parameters(), lr=0.3)
    state = opt.state_dict()
    opt.lr = 5.0
    opt.load_state_dict(state)
    assert opt.lr == 0.3


@pytest.mark.parametrize("args,message", [
    (["--num-it", "10"], "--num-it must be at least 30: fewer leave too few points"),
    (["--num-it", "1000000000"], "--num-it must be at most 1000 (fastai sweeps 100"),
    (["--out", "plot.pdf"], "--out plot.pdf: the plot is written as PNG; give a path ending "
                            "in .png"),
    (["--end-lr", "1e-8"], "--end-lr 1e-08: must be above the start, 1e-07"),
    (["--end-lr", "nan"], "--end-lr nan: must be above the start, 1e-07")])
def test_lr_find_refuses_a_sweep_too_short_and_a_plot_it_would_mislabel(args, message, capsys):
    from stages.lr_find import parse_args

    with pytest.raises(SystemExit) as exit:
        parse_args(["train_mlp", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err
