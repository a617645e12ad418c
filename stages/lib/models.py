"""The chapter's models, rebuilt from a small config so checkpoints load with weights_only."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .provenance import data_record
from .torchio import load_pt, save_pt

N_PIXELS = 28 * 28
CHECKPOINT_KEYS = {"config", "training", "state_dict", "digits", "target_digits", "tensors"}
TRAINED = ("linear", "mlp", "cnn")  # the models the pipeline trains, stage train_<name> each


def n_outputs(kind: str, digits: list[int]) -> int:
    """The linear model and MLP have one logit for two digits (the book's sigmoid output); the
    CNN, like the book's, has one output per class and cross-entropy even for two."""
    return 1 if len(digits) == 2 and kind != "cnn" else len(digits)


def build_model(config: dict) -> nn.Module:
    """A model from its config: {"kind": "linear"|"mlp"|"cnn", "n_outputs": k, "hidden": [...]}.

    Every model takes flat N×784 pixels, so the Learner, the report and predictions treat
    them alike.
    """
    if config["kind"] == "cnn":
        # A checkpoint from before the CNN standardised its input has no stats: 0 and 1 are
        # exactly the model it was trained as.
        return resnet18_for_mnist(config["n_outputs"], config.get("input_mean", 0.0),
                                  config.get("input_std", 1.0))
    widths = [N_PIXELS, *config.get("hidden", []), config["n_outputs"]]
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
    for module in net.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = PaddingSkippingConv2d  # same weights, same state_dict keys
    return nn.Sequential(GreyImages(input_mean, input_std), net)


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
    seeds at a low peak lr (README, "The CNN")."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std  # plain floats: in the config, not the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).view(-1, 1, 28, 28)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class PaddingSkippingConv2d(nn.Conv2d):
    """nn.Conv2d that skips the kernel taps which see only zero padding when its output is
    a single pixel, exactly the same sum without the zeros.

    From 28×28 MNIST, resnet18's last stage works on 2×2 and 1×1 maps: a 3×3 conv on a 1×1
    input multiplies 8 of its 9 taps by padding. Skipping them makes a training step about
    8% faster; the skipped taps get zero gradient either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (height, width), (kh, kw) = x.shape[-2:], self.kernel_size
        (ph, pw), (sh, sw) = self.padding, self.stride
        one_pixel = (height + 2 * ph - kh) // sh == 0 and (width + 2 * pw - kw) // sw == 0
        inside_kernel = height + ph <= kh and width + pw <= kw
        if (one_pixel and inside_kernel and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros"):
            return F.conv2d(x, self.weight[:, :, ph:ph + height, pw:pw + width], self.bias)
        return super().forward(x)


@torch.no_grad()
def book_init_(model: nn.Module) -> nn.Module:
    """The chapter's `init_params`: every weight and bias drawn from randn (std 1)."""
    for param in model.parameters():
        param.copy_(torch.randn(param.shape))
    return model


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
