"""`python -m stages.predict` on real MNIST digits written out as image files (as they are,
inverted, upscaled, padded, in colour, as JPEG), its errors, and the models as DVC artifacts."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.lib.own_digits.prepare import BOX, CENTRE, prepare_digit, read_digit
from stages.lib.infra.errors import UserError
from stages.lib.data.idx import read_images_and_labels
from stages.lib.learning.predictions import batched_logits, predict
from stages.lib.learning.models import load_checkpoint
from tests.helpers import ROOT, copy_project, git, run, run_module

MODELS = ("baseline", "linear", "mlp", "cnn")  # as predict and the page list them
TRAINED = MODELS[1:]


@pytest.fixture(scope="module")
def mnist_test(shared_mnist):
    """The first 300 images of the MNIST test set and their labels."""
    images, labels = read_images_and_labels(shared_mnist / "t10k-images-idx3-ubyte.gz",
                                            shared_mnist / "t10k-labels-idx1-ubyte.gz")
    return images[:300], labels[:300]


def variant(pixels: np.ndarray, kind: str) -> Image.Image:
    """An MNIST digit as people have digits: bigger, dark on light, in colour, with margins."""
    image = Image.fromarray(pixels, mode="L")
    if kind == "plain":
        return image
    if kind == "inverted":
        return Image.fromarray(255 - pixels, mode="L")
    if kind == "upscaled":  # 4× bigger, dark ink on white paper, RGB
        big = image.resize((112, 112), Image.Resampling.BICUBIC)
        return Image.fromarray(255 - np.asarray(big), mode="L").convert("RGB")
    if kind == "padded":  # 3× bigger, off-centre on a wide black canvas
        big = np.asarray(image.resize((84, 84), Image.Resampling.BILINEAR))
        return Image.fromarray(np.pad(big, ((10, 60), (90, 20))), mode="L")
    raise ValueError(kind)


VARIANTS = ("plain", "inverted", "upscaled", "padded")


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    weights = pixels.astype(np.float64)
    index = np.arange(28)
    return (weights.sum(1) @ index / weights.sum(), weights.sum(0) @ index / weights.sum())


# --- preparing an image --------------------------------------------------------------------

def test_mnist_images_and_their_inverses_pass_through_unchanged(mnist_test):
    for pixels in mnist_test[0]:
        assert np.array_equal(prepare_digit(pixels.astype(np.float64)), pixels)
        assert np.array_equal(prepare_digit(255.0 - pixels), pixels)


@pytest.mark.parametrize("kind", ["upscaled", "padded"])
def test_bigger_digits_come_back_as_mnist_made_them(mnist_test, kind):
    """Cropped, fit in 20×20, centred by mass: close to the original MNIST image."""
    differences = []
    for pixels in mnist_test[0][:100]:
        grey = np.asarray(variant(pixels, kind).convert("L"), dtype=np.float64)
        prepared = prepare_digit(grey)
        rows, cols = np.flatnonzero(prepared.any(1)), np.flatnonzero(prepared.any(0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= BOX + 1  # +1: resampling
        assert centre_of_mass(prepared) == pytest.approx((CENTRE, CENTRE), abs=0.5 + 1e-9)
        differences.append(np.abs(prepared.astype(float) - pixels).mean())
    # A digit is ~19% of the field; the mean grey level differs by 7 of 255 (1-pixel shifts
    # and resampling), against 60 for two different MNIST digits.
    assert np.mean(differences) < 12


def test_a_photo_like_image_is_cropped_and_inverted(tmp_path):
    """Grey paper with a light gradient and noise, a dark thick stroke: one white digit."""
    rng = np.random.default_rng(0)
    paper = 190 + 40 * np.linspace(0, 1, 400)[None, :] + rng.normal(0, 5, (300, 400))
    paper[60:240, 180:200] = 40  # a "1" of pen ink
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(
        tmp_path / "one.jpg", quality=80)
    prepared = read_digit(tmp_path / "one.jpg")
    rows, cols = np.flatnonzero(prepared.any(1)), np.flatnonzero(prepared.any(0))
    assert rows[-1] - rows[0] + 1 == BOX and cols[-1] - cols[0] + 1 <= 4
    assert prepared.max() > 200 and prepared[0].max() == 0 and prepared[:, 0].max() == 0


@pytest.mark.parametrize("stroke, expected_ink", [(255, True), (0, True)])
def test_strokes_on_a_transparent_background_are_the_digit(tmp_path, stroke, expected_ink):
    """Drawing apps export strokes on transparency, white or black: both are ink."""
    rgba = np.zeros((100, 60, 4), dtype=np.uint8)
    rgba[10:90, 25:35] = (stroke, stroke, stroke, 255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "drawn.png")
    prepared = read_digit(tmp_path / "drawn.png")
    assert prepared.max() == 255 and prepared.sum() > 0
    assert np.flatnonzero(prepared.any(1)).size == BOX


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """A bar wide in the stored pixels, EXIF saying 'rotate 90°': upright it is tall."""
    pixels = np.full((60, 200), 255, dtype=np.uint8)
    pixels[25:35, 20:180] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    prepared = read_digit(tmp_path / "phone.jpg")
    assert np.flatnonzero(prepared.any(1)).size == BOX  # tall: 20 rows
    assert np.flatnonzero(prepared.any(0)).size < 5


def test_unreadable_and_blank_images_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("L", (50, 50), 200).save(tmp_path / "blank.png")
    png = tmp_path / "whole.png"
    Image.fromarray(np.eye(64, dtype=np.uint8) * 255).save(png)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:60])
    expected = {"notes.png": "not an image Pillow can read", "empty.jpg": "not an image",
                "blank.png": "no digit found", "cut.png": "cannot read the image",
                "missing.png": "no such file", ".": "is a folder"}
    for name, message in expected.items():
        with pytest.raises(UserError, match=message) as caught:
            read_digit(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)


# --- the command, with the models the pipeline trained -------------------------------------

def write_variants(folder, images) -> list[tuple[str, int]]:
    """Every image in every variant, as PNG (JPEG for the upscaled one), with its index."""
    folder.mkdir()
    written = []
    for i, pixels in enumerate(images):
        for kind in VARIANTS:
            path = folder / f"{i:03d}-{kind}.{'jpg' if kind == 'upscaled' else 'png'}"
            variant(pixels, kind).save(path, **({"quality": 95} if kind == "upscaled" else {}))
            written.append((str(path), i))
    return written


def run_predict(folder, *args, check=True):
    """The command run in `folder` (its models/ is the default)."""
    return run_module(folder, "stages.predict", *args, check=check)


def tensor_predictions(project, name, images) -> list[int]:
    """What a model predicts for MNIST images given as tensors, as the report computes it
    (the baseline: the nearest mean image by L1, as its stage scores it)."""
    if name == "baseline":
        from stages.lib.learning.similarity import load_means, predict_nearest

        saved = load_means(project / "models/baseline.pt")
        nearest = predict_nearest(torch.from_numpy(images), saved["means"], "l1")
        return [saved["target_digits"][t] for t in nearest.tolist()]
    model, checkpoint = load_checkpoint(project / f"models/{name}.pt")
    x = torch.from_numpy(images).view(len(images), -1).float() / 255
    return [checkpoint["target_digits"][t] for t in predict(batched_logits(model, x)).tolist()]


def agreement(result: dict, written, expected: dict[str, list[int]], kind: str) -> dict:
    by_file = {row["file"]: row["predictions"] for row in result["images"]}
    return {name: np.mean([by_file[path][name]["digit"] == expected[name][i]
                           for path, i in written if Path(path).stem.endswith(kind)])
            for name in expected}


def test_predict_agrees_with_the_models_on_mnist_images_as_files(book_project, mnist_test,
                                                                 tmp_path):
    project, _ = book_project
    images, labels = mnist_test
    images = images[np.isin(labels, (3, 7))][:60]
    written = write_variants(tmp_path / "digits", images)
    result = json.loads(run_predict(project, *[p for p, _ in written], "--json").stdout)

    assert list(result["models"]) == list(MODELS)
    assert all(m["digits"] == [3, 7] for m in result["models"].values())
    expected = {name: tensor_predictions(project, name, images) for name in MODELS}
    for kind in ("plain", "inverted"):  # exactly the MNIST pixels: exactly the same answers
        assert agreement(result, written, expected, kind) == {name: 1.0 for name in MODELS}
    for kind in ("upscaled", "padded"):  # resampled: the models' own error rate allows ~2%
        assert min(agreement(result, written, expected, kind).values()) >= 0.95, kind
    for row in result["images"]:
        nearest = row["predictions"].pop("baseline")
        assert set(nearest["distances"]) == {"3", "7"}
        assert nearest["distances"][str(nearest["digit"])] == min(nearest["distances"].values())
        for answer in row["predictions"].values():
            assert answer["digit"] in (3, 7) and set(answer["probabilities"]) == {"3", "7"}
            assert answer["probability"] == max(answer["probabilities"].values())
            assert sum(answer["probabilities"].values()) == pytest.approx(1)


def test_a_two_digit_model_says_what_it_can_answer(book_project, mnist_test, tmp_path):
    project, _ = book_project
    images, labels = mnist_test
    five = tmp_path / "five.png"
    Image.fromarray(images[list(labels).index(5)]).save(five)
    result = run_predict(project, str(five), "--model", "cnn")
    assert "cnn: trained on 3 and 7 only, so each answers 3 or 7" in result.stdout
    table = result.stdout.splitlines()[-2:]
    assert table[0].split() == ["file", "cnn"]
    assert table[1].split()[0] == str(five) and table[1].split()[1] in ("3", "7")


def test_bad_images_are_named_and_the_good_ones_still_classified(book_project, mnist_test,
                                                                  tmp_path):
    project, _ = book_project
    good = tmp_path / "three.png"
    Image.fromarray(mnist_test[0][list(mnist_test[1]).index(3)]).save(good)
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    bad = [tmp_path / "notes.png", tmp_path / "blank.png", tmp_path / "missing.jpg"]
    result = run_predict(project, str(good), *map(str, bad), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(str(path) in line for path, line in zip(bad, errors))
    row = result.stdout.splitlines()[-1]  # file, then `digit (probability)` per model
    assert row.startswith(str(good)) and re.findall(r"(\d) \(", row) == ["3"] * 4


def test_missing_checkpoints_say_to_run_dvc_repro(tmp_path, mnist_test):
    image = tmp_path / "digit.png"
    Image.fromarray(mnist_test[0][0]).save(image)
    nothing = run_predict(tmp_path, str(image), check=False)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert "no trained model in models/" in nothing.stderr and "dvc repro" in nothing.stderr
    asked = run_predict(tmp_path, str(image), "--model", "cnn", check=False)
    assert asked.returncode == 2
    assert "models/cnn.pt not found; run `dvc repro train_cnn` first" in asked.stderr
    wrong = run_predict(tmp_path, str(image), "--model", "resnet", check=False)
    assert wrong.returncode == 2 and "--model resnet: expected one of baseline, linear" in wrong.stderr


def test_only_trained_models_are_used_by_default(book_project, mnist_test, tmp_path):
    project = copy_project(book_project[0], tmp_path / "copy", commit=False)
    (project / "models/cnn.pt").unlink()
    image = tmp_path / "digit.png"
    Image.fromarray(mnist_test[0][0]).save(image)
    result = run_predict(project, str(image))
    assert result.stdout.splitlines()[-2].split() == ["file", "baseline", "linear", "mlp"]
    assert "cnn: models/cnn.pt not made yet, skipped" in result.stderr


def test_ten_digit_models_answer_every_digit(ten_digit_project, mnist_test, tmp_path):
    project, _ = ten_digit_project
    images, labels = mnist_test
    picked = [list(labels).index(d) for d in range(10)]
    written = write_variants(tmp_path / "digits", images[picked])
    result = json.loads(run_predict(project, *[p for p, _ in written], "--json").stdout)
    expected = {name: tensor_predictions(project, name, images[picked]) for name in MODELS}
    assert agreement(result, written, expected, "plain") == {name: 1.0 for name in MODELS}
    assert agreement(result, written, expected, "inverted") == {name: 1.0 for name in MODELS}
    assert expected["cnn"] == list(range(10))  # the first of each digit in the test set
    assert all(len(row["predictions"]["cnn"]["probabilities"]) == 10
               for row in result["images"])
    table = run_predict(project, written[0][0]).stdout
    assert "baseline, linear, mlp, cnn: trained on all ten digits" in table


# --- the models as DVC artifacts -----------------------------------------------------------

def test_models_are_dvc_artifacts_that_dvc_fetches(book_project, mnist_test, tmp_path):
    import dvc.api

    project = copy_project(book_project[0], tmp_path / "registry")
    for name in TRAINED:  # register a version, as `gto register mnist-NAME` does
        git(project, "tag", "-a", f"mnist-{name}@v1.0.0", "-m", f"{name} on 3/7")
    head = git(project, "rev-parse", "HEAD").strip()
    for name in TRAINED:
        shown = dvc.api.artifacts_show(f"mnist-{name}", repo=str(project))
        assert shown == {"rev": head, "path": f"models/{name}.pt"}

    user = tmp_path / "user"
    user.mkdir()
    run(user, "dvc", "artifacts", "get", str(project), "mnist-cnn", "-o", "cnn.pt")
    assert (user / "cnn.pt").read_bytes() == (project / "models/cnn.pt").read_bytes()
    image = user / "seven.png"
    Image.fromarray(mnist_test[0][0]).save(image)  # the test set's first image is a 7
    # As a user runs it: a real process, in a folder that is not the project.
    result = run(user, sys.executable, "-m", "stages.predict", str(image), "--model", "cnn.pt",
                 PYTHONPATH=str(ROOT))
    assert result.stdout.splitlines()[-1].split()[:2] == [str(image), "7"]


# --- hostile images and checkpoints (no pipeline run: tiny checkpoints made here) ----------

def pixels_of(kind: str, digit: np.ndarray) -> Image.Image:
    """One MNIST digit, 4× as large, dark on white, saved as a drawing tool might save it."""
    big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC))
    paper = 255 - big
    if kind == "grey":
        return Image.fromarray(paper)
    if kind == "white made transparent":  # alpha 0 where the paper was, colour kept
        alpha = np.where(paper == 255, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([paper] * 3 + [alpha]), "RGBA")
    if kind in ("palette key", "grey key", "rgb key"):
        return Image.fromarray(paper).convert({"palette key": "P", "grey key": "L",
                                               "rgb key": "RGB"}[kind])
    if kind == "16-bit grey":
        return Image.fromarray(paper.astype(np.uint16) * 257)
    raise ValueError(kind)


def save_as(image: Image.Image, kind: str, path: Path) -> Path:
    if kind.endswith("key"):  # the paper's white is the transparent colour
        white = image.getpixel((0, 0))
        image.save(path, transparency=white)
    else:
        image.save(path)
    return path


@pytest.mark.parametrize("kind,suffix", [
    ("white made transparent", ".png"), ("palette key", ".png"), ("palette key", ".gif"),
    ("grey key", ".png"), ("rgb key", ".png"), ("16-bit grey", ".png")])
def test_transparency_and_16_bits_read_as_the_plain_grey_digit(mnist_test, tmp_path, kind,
                                                               suffix):
    digit = mnist_test[0][0]
    plain = read_digit(save_as(pixels_of("grey", digit), "grey", tmp_path / "plain.png"))
    other = read_digit(save_as(pixels_of(kind, digit), kind, tmp_path / f"other{suffix}"))
    assert np.array_equal(other, plain)


def test_a_float_tiff_of_levels_0_to_1_reads_as_the_plain_digit(mnist_test, tmp_path):
    digit = mnist_test[0][0]
    plain = read_digit(save_as(pixels_of("grey", digit), "grey", tmp_path / "plain.png"))
    paper = np.asarray(pixels_of("grey", digit), dtype=np.float32) / 255  # 0-1, as a scan's
    Image.fromarray(paper, mode="F").save(tmp_path / "float.tif")
    assert np.array_equal(read_digit(tmp_path / "float.tif"), plain)


def test_a_16_bit_mnist_sized_digit_keeps_every_grey_level(mnist_test, tmp_path):
    digit = mnist_test[0][0]
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    assert np.array_equal(read_digit(tmp_path / "deep.png"), digit)  # not 2 levels


def test_a_fifo_and_a_decompression_bomb_are_named_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(UserError, match="pipe.png: is a FIFO"):
        read_digit(tmp_path / "pipe.png")  # would block forever if opened
    Image.new("1", (12_000, 12_000)).save(tmp_path / "bomb.png")  # 144 Mpx, a 20 kB file
    with pytest.raises(UserError, match="bomb.png: too many pixels to read \\(over 89,478,485"):
        read_digit(tmp_path / "bomb.png")


def tiny_checkpoint(path: Path, kind: str = "linear", seed: int = 0, digits=(3, 7)) -> Path:
    from stages.lib.learning.models import build_model, save_checkpoint

    torch.manual_seed(seed)
    n_outputs = 1 if len(digits) == 2 and kind != "cnn" else len(digits)
    config = {"kind": kind, "n_outputs": n_outputs, "hidden": [8] if kind == "mlp" else [],
              **({"input_mean": 0.13, "input_std": 0.31} if kind == "cnn" else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_model(config), config, {"seed": seed},
                    {"digits": list(digits), "target_digits": list(digits), "tensors": "t"}, {})
    return path


def predict_json(project: Path, *args: str):
    result = run_module(project, "stages.predict", *args, "--json")
    return result, (json.loads(result.stdout) if result.stdout else None)


def test_checkpoints_sharing_a_file_name_are_told_apart(mnist_test, tmp_path):
    a = tiny_checkpoint(tmp_path / "a/model.pt", "linear", seed=1)
    b = tiny_checkpoint(tmp_path / "b/model.pt", "mlp", seed=2)
    copy = tmp_path / "b/copy.pt"
    copy.write_bytes(a.read_bytes())
    Image.fromarray(mnist_test[0][0]).save(tmp_path / "seven.png")
    result, shown = predict_json(tmp_path, "seven.png", "--model", str(a), "--model", str(b),
                                 "--model", str(copy))
    assert result.returncode == 0, result.stderr
    assert sorted(shown["models"]) == sorted([str(a), str(b)])  # the copy is a's model
    assert shown["models"][str(a)]["kind"] == "linear" and shown["models"][str(b)]["kind"] == "mlp"
    assert shown["models"][str(a)]["fingerprint"] != shown["models"][str(b)]["fingerprint"]
    answers = shown["images"][0]["predictions"]
    own = {}
    for ref in (a, b):
        model, _ = load_checkpoint(ref)
        x = torch.from_numpy(read_digit(tmp_path / "seven.png")).float().view(1, -1) / 255
        own[str(ref)] = torch.sigmoid(model(x))[0, 0].item()
    for ref, p7 in own.items():  # each column is its own model's answer
        assert answers[ref]["probabilities"]["7"] == pytest.approx(p7, abs=1e-6)
    assert f"{copy} is the same checkpoint as {a}" in result.stderr


def edited(source: Path, target: Path, change) -> Path:
    data = torch.load(source, weights_only=True)
    change(data)
    torch.save(data, target)
    return target


@pytest.mark.parametrize("change,message", [
    (lambda c: c["config"].update(input_std=0), "config.input_std is 0 (expected a number "
                                                "above 0"),
    (lambda c: c["config"].update(input_mean=float("nan")), "config.input_mean is nan"),
    (lambda c: c["config"].update(hidden=[10**11]), "config.hidden is [100000000000] (expected "
                                                    "[]: a cnn has no hidden widths)"),
    (lambda c: c["config"].pop("n_outputs"), "config.n_outputs is None"),
    (lambda c: c["config"].update(kind="rnn"), "config.kind is 'rnn'"),
    (lambda c: c.update(target_digits=[3]), "target_digits is [3]"),
    (lambda c: c.update(digits=[3, 3]), "digits is [3, 3]"),
    (lambda c: c["state_dict"]["1.fc.bias"].fill_(float("inf")), "the weights hold NaN or Inf values "
                                                                  "(1.fc.bias)"),
    (lambda c: c["state_dict"].update({"1.fc.bias": c["state_dict"]["1.fc.bias"].to_sparse()}),
     "the weights hold tensors this pipeline does not write (1.fc.bias: sparse_coo, cpu, "
     "float32; expected dense float32 on the CPU)"),
    (lambda c: c["state_dict"].update({"1.fc.bias": torch.empty(2, device="meta")}),
     "the weights hold tensors this pipeline does not write (1.fc.bias: strided, meta, "
     "float32"),
    (lambda c: c["state_dict"].update({"1.fc.bias": c["state_dict"]["1.fc.bias"].double()}),
     "the weights hold tensors this pipeline does not write (1.fc.bias: strided, cpu, "
     "float64; expected dense float32 on the CPU)"),
])
def test_an_edited_checkpoint_is_refused_before_a_model_is_built(tmp_path, change, message):
    good = tiny_checkpoint(tmp_path / "good.pt", "cnn")
    bad = edited(good, tmp_path / "bad.pt", change)
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "line.png")
    result, shown = predict_json(tmp_path, "line.png", "--model", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{bad} is not a checkpoint this pipeline wrote:\n  - {message}" in result.stderr
    assert "nan" not in result.stdout.lower()


def test_a_checkpoint_whose_outputs_overflow_gives_no_nan(tmp_path):
    huge = edited(tiny_checkpoint(tmp_path / "good.pt"), tmp_path / "huge.pt",
                  lambda c: c["state_dict"]["0.weight"].fill_(3e38))
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "line.png")
    result, _ = predict_json(tmp_path, "line.png", "--model", str(huge))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gives NaN or infinite outputs" in result.stderr and "NaN," not in result.stdout


@pytest.mark.parametrize("content,message", [
    (b"hello, I am text\n", "not a PyTorch file: it starts with b'hello, I am text'"),
    (b"", "not a PyTorch file: it is empty")])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, message):
    (tmp_path / "notes.pt").write_bytes(content)
    result, _ = predict_json(tmp_path, "x.png", "--model", "notes.pt")
    assert result.returncode == 2 and message in result.stderr and "(101)" not in result.stderr


def test_a_pickle_with_code_is_refused_without_advice_to_run_it(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("touch ran",)

    torch.save({"config": Payload()}, tmp_path / "evil.pt")
    result, _ = predict_json(tmp_path, "x.png", "--model", "evil.pt")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds Python objects beyond tensors and plain values (posix.system)" in result.stderr
    assert "weights_only" not in result.stderr and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("prepared,message", [
    ("afile", "--prepared afile: is a file, not a folder"),
    ("afile/below", "--prepared afile/below: cannot make the folder (Not a directory)")])
def test_a_bad_prepared_folder_still_prints_the_answers(tmp_path, prepared, message):
    model = tiny_checkpoint(tmp_path / "m.pt")
    (tmp_path / "afile").write_text("")
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "line.png")
    Image.new("1", (12_000, 12_000)).save(tmp_path / "bomb.png")
    result, shown = predict_json(tmp_path, "bomb.png", "line.png", "--model", str(model),
                                 "--prepared", prepared)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [row["file"] for row in shown["images"]] == ["line.png"]  # classified all the same
    errors = {e["file"]: e["error"] for e in shown["errors"]}
    assert errors[prepared] == message and "too many pixels" in errors["bomb.png"]


def test_an_mlp_config_claiming_a_huge_width_allocates_nothing(tmp_path):
    # 10^11 hidden units would be 300 GB of weights: the shapes are compared on torch's meta
    # device before anything is built.
    bad = edited(tiny_checkpoint(tmp_path / "good.pt", "mlp"), tmp_path / "wide.pt",
                 lambda c: c["config"].update(hidden=[10**11]))
    result, _ = predict_json(tmp_path, "x.png", "--model", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("the weights do not fit the mlp model its config describes (3 tensor(s) differ; "
            "0.weight: expected [100000000000, 784], found [8, 784])") in result.stderr
