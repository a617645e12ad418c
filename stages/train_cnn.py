"""Stage `train_cnn`: the chapter's last step, a resnet18 trained from scratch.

The book: `learn = cnn_learner(dls, resnet18, pretrained=False, loss_func=F.cross_entropy,
metrics=accuracy)`, then `learn.fit_one_cycle(1, 0.1)`. Here (params: train_cnn):
- model: torchvision's resnet18 (its code, in stages/lib/learning/resnet.py), untrained,
  its first conv taking the one grey channel, one output per digit; its input standardised
  by the training pixels' own mean and std (the book feeds raw pixels: why, in docs/cnn.md);
- optimizer: fastai's Adam, with true weight decay `wd` (none on biases and BatchNorm);
- loss: cross-entropy;
- `fit_one_cycle(epochs, lr)`: the learning rate warms up from lr/25 to its peak `lr` over
  the first 25% of the steps, then anneals to lr/1e5, while Adam's β1 goes 0.95 -> 0.85 ->
  0.95; batches of `batch_size`, reshuffled every epoch (`shuffle`), the last, smaller one
  dropped (a BatchNorm batch of one would fail), as fastai's loader does;
- saved: models/cnn.pt (with the schedule as followed), metrics/cnn.json, plots/cnn.tsv,
  dvclive/cnn/.
"""

from __future__ import annotations

import sys
from typing import TextIO

from stages.lib.infra.errors import run_stage
from stages.lib.infra.params import Params, load_params
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import cross_entropy_loss
from stages.lib.learning.models import initial_model, input_stats
from stages.lib.learning.optim import Adam
from stages.lib.learning.speedups import speed_up
from stages.lib.learning.training import TrainingData, TrainingRun, shuffling


def learner(params: Params, data: TrainingData,
            log: TextIO | None = sys.stderr) -> tuple[Learner, dict]:
    """The Learner `dvc repro` trains (and `python -m stages.lr_find train_cnn` sweeps),
    and the config that rebuilds its model from the checkpoint."""
    cfg, seed = params.train_cnn, params.base.seed
    # resnet18 (or train_cnn.arch), untrained, one grey channel in, one output per digit,
    # standardised input
    config = {"kind": "cnn", "arch": cfg.arch, "n_outputs": len(data.digits), "hidden": [],
              **input_stats(data.train.images)}
    model = initial_model(config, seed).to(data.train_x.device)
    opt = Adam(model, lr=cfg.lr, wd=cfg.wd)  # fastai's Adam, true weight decay
    # The same computation but for float rounding, faster: speedups.py says how and by how much.
    model, opt = speed_up(model, opt)
    learn = Learner(model, *data.tensors(), loss_fn=cross_entropy_loss, opt=opt,
                    batch_size=cfg.batch_size, generator=shuffling(cfg.shuffle, seed),
                    drop_last=True, log=log)
    return learn, config


def main() -> None:
    params = load_params()
    run = TrainingRun("train_cnn", params)  # threads, device, data/tensors
    learn, config = learner(params, run.data)
    with run.recorded(learn):               # DVCLive per epoch; outputs all new or all old
        learn.fit_one_cycle(params.train_cnn.epochs, params.train_cnn.lr)
        run.save(learn, config)


if __name__ == "__main__":
    run_stage("train_cnn", main)
