"""`python -m bench.finale`: the write-up's own fastai code for the finale
(bench/fastai_finale.py), on the images `python -m stages.finale` trained and validated on
(the workspace's data/tensors), on this machine, beside ours (metrics/cnn.json).

Run it after `python -m stages.finale`. It takes about as long as the finale did, and more
(fastai's lr_find first, and its slower epochs); fastai is installed into bench/.fastai-venv
on first use. Prints both error rates, with the CPU, and writes fastai's to
bench/results/finale.json, where `make metrics` (stages.summary) shows it beside ours for as
long as the CNN's tensors are the ones it ran on.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

from bench.bench import machine, run_fastai, write_mnist_sample
from stages.lib.infra.files import read_json, write_json
from stages.lib.infra.params import load_params
from stages.lib.results.summary import FASTAI_FINALE


def main() -> None:
    params = load_params()
    if params.train_cnn.fit != "fine_tune" or params.train_cnn.arch != "resnet34":
        # the write-up's code trains a resnet34 with fine_tune, nothing else
        sys.exit("bench.finale: the workspace's CNN is not the finale's (a resnet34 trained "
                 "with fine_tune); run `python -m stages.finale` first")
    ours = read_json("metrics/cnn.json", "the CNN's metrics")
    with tempfile.TemporaryDirectory(prefix="finale-") as tmp:
        folder = write_mnist_sample(Path("data/tensors"), Path(tmp))
        print("bench.finale: running the write-up's fastai code ...", file=sys.stderr)
        theirs, _ = run_fastai("fastai_finale.py", folder, str(int("pretrained" in ours)),
                               str(params.train_cnn.epochs))
    cpu = machine()["cpu"]
    write_json(FASTAI_FINALE, {**theirs, "tensors": ours["tensors"], "cpu": cpu,
                               "date": datetime.date.today().isoformat()})
    start = f"from {ours['pretrained']}" if "pretrained" in ours else "from scratch"
    print(f"the finale, resnet34 {start}, on {ours['n_valid']} validation images ({cpu}):\n"
          f"  ours:   error rate {1 - ours['accuracy']:.4f} (lr {params.train_cnn.lr:g}, "
          f"{params.train_cnn.epochs} epochs after the frozen one)\n"
          f"  fastai: error rate {theirs['error_rate']:.4f} (lr {theirs['lr']:.3g}, its "
          f"lr_find's valley; {theirs['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
