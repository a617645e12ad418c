"""The CNN's speed-ups (stages/lib/learning/speedups.py) compute what the plain code
computes: each against its plain version, on tiny data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.lib.learning.models import build_model
from stages.lib.learning.optim import Adam
from stages.lib.learning.predictions import batched_logits
from stages.lib.learning.speedups import (FusedAdam, PaddingSkippingConv2d, channels_last,
                                          skip_padding_taps, speed_up)
from tests.test_optim import cnn_learner


@pytest.mark.parametrize("size, stride, in_ch, skips", [
    (1, 1, 8, True),    # resnet18's layer4 on 28×28 MNIST: 8 of 9 taps see padding
    (2, 2, 8, True),    # layer4's first conv: 2×2 in, one pixel out, 4 taps used
    (2, 1, 8, False),   # more than one output pixel: the ordinary conv
    (7, 2, 8, False),
])
def test_padding_skipping_conv_is_the_same_conv(size, stride, in_ch, skips):
    """Same outputs and gradients as nn.Conv2d, the skipped taps' gradients zero."""
    torch.manual_seed(0)
    plain = nn.Conv2d(in_ch, 16, 3, stride=stride, padding=1, bias=True)
    fast = PaddingSkippingConv2d(in_ch, 16, 3, stride=stride, padding=1, bias=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(5, in_ch, size, size)
    outputs = [conv(x) for conv in (plain, fast)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for out in outputs:
        (out ** 2).sum().backward()
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    if skips:
        assert outputs[0].shape[-2:] == (1, 1) and fast.weight.grad[:, :, 0].abs().sum() == 0
    else:
        assert torch.equal(outputs[1], outputs[0])  # not skipping: nn.Conv2d's own result


@pytest.mark.parametrize("speed_up_model", [skip_padding_taps, channels_last])
def test_resnet18_keeps_its_parameters_weights_and_keys(speed_up_model):
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "n_outputs": 2})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    speed_up_model(model)
    assert [id(p) for p in model.parameters()] == params  # the optimizer's, untouched
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_padding_skipping_swaps_every_conv():
    model = skip_padding_taps(build_model({"kind": "cnn", "n_outputs": 2}))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(type(m) is PaddingSkippingConv2d for m in convs)


def test_channels_last_gives_every_conv_nhwc_weights_and_images():
    model = channels_last(build_model({"kind": "cnn", "n_outputs": 2}))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # Every conv after the first then gets NHWC images (the first's grey input is both).
    seen = []
    for conv in convs[1:]:
        conv.register_forward_pre_hook(lambda m, args: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last)))
    model(torch.rand(4, 784))
    assert seen and all(seen)


@pytest.mark.parametrize("speed_up_model", [skip_padding_taps, channels_last])
def test_a_sped_up_cnn_answers_as_the_plain_one(speed_up_model):
    """What the report and predict rebuild (plain convs, NCHW) answers as the model trained."""
    torch.manual_seed(0)
    plain = build_model({"kind": "cnn", "n_outputs": 2}).eval()
    fast = build_model({"kind": "cnn", "n_outputs": 2}).eval()
    fast.load_state_dict(plain.state_dict())
    speed_up_model(fast)
    x = torch.rand(64, 784)
    torch.testing.assert_close(batched_logits(fast, x), batched_logits(plain, x),
                               rtol=1e-5, atol=1e-5)


def test_fused_adam_steps_as_the_plain_adam():
    """A few steps with β1 moving as one-cycle moves it, weight decay on the weights only."""
    def trained(make_opt):
        torch.manual_seed(0)
        # (A ReLU before the BatchNorm: a bias right before one gets no gradient but
        # rounding noise, which Adam scales up to a full step either way.)
        model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 3))
        opt = make_opt(model)
        generator = torch.Generator().manual_seed(1)
        for step in range(6):
            opt.lr, opt.mom = 0.01 * (step + 1), 0.95 - 0.02 * step
            x = torch.randn(8, 6, generator=generator)
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return model.state_dict()

    plain = trained(lambda m: Adam(m, lr=0.01, wd=0.1))
    fused = trained(lambda m: FusedAdam(Adam(m, lr=0.01, wd=0.1)))
    for key, value in plain.items():
        torch.testing.assert_close(fused[key], value, rtol=1e-5, atol=1e-6)


def test_fused_adam_is_torchs_public_fused_adamw_with_fastais_settings():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    fused = FusedAdam(Adam(model, lr=0.004, wd=0.01))
    torch_opt = fused.torch_opt
    assert isinstance(torch_opt, torch.optim.AdamW) and torch_opt.defaults["fused"] is True
    decay, no_decay = torch_opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [len(decay["params"]), len(no_decay["params"])] == [1, 3]
    assert decay["betas"] == (0.9, 0.99) and decay["eps"] == 1e-5
    fused.lr, fused.mom = 0.1, 0.85  # as a schedule sets them
    assert [(g["lr"], g["betas"]) for g in torch_opt.param_groups] == [(0.1, (0.85, 0.99))] * 2
    assert (fused.lr, fused.mom, fused.name) == (0.1, 0.85, "adam")


def test_speed_up_is_refused_after_the_first_step():
    model = nn.Linear(3, 2)
    opt = Adam(model, lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # its moving averages would be lost
    with pytest.raises(ValueError, match="not stepped"):
        speed_up(model, opt)


def test_a_cnn_fit_with_and_without_the_speed_ups_ends_alike():
    """One short one-cycle fit of the same resnet18 both ways: the same weights but for
    float rounding. Adam turns a rounding-size gradient into a full step, so single weights
    may part by a step's size; each tensor as a whole must stay within 1% of how far the
    fit moved it."""
    start = {k: v.clone() for k, v in cnn_learner().model.state_dict().items()}
    ends = []
    for fast in (False, True):
        learner = cnn_learner(fast=fast)
        learner.fit_one_cycle(1, 1e-3)
        ends.append(learner.model.state_dict())
    plain, fast = ends
    for key, value in plain.items():
        if value.is_floating_point():
            moved = (value - start[key]).norm()
            assert moved > 0, key
            assert (fast[key] - value).norm() <= 0.01 * moved, key
        else:
            assert torch.equal(fast[key], value), key
