"""`python -m stages.lr_find STAGE`: fastai's learning-rate finder for a training stage.

Builds the stage's model, data, loss and optimizer exactly as `dvc repro` would (the
stage's own recipe, `learner` in stages/train_*.py, from params.yaml and data/tensors), sweeps the learning rate from 1e-7 to 10, prints fastai's
`valley` suggestion and writes a plot of loss against learning rate. Not a DVC stage: it
changes nothing the pipeline tracks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from stages.lib.infra.errors import run_stage
from stages.lib.infra.params import load_params
from stages.lib.learning.lr_find import END_LR, MAX_NUM_IT, MIN_NUM_IT, NUM_IT, START_LR, lr_find
from stages.lib.learning.models import TRAINED
from stages.lib.learning.training import TrainingRun
from stages.lib.results import figures

TRAINING_STAGES = tuple(f"train_{name}" for name in TRAINED)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.lr_find", description=__doc__.split(
        "\n\n")[0].split(": ", 1)[1])
    parser.add_argument("stage", help=f"one of {', '.join(TRAINING_STAGES)}")
    parser.add_argument("--num-it", type=int, default=NUM_IT,
                        help=f"batches in the sweep (default {NUM_IT})")
    parser.add_argument("--end-lr", type=float, default=END_LR,
                        help=f"the learning rate the sweep ends at (default {END_LR:g}; it "
                             f"starts at {START_LR:g})")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the plot (default lr_find/STAGE.png)")
    args = parser.parse_args(argv)
    if args.stage not in TRAINING_STAGES:
        parser.error(f"unknown stage {args.stage!r}; choose one of {', '.join(TRAINING_STAGES)}")
    if args.num_it < MIN_NUM_IT:
        parser.error(f"--num-it must be at least {MIN_NUM_IT}: fewer leave too few points to "
                     f"suggest a learning rate from (fastai sweeps {NUM_IT})")
    if args.num_it > MAX_NUM_IT:
        parser.error(f"--num-it must be at most {MAX_NUM_IT} (fastai sweeps {NUM_IT}; the "
                     f"suggestion's search grows with the square of the points)")
    if not START_LR < args.end_lr < float("inf"):
        parser.error(f"--end-lr {args.end_lr:g}: must be above the start, {START_LR:g}")
    if args.out is not None and args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: the plot is written as PNG; give a path ending in .png")
    if args.out is not None and (problem := unwritable(args.out)) is not None:
        parser.error(f"--out {args.out}: {problem}")  # before the sweep, not after it
    return args


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (None: it can, as far as can be told before
    writing): a folder in its place, a file where a folder should be, no write access."""
    if path.is_dir():
        return "is a folder"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK):
        return f"{folder} cannot be written"
    return None


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    out = args.out or Path("lr_find") / f"{args.stage}.png"
    params = load_params()
    recipe = importlib.import_module(f"stages.{args.stage}")
    learner, _ = recipe.learner(params, TrainingRun(args.stage, params).data, log=None)
    if learner.layer_groups is not None:  # fine_tune's: swept as fastai's vision_learner
        learner.freeze()                  # leaves a pretrained model, its body frozen
    cfg = getattr(params, args.stage)
    found = lr_find(learner, START_LR, args.end_lr, args.num_it)
    figures.lr_find_plot(found.lrs, found.losses, found.suggestion, found.suggestion_loss,
                         f"{args.stage} (batch size {cfg.batch_size})", out)
    print(f"lr_find {args.stage}: {len(found.lrs)} batches from lr {START_LR:g} to "
          f"{found.lrs[-1]:.3g}; valley suggests lr {found.suggestion:.3g} "
          f"(params.yaml has {cfg.lr:g})\n"
          f"plot: {out}\n"
          f"try it: dvc exp run -S {args.stage}.lr={found.suggestion:.2g}")


if __name__ == "__main__":
    run_stage("lr_find", lambda: main(sys.argv[1:]), kind="command")
