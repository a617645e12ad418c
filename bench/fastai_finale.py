"""The reader's fastai finale, their code, for `python -m bench.finale` to compare with ours.

Run by the python of bench/.fastai-venv (see bench/fastai_cnn.py) on a folder of PNGs, one
folder per digit under train/ and valid/, written from the finale's data/tensors. Prints one
JSON line.

    python bench/fastai_finale.py FOLDER PRETRAINED(0|1) EPOCHS
"""

import json
import sys
import time

from fastai.vision.all import (ImageDataLoaders, Normalize, aug_transforms, error_rate,
                               imagenet_stats, resnet34, set_seed, vision_learner)


def main(path: str, pretrained: bool, epochs: int) -> None:
    set_seed(42)
    # The write-up's DataBlock but for two things: its RandomSplitter(valid_pct=0.2) would
    # draw another 20% than ours, so fastai reads ours (train/ and valid/), and its
    # aug_transforms() flips, which makes other digits of some (the finale's do not flip).
    dls = ImageDataLoaders.from_folder(
        path, train="train", valid="valid", bs=32,
        batch_tfms=[*aug_transforms(do_flip=False), Normalize.from_stats(*imagenet_stats)])
    learn = vision_learner(dls, resnet34, pretrained=pretrained, metrics=error_rate)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        lr = learn.lr_find(show_plot=False)
        learn.fine_tune(epochs, base_lr=lr.valley)
    seconds = time.perf_counter() - start
    train_loss, valid_loss, error = learn.recorder.values[-1]
    n_valid = len(dls.valid_ds)
    print(json.dumps({"seconds": seconds, "error_rate": float(error), "n_valid": n_valid,
                      "wrong": round(float(error) * n_valid), "lr": float(lr.valley),
                      "epochs": epochs, "pretrained": pretrained,
                      "train_loss": float(train_loss), "valid_loss": float(valid_loss)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]))
