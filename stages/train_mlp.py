"""Stage `train_mlp`: the chapter's neural net, trained from scratch with plain SGD.

The book's recipe (params: train_mlp):
- model: the book's `simple_net`, `Linear(784, 30), ReLU, Linear(30, 1)`, with the hidden
  widths of `hidden` (`[30]` is the book's, `[40, 20]` two hidden layers), each layer at
  nn.Linear's own init;
- optimizer: the book's `BasicOptim`, `p -= p.grad * lr`;
- loss: the book's `mnist_loss` (`loss: mnist`; `bce`: binary cross-entropy);
- `fit(epochs)` in batches of `batch_size`, in the book's order unless `shuffle`;
- saved: models/mlp.pt, metrics/mlp.json, plots/mlp.tsv, dvclive/mlp/.

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
    """The Learner `dvc repro` trains (and `python -m stages.lr_find train_mlp` sweeps),
    and the config that rebuilds its model from the checkpoint."""
    cfg, seed, n_classes = params.train_mlp, params.base.seed, len(data.digits)
    # simple_net: Linear(784, 30), ReLU, Linear(30, 1) for hidden [30]
    config = {"kind": "mlp", "n_outputs": 1 if n_classes == 2 else n_classes,
              "hidden": list(cfg.hidden)}
    model = initial_model(config, seed).to(data.train_x.device)
    learn = Learner(model, *data.tensors(), loss_fn=book_loss(cfg.loss, n_classes),
                    opt=BasicOptim(model.parameters(), lr=cfg.lr), batch_size=cfg.batch_size,
                    generator=shuffling(cfg.shuffle, seed), log=log)
    return learn, config


def main() -> None:
    params = load_params()
    run = TrainingRun("train_mlp", params)  # threads, device, data/tensors
    learn, config = learner(params, run.data)
    with run.recorded(learn):               # DVCLive per epoch; outputs all new or all old
        learn.fit(params.train_mlp.epochs)
        run.save(learn, config)


if __name__ == "__main__":
    run_stage("train_mlp", main)
