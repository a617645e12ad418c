"""ImageNet weights for the CNN to start from, as fastai's `vision_learner(dls, resnet34)`
does: torchvision's published file, checked, and read without running anything in it.

`train_cnn.weights` is `none` (from scratch: the book's `pretrained=False`), `imagenet`
(torchvision's own file for `train_cnn.arch`, `ResNet34_Weights.IMAGENET1K_V1`, in torch.hub's
cache, where `torchvision.models.resnet34(weights="IMAGENET1K_V1")` saves it), or a path to a
file named as torch.hub names them, `<name>-<first hex digits of its SHA-256>.pth`.

Why the name must carry the hash: the file lies outside the project, where DVC does not look.
Its bytes are checked against the hash in its name (as torch.hub checks a download), so the
param names the bytes, and DVC, which sees the param, sees any other file. `imagenet` takes
torchvision's published file only; the checkpoint records the file's name and full SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from ..infra.errors import UserError
from ..infra.files import regular_file
from ..infra.torchio import read_pt
from .resnet import ARCHITECTURES, ResNet

# torchvision 0.29's IMAGENET1K_V1 files (their URLs end with these names; a test holds the
# table to torchvision's own)
PUBLISHED = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth"}
# fastai's imagenet_stats, per RGB channel: what the weights were trained to see
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # read as float32
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's, at least 8 hex digits
# The largest weights file read: resnet34's is 87 MB (83 MiB); a bigger one is not a
# resnet18's or resnet34's, even saved in float64.
MAX_BYTES = 200 * 2**20


def weights_file(setting: str, arch: str) -> Path | None:
    """The file `train_cnn.weights` names (None for `none`)."""
    if setting == "none":
        return None
    try:
        if setting == "imagenet":
            return Path(torch.hub.get_dir()) / "checkpoints" / PUBLISHED[arch]
        return Path(setting).expanduser()
    except RuntimeError as err:  # `~nosuchuser/...`: no home folder to expand
        raise UserError(f"train_cnn.weights: {setting}: {err}") from None


def how_to_get(arch: str) -> str:
    return (f"on a machine with internet, `python -c \"import torchvision; torchvision.models."
            f"{arch}(weights='IMAGENET1K_V1')\"` saves it in torch.hub's cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}); or set train_cnn.weights to the "
            f"file's path, or to none to train from scratch")


def _advice(setting: str, path: Path, arch: str) -> str:
    """What to do about a missing or damaged file: get torchvision's, for its own."""
    if setting == "imagenet" or path.name in PUBLISHED.values():
        return how_to_get(arch)
    return ("give train_cnn.weights the path of a weights file named by its hash (e.g. "
            f"{PUBLISHED[arch]}), imagenet for torchvision's own, or none")


def read_weights_file(setting: str, arch: str) -> tuple[Path, bytes, str]:
    """The file `setting` names, its bytes and their SHA-256, once its name's hash is checked
    against them; a missing, misnamed, damaged or other architecture's file is one UserError."""
    path = weights_file(setting, arch)
    assert path is not None, "weights: none has no file"
    try:
        regular_file(path, "a weights file")
        size = path.stat().st_size
    except FileNotFoundError:
        what = f"torchvision's ImageNet weights for {arch}, " if setting == "imagenet" else ""
        raise UserError(f"train_cnn.weights: {what}{path} is not there; "
                        f"{_advice(setting, path, arch)}") from None
    except (OSError, ValueError) as err:  # a link loop, a file for a folder, a NUL byte
        raise UserError(f"train_cnn.weights: {path}: "
                        f"{getattr(err, 'strerror', None) or err}") from None
    found = HASH_IN_NAME.search(path.name)
    if found is None:
        raise UserError(f"train_cnn.weights: {path}'s name does not carry its SHA-256 as "
                        f"torch.hub names weights files (`<name>-<8 or more lowercase hex "
                        f"digits>.pth`, e.g. {PUBLISHED[arch]}), so its bytes cannot be "
                        f"checked; name it so")
    if size > MAX_BYTES:
        raise UserError(f"train_cnn.weights: {path} is {size / 2**20:.0f} MB, more than any "
                        f"resnet's weights ({MAX_BYTES // 2**20} MB at most)")
    try:
        content = path.read_bytes()
    except OSError as err:
        raise UserError(f"train_cnn.weights: {path}: {err.strerror or err}") from None
    digest = hashlib.sha256(content).hexdigest()
    if not digest.startswith(found.group(1)):
        raise UserError(f"train_cnn.weights: {path} is damaged or not the file its name says "
                        f"(its SHA-256 starts {digest[:len(found.group(1))]}, its name says "
                        f"{found.group(1)}; {size:,} bytes): fetch it again; "
                        f"{_advice(setting, path, arch)}")
    other = [name for name, file in PUBLISHED.items() if file == path.name and name != arch]
    if other:
        raise UserError(f"train_cnn.weights: {path} is torchvision's {other[0]} weights, and "
                        f"train_cnn.arch is {arch}: use {PUBLISHED[arch]}, or set "
                        f"train_cnn.arch: {other[0]}")
    return path, content, digest


def load_weights(setting: str, arch: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The body's weights from the file `setting` names, checked to be a torchvision `arch`'s
    (every tensor's name and shape, finite values), and what the checkpoint records of
    them: the file's name, its SHA-256, and whether it is torchvision's published file.
    torchvision's 1000-class head is left out: the model gets a new one for the digits."""
    path, content, digest = read_weights_file(setting, arch)
    state = read_pt(path, f"{arch} weights file", content=content, writer="torchvision wrote",
                    legacy=True)
    if not (isinstance(state, dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                    for k, v in state.items())):
        raise UserError(f"train_cnn.weights: {path} is not a state dict (a mapping of names to "
                        f"tensors, as torchvision's weights files are)")
    problem = _fit_problem(state, arch)
    if problem:
        raise UserError(f"train_cnn.weights: {path} does not hold {arch}'s weights: {problem}")
    body = {k: v.float() if v.is_floating_point() else v
            for k, v in state.items() if not k.startswith("fc.")}
    record = {"file": path.name, "sha256": digest,
              "published": path.name == PUBLISHED[arch]}
    return body, record


def _fit_problem(state: dict[str, torch.Tensor], arch: str, name_others: bool = True
                 ) -> str | None:
    """What keeps `state` from loading into torchvision's `arch` (None: nothing); with
    `name_others`, which other architecture's weights it holds, if one's."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in
                    ARCHITECTURES[arch](num_classes=1000, init=False).state_dict().items()}
    # BatchNorm's batch counts: files saved before torch 0.4.1 lack them; nothing reads them
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found) - optional)
    extra = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or extra or wrong:
        other = [name for name in ARCHITECTURES if name_others and name != arch
                 and _fit_problem(state, name, name_others=False) is None]
        if other:
            return f"it holds {other[0]}'s (set train_cnn.arch: {other[0]})"
        key = (wrong or missing or extra)[0]
        return (f"{len(missing)} tensor(s) missing, {len(extra)} not {arch}'s, {len(wrong)} of "
                f"another shape ({key}: expected {list(expected.get(key, ())) or 'none'}, "
                f"found {list(found[key]) if key in found else 'none'})")

    def odd(key: str, v: torch.Tensor) -> bool:  # torchvision's: dense floats, int64 counts
        kind_ok = v.dtype == torch.int64 if key in optional else v.dtype in FLOATS
        return v.layout != torch.strided or v.is_meta or not kind_ok

    if (oddities := [k for k, v in state.items() if odd(k, v)]):
        v = state[oddities[0]]
        layout = "" if v.layout == torch.strided else f"{str(v.layout).split('.')[-1]} "
        return (f"{oddities[0]} is a {layout}{str(v.dtype).split('.')[-1]} tensor"
                f"{' on the meta device' if v.is_meta else ''} (torchvision's are dense "
                f"floats, and int64 batch counts)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return f"NaN or Inf values in {', '.join(bad[:3])}"
    negative = [k for k, v in state.items() if k.endswith("running_var") and (v < 0).any()]
    if negative:
        return f"negative variances in {', '.join(negative[:3])}"
    return None


def start_from(net: ResNet, body: dict[str, torch.Tensor]) -> ResNet:
    """`net` with the pretrained `body` loaded: every weight but its new head (`fc`)."""
    missing, unexpected = net.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith("fc.") or k.endswith("num_batches_tracked")
                                  for k in missing), (missing, unexpected)
    return net
