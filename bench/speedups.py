"""What each of the CNN's speed-ups (stages/lib/learning/speedups.py) gains: training steps
of train_cnn's resnet18 at its batch size, plain and with each speed-up, on this machine.

    python -m bench.speedups             # 200 steps each (about 4 minutes on 2 cores)
    python -m bench.speedups --steps 50

Each configuration trains its own resnet18 from the same init on the same batch (random
pixels: the time of a step does not depend on them); the five take steps in turn, after 10
warm-up steps each, so that a drift in the machine's speed touches them alike. The optimizer's
step is also timed alone. Run it with the machine otherwise idle; it computes with the kernels
params.yaml's base.kernels names (stages/__init__.py pins them), and says which.
"""

from __future__ import annotations

import argparse
import time

import torch

from stages.lib.infra.kernels import kernels_setting, use_kernels
from stages.lib.learning.losses import cross_entropy_loss
from stages.lib.learning.models import build_model
from stages.lib.learning.optim import Adam
from stages.lib.learning.speedups import FusedAdam, channels_last, skip_padding_taps

BATCH = 128  # train_cnn.batch_size in params.yaml
WARM_UP = 10


# (label, FusedAdam, PaddingSkippingConv2d, channels-last)
CONFIGURATIONS = (("plain (the chapter's code)", False, False, False),
                  ("+ PaddingSkippingConv2d", False, True, False),
                  ("+ FusedAdam", True, False, False),
                  ("+ channels-last", False, False, True),
                  ("all three (train_cnn)", True, True, True))


def training_step(fused: bool, skip_padding: bool, nhwc: bool):
    """A function doing one training step of a fresh resnet18 set up so; it returns the
    seconds of the whole step and of the optimizer's step."""
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "n_outputs": 2}).train()
    if skip_padding:
        skip_padding_taps(model)
    if nhwc:
        channels_last(model)
    opt = Adam(model, lr=0.005, wd=0.01)
    opt = FusedAdam(opt) if fused else opt
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 784, generator=generator)
    y = torch.randint(0, 2, (BATCH,), generator=generator)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        cross_entropy_loss(model(x), y).backward()
        before_step = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        opt.zero_grad()
        return end - start, end - before_step
    return step


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    steps = parser.parse_args().steps
    kernels = use_kernels(kernels_setting())
    runs = [training_step(*flags) for _, *flags in CONFIGURATIONS]
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    # Round robin, one step of each configuration in turn: a machine whose speed drifts
    # over minutes slows them all alike.
    for i in range(WARM_UP + steps):
        for run, timed in zip(runs, times):
            seconds = run()
            if i >= WARM_UP:
                timed.append(seconds)
    print(f"resnet18 (train_cnn's), batch {BATCH}, {torch.get_num_threads()} threads, "
          f"{kernels}, median of {steps} steps, taken in turn")
    print(f"{'configuration':<34}{'step, ms':>10}{'optimizer, ms':>15}{'vs plain':>10}")
    plain = median([whole for whole, _ in times[0]])
    for (label, *_), timed in zip(CONFIGURATIONS, times):
        whole, step_only = median([w for w, _ in timed]), median([s for _, s in timed])
        print(f"{label:<34}{whole * 1e3:>10.1f}{step_only * 1e3:>15.1f}{plain / whole:>9.2f}x")


if __name__ == "__main__":
    main()
