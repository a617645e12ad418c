"""Stage `train_cnn`: the chapter's last step, a resnet18 trained from scratch.

The book: `learn = cnn_learner(dls, resnet18, pretrained=False, loss_func=F.cross_entropy,
metrics=accuracy)`, then `learn.fit_one_cycle(1, 0.1)`. Here (params: train_cnn):
- model: torchvision's resnet18 (its code, in stages/lib/learning/resnet.py; or `arch`
  resnet34), untrained, its first conv taking the one grey channel, one output per digit;
  its input standardised by the training pixels' own mean and std (the book feeds raw
  pixels: why, in docs/cnn.md);
- optimizer: fastai's Adam, with true weight decay `wd` (none on biases and BatchNorm);
- loss: cross-entropy;
- `fit_one_cycle(epochs, lr)`: the learning rate warms up from lr/25 to its peak `lr` over
  the first 25% of the steps, then anneals to lr/1e5, while Adam's β1 goes 0.95 -> 0.85 ->
  0.95; batches of `batch_size`, reshuffled every epoch (`shuffle`), the last, smaller one
  dropped (a BatchNorm batch of one would fail), as fastai's loader does;
- saved: models/cnn.pt (with the schedule as followed), metrics/cnn.json, plots/cnn.tsv,
  dvclive/cnn/.

The reader's fastai finale (docs/cnn.md#the-fastai-finale), `vision_learner(dls, resnet34)`
then `fine_tune(epochs, base_lr)`, is the same recipe with `weights: imagenet` (torchvision's
ImageNet weights, the grey channel fed as the three they expect, normalised with ImageNet's
statistics, a new head), `fit: fine_tune` (fastai's: one epoch with the body frozen, then
`epochs` unfrozen at discriminative learning rates) and `augment: true` (fastai's
aug_transforms(), on training batches).
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch

from stages.lib.infra.errors import run_stage
from stages.lib.infra.params import Params, load_params
from stages.lib.learning.augment import Augment
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import cross_entropy_loss
from stages.lib.learning.models import initial_model, input_stats, layer_groups
from stages.lib.learning.optim import Adam
from stages.lib.learning.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_weights, start_from
from stages.lib.learning.speedups import FusedAdam, speed_up
from stages.lib.learning.training import TrainingData, TrainingRun, shuffling


def learner(params: Params, data: TrainingData,
            log: TextIO | None = sys.stderr) -> tuple[Learner, dict]:
    """The Learner `dvc repro` trains (and `python -m stages.lr_find train_cnn` sweeps),
    and the config that rebuilds its model from the checkpoint (with, for ImageNet weights,
    what the checkpoint records of their file under "pretrained")."""
    cfg, seed = params.train_cnn, params.base.seed
    body, weights = load_weights(cfg.weights, cfg.arch) if cfg.weights != "none" else (None, None)
    # resnet18 (or arch): from scratch, one grey channel in, standardised by the training
    # pixels; from ImageNet weights, three channels normalised as ImageNet's; one output per digit
    stats = ({"input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD} if body is not None
             else input_stats(data.train.images))
    config = {"kind": "cnn", "arch": cfg.arch, "n_outputs": len(data.digits), "hidden": [],
              **stats}
    model = initial_model(config, seed)
    if body is not None:
        start_from(model[1], body)  # every weight but the new head
    model = model.to(data.train_x.device)
    # fine_tune: fastai's three layer groups, each its own learning rate
    groups = layer_groups(model) if cfg.fit == "fine_tune" else None

    def adam() -> Adam:  # fastai's Adam, true weight decay, over the parameters that train
        return Adam(model, lr=cfg.lr, wd=cfg.wd, layer_groups=groups)

    # The same computation but for float rounding, faster: speedups.py says how and by how much.
    model, opt = speed_up(model, adam())
    learn = Learner(model, *data.tensors(), loss_fn=cross_entropy_loss, opt=opt,
                    batch_size=cfg.batch_size, generator=shuffling(cfg.shuffle, seed),
                    drop_last=True, log=log, batch_tfm=augmenting(params),
                    layer_groups=groups, opt_func=lambda: FusedAdam(adam()))
    return learn, {**config, **({"pretrained": weights} if weights else {})}


def augmenting(params: Params):
    """fastai's aug_transforms() on each training batch, drawn from a generator of its own
    (the seed's second stream: shuffling keeps its order), or None when augment is false."""
    cfg = params.train_cnn
    if not cfg.augment:
        return None
    augment = Augment(**cfg.aug_transforms.model_dump())
    generator = torch.Generator().manual_seed(params.base.seed + 1)
    return lambda xb: augment(xb, generator)


def main() -> None:
    params = load_params()
    cfg = params.train_cnn
    run = TrainingRun("train_cnn", params)  # threads, device, data/tensors
    learn, config = learner(params, run.data)
    with run.recorded(learn):               # DVCLive per epoch; outputs all new or all old
        if cfg.fit == "fine_tune":
            learn.fine_tune(cfg.epochs, cfg.lr)
        else:
            learn.fit_one_cycle(cfg.epochs, cfg.lr)
        run.save(learn, config)


if __name__ == "__main__":
    run_stage("train_cnn", main)
