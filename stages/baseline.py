"""Stage `baseline`: the chapter's first model, pixel similarity.

The book averages the training 3s and the training 7s into an "ideal" 3 and 7, and calls a
validation image a 3 when it is nearer the ideal 3 (`mnist_distance`, the mean absolute
difference, L1). Here: the mean image of each digit (models/baseline.pt), and the nearest
mean by L1 and by L2 (root mean squared difference), scored in metrics/baseline.json.
"""

from __future__ import annotations

import sys

from stages.lib.data.tensors import load_tensors
from stages.lib.infra.errors import run_stage
from stages.lib.infra.files import together, write_json
from stages.lib.infra.kernels import use_kernels
from stages.lib.infra.params import load_params
from stages.lib.infra.provenance import metrics_origin
from stages.lib.infra.threads import use_threads
from stages.lib.learning.similarity import DISTANCES, class_means, predict_nearest, save_means
from stages.lib.learning.metrics import classification_metrics


def main() -> None:
    base = load_params().base
    threads, kernels = use_threads(base.threads), use_kernels(base.kernels)
    meta, train, valid = load_tensors()
    digits = meta["digits"]

    means = class_means(train.images, train.targets, len(digits))
    metrics = {kind: classification_metrics(predict_nearest(valid.images, means, kind),
                                            valid.targets, digits)
               for kind in DISTANCES}
    # No seed: the mean images draw nothing at random. On the CPU, whatever base.device says.
    metrics.update(n_train=len(train), n_valid=len(valid), source=meta["source"],
                   split=meta["split"], seed=None, device="cpu", threads=threads.count,
                   kernels=kernels.setting)

    with together():  # the checkpoint and its metrics, both new or both old
        model = save_means("models/baseline.pt", means, meta, metrics)
        write_json("metrics/baseline.json", {**metrics, **metrics_origin(meta, model)})
    for kind in DISTANCES:
        print(f"baseline {kind}: accuracy {metrics[kind]['accuracy']}, balanced "
              f"{metrics[kind]['balanced_accuracy']}, per class {metrics[kind]['per_class']}",
              file=sys.stderr)
    print(f"baseline: {threads}, {kernels}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("baseline", main)
