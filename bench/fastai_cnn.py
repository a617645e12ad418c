"""The book's own resnet18 step, run with fastai for `make bench` to compare with ours.

Run by the python of bench/.fastai-venv (fastai beside the project's torch, never in the
project's requirements), on a folder in fast.ai's MNIST_SAMPLE layout. Prints one JSON line.

    python bench/fastai_cnn.py PATH_TO_MNIST_SAMPLE
"""

import json
import sys
import time

from fastai.vision.all import (F, ImageDataLoaders, accuracy, resnet18,  # noqa: F401
                               vision_learner)


def main(path: str) -> None:
    # The chapter's code; cnn_learner is vision_learner's old name.
    dls = ImageDataLoaders.from_folder(path)
    learn = vision_learner(dls, resnet18, pretrained=False, loss_func=F.cross_entropy,
                           metrics=accuracy)
    lr = 0.1
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, lr)
    seconds = time.perf_counter() - start
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    n_valid = len(dls.valid_ds)
    print(json.dumps({"seconds": seconds, "accuracy": float(acc), "n_valid": n_valid,
                      "wrong": round((1 - float(acc)) * n_valid), "batch_size": dls.bs, "lr": lr,
                      "train_loss": float(train_loss), "valid_loss": float(valid_loss)}))


if __name__ == "__main__":
    main(sys.argv[1])
