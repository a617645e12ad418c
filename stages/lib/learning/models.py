"""The chapter's models, built from a small config that checkpoints record, so that a
checkpoint loads with weights_only and rebuilds the model it was trained as.

Every model takes flat N×784 pixels in [0, 1], so the Learner, the report and predictions
treat them alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..infra.errors import UserError
from ..infra.provenance import data_record
from ..infra.torchio import load_pt, save_pt

N_PIXELS = 28 * 28
CHECKPOINT_KEYS = {"config", "training", "state_dict", "digits", "target_digits", "tensors"}
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


def resnet18_for_mnist(n_classes: int, input_mean: float = 0.0,
                       input_std: float = 1.0) -> nn.Module:
    """torchvision's resnet18 from scratch (no weights downloaded), its first conv taking the
    one grey channel instead of RGB, behind `GreyImages`: 784 pixels to a standardised
    1×28×28 image."""
    from torchvision.models import resnet18  # only the CNN pays for importing torchvision

    net = resnet18(weights=None, num_classes=n_classes)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # The init torchvision gives its own convs, not nn.Conv2d's default.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(GreyImages(input_mean, input_std), net)


def build_model(config: dict) -> nn.Module:
    """The model a config describes: {"kind": "linear" | "mlp" | "cnn", "n_outputs": k,
    "hidden": [widths]}, and for the CNN the `input_mean` and `input_std` it standardises
    its input with."""
    kind = config["kind"]
    if kind == "linear":
        return linear_model(config["n_outputs"])
    if kind == "mlp":
        return simple_net(config["hidden"], config["n_outputs"])
    if kind == "cnn":
        # A checkpoint from before the CNN standardised its input has no stats: 0 and 1 are
        # exactly the model it was trained as.
        return resnet18_for_mnist(config["n_outputs"], config.get("input_mean", 0.0),
                                  config.get("input_std", 1.0))
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


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, training: dict,
                    meta: dict) -> str:
    """state_dict + what rebuilds the model, the settings it was trained with, and the
    data it was trained on (provenance.data_record of the tensorise metadata). Returns the
    file's fingerprint."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_pt(path, {"config": config, "training": training, "state_dict": state,
                          **data_record(meta)})


def load_checkpoint(path: str | Path, stage: str = "") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by save_checkpoint (by `stage`); anything else is a clear error."""
    checkpoint = load_pt(path, CHECKPOINT_KEYS, "checkpoint", stage)
    model = build_model(checkpoint["config"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the model its config describes "
                        f"({err})") from None
    return model.eval(), checkpoint
