"""The download sources on tiny generated data: mirrors (URL and folder), checksums, the
offline fallback, mnist-5k, and local folders in each accepted layout."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from stages.lib.data import sources
from stages.lib.infra.errors import UserError
from stages.lib.data.idx import read_idx
from stages.lib.data.sources import (Acquired, SourceUnavailable, acquire, build_manifest,
                                configured_mirrors, detect_layout, fetch_canonical,
                                load_local_folder, load_mnist_5k)
from tests.helpers import (canonical_digests_of, make_project, run, run_module, serve_endlessly,
                           serve_folder, serve_slowly, silent_server, tiny_digits,
                           write_idx_folder, write_png_folder)


@pytest.fixture
def tiny_mirror(tmp_path, monkeypatch):
    """A folder with the four files of tiny data, accepted as canonical for the test."""
    paths = write_idx_folder(tmp_path / "mirror")
    monkeypatch.setattr(sources, "CANONICAL_FILES", canonical_digests_of(paths))
    return tmp_path / "mirror"


@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def corrupt(path, at=-10):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_mirrors_from_env_come_first_and_offline_drops_public():
    env = {"MNIST_MIRRORS": "http://a/, /b "}
    assert configured_mirrors(env) == ["http://a/", "/b", *sources.PUBLIC_MIRRORS]
    assert configured_mirrors({**env, "MNIST_OFFLINE": "1"}) == ["http://a/", "/b"]
    assert configured_mirrors({"MNIST_OFFLINE": "1"}) == []


def test_fetch_over_http_verifies_every_file(tiny_mirror, out_dir):
    with serve_folder(tiny_mirror) as url:
        acquired = fetch_canonical(out_dir, [url])
    assert acquired.source == "mnist" and acquired.splits == ["train", "test"]
    for name in sources.CANONICAL_FILES:
        assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


def test_bad_copy_is_deleted_and_next_mirror_used(tiny_mirror, tmp_path, out_dir, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in sources.CANONICAL_FILES:
        (bad / name).write_bytes((tiny_mirror / name).read_bytes())
    corrupt(bad / "train-labels-idx1-ubyte.gz")
    fetch_canonical(out_dir, [str(bad), str(tiny_mirror)])
    assert (out_dir / "train-labels-idx1-ubyte.gz").read_bytes() == \
        (tiny_mirror / "train-labels-idx1-ubyte.gz").read_bytes()
    assert f"train-labels-idx1-ubyte.gz: verified (from {tiny_mirror})" in capsys.readouterr().err


def test_no_good_mirror_lists_every_attempt(tiny_mirror, tmp_path, out_dir):
    corrupt(tiny_mirror / "train-images-idx3-ubyte.gz")
    (tmp_path / "empty").mkdir()
    with serve_folder(tmp_path / "empty") as url, \
            pytest.raises(SourceUnavailable) as err:
        fetch_canonical(out_dir, [str(tiny_mirror), url])
    message = str(err.value)
    assert "could not get a verified copy of train-images-idx3-ubyte.gz" in message
    assert f"{tiny_mirror} -> train-images-idx3-ubyte.gz: md5" in message
    assert f"{url} -> train-images-idx3-ubyte.gz: HTTP Error 404" in message
    assert "MNIST_MIRRORS" in message
    assert list(out_dir.iterdir()) == []


def test_a_mirror_trickling_bytes_is_given_up_on_at_the_deadline(tiny_mirror, out_dir,
                                                                 monkeypatch, capsys):
    # Each read gets bytes within the read timeout, so only an overall deadline stops it
    # (the first file would take over a minute at this pace).
    monkeypatch.setenv("MNIST_DEADLINE", "1")
    start = time.monotonic()
    with serve_slowly(tiny_mirror) as url:
        fetch_canonical(out_dir, [url, str(tiny_mirror)])
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"train-images-idx3-ubyte.gz: fetching {url}train-images-idx3-ubyte.gz (up to 1 s)" \
        in err
    assert f"{url} timed out (gave up after 1 s with " in err and "MNIST_DEADLINE" in err
    assert err.count("fetching") == 1  # the other three files do not wait on it again
    for name in sources.CANONICAL_FILES:
        assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


def test_a_mirror_sending_an_endless_file_is_cut_off_at_the_file_s_size(tiny_mirror, out_dir,
                                                                        monkeypatch, capsys):
    sizes = {name: (tiny_mirror / name).stat().st_size for name in sources.CANONICAL_FILES}
    monkeypatch.setattr(sources, "CANONICAL_SIZES", sizes)
    start = time.monotonic()
    with serve_endlessly(tiny_mirror) as url:
        fetch_canonical(out_dir, [url, str(tiny_mirror)])
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    name = "train-images-idx3-ubyte.gz"
    assert (f"  {name}: {url} gave too much (it sent more than {name}'s "
            f"{sizes[name]:,} bytes; cut off there); trying the next mirror") in err
    for name in sources.CANONICAL_FILES:  # each from the folder mirror, verified
        assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


def test_a_folder_mirror_s_oversized_file_is_not_copied(tiny_mirror, tmp_path, out_dir,
                                                       monkeypatch, capsys):
    sizes = {name: (tiny_mirror / name).stat().st_size for name in sources.CANONICAL_FILES}
    monkeypatch.setattr(sources, "CANONICAL_SIZES", sizes)
    huge = tmp_path / "huge"
    huge.mkdir()
    for name in sources.CANONICAL_FILES:
        with open(huge / name, "wb") as handle:
            handle.truncate(10 * 2**30)  # sparse: 10 GB that would take minutes to copy
    fetch_canonical(out_dir, [str(huge), str(tiny_mirror)])
    err = capsys.readouterr().err
    name = "t10k-labels-idx1-ubyte.gz"
    assert (f"  {name}: {huge} gave too much ({huge / name} is 10,737,418,240 bytes; {name} "
            f"is {sizes[name]:,}); trying the next mirror") in err
    assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


def test_a_mirror_that_never_answers_is_left_after_the_read_timeout(tiny_mirror, out_dir,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(sources, "READ_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with silent_server() as url, pytest.raises(SourceUnavailable) as err:
        fetch_canonical(out_dir, [url])
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert f"{url} -> train-images-idx3-ubyte.gz: no answer for 0.5 s" in message
    assert capsys.readouterr().err.count("fetching") == 1


def test_file_urls_work_like_folders(tiny_mirror, out_dir):
    fetch_canonical(out_dir, [tiny_mirror.as_uri()])
    for name in sources.CANONICAL_FILES:
        assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_deadline_that_is_not_a_positive_number_is_an_error(tiny_mirror, out_dir,
                                                              monkeypatch, value):
    monkeypatch.setenv("MNIST_DEADLINE", value)
    with pytest.raises(UserError, match=f"MNIST_DEADLINE='{value}' is not a positive number"):
        fetch_canonical(out_dir, [str(tiny_mirror)])


def test_auto_falls_back_to_mnist_5k_with_a_warning(out_dir, capsys):
    acquired = acquire("auto", out_dir, mirrors=[])
    assert acquired.source == "mnist-5k" and acquired.splits == ["train"]
    assert acquired.notes["fallback"]
    warning = capsys.readouterr().err
    assert "WARNING: full MNIST could not be downloaded" in warning
    assert "`make run` (it tries again after a fallback)" in warning and "MNIST_MIRRORS" in warning


def test_auto_uses_a_mirror_when_one_answers(tiny_mirror, out_dir):
    assert acquire("auto", out_dir, [str(tiny_mirror)]).source == "mnist"


def test_mnist_5k_holds_500_of_each_digit(out_dir):
    load_mnist_5k(out_dir)
    images = read_idx(out_dir / "train-images-idx3-ubyte.gz", 3)
    labels = read_idx(out_dir / "train-labels-idx1-ubyte.gz", 1)
    assert images.shape == (5000, 28, 28)
    assert np.bincount(labels).tolist() == [500] * 10
    assert not (out_dir / "t10k-images-idx3-ubyte.gz").exists()


def test_mnist_5k_is_pixel_identical_to_mnist(out_dir, shared_mnist):
    load_mnist_5k(out_dir)
    images = read_idx(out_dir / "train-images-idx3-ubyte.gz", 3)
    labels = read_idx(out_dir / "train-labels-idx1-ubyte.gz", 1)
    real_images = read_idx(shared_mnist / "train-images-idx3-ubyte.gz", 3)
    real_labels = read_idx(shared_mnist / "train-labels-idx1-ubyte.gz", 1)
    for digit in range(10):
        assert np.array_equal(images[labels == digit], real_images[real_labels == digit][:500])


def test_mnist_5k_with_a_changed_file_is_refused(out_dir, monkeypatch):
    monkeypatch.setattr(sources, "MNIST_5K_SHA256", "0" * 64)
    with pytest.raises(UserError, match="mnist-5k: .* has sha256"):
        load_mnist_5k(out_dir)


def test_local_folder_of_gz_files(tiny_mirror, out_dir):
    acquired = load_local_folder(tiny_mirror, out_dir)
    assert acquired.source == "mnist"
    manifest = build_manifest(acquired, out_dir, requested=str(tiny_mirror))
    assert manifest["digits"] == list(range(10))
    assert set(manifest["files"]) == set(sources.CANONICAL_FILES)


def test_local_folder_with_a_wrong_checksum(tiny_mirror, out_dir):
    corrupt(tiny_mirror / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz: md5 .* does not match"):
        load_local_folder(tiny_mirror, out_dir)


@pytest.mark.parametrize("layout", ["mnist_sample", "mnist_png"])
def test_png_layouts_become_idx_files(tmp_path, out_dir, layout):
    folder = write_png_folder(tmp_path / layout, layout, digits=(3, 7), per_digit=3)
    assert detect_layout(folder) == layout
    acquired = load_local_folder(folder, out_dir)
    assert acquired.source == layout and acquired.splits == ["train", "test"]
    labels = read_idx(out_dir / "train-labels-idx1-ubyte.gz", 1)
    assert labels.tolist() == [3, 3, 3, 7, 7, 7]
    images = read_idx(out_dir / "t10k-images-idx3-ubyte.gz", 3)
    from PIL import Image
    test_dir = "valid" if layout == "mnist_sample" else "testing"
    first = np.asarray(Image.open(folder / test_dir / "3" / "3.png"))
    assert np.array_equal(images[0], first)
    manifest = build_manifest(acquired, out_dir, requested=str(folder))
    assert manifest["digits"] == [3, 7] and manifest["source"] == layout


def test_png_files_are_read_in_numeric_order(tmp_path):
    from PIL import Image
    digit_dir = tmp_path / "train" / "3"
    digit_dir.mkdir(parents=True)
    for n in (10, 9, 100):
        Image.fromarray(np.full((28, 28), n, dtype=np.uint8)).save(digit_dir / f"{n}.png")
    images, _, ignored = sources.read_png_folder(tmp_path / "train")
    assert ignored == []
    assert images[:, 0, 0].tolist() == [9, 10, 100]


@pytest.mark.parametrize("size, mode", [((28, 27), "L"), ((28, 28), "RGB")])
def test_png_that_is_not_28x28_grayscale(tmp_path, out_dir, size, mode):
    folder = write_png_folder(tmp_path / "s", "mnist_sample", per_digit=1, size=size, mode=mode)
    with pytest.raises(UserError, match=r"\.png: expected a 28×28 grayscale PNG"):
        load_local_folder(folder, out_dir)


def broken_pngs(class_dir):
    """A truncated PNG, a text file named .png, and a JPEG named .png."""
    from PIL import Image

    whole = next(class_dir.glob("*.png")).read_bytes()
    (class_dir / "900.png").write_bytes(whole[: len(whole) // 2])
    (class_dir / "901.png").write_text("not an image")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(class_dir / "902.png",
                                                             format="JPEG")


def test_every_broken_png_is_named_in_one_error(tmp_path, out_dir):
    folder = write_png_folder(tmp_path / "s", "mnist_sample", per_digit=1)
    class_dir = folder / "train" / "3"
    broken_pngs(class_dir)
    with pytest.raises(UserError) as err:
        load_local_folder(folder, out_dir)
    message = str(err.value)
    assert f"{folder / 'train'}: 3 file(s) cannot be used" in message
    assert f"{class_dir / '900.png'}: cannot be decoded" in message
    assert f"{class_dir / '901.png'}: not an image Pillow can read" in message
    assert f"{class_dir / '902.png'}: not a PNG but JPEG" in message


def test_other_images_are_an_error_and_other_files_a_warning(tmp_path, out_dir, capsys):
    folder = write_png_folder(tmp_path / "s", "mnist_sample", per_digit=1)
    (folder / "train" / "7" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "train" / "7" / "notes.txt").write_text("from my phone")
    (folder / "valid" / "labels.csv").write_text("file,label")
    acquired = load_local_folder(folder, out_dir)
    warning = capsys.readouterr().err
    assert "WARNING: 3 entries left out as not MNIST images" in warning
    for name in ("train/7/.DS_Store (not an image)", "train/7/notes.txt (not an image)",
                 "valid/labels.csv (not a digit folder 0-9)"):
        assert name in warning and any(i.endswith(name) for i in acquired.notes["ignored"])
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(folder / "train/7/photo.jpg")
    with pytest.raises(UserError, match=r"photo.jpg: a .jpg image; only .png files are read"):
        load_local_folder(folder, out_dir)


def test_a_broken_png_through_the_download_stage_is_one_line_no_traceback(tmp_path):
    folder = write_png_folder(tmp_path / "s", "mnist_sample", per_digit=1)
    broken_pngs(folder / "valid" / "7")
    project = make_project(tmp_path / "project", {"data.source": str(folder)})
    result = run_module(project, "stages.download")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error in stage 'download'" in result.stderr and "900.png: cannot be decoded" \
        in result.stderr
    assert not (project / "data/raw").exists()


def test_empty_class_folder(tmp_path, out_dir):
    folder = write_png_folder(tmp_path / "s", "mnist_sample", per_digit=1)
    (folder / "train" / "4").mkdir()
    with pytest.raises(UserError, match=r"train/4: empty class folder"):
        load_local_folder(folder, out_dir)


def test_missing_local_folder(tmp_path, out_dir):
    with pytest.raises(UserError, match=r"nope' is not a known source \(auto, mnist, "
                                        r"mnist-5k\) and no such folder exists$"):
        acquire(str(tmp_path / "nope"), out_dir, mirrors=[])


def test_a_missing_relative_folder_shows_where_it_was_looked_for(tmp_path, out_dir,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        acquire("my_mnist", out_dir, mirrors=[])
    assert f"(looked for {tmp_path / 'my_mnist'}: a relative path" in str(err.value)
    assert "`dvc exp run --temp` or `--queue`" in str(err.value)


@pytest.mark.pipeline
def test_a_relative_folder_under_exp_run_temp_names_the_temporary_copy(tmp_path):
    # The folder exists beside the workspace's params.yaml, but is not in git, so the
    # temporary copy DVC runs the experiment in does not have it.
    project = make_project(tmp_path / "project")
    write_png_folder(project / "my_mnist", "mnist_sample", per_digit=1)
    result = run(project, "dvc", "exp", "run", "--temp", "-S", "data.source=my_mnist",
                 check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    looked_in = re.search(r"looked for (\S+)/my_mnist:", result.stderr)
    assert looked_in and ".dvc/tmp/exps/" in looked_in.group(1), result.stderr


def test_unknown_source_suggests_the_closest_name(out_dir):
    with pytest.raises(UserError, match="data.source: 'mnist5k' is not a known source.*"
                                        "did you mean 'mnist-5k'"):
        acquire("mnist5k", out_dir, mirrors=[])


def test_folder_in_no_accepted_layout(tmp_path, out_dir):
    (tmp_path / "stuff" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="none of the accepted layouts.*mnist_sample.*mnist_png"):
        acquire(str(tmp_path / "stuff"), out_dir, mirrors=[])


def test_manifest_lists_sha256_of_each_file(out_dir):
    images, labels = tiny_digits(1, digits=(2, 5))
    sources._write_split(out_dir, "train", images, labels)
    manifest = build_manifest(Acquired("x", ["train"]), out_dir, requested="x")
    assert manifest["digits"] == [2, 5]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_large_downloads_show_progress(tmp_path, out_dir, monkeypatch, capsys):
    paths = write_idx_folder(tmp_path / "big", train=tiny_digits(200, seed=3))
    monkeypatch.setattr(sources, "CANONICAL_FILES", canonical_digests_of(paths))
    assert paths["train-images-idx3-ubyte.gz"].stat().st_size > 1 << 20
    with serve_folder(tmp_path / "big") as url:
        fetch_canonical(out_dir, [url])
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz: 25% of 1.6 MB" in err
    assert "train-images-idx3-ubyte.gz: 100% of 1.6 MB" in err
    assert "train-labels-idx1-ubyte.gz: 25%" not in err  # small files stay quiet


def test_a_mirror_under_the_minimum_rate_is_left_for_the_next(tiny_mirror, out_dir,
                                                             monkeypatch, capsys):
    # serve_slowly sends 320 bytes a second: under the 10 kB/s floor for the whole stretch,
    # long before the 300 s deadline would stop it.
    monkeypatch.setattr(sources, "SLOW_S", 1)
    start = time.monotonic()
    with serve_slowly(tiny_mirror) as url:
        fetch_canonical(out_dir, [url, str(tiny_mirror)])
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(url)} timed out \(under 10 kB/s for 1 s \(0\.\d\d kB/s, "
                     rf"\d+ bytes so far\)\); trying the next mirror", err), err
    assert err.count("fetching") == 1
    for name in sources.CANONICAL_FILES:
        assert (out_dir / name).read_bytes() == (tiny_mirror / name).read_bytes()


FILE_SIZE_LIMITED = """
import resource, sys
from pathlib import Path
from stages.lib.data import sources
from tests.helpers import canonical_digests_of, write_idx_folder
paths = write_idx_folder(Path("mirror"))
sources.CANONICAL_FILES = canonical_digests_of(paths)
Path("out").mkdir()
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
try:
    sources.fetch_canonical(Path("out"), ["mirror"])
except sources.UserError as err:
    sys.exit(str(err))
"""


def test_a_file_size_limit_is_blamed_on_this_machine_not_the_mirror(tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT, env_with

    result = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED], cwd=tmp_path,
                            env=env_with(PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        "out/train-images-idx3-ubyte.gz: cannot be written here (File too large; this machine "
        "limits a file's size: see `ulimit -f`); not the mirror's fault: make room, then run "
        "it again")
    assert not (tmp_path / "out" / "train-images-idx3-ubyte.gz").exists()
