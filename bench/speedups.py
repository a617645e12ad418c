"""What each of the CNN's speed-ups (stages/lib/learning/speedups.py) gains: training steps
of train_cnn's resnet18 at its batch size, plain and with each speed-up, on this machine.

    python -m bench.speedups             # 200 steps each (about 2 minutes on 2 cores)
    python -m bench.speedups --steps 50

Each configuration trains from the same init on the same batches (random pixels: the time
of a step does not depend on them) after 10 warm-up steps; the optimizer's step is also
timed alone. Run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import time

import torch

from stages.lib.learning.losses import cross_entropy_loss
from stages.lib.learning.models import build_model
from stages.lib.learning.optim import Adam
from stages.lib.learning.speedups import FusedAdam, skip_padding_taps

BATCH = 128  # train_cnn.batch_size in params.yaml
WARM_UP = 10


def time_steps(fused: bool, skip_padding: bool, steps: int) -> tuple[float, float]:
    """Median seconds of a whole training step and of the optimizer's step alone."""
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "n_outputs": 2}).train()
    if skip_padding:
        skip_padding_taps(model)
    opt = Adam(model, lr=0.005, wd=0.01)
    opt = FusedAdam(opt) if fused else opt
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 784, generator=generator)
    y = torch.randint(0, 2, (BATCH,), generator=generator)
    whole, step_only = [], []
    for i in range(WARM_UP + steps):
        start = time.perf_counter()
        cross_entropy_loss(model(x), y).backward()
        before_step = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        opt.zero_grad()
        if i >= WARM_UP:
            whole.append(end - start)
            step_only.append(end - before_step)
    return sorted(whole)[len(whole) // 2], sorted(step_only)[len(step_only) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    steps = parser.parse_args().steps
    print(f"resnet18 (train_cnn's), batch {BATCH}, {torch.get_num_threads()} threads, "
          f"median of {steps} steps")
    print(f"{'configuration':<34}{'step, ms':>10}{'optimizer, ms':>15}{'vs plain':>10}")
    plain = None
    for label, fused, skip in (("plain (the chapter's code)", False, False),
                               ("+ PaddingSkippingConv2d", False, True),
                               ("+ FusedAdam", True, False),
                               ("both (train_cnn)", True, True)):
        whole, step_only = time_steps(fused, skip, steps)
        plain = plain or whole
        print(f"{label:<34}{whole * 1e3:>10.1f}{step_only * 1e3:>15.1f}{plain / whole:>9.2f}x")


if __name__ == "__main__":
    main()
