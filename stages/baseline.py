"""Stage `baseline`: pixel similarity, nearest mean image by L1 and by L2."""

from __future__ import annotations

import sys

from stages.lib.dataset import load_tensors
from stages.lib.errors import run_stage
from stages.lib.files import together, write_json
from stages.lib.metrics import classification_metrics
from stages.lib.params import load_params
from stages.lib.provenance import metrics_origin
from stages.lib.similarity import DISTANCES, class_means, predict_nearest, save_means
from stages.lib.threads import use_threads



def main() -> None:
    threads = use_threads(load_params().base.threads)
    meta, train, valid = load_tensors()
    digits = meta["digits"]

    means = class_means(train.images, train.targets, len(digits))
    metrics = {kind: classification_metrics(predict_nearest(valid.images, means, kind),
                                            valid.targets, digits)
               for kind in DISTANCES}
    metrics.update(n_train=len(train), n_valid=len(valid), source=meta["source"],
                   split=meta["split"], threads=threads.count)

    with together():  # the checkpoint and its metrics, both new or both old
        model = save_means("models/baseline.pt", means, meta)
        write_json("metrics/baseline.json", {**metrics, **metrics_origin(meta, model)})
    for kind in DISTANCES:
        print(f"baseline {kind}: accuracy {metrics[kind]['accuracy']}, balanced "
              f"{metrics[kind]['balanced_accuracy']}, per class {metrics[kind]['per_class']}",
              file=sys.stderr)
    print(f"baseline: {threads}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("baseline", main)
