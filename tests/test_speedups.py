"""The CNN's speed-ups (stages/lib/learning/speedups.py) compute what the plain code
computes: each against its plain version, on tiny data."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from stages.lib.learning.models import build_model
from stages.lib.learning.optim import Adam, decay_and_no_decay
from stages.lib.learning.predictions import batched_logits
from stages.lib.learning.speedups import (FusedAdam, PaddingSkippingConv2d, channels_last,
                                          skip_padding_taps, speed_up)
from tests.helpers import ROOT
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


def test_fused_adam_steps_bit_for_bit_as_torchs_fused_adamw():
    """The kernel called as torch.optim.AdamW(fused=True) calls it, with fastai's settings:
    two groups (no weight decay on biases and BatchNorm), lr and β1 moved between steps,
    channels-last weights; and its state saved and restored, as lr_find does."""
    def trained(make_opt, restore_at=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                              nn.Linear(16, 3)).to(memory_format=torch.channels_last)
        opt, saved = make_opt(model), None
        generator = torch.Generator().manual_seed(1)
        for step in range(6):
            if step == restore_at:
                saved = ({k: v.clone() for k, v in model.state_dict().items()},
                         opt.state_dict())
            lr, mom = 0.01 * (step + 1), 0.95 - 0.02 * step
            set_lr_mom(opt, lr, mom)
            model(torch.randn(8, 2, 4, 4, generator=generator)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        if saved:  # back to step 3, and the same last 3 steps again
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            generator = torch.Generator().manual_seed(1)
            for step in range(6):
                x = torch.randn(8, 2, 4, 4, generator=generator)
                if step >= restore_at:
                    set_lr_mom(opt, 0.01 * (step + 1), 0.95 - 0.02 * step)
                    model(x).square().mean().backward()
                    opt.step()
                    opt.zero_grad()
        return model.state_dict()

    def set_lr_mom(opt, lr, mom):
        if isinstance(opt, torch.optim.AdamW):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (mom, group["betas"][1])
        else:
            opt.lr, opt.mom = lr, mom

    def torch_adamw(model):
        decay, no_decay = decay_and_no_decay(model)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=0.01, betas=(0.9, 0.99), eps=1e-5, fused=True)

    reference = trained(torch_adamw)
    for restore_at in (None, 3):
        fused = trained(lambda m: FusedAdam(Adam(m, lr=0.01, wd=0.1)), restore_at)
        assert all(torch.equal(fused[k], v) for k, v in reference.items()), restore_at


def test_the_cnn_starts_without_torchvision_or_torch_dynamo():
    """Each costs the CNN stage's start a second and more (resnet.py, FusedAdam say why)."""
    code = ("import sys, torch; import stages.train_cnn as t; "
            "from stages.lib.learning.models import build_model; "
            "from stages.lib.learning.optim import Adam; "
            "from stages.lib.learning.speedups import speed_up; "
            "m = build_model({'kind': 'cnn', 'n_outputs': 2}); "
            "m, o = speed_up(m, Adam(m, lr=0.01)); "
            "m(torch.rand(4, 784)).sum().backward(); o.step(); "
            "print(sorted({'torchvision', 'torch._dynamo'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split("\n")[-2] == "[]", result.stdout


def test_padding_skipping_gradients_are_laid_out_as_the_weights():
    """So that a channels-last weight takes its gradient as it is (no copy to re-lay it)."""
    torch.manual_seed(0)
    conv = channels_last(skip_padding_taps(nn.Conv2d(8, 16, 3, padding=1, bias=False)))
    sliced = conv.weight.detach().clone().requires_grad_()
    x = torch.randn(4, 8, 1, 1).to(memory_format=torch.channels_last)
    conv(x).square().sum().backward()
    nn.functional.conv2d(x, sliced[:, :, 1:2, 1:2]).square().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
    assert torch.equal(conv.weight.grad, sliced.grad)  # autograd's own slice, bit for bit


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



def test_a_gpu_s_model_is_channels_last_with_torch_s_own_convs():
    """Skipping padding taps is for oneDNN's CPU kernels: on any device but the CPU (the
    `meta` device stands in for a GPU), speed_up makes the model channels-last, keeps its
    convs and replaces its optimizer."""
    model = build_model({"kind": "cnn", "n_outputs": 2}).to("meta")
    model, opt = speed_up(model, Adam(model, lr=1e-3))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d for m in convs)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not convs[1].weight.is_contiguous()  # a 64×64×3×3: NHWC is not NCHW
    assert isinstance(opt, FusedAdam)
