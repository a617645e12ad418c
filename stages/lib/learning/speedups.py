"""What makes the CNN fast on a CPU, kept out of the chapter's code: the models, the Learner
and the optimizers read as the book does without any of it, and `speed_up` switches it all
on with one call in the CNN's recipe (stages/train_cnn.py).

Each speed-up computes what the plain code computes, but for float rounding
(tests/test_speedups.py holds each to its plain version); what they change is the time. The
pipeline's numbers are those of the sped-up code, bit for bit from run to run. Gains, from
`python -m bench.speedups` (the median of 200 training steps of the CNN's resnet18 at batch
128, 2 threads, the portable kernels, on the project's 2-core AMD EPYC, otherwise idle;
docs/performance.md):

| | a training step | vs plain |
|---|---|---|
| plain (the chapter's code) | 440 ms | |
| PaddingSkippingConv2d | 228 ms | 1.93× |
| FusedAdam | 422 ms | 1.04× |
| channels-last | 372 ms | 1.18× |
| all three (what train_cnn runs) | 170 ms | 2.59× |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .optim import Adam


def speed_up(model: nn.Module, opt: Adam) -> tuple[nn.Module, "FusedAdam"]:
    """The model computing channels-last, its convs skipping padding-only taps on the CPU (in
    place: same weights, same state_dict keys), and an optimizer computing `opt`'s step in
    torch's fused kernel. Call it before the first step: `opt`'s settings carry over, not
    its state."""
    if opt.steps:
        raise ValueError("speed_up takes an optimizer that has not stepped yet")
    if next(model.parameters()).device.type == "cpu":
        skip_padding_taps(model)  # a speed-up for oneDNN's CPU kernels only
    channels_last(model)
    return model, FusedAdam(opt)


def channels_last(model: nn.Module) -> nn.Module:
    """The model's conv weights stored channels-last (NHWC), in place: the same Parameters,
    so an optimizer built on them still holds them. oneDNN then runs every conv, and torch
    every BatchNorm, ReLU and pooling after it, on NHWC images, for which it has faster
    kernels than for NCHW (its AVX2 kernels above all: the portable ones, kernels.py)."""
    return model.to(memory_format=torch.channels_last)


class FusedAdam:
    """optim.Adam's step in torch's fused AdamW kernel (`torch._fused_adamw_`, the kernel
    `torch.optim.AdamW(fused=True)` runs): the same formula as fastai's (true weight decay
    `p *= 1 - lr*wd`, then `p -= lr / debias1 * grad_avg / (sqrt(sqr_avg / debias2) +
    eps)`), in one call per parameter group.

    Measured (bench.speedups): 4.7 ms an optimizer step for resnet18 where optim.Adam's
    per-parameter loop takes 22.6 ms. The kernel is called as torch.optim.AdamW calls it,
    bit for bit (tests/test_speedups.py), without torch.optim itself: building any
    torch.optim optimizer imports torch._dynamo, 1 s of the CNN stage's start.

    `lr` and `mom` (β1) are attributes a schedule sets between batches, as on optim.Adam.
    """

    name = "adam"  # the same optimizer, as checkpoints record it

    def __init__(self, adam: Adam):
        self.lr, self.mom, self.sqr_mom, self.eps = adam.lr, adam.mom, adam.sqr_mom, adam.eps
        self.lr_mults = adam.lr_mults
        # one kernel call per layer group and decay setting: each its own lr and wd
        self.groups = [([p for p in params if adam.group_of[id(p)] == group], wd, group)
                       for group in range(len(adam.lr_mults))
                       for params, wd in ((adam.decay, adam.wd), (adam.no_decay, 0.0))]
        params = adam.decay + adam.no_decay
        # AdamW's state, as it builds it for the fused kernel: float32 step counts
        self.grad_avg = {p: torch.zeros_like(p, memory_format=torch.preserve_format)
                         for p in params}
        self.sqr_avg = {p: torch.zeros_like(p, memory_format=torch.preserve_format)
                        for p in params}
        self.steps = {p: torch.zeros((), dtype=torch.float32, device=p.device) for p in params}

    @torch.no_grad()
    def step(self) -> None:
        for params, wd, group in self.groups:
            params = [p for p in params if p.grad is not None]
            if not params:
                continue
            steps = [self.steps[p] for p in params]
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(params, [p.grad for p in params],
                                [self.grad_avg[p] for p in params],
                                [self.sqr_avg[p] for p in params], [], steps, amsgrad=False,
                                lr=self.lr * self.lr_mults[group], beta1=self.mom,
                                beta2=self.sqr_mom,
                                weight_decay=wd, eps=self.eps, maximize=False)

    def zero_grad(self) -> None:
        for params, _, _ in self.groups:
            for p in params:
                p.grad = None

    def state_dict(self) -> dict:
        return {"lr": self.lr, "mom": self.mom,
                **{name: [t.clone() for t in getattr(self, name).values()]
                   for name in ("grad_avg", "sqr_avg", "steps")}}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.mom = state["lr"], state["mom"]
        for name in ("grad_avg", "sqr_avg", "steps"):
            for mine, saved in zip(getattr(self, name).values(), state[name]):
                mine.copy_(saved)


def skip_padding_taps(model: nn.Module) -> nn.Module:
    """Every plain nn.Conv2d of `model` becomes a PaddingSkippingConv2d, in place.

    The class is swapped rather than the module replaced: a new module would draw a fresh
    init from the global RNG and hold new Parameter objects, where this keeps the very same
    weights (and the optimizer built on them)."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PaddingSkippingConv2d
    return model


class PaddingSkippingConv2d(nn.Conv2d):
    """nn.Conv2d that skips the kernel taps which see only zero padding when its output is
    a single pixel: exactly the same sum without the zeros.

    From 28×28 MNIST, resnet18's last stage works on 2×2 and 1×1 maps: a 3×3 conv on a 1×1
    input multiplies 8 of its 9 taps by padding. Skipping them makes a training step 1.93×
    faster alone with the portable kernels on an AMD EPYC (bench.speedups; 1.06× on an Intel
    Xeon with its native kernels, before the portable ones); the skipped taps get zero
    gradient either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (height, width), (kh, kw) = x.shape[-2:], self.kernel_size
        (ph, pw), (sh, sw) = self.padding, self.stride
        one_pixel = (height + 2 * ph - kh) // sh == 0 and (width + 2 * pw - kw) // sw == 0
        inside_kernel = height + ph <= kh and width + pw <= kw
        if (one_pixel and inside_kernel and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros"):
            taps = _Taps.apply(self.weight, slice(ph, ph + height), slice(pw, pw + width))
            return F.conv2d(x, taps, self.bias)
        return super().forward(x)


class _Taps(torch.autograd.Function):
    """`weight[:, :, rows, cols]`, whose gradient is laid out as the weight is.

    Autograd's own slice builds the weight's gradient in a fresh contiguous tensor, which
    then takes a copy into the channels-last layout of the weight's .grad: for each of
    layer4's 512×512×3×3 convs, 9.4 MB filled and copied twice a step. Built channels-last
    from the start, the gradient becomes .grad as it is. Same values, bit for bit."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        ctx.rows, ctx.cols = rows, cols
        ctx.save_for_backward(weight)
        return weight[:, :, rows, cols]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, = ctx.saved_tensors
        full = torch.zeros_like(weight)  # the skipped taps' gradient: zero, as in nn.Conv2d
        full[:, :, ctx.rows, ctx.cols] = grad
        return full, None, None
