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
| plain (the chapter's code) | 461 ms | |
| PaddingSkippingConv2d | 241 ms | 1.92× |
| FusedAdam | 449 ms | 1.03× |
| channels-last | 382 ms | 1.21× |
| all three (what train_cnn runs) | 183 ms | 2.52× |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .optim import Adam


def speed_up(model: nn.Module, opt: Adam) -> tuple[nn.Module, "FusedAdam"]:
    """The model with its convs skipping padding-only taps and computing channels-last (in
    place: same weights, same state_dict keys), and an optimizer computing `opt`'s step in
    torch's fused kernel. Call it before the first step: `opt`'s settings carry over, not
    its state."""
    if opt.steps:
        raise ValueError("speed_up takes an optimizer that has not stepped yet")
    skip_padding_taps(model)
    channels_last(model)
    return model, FusedAdam(opt)


def channels_last(model: nn.Module) -> nn.Module:
    """The model's conv weights stored channels-last (NHWC), in place: the same Parameters,
    so an optimizer built on them still holds them. oneDNN then runs every conv, and torch
    every BatchNorm, ReLU and pooling after it, on NHWC images, for which it has faster
    kernels than for NCHW (its AVX2 kernels above all: the portable ones, kernels.py)."""
    return model.to(memory_format=torch.channels_last)


class FusedAdam:
    """optim.Adam's step in `torch.optim.AdamW(fused=True)`: the same formula as fastai's
    (true weight decay `p *= 1 - lr*wd`, then `p -= lr / debias1 * grad_avg /
    (sqrt(sqr_avg / debias2) + eps)`), in one kernel per parameter group.

    Measured (bench.speedups): 6 ms an optimizer step for resnet18 where optim.Adam's
    per-parameter loop takes 27 ms (80 ms on a slower Intel Xeon). It is public torch
    API; its start-up cost (torch.optim imports torch._dynamo, 1.6 s) is already paid by
    torchvision, so the CNN stage starts no slower.

    `lr` and `mom` (β1) are attributes a schedule sets between batches, as on optim.Adam.
    """

    name = "adam"  # the same optimizer, as checkpoints record it

    def __init__(self, adam: Adam):
        groups = [{"params": adam.decay, "weight_decay": adam.wd},
                  {"params": adam.no_decay, "weight_decay": 0.0}]
        self.torch_opt = torch.optim.AdamW(groups, lr=adam.lr, betas=(adam.mom, adam.sqr_mom),
                                           eps=adam.eps, fused=True)

    @property
    def lr(self) -> float:
        return self.torch_opt.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.torch_opt.param_groups:
            group["lr"] = value

    @property
    def mom(self) -> float:
        return self.torch_opt.param_groups[0]["betas"][0]

    @mom.setter
    def mom(self, value: float) -> None:
        for group in self.torch_opt.param_groups:
            group["betas"] = (value, group["betas"][1])

    def step(self) -> None:
        self.torch_opt.step()

    def zero_grad(self) -> None:
        self.torch_opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.torch_opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.torch_opt.load_state_dict(state)


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
    input multiplies 8 of its 9 taps by padding. Skipping them makes a training step 1.92×
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
            return F.conv2d(x, self.weight[:, :, ph:ph + height, pw:pw + width], self.bias)
        return super().forward(x)
