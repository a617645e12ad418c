"""`python -m stages.finale`: the reader's fastai finale as one command, on all ten digits.

The write-up's code: `untar_data(URLs.MNIST)`; a DataBlock with `RandomSplitter(valid_pct=0.2)`,
`batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)]` and batches of 32;
`learn = vision_learner(dls, 'resnet34', metrics=error_rate)`; `lr = learn.lr_find()`;
`learn.fine_tune(epochs=3, base_lr=lr.valley)`; `learn.export(...)`.

Here: `dvc exp run` with experiments.FASTAI_FINALE (the same, as params; docs/cnn.md shows
each line beside its param), in the workspace, so that models/cnn.pt (what learn.export
saves) is what `make serve` and `predict` then answer with; `make reset` goes back. It starts
from torchvision's ImageNet weights where they are in torch.hub's cache, and from scratch,
saying so, where they are not (nothing is downloaded). It ends with the CNN's error rate
and what it could not measure; `python -m bench.finale` then runs the write-up's own
fastai code on the same images, on this machine, beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from stages.lib.infra import experiments
from stages.lib.infra.errors import UserError, run_stage
from stages.lib.infra.files import read_json
from stages.lib.learning.pretrained import PUBLISHED, how_to_get, weights_file


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.finale",
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("-S", "--set-param", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="change one of the finale's params, as `dvc exp run -S` does "
                             "(e.g. -S train_cnn.epochs=1)")
    args = parser.parse_args(argv)
    for setting in args.settings:
        if "=" not in setting or not setting.split("=", 1)[0]:
            parser.error(f"-S {setting}: expected KEY=VALUE, e.g. train_cnn.epochs=1")
    return args


def finale_settings(overrides: list[str]) -> tuple[dict[str, object], str]:
    """The finale's params, then `overrides` (KEY=VALUE, as -S takes them), with ImageNet
    weights if torchvision's file is here and from scratch if not (unless an override names
    the weights); and a line saying what the CNN is and where it starts from."""
    settings = dict(experiments.FASTAI_FINALE)
    settings.update(setting.split("=", 1) for setting in overrides)
    arch = str(settings["train_cnn.arch"])
    cached = weights_file("imagenet", arch) if arch in PUBLISHED else None
    if settings["train_cnn.weights"] == "imagenet" and cached and not cached.exists():
        settings["train_cnn.weights"] = "none"
        return settings, (f"{arch} from scratch: torchvision's ImageNet weights are not at "
                          f"{cached} (to use them: {how_to_get(arch)})")
    if settings["train_cnn.weights"] == "none":
        return settings, f"{arch} from scratch (train_cnn.weights: none)"
    if settings["train_cnn.weights"] == "imagenet" and cached:
        return settings, f"{arch} from torchvision's ImageNet weights ({cached})"
    return settings, f"{arch} from the weights in {settings['train_cnn.weights']}"


def run_experiment(settings: dict[str, object]) -> None:
    """`dvc exp run -S ...` in the workspace, its log streaming to the terminal."""
    command = [experiments.DVC, "exp", "run", *experiments.set_param_args(settings)]
    print("finale:", " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError("the finale's experiment failed (its error is above); the workspace's "
                        "outputs are the last good ones")


def report(metrics: dict, start: str) -> str:
    n_valid, accuracy = metrics["n_valid"], metrics["accuracy"]
    lines = [f"finale: {start}.",
             f"finale: ours, error rate {1 - accuracy:.4f} ({round((1 - accuracy) * n_valid)} of "
             f"{n_valid} validation images wrong; accuracy {accuracy}) after "
             f"{metrics['steps']} steps."]
    lines.append("finale: fastai's code, for comparison: `python -m bench.finale` runs "
                 "the write-up's code on the same images, on this machine.")
    if "pretrained" not in metrics:
        lines.append("finale: not measured here: the error rate from ImageNet weights, the "
                     "write-up's start, which needs the weights file.")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    settings, start = finale_settings(args.settings)
    print(f"finale: the reader's fastai finale, {start}", flush=True)
    run_experiment(settings)
    print(report(read_json("metrics/cnn.json", "the CNN's metrics"), start))


if __name__ == "__main__":
    run_stage("finale", lambda: main(sys.argv[1:]), kind="command")
