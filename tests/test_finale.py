"""The reader's fastai finale: ImageNet weights (checked, read without running anything),
fed as fastai feeds them, and fastai's fine_tune, step for step. No test downloads anything:
the weights are stand-ins of the right shapes, named by their own hash as torch.hub names
files (torchvision's real file is held to its published name only)."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from stages.lib.infra.errors import UserError
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import cross_entropy_loss
from stages.lib.learning.models import (build_model, checkpoint_problems, layer_groups,
                                        load_checkpoint)
from stages.lib.learning.optim import Adam
from stages.lib.learning.pretrained import (IMAGENET_MEAN, IMAGENET_STD, PUBLISHED,
                                            load_weights, start_from)
from stages.lib.learning.resnet import ARCHITECTURES
from stages.lib.learning.schedules import one_cycle
from stages.lib.learning.speedups import FusedAdam, speed_up
from tests.helpers import ROOT, make_project, read_json, run, run_module, set_params


def stand_in(arch: str = "resnet34", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of torchvision's `arch` with 1000 classes, as its ImageNet file holds,
    random values."""
    torch.manual_seed(seed)
    return ARCHITECTURES[arch](num_classes=1000).state_dict()


def hashed_file(folder: Path, content: bytes, name: str = "resnet34") -> Path:
    """`content` saved as torch.hub names weights files: NAME-<its SHA-256's first 8>.pth."""
    path = folder / f"{name}-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    path.write_bytes(content)
    return path


def saved(data) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def test_the_published_names_are_torchvisions():
    from torchvision.models import ResNet18_Weights, ResNet34_Weights

    assert ResNet18_Weights.IMAGENET1K_V1.url.endswith("/" + PUBLISHED["resnet18"])
    assert ResNet34_Weights.IMAGENET1K_V1.url.endswith("/" + PUBLISHED["resnet34"])


def test_weights_load_as_the_body_and_are_recorded(tmp_path):
    state = stand_in()
    path = hashed_file(tmp_path, saved(state))
    body, record = load_weights(str(path), "resnet34")
    assert set(body) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert record == {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "published": False}


def test_the_model_is_torchvisions_with_the_weights_on_normalised_rgb(tmp_path):
    """Ours, started from the weights, against torchvision's resnet34 given the same weights
    and the grey image as three channels normalised by ImageNet's statistics (fastai's
    `Normalize.from_stats(*imagenet_stats)` on an RGB-opened MNIST image)."""
    from torchvision.models import resnet34

    state = stand_in()
    body, _ = load_weights(str(hashed_file(tmp_path, saved(state))), "resnet34")
    ours = build_model({"kind": "cnn", "arch": "resnet34", "n_outputs": 10, "hidden": [],
                        "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD})
    start_from(ours[1], body).eval()
    theirs = resnet34()
    theirs.load_state_dict(state)
    theirs.fc = ours[1].fc  # the new head: ten digits
    theirs.eval()
    pixels = torch.rand(4, 784)
    rgb = pixels.view(-1, 1, 28, 28).repeat(1, 3, 1, 1)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), theirs((rgb - mean) / std), rtol=0, atol=1e-5)


@pytest.mark.parametrize("content,message", [
    (lambda: saved(stand_in())[:-1000], "is not a resnet34 weights file torchvision wrote"),
    (lambda: b"not a weights file at all", "is not a resnet34 weights file torchvision wrote"),
    (lambda: saved({"conv1.weight": Path("x")}),
     "it holds Python objects beyond tensors and plain values (pathlib.PosixPath)"),
    (lambda: pickle.dumps({"conv1.weight": Path("x")}, protocol=2),
     "it holds Python objects beyond tensors and plain values"),
    (lambda: saved(stand_in("resnet18")),
     "does not hold resnet34's weights: it holds resnet18's (set train_cnn.arch: resnet18)"),
    (lambda: saved({k: v for k, v in stand_in().items() if k != "layer3.5.bn2.weight"}),
     "1 tensor(s) missing, 0 not resnet34's, 0 of another shape (layer3.5.bn2.weight: "
     "expected [256], found none)"),
    (lambda: saved({**stand_in(), "conv1.weight": torch.full((64, 3, 7, 7), float("nan"))}),
     "does not hold resnet34's weights: NaN or Inf values in conv1.weight"),
    (lambda: saved([1, 2, 3]), "is not a state dict"),
])
def test_a_bad_weights_file_is_one_line_naming_it(tmp_path, content, message):
    """Truncated, not PyTorch's, a pickle, another architecture's, NaN, not a state dict:
    each named by their own hash, so that the hash check passes and the file is read."""
    path = hashed_file(tmp_path, content())
    with pytest.raises(UserError) as err:
        load_weights(str(path), "resnet34")
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_imagenet_means_torchvisions_cached_file_and_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / PUBLISHED["resnet34"]
    with pytest.raises(UserError) as err:
        load_weights("imagenet", "resnet34")
    said = str(err.value)
    assert f"torchvision's ImageNet weights for resnet34, {cached} is not there" in said
    assert "torchvision.models.resnet34(weights='IMAGENET1K_V1')" in said
    assert "or to none to train from scratch" in said and "\n" not in said
    # A file under the published name whose bytes are not the published ones: refused.
    cached.parent.mkdir(parents=True)
    cached.write_bytes(saved(stand_in()))
    with pytest.raises(UserError, match="is damaged or not the file its name says .its SHA-256 "
                                        "starts [0-9a-f]{8}, its name says b627a593"):
        load_weights("imagenet", "resnet34")


def test_a_file_whose_name_carries_no_hash_is_refused(tmp_path):
    path = tmp_path / "my-weights.pth"
    path.write_bytes(saved(stand_in()))
    with pytest.raises(UserError, match="name does not carry its SHA-256"):
        load_weights(str(path), "resnet34")


def tiny_learner(n: int = 64) -> Learner:
    """A resnet18 from ImageNet-shaped stand-in weights, as train_cnn builds it for
    fine_tune, on `n` random images of two classes."""
    torch.manual_seed(0)
    model = build_model({"kind": "cnn", "arch": "resnet18", "n_outputs": 2, "hidden": [],
                         "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD})
    start_from(model[1], {k: v for k, v in stand_in("resnet18").items()
                          if not k.startswith("fc.")})
    groups = layer_groups(model)

    def adam() -> Adam:
        return Adam(model, lr=0.01, wd=0.01, layer_groups=groups)

    model, opt = speed_up(model, adam())
    x, y = torch.rand(n, 784), torch.arange(n) % 2
    return Learner(model, x, y, x[:16], y[:16], cross_entropy_loss, opt, batch_size=16,
                   generator=torch.Generator().manual_seed(0), drop_last=True, log=None,
                   layer_groups=groups, opt_func=lambda: FusedAdam(adam()))


def test_layer_groups_are_fastais_resnet_split():
    learn = tiny_learner()
    net = learn.model[1]
    names = {id(p): n for n, p in net.named_parameters()}
    first, middle, head = ([names[id(p)] for p in group] for group in learn.layer_groups)
    assert {n.split(".")[0] for n in first} == {"conv1", "bn1", "layer1", "layer2"}
    assert {n.split(".")[0] for n in middle} == {"layer3", "layer4"}
    assert head == ["fc.weight", "fc.bias"]
    assert len(first) + len(middle) + len(head) == len(names)


def test_fine_tune_step_for_step():
    """fastai's fine_tune(1, base_lr): one epoch frozen on one-cycle at slice(base_lr), peak
    reached 99% of the way, the body's weights untouched but for BatchNorm; then unfrozen, one
    epoch of one-cycle (div 5, pct_start 0.3) at slice(base_lr/2/100, base_lr/2)."""
    learn = tiny_learner()
    net = learn.model[1]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    fit = learn.fit

    def fit_and_look(epochs, schedules=None):
        history = fit(epochs, schedules)
        seen.append(({k: v.clone() for k, v in net.state_dict().items()},
                     list(learn.opt.lr_mults), learn.opt))
        return history

    learn.fit = fit_and_look
    learn.fine_tune(1, base_lr=0.01)
    (frozen, frozen_mults, frozen_opt), (_, mults, opt) = seen
    changed = {k for k in before if not torch.equal(before[k], frozen[k])}
    assert "layer1.0.conv1.weight" not in changed and "layer4.1.conv2.weight" not in changed
    assert {"layer1.0.bn1.weight", "layer4.1.bn2.bias", "fc.weight", "fc.bias"} <= changed
    assert all(k.startswith("fc.") or ".bn" in k or "bn1" in k or "downsample.1" in k
               for k in changed)
    assert frozen_mults == [0.1, 0.1, 1.0]  # slice(base_lr): lr/10 but for the head
    assert mults == pytest.approx([0.01, 0.1, 1.0])  # even_mults(base/200, base/2, 3)
    assert opt is not frozen_opt  # unfreezing starts the optimizer afresh, as fastai's
    assert all(p.requires_grad for p in net.parameters())
    steps = 64 // 16
    lrs = [row["lr"] for row in learn.hypers]
    first, second = one_cycle(0.01, pct_start=0.99), one_cycle(0.005, div=5.0, pct_start=0.3)
    assert lrs[:steps] == [first["lr"](s / steps) for s in range(steps)]
    assert lrs[steps:] == [second["lr"](s / steps) for s in range(steps)]
    assert len(learn.history) == 2 and learn.schedule == "fine_tune"


def test_a_frozen_group_keeps_its_weights_with_the_plain_optimizer_too():
    """optim.Adam (the chapter's code, without speed-ups) skips what does not train."""
    learn = tiny_learner()
    learn.opt_func = lambda: Adam(learn.model, lr=0.01, wd=0.01, layer_groups=learn.layer_groups)
    learn.freeze()
    weight = learn.model[1].layer2[0].conv1.weight.clone()
    learn.fit_one_cycle(1, slice(0.01))
    assert torch.equal(weight, learn.model[1].layer2[0].conv1.weight)


@pytest.mark.pipeline
def test_the_finale_runs_through_the_pipeline(tmp_path):
    """`python -m stages.finale` with (stand-in) weights, fine_tune and augmentation, cut
    down to run in seconds (resnet18, 3s and 7s of the 5000-image sample, one epoch after the
    frozen one): the checkpoint says what it started from, the report and summary say so,
    and check_params refuses another architecture's file in one line before any stage."""
    weights = hashed_file(tmp_path, saved(stand_in("resnet18")), "resnet18")
    project = make_project(tmp_path / "project")
    output = run(project, "python", "-m", "stages.finale", "-S", "data.source=mnist-5k",
                 "-S", "data.digits=[3,7]", "-S", "train_cnn.arch=resnet18",
                 "-S", f"train_cnn.weights={weights}", "-S", "train_cnn.epochs=1",
                 "-S", "train_cnn.batch_size=64", "-S", "train_cnn.lr=0.002").stdout
    model, checkpoint = load_checkpoint(project / "models/cnn.pt")
    assert checkpoint["config"]["pretrained"] == {
        "file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "published": False}
    assert model[0].mean == IMAGENET_MEAN and model[1].conv1.in_channels == 3
    training = checkpoint["training"]
    assert training["fit"] == "fine_tune" and training["augment"] is True
    assert training["aug_transforms"]["max_rotate"] == 10.0
    metrics = read_json(project / "metrics/cnn.json")
    assert metrics["pretrained"] == weights.name and metrics["epochs"] == 2
    assert metrics["steps"] == 2 * (metrics["n_train"] // 64)  # one frozen epoch, one more
    assert len((project / "plots/cnn.tsv").read_text().splitlines()) == 1 + 2
    error = f"error rate {1 - metrics['accuracy']:.4f}"
    assert f"finale: resnet18 from the weights in {weights}." in output
    assert f"finale: ours, {error}" in output
    recipe = (f"cnn: resnet18 from the weights in {weights.name}, fastai's fine_tune (1 epoch "
              f"with the body frozen, then 1), with aug_transforms(): {error}.")
    report = " ".join((project / "report/report.md").read_text().split())
    assert recipe in report and "The resnet18 trains as fastai's `fine_tune` does" in report
    assert "the CNN, started from ImageNet weights, takes the grey digit as the three" in report
    assert recipe in " ".join(run(project, "python", "-m", "stages.summary").stdout.split())

    set_params(project, {"train_cnn.arch": "resnet34"})
    result = run(project, "dvc", "repro", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (f"{weights} does not hold resnet34's weights: it holds resnet18's (set "
            f"train_cnn.arch: resnet18)") in result.stdout + result.stderr
    assert "Running stage 'train_cnn'" not in result.stdout  # check_params stopped it


def test_the_finale_starts_from_scratch_without_the_weights_and_says_so(tmp_path,
                                                                        monkeypatch):
    from stages.finale import finale_settings, report
    from stages.lib.infra.experiments import FASTAI_FINALE

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    settings, start = finale_settings([])
    cached = tmp_path / "hub" / "checkpoints" / PUBLISHED["resnet34"]
    assert settings == {**FASTAI_FINALE, "train_cnn.weights": "none"}
    assert start.startswith(f"resnet34 from scratch: torchvision's ImageNet weights are not at "
                            f"{cached}")
    said = report({"accuracy": 0.99, "n_valid": 12000, "steps": 6000}, start)
    assert "finale: ours, error rate 0.0100 (120 of 12000 validation images wrong" in said
    assert "not measured here: the error rate from ImageNet weights" in said
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"checked when the experiment's check_params runs")
    settings, start = finale_settings(["train_cnn.epochs=1"])
    assert settings == {**FASTAI_FINALE, "train_cnn.epochs": "1"}
    assert start == f"resnet34 from torchvision's ImageNet weights ({cached})"


def test_check_params_refuses_missing_imagenet_weights_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    project = make_project(tmp_path / "project", {"train_cnn.weights": "imagenet"})
    result = run_module(project, "stages.check_params")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = [line for line in result.stderr.splitlines() if "train_cnn.weights" in line]
    assert len(line) == 1 and "resnet18-f37072fd.pth is not there" in line[0]


# --- found by the red team (round six: the finale's weights) -----------------------------------

def test_an_odd_weights_path_is_one_line(tmp_path):
    """A link loop, a path through a file, an unknown user's home: one line, not a
    traceback."""
    loop = tmp_path / "loop-deadbeef.pth"
    loop.symlink_to(loop)
    (tmp_path / "afile").write_text("x")
    for setting, said in [(str(loop), "Too many levels of symbolic links"),
                          (str(tmp_path / "afile" / "x-deadbeef.pth"), "Not a directory"),
                          ("~no-such-user-here/x-deadbeef.pth", "Could not determine home")]:
        with pytest.raises(UserError) as err:
            load_weights(setting, "resnet34")
        assert said in str(err.value) and "\n" not in str(err.value)
        assert str(err.value).startswith("train_cnn.weights: ")


@pytest.mark.parametrize("change,said", [
    (lambda v: v.to(torch.float8_e4m3fn), "conv1.weight is a float8_e4m3fn tensor"),
    (lambda v: torch.empty(v.shape, device="meta"), "conv1.weight is a float32 tensor on the "
                                                    "meta device"),
    (lambda v: v.long(), "conv1.weight is a int64 tensor (torchvision's are dense floats"),
    (lambda v: v.bool(), "conv1.weight is a bool tensor"),
])
def test_weights_of_another_kind_than_torchvisions_are_refused(tmp_path, change, said):
    """Integer or bool weights would be read as floats (randn's turned to 0 and 1), float8
    and meta tensors could not be checked: each is refused by name."""
    state = stand_in()
    state["conv1.weight"] = change(state["conv1.weight"])
    with pytest.raises(UserError, match=re.escape(said)):
        load_weights(str(hashed_file(tmp_path, saved(state))), "resnet34")


def test_negative_variances_are_refused(tmp_path):
    state = stand_in()
    state["bn1.running_var"] = -state["bn1.running_var"]
    with pytest.raises(UserError, match="negative variances in bn1.running_var"):
        load_weights(str(hashed_file(tmp_path, saved(state))), "resnet34")


@pytest.mark.parametrize("content,said", [
    (lambda: b"\0" * 4096, "(not a PyTorch file: it starts with b'\\x00"),
    (lambda: b"", "(not a PyTorch file: it is empty)"),
    (lambda: saved(stand_in("resnet18"))[:-5000], "a zip archive cut short or damaged"),
    (lambda: zipped_text(), "(RuntimeError: file in archive is not in a subdirectory: "
                            "hello.txt)"),
])
def test_what_is_not_a_weights_file_is_said_plainly(tmp_path, content, said):
    """Zeros were 'Python objects refused unread'; torch's C++ source location and advice
    came through."""
    with pytest.raises(UserError) as err:
        load_weights(str(hashed_file(tmp_path, content())), "resnet34")
    assert said in str(err.value) and "enforce fail" not in str(err.value)


def zipped_text() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    return buffer.getvalue()


def test_a_pickle_is_refused_without_torchs_warning(tmp_path):
    import warnings

    path = hashed_file(tmp_path, pickle.dumps({"conv1.weight": Path("x")}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError):
        warnings.simplefilter("always")
        load_weights(str(path), "resnet34")
    assert not [w for w in caught if "pickle protocol" in str(w.message)]


def test_advice_for_a_users_own_file_is_not_torchvisions_download(tmp_path):
    with pytest.raises(UserError) as err:
        load_weights(str(tmp_path / "mine-deadbeef.pth"), "resnet34")
    assert "mine-deadbeef.pth is not there" in str(err.value)
    assert "torchvision.models" not in str(err.value)
    path = tmp_path / "mine-0123456.pth"  # seven digits; and upper case is not torch.hub's
    path.write_bytes(b"x")
    with pytest.raises(UserError, match="8 or more lowercase hex digits"):
        load_weights(str(path), "resnet34")


@pytest.mark.parametrize("value,said", [
    ("NONE", "must be none, imagenet (in lower case) or a path"),
    ("ImageNet", "must be none, imagenet (in lower case) or a path"),
    ("w-deadbeef.pth\n", "must be one line"),
])
def test_weights_params_that_look_like_the_names_are_refused(value, said):
    from stages.lib.infra.params import PARAMS_FILE, load_params, validate_params

    raw = load_params(ROOT / PARAMS_FILE).model_dump()
    raw["train_cnn"]["weights"] = value
    with pytest.raises(UserError, match=re.escape(said)):
        validate_params(raw)


def test_a_checkpoint_whose_pretrained_record_was_edited_is_refused():
    """The report read config.pretrained's file name and crashed on anything else; predict
    and the server never looked at it."""
    model = build_model({"kind": "cnn", "arch": "resnet18", "n_outputs": 2, "hidden": [],
                         "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD})
    record = {"file": "resnet18-f37072fd.pth", "sha256": "ab" * 32, "published": True}
    checkpoint = {"digits": [3, 7], "target_digits": [7, 3], "state_dict": model.state_dict(),
                  "config": {"kind": "cnn", "arch": "resnet18", "n_outputs": 2, "hidden": [],
                             "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD,
                             "pretrained": record}}
    assert checkpoint_problems(checkpoint) == []
    for edited in ("x", None, {**record, "file": 5}, {**record, "published": "yes"}):
        checkpoint["config"]["pretrained"] = edited
        assert checkpoint_problems(checkpoint) == [
            f"config.pretrained is {edited!r} (expected the weights file's name, its SHA-256 "
            f"and whether torchvision published it)"]
    checkpoint["config"]["pretrained"] = record
    del checkpoint["config"]["input_mean"]
    assert checkpoint_problems(checkpoint) == [
        "config.input_mean is absent and input_std [0.229, 0.224, 0.225] (expected a number "
        "each, or three each)"]


def test_the_summary_shows_fastais_finale_on_the_same_images_only(tmp_path):
    import json

    from stages.lib.results.summary import fastai_finale

    path = tmp_path / "finale.json"
    path.write_text(json.dumps({"error_rate": 0.0488, "lr": 0.00100000005, "epochs": 3,
                                "tensors": "8421023f554f4c8a", "cpu": "Intel Xeon",
                                "date": "2026-12-04"}))
    assert fastai_finale({"tensors": "8421023f554f4c8a"}, path) == (
        "fastai's code on the same images (`python -m bench.finale`, Intel Xeon, 2026-12-04): "
        "error rate 0.0488, its lr_find valley 0.001, 3 epochs after the frozen one.")
    assert fastai_finale({"tensors": "0d1b82d4a813d029"}, path) is None  # other images
    path.write_text("{")
    assert fastai_finale({"tensors": "8421023f554f4c8a"}, path) is None
    assert fastai_finale({"tensors": "8421023f554f4c8a"}, tmp_path / "absent.json") is None
