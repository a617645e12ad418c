"""`python -m tools.fingerprints`: does this CPU compute the committed bits? A few training
steps of each of the pipeline's models, with the portable kernels, on tiny fixed data, each
model's weights and predictions fingerprinted and compared with tools/fingerprints.json.

The models are built, trained and scored by the stages' own code (each training stage's
`learner`, the baseline's mean images), with the book's settings but for the sizes: 256
training and 64 validation images of fixed noise, batches of 64 (the CNN: 128), two epochs.
A CPU that gives other bits here would give other bits for the whole pipeline; one that
gives these gives the committed dvc.lock (docs/performance.md: the CPUs it has passed on).

    python -m tools.fingerprints               # exit 1 when a fingerprint differs
    python -m tools.fingerprints --threads 2   # only at 2 threads (default: 1, 2, 3, 4)
    python -m tools.fingerprints --models cnn  # only the CNN (default: all four models)
    qemu-x86_64 -cpu Haswell-v4 .venv/bin/python -m tools.fingerprints --threads 1 2
                                               # as an Intel Haswell (apt: qemu-user)
    python -m tools.fingerprints --write       # record this CPU's (after a change of
                                               # code that moves the numbers, with dvc.lock)
"""

from __future__ import annotations

from stages.lib.infra.kernels import pin

pin("portable")  # before torch loads: the committed fingerprints are the portable kernels'

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stages import train_cnn, train_linear, train_mlp  # noqa: E402
from stages.lib.data.tensors import Split, as_inputs, tensors_fingerprint  # noqa: E402
from stages.lib.infra.files import fingerprint, write_text  # noqa: E402
from stages.lib.infra.kernels import cpu_name, use_kernels  # noqa: E402
from stages.lib.infra.params import Params, validate_params  # noqa: E402
from stages.lib.learning.augment import AUG_DEFAULTS  # noqa: E402
from stages.lib.learning.predictions import batched_logits  # noqa: E402
from stages.lib.learning.similarity import DISTANCES, class_distances, class_means  # noqa: E402
from stages.lib.learning.training import TrainingData  # noqa: E402

COMMITTED = Path(__file__).with_suffix(".json")
THREADS = (1, 2, 3, 4)
RECIPES = {"linear": train_linear, "mlp": train_mlp, "cnn": train_cnn}
MODELS = ("baseline", *RECIPES)
N_TRAIN, N_VALID = 256, 64
DIGITS = [3, 7]
# The book's settings (params.yaml's) for tiny data: two epochs of a few batches each.
PARAMS = {
    "base": {"seed": 42, "device": "cpu", "threads": "auto", "kernels": "portable"},
    "data": {"source": "auto", "digits": DIGITS, "split": "official", "valid_pct": 0.2},
    "train_linear": {"init": "book", "lr": 1.0, "epochs": 2, "batch_size": 64,
                     "shuffle": False, "loss": "mnist"},
    "train_mlp": {"hidden": [30], "lr": 0.1, "epochs": 2, "batch_size": 64, "shuffle": False,
                  "loss": "mnist"},
    "train_cnn": {"arch": "resnet18", "weights": "none", "fit": "one_cycle", "lr": 0.005,
                  "epochs": 2, "batch_size": 128, "shuffle": True, "wd": 0.01,
                  "augment": False, "aug_transforms": AUG_DEFAULTS},
    "report": {"worst_mistakes": 12},
}


def tiny_data() -> TrainingData:
    """Fixed noise images and alternating targets (numpy's PCG64: the same numbers on every
    machine), as the training stages get data/tensors."""
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        images = torch.from_numpy(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        return Split(images, torch.arange(n) % 2)
    train, valid = split(N_TRAIN), split(N_VALID)
    targets = [DIGITS[1], DIGITS[0]]
    meta = {"digits": DIGITS, "target_digits": targets, "source": "tiny noise",
            "split": "fixed", "tensors": tensors_fingerprint(train, valid, DIGITS, targets)}
    device = torch.device("cpu")
    return TrainingData(meta, train, valid, *as_inputs(train, device),
                        *as_inputs(valid, device))


def tensor_bytes(tensors: Iterator[torch.Tensor]) -> Iterator[bytes]:
    for tensor in tensors:
        yield str(tuple(tensor.shape)).encode()
        yield tensor.detach().contiguous().numpy().tobytes()


def model_fingerprints(params: Params, data: TrainingData,
                       models: tuple[str, ...] = MODELS) -> dict[str, str]:
    """Each of `models` as its stage computes it, trained on `data`: a fingerprint of its
    weights (and BatchNorm statistics) and of its validation logits (the baseline: its mean
    images and its distances)."""
    found = {}
    if "baseline" in models:
        means = class_means(data.train.images, data.train.targets, len(DIGITS))
        found["baseline"] = fingerprint(tensor_bytes(
            [means, *(class_distances(data.valid.images, means, kind) for kind in DISTANCES)]))
    for name, recipe in RECIPES.items():
        if name not in models:
            continue
        learner, _ = recipe.learner(params, data, log=None)
        cfg = getattr(params, f"train_{name}")
        if name == "cnn":
            learner.fit_one_cycle(cfg.epochs, cfg.lr)
        else:
            learner.fit(cfg.epochs)
        logits = batched_logits(learner.model, data.valid_x)
        found[name] = fingerprint(tensor_bytes([*learner.model.state_dict().values(),
                                                logits]))
    return found


def compute(threads: list[int], models: tuple[str, ...] = MODELS) -> dict[str, dict[str, str]]:
    params, data = validate_params(PARAMS), tiny_data()
    found = {}
    for count in threads:
        torch.set_num_threads(count)
        found[str(count)] = model_fingerprints(params, data, models)
    return found


def compare(found: dict, committed: dict) -> list[str]:
    """A line per fingerprint that differs from the committed one (none: all match)."""
    return [f"{threads} thread(s), {model}: {value} where {COMMITTED.name} has "
            f"{committed.get(threads, {}).get(model, 'nothing')}"
            for threads, models in found.items() for model, value in models.items()
            if committed.get(threads, {}).get(model) != value]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fingerprints",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREADS),
                        help="thread counts to train at (default: 1 2 3 4)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="the models to train (default: all four)")
    parser.add_argument("--write", action="store_true",
                        help=f"record this CPU's fingerprints in {COMMITTED.name}")
    parser.add_argument("--json", action="store_true", help="print the fingerprints as JSON")
    args = parser.parse_args(argv)
    if args.write and (set(args.models) != set(MODELS) or set(args.threads) != set(THREADS)):
        parser.error(f"--write records every model at every thread count: leave out --models "
                     f"and --threads")
    kernels = use_kernels("portable")
    found = compute(args.threads, tuple(args.models))
    if args.json:
        print(json.dumps(found, indent=2))
    if args.write:
        write_text(COMMITTED, json.dumps(found, indent=2) + "\n")
        print(f"fingerprints: wrote {COMMITTED} ({cpu_name()}, {kernels})")
        return 0
    committed = json.loads(COMMITTED.read_text())
    differ = compare(found, committed)
    print(f"fingerprints: {cpu_name()}, {kernels}, threads {' '.join(found)}")
    for line in differ:
        print(f"  differs: {line}")
    print("fingerprints: " + (f"{len(differ)} differ: this CPU does not compute the committed "
                              f"bits" if differ else "all match the committed ones"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
