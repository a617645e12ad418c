"""The chapter's models, built from a small config that checkpoints record, so that a
checkpoint loads with weights_only and rebuilds the model it was trained as.

Every model takes flat N×784 pixels in [0, 1], so the Learner, the report and predictions
treat them alike.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ..infra.errors import UserError
from ..infra.provenance import data_record, digits_problem
from ..infra.torchio import load_pt, save_pt
from .resnet import ARCHITECTURES

N_PIXELS = 28 * 28
CHECKPOINT_KEYS = {"config", "training", "state_dict", "digits", "target_digits", "tensors"}
# The scores the stage wrote to its metrics file beside it, recorded in the checkpoint too, so
# that a metrics file edited by hand is told from the stage's own (older files lack it).
SCORES_KEY = "metrics"
TRAINED = ("linear", "mlp", "cnn")  # the models the pipeline trains, stage train_<name> each


def linear_model(n_outputs: int) -> nn.Module:
    """The book's `nn.Linear(28*28, 1)` (one output per class for three or more digits)."""
    return nn.Sequential(nn.Linear(N_PIXELS, n_outputs))


def simple_net(hidden: list[int], n_outputs: int) -> nn.Module:
    """The book's `simple_net`, `Linear(784, 30), ReLU, Linear(30, 1)`, for any hidden
    widths: a Linear and a ReLU per width, then the output layer."""
    widths = [N_PIXELS, *hidden, n_outputs]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def resnet_for_mnist(n_classes: int, input_mean: float | list[float] = 0.0,
                     input_std: float | list[float] = 1.0, init: bool = True,
                     arch: str = "resnet18") -> nn.Module:
    """torchvision's resnet18 (or `arch`) (resnet.py, torchvision's own, weight for weight),
    behind what turns 784 pixels into its input. From scratch (one mean and std), its first
    conv takes the one grey channel instead of RGB, behind `GreyImages`: a standardised
    1×28×28 image. For ImageNet weights (a mean and std per RGB channel), it keeps its
    three-channel conv, behind `GreyAsRGB`. `init=False`: without torchvision's init (shapes
    only)."""
    net = ARCHITECTURES[arch](num_classes=n_classes, init=init)
    if isinstance(input_mean, list):
        return nn.Sequential(GreyAsRGB(input_mean, input_std), net)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if init:  # the init torchvision gives its own convs, not nn.Conv2d's default
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(GreyImages(input_mean, input_std), net)


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """fastai's parameter groups for a resnet (`_resnet_split`), which fine_tune freezes and
    gives their own learning rates: the stem, layer1 and layer2; layer3 and layer4; the
    head."""
    net = model[1]
    stages = [[net.conv1, net.bn1, net.layer1, net.layer2], [net.layer3, net.layer4], [net.fc]]
    return [[p for module in stage for p in module.parameters()] for stage in stages]


def build_model(config: dict, shapes_only: bool = False) -> nn.Module:
    """The model a config describes: {"kind": "linear" | "mlp" | "cnn", "n_outputs": k,
    "hidden": [widths]}, and for the CNN its `arch` (resnet18 where a checkpoint from before
    the choice has none) and the `input_mean` and `input_std` it standardises its input
    with. `shapes_only`: for the meta device, where torchvision's init would run through
    torch._refs, whose first use imports torch._dynamo (1 s)."""
    kind = config["kind"]
    if kind == "linear":
        return linear_model(config["n_outputs"])
    if kind == "mlp":
        return simple_net(config["hidden"], config["n_outputs"])
    if kind == "cnn":
        # A checkpoint from before the CNN standardised its input has no stats: 0 and 1 are
        # exactly the model it was trained as.
        return resnet_for_mnist(config["n_outputs"], config.get("input_mean", 0.0),
                                config.get("input_std", 1.0), init=not shapes_only,
                                arch=config.get("arch", "resnet18"))
    raise UserError(f"unknown model kind {kind!r} (expected linear, mlp or cnn)")


@torch.no_grad()
def init_params(model: nn.Module) -> nn.Module:
    """The book's `init_params`: every weight and bias drawn from randn (std 1)."""
    for param in model.parameters():
        param.copy_(torch.randn(param.shape))
    return model


def initial_model(config: dict, seed: int, init: str = "torch") -> nn.Module:
    """The model as training starts: seeded, built, and with `init: book` given the book's
    init_params (`torch`: the layers' own init). The report rebuilds it from what a
    checkpoint records, to show what training changed."""
    torch.manual_seed(seed)
    model = build_model(config)
    return init_params(model) if init == "book" else model


def input_stats(images: torch.Tensor) -> dict[str, float]:
    """The mean and standard deviation of uint8 training images as [0, 1] pixels, as the
    CNN's config records them (4 decimals: the values shown are the values used). Counted
    per grey level, so exact and without a float copy of the images."""
    counts = torch.bincount(images.flatten().cpu(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * levels).sum() / counts.sum()
    variance = (counts * (levels - mean) ** 2).sum() / counts.sum()
    stats = {"input_mean": round(mean.item(), 4), "input_std": round(variance.sqrt().item(), 4)}
    if stats["input_std"] == 0:  # dividing by it would make every input NaN
        raise UserError(f"the training images are all one shade (every pixel "
                        f"{stats['input_mean']:.4f} on the [0, 1] scale): there is nothing to "
                        f"learn from; check data.source")
    return stats


class GreyImages(nn.Module):
    """Flat 784 pixels in [0, 1] to 1×28×28 images with zero mean and unit variance over the
    training set. The book feeds raw [0, 1] pixels; standardised, one epoch has fewer bad
    seeds at a low peak lr (docs/cnn.md)."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std  # plain floats: in the config, not the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).view(-1, 1, 28, 28)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class GreyAsRGB(nn.Module):
    """Flat 784 pixels in [0, 1] to 3×28×28 images: the grey channel as the three equal
    channels ImageNet weights expect (fastai opens MNIST's PNGs as RGB), each normalised with
    ImageNet's mean and std (the reader's `Normalize.from_stats(*imagenet_stats)`)."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.mean, self.std = list(mean), list(std)  # plain floats: in the config
        # not persistent: rebuilt from the config, not read from the state_dict
        self.register_buffer("mean_", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std_", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.view(-1, 1, 28, 28).expand(-1, 3, -1, -1) - self.mean_) / self.std_

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, training: dict,
                    meta: dict, scores: dict) -> str:
    """state_dict + what rebuilds the model, the settings it was trained with, the data it
    was trained on (provenance.data_record of the tensorise metadata) and the scores its
    metrics file holds. Returns the file's fingerprint."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_pt(path, {"config": config, "training": training, "state_dict": state,
                          **data_record(meta), SCORES_KEY: scores})


def load_checkpoint(path: str | Path, stage: str = "",
                    content: bytes | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by save_checkpoint (by `stage`); anything else is a clear error.

    Everything the model is built from is checked first (checkpoint_problems), so an edited
    or foreign file is refused by name before a layer is allocated, and cannot give NaN.
    Given `content`, the checkpoint is those bytes (the file as read once), named `path`.
    """
    checkpoint = load_pt(path, CHECKPOINT_KEYS, "checkpoint", stage, frozenset({SCORES_KEY}),
                         content)
    return rebuild(checkpoint, path), checkpoint


def rebuild(checkpoint: dict, path: str | Path) -> nn.Module:
    """The model a loaded checkpoint (`path`) holds, in evaluation mode, once
    checkpoint_problems finds nothing wrong with it."""
    problems = checkpoint_problems(checkpoint)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise UserError(f"{path} is not a checkpoint this pipeline wrote:\n{listing}")
    model = build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def _whole(value: object, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def checkpoint_problems(checkpoint: dict) -> list[str]:
    """What does not add up in a loaded checkpoint: its digits, its config (kind, shapes,
    finite input stats) and its weights (each tensor's shape against the model the config
    describes, every value finite). Empty for a checkpoint save_checkpoint wrote."""
    digits = checkpoint["digits"]
    if (problem := digits_problem(digits, checkpoint["target_digits"])):
        return [problem]
    config = checkpoint["config"]
    if not isinstance(config, dict):
        return [f"config is {type(config).__name__} (expected a mapping)"]
    problems = []
    if config.get("kind") not in TRAINED:
        problems.append(f"config.kind is {config.get('kind')!r} (expected linear, mlp or cnn)")
    n_outputs = config.get("n_outputs")
    if n_outputs != len(digits) and not (n_outputs == 1 and len(digits) == 2):
        problems.append(f"config.n_outputs is {n_outputs!r} (expected {len(digits)} for "
                        f"{len(digits)} digits{', or 1' if len(digits) == 2 else ''})")
    hidden = config.get("hidden")
    if not (isinstance(hidden, list) and all(_whole(h, 1) for h in hidden)):
        problems.append(f"config.hidden is {hidden!r} (expected a list of layer widths)")
    elif hidden and config.get("kind") in ("linear", "cnn"):
        problems.append(f"config.hidden is {hidden!r} (expected []: a {config['kind']} has no "
                        f"hidden widths)")
    if "arch" in config and (config.get("kind") != "cnn"
                             or config["arch"] not in ARCHITECTURES):
        problems.append(f"config.arch is {config['arch']!r} (expected "
                        f"{' or '.join(ARCHITECTURES)}, for a cnn)")
    problems += _input_stats_problems(config) or _pretrained_problems(config)
    state = checkpoint["state_dict"]
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        problems.append("state_dict is not a mapping of tensors")
    if problems:
        return problems
    return _weight_problems(config, state)


def _input_stats_problems(config: dict) -> list[str]:
    """The CNN's input_mean and input_std: a finite number each (from scratch), or three each
    (a mean and std per RGB channel, for ImageNet weights); the std above 0."""
    problems, stats = [], {}
    for key, default in (("input_mean", 0.0), ("input_std", 1.0)):
        value = stats[key] = config.get(key, default)
        values = value if isinstance(value, list) else [value]
        if (isinstance(value, list) and len(value) != 3) or not all(map(_finite, values)):
            problems.append(f"config.{key} is {value!r} (expected a finite number, or three: "
                            f"one per RGB channel)")
        elif key == "input_std" and min(values) <= 0:
            problems.append(f"config.input_std is {value!r} (expected a number above 0: the "
                            f"CNN divides its input by it)")
    if not problems and isinstance(stats["input_mean"], list) != isinstance(stats["input_std"],
                                                                             list):
        shown = {key: repr(config[key]) if key in config else "absent" for key in stats}
        problems.append(f"config.input_mean is {shown['input_mean']} and input_std "
                        f"{shown['input_std']} (expected a number each, or three each)")
    return problems


def _pretrained_problems(config: dict) -> list[str]:
    """What a CNN's config records of the weights it started from, where it records them:
    the file's name, its SHA-256 and whether torchvision published it (the report shows
    them)."""
    if "pretrained" not in config:
        return []
    record = config["pretrained"]
    if not (isinstance(record, dict) and set(record) == {"file", "sha256", "published"}
            and isinstance(record["file"], str) and record["file"]
            and isinstance(record["sha256"], str)
            and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])
            and isinstance(record["published"], bool)):
        return [f"config.pretrained is {record!r} (expected the weights file's name, its "
                f"SHA-256 and whether torchvision published it)"]
    if not isinstance(config.get("input_mean"), list):
        return ["config.pretrained names ImageNet weights, but the input is not normalised "
                "for them (expected three input_mean and input_std values)"]
    return []


def _weight_problems(config: dict, state: dict[str, torch.Tensor]) -> list[str]:
    """Each weight against the model `config` describes (built on the meta device: shapes
    only, nothing allocated, however wide the config says it is), and its values finite."""
    if len(config["hidden"]) > len(state):  # a Linear per width: more widths than tensors
        return [f"config.hidden lists {len(config['hidden'])} layers, but the weights hold "
                f"{len(state)} tensors"]
    with torch.device("meta"):
        model = build_model(config, shapes_only=True)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    odd = [k for k, v in state.items()
           if v.layout != torch.strided or v.is_meta or v.device.type != "cpu"
           or v.dtype not in (torch.float32, torch.int64)]
    if odd:
        v = state[odd[0]]
        return [f"the weights hold tensors this pipeline does not write ({odd[0]}: "
                f"{str(v.layout).split('.')[-1]}, {v.device.type}, "
                f"{str(v.dtype).split('.')[-1]}; expected dense float32 on the CPU)"]
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = [k for k in expected if found.get(k) != expected[k]]
        wrong = wrong or sorted(set(found) - set(expected))
        key = wrong[0]
        return [f"the weights do not fit the {config['kind']} model its config describes "
                f"({len(wrong)} tensor(s) differ; {key}: expected "
                f"{list(expected.get(key, ())) or 'no such tensor'}, found "
                f"{list(found[key]) if key in found else 'none'})"]
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return [f"the weights hold NaN or Inf values ({', '.join(bad[:3])})"]
    return []
