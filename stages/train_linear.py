"""Stage `train_linear`: the chapter's linear model, trained from scratch with plain SGD.

The book's recipe (params: train_linear):
- model: one linear layer, 784 pixels -> 1 output (`linear1 = nn.Linear(28*28, 1)`), its
  weights and bias drawn from randn (the book's `init_params`, `init: book`) or left at
  nn.Linear's own init (`init: torch`);
- optimizer: the book's `BasicOptim`, `p -= p.grad * lr`;
- loss: the book's `mnist_loss` (`loss: mnist`; `bce`: binary cross-entropy);
- `fit(epochs)` in batches of `batch_size`, in the book's order (all 3s, then all 7s) unless
  `shuffle`;
- saved: models/linear.pt, metrics/linear.json, plots/linear.tsv, dvclive/linear/.

Three or more digits: one output per digit, and cross-entropy.
"""

from __future__ import annotations

import sys
from typing import TextIO

from stages.lib.infra.errors import run_stage
from stages.lib.infra.params import Params, load_params
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import book_loss
from stages.lib.learning.models import initial_model
from stages.lib.learning.optim import BasicOptim
from stages.lib.learning.training import TrainingData, TrainingRun, shuffling


def learner(params: Params, data: TrainingData,
            log: TextIO | None = sys.stderr) -> tuple[Learner, dict]:
    """The Learner `dvc repro` trains (and `python -m stages.lr_find train_linear` sweeps),
    and the config that rebuilds its model from the checkpoint."""
    cfg, seed, n_classes = params.train_linear, params.base.seed, len(data.digits)
    # one linear layer, 784 -> 1 (a logit: sigmoid > 0.5 is the first digit)
    config = {"kind": "linear", "n_outputs": 1 if n_classes == 2 else n_classes, "hidden": []}
    model = initial_model(config, seed, cfg.init).to(data.train_x.device)  # init: book = randn
    learn = Learner(model, *data.tensors(), loss_fn=book_loss(cfg.loss, n_classes),
                    opt=BasicOptim(model.parameters(), lr=cfg.lr), batch_size=cfg.batch_size,
                    generator=shuffling(cfg.shuffle, seed), log=log)
    return learn, config


def main() -> None:
    params = load_params()
    run = TrainingRun("train_linear", params)  # threads, device, data/tensors
    learn, config = learner(params, run.data)
    with run.recorded(learn):                  # DVCLive per epoch; outputs all new or all old
        learn.fit(params.train_linear.epochs)
        run.save(learn, config)


if __name__ == "__main__":
    run_stage("train_linear", main)
