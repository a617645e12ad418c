"""`python -m stages.predict IMAGE... [--model NAME|PATH ...] [--json]`: classify your own
digits with the trained models.

Each image (PNG or JPEG, any size, colour or grey, dark on light or light on dark) is
prepared the way MNIST's images were (stages/lib/own_digits/prepare.py), then every model gives
its digit and probability. Not a DVC stage: it reads the checkpoints and writes nothing
the pipeline tracks. Images that cannot be read are named on stderr; the rest are still
classified, and the exit status is then 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from stages.lib.infra.errors import EXIT_USER_ERROR, UserError, run_stage
from stages.lib.infra.files import atomic_open
from stages.lib.own_digits.classify import (ANSWERING, answer_range, as_json, classify,
                                            load_classifiers, results_table)
from stages.lib.own_digits.prepare import read_digit


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.predict",
                                     description="Classify your own digit images with the "
                                                 "pipeline's trained models.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument("--model", action="append", metavar="NAME|PATH",
                        help=f"{', '.join(ANSWERING)} or a checkpoint file; repeat for several "
                             f"(default: every model in models/)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--prepared", type=Path, metavar="DIR",
                        help="also save each image as the models see it (28×28 PNG) in DIR")
    return parser.parse_args(argv)


def read_images(paths: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each readable image prepared as MNIST's were, and an error line for every other."""
    prepared, errors = {}, {}
    for path in paths:
        try:
            prepared[path] = read_digit(path)
        except UserError as err:
            errors[path] = str(err)
    return prepared, errors


def save_prepared(prepared: dict[str, np.ndarray], folder: Path) -> None:
    from PIL import Image

    if folder.exists() and not folder.is_dir():
        raise UserError(f"--prepared {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--prepared {folder}: cannot make the folder "
                        f"({err.strerror or err})") from None
    for i, (path, pixels) in enumerate(prepared.items()):
        with atomic_open(folder / f"{i:03d}-{Path(path).stem}.png", "wb") as handle:
            Image.fromarray(pixels, mode="L").save(handle, format="PNG")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    classifiers, untrained = load_classifiers(args.model)
    prepared, errors = read_images(args.images)
    rows = []
    if prepared:
        digits = np.stack(list(prepared.values()))
        answers = {c.name: classify(c, digits) for c in classifiers}
        rows = [{"file": path, "predictions": {name: answers[name][i] for name in answers}}
                for i, path in enumerate(prepared)]
    if args.prepared and prepared:
        try:  # the answers are printed even when the images cannot be saved
            save_prepared(prepared, args.prepared)
        except UserError as err:
            errors[str(args.prepared)] = str(err)

    for path, message in errors.items():
        print(f"predict: {message}", file=sys.stderr)
    for name in untrained:
        print(f"predict: {name}: models/{name}.pt not made yet, skipped "
              f"(`dvc repro {ANSWERING[name]}` makes it)", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(classifiers, rows, errors), indent=2, allow_nan=False))
    else:
        print("\n".join(answer_range(classifiers)))
        if rows:
            print(results_table(rows, classifiers))
    return EXIT_USER_ERROR if errors else 0


if __name__ == "__main__":
    run_stage("predict", lambda: sys.exit(main(sys.argv[1:])), kind="command")
