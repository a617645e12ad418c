"""What data/raw holds, as the download stage leaves it and tensorise reads it: IDX gz files
named as the canonical ones (`train-*` always, `t10k-*` when the source has a test set) and
a manifest saying which source they came from, with each file's sha256.

Torch-free, like the download stage and the summary that read it.
"""

from __future__ import annotations

from pathlib import Path

from ..infra.errors import UserError
from ..infra.files import file_digests

RAW_DIR = Path("data/raw")
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def split_files(split: str) -> tuple[str, str]:
    """The (images, labels) file names of a split inside data/raw."""
    prefix = SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def check_manifest(raw_dir: Path, manifest: dict) -> None:
    """The files in raw_dir are the ones its manifest lists, by sha256: what tensorise
    reads is what the download stage fetched and verified."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (isinstance(files, dict) and all(isinstance(r, dict) and isinstance(
            r.get("sha256"), str) for r in files.values()) and isinstance(
            manifest.get("source"), str) and isinstance(manifest.get("splits"), list)
            and isinstance(manifest.get("digits"), list)):
        raise UserError(f"{raw_dir}/manifest.json is not the manifest the download stage "
                        f"writes; rerun `dvc repro download`")
    for name, recorded in files.items():
        path = raw_dir / name
        if not path.is_file():
            raise UserError(f"{path} is missing, though {raw_dir}/manifest.json lists it; "
                            "rerun `dvc repro download`")
        if file_digests(path)["sha256"] != recorded["sha256"]:
            raise UserError(f"{path} is not the file {raw_dir}/manifest.json lists (its "
                            "sha256 differs): it changed after the download stage ran; rerun "
                            "`dvc repro download`")


# Repeated where a fallback run's numbers are shown (the summary, the report's top).
SAMPLE = "mnist-5k"  # the offline sample, and what `auto` falls back to
FALLBACK_WARNING = ("WARNING: these numbers are from mnist-5k, the 5000-image sample the "
                    "download fell back to\nbecause full MNIST could not be had; they are not "
                    "the book's. To get the full set, online or with\n"
                    "MNIST_MIRRORS=/folder/with/the/four/gz/files: `make run` (it tries again "
                    "after a fallback),\nor `dvc repro -f download && dvc repro`.")


def fell_back(source: str, requested: str | None) -> bool:
    """Whether data.source: auto ended with the offline sample rather than real MNIST (the
    manifest's, and the tensors' meta.json's, `source` and `requested`)."""
    return source == SAMPLE and requested == "auto"
