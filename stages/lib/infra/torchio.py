"""Saving and loading the pipeline's .pt files: atomic writes, weights_only reads, and a
clear error for a missing or foreign file."""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_open, fingerprint, regular_file


def save_pt(path: str | Path, data: dict) -> str:
    """Write `data` to `path` (atomically); return the fingerprint of the bytes written.

    Serialised in memory first: a failed write is then the file's OSError (disk full, ...),
    not torch's "[enforce fail at inline_container.cc...]", and the fingerprint is known
    before the file is in place (inside files.together it is renamed last).
    """
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
    return fingerprint(buffer.getbuffer())


def load_pt(path: str | Path, keys: set[str], what: str, stage: str = "",
            optional: frozenset[str] = frozenset(), content: bytes | None = None) -> dict:
    """Load a dict of tensors and plain values that `stage` wrote, with weights_only=True.

    weights_only refuses pickled code, so a tampered file cannot run anything; a file with
    other keys (another stage's, or not ours) is refused by name. `optional` keys are ones
    that files written by earlier versions lack. Given `content` (the file's bytes, read
    once by the caller), those are loaded and `path` only names them.
    """
    data = read_pt(path, what, stage, content)
    if not isinstance(data, dict) or not keys <= set(data) <= keys | optional:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} is not a {what} this pipeline wrote (expected keys "
                        f"{sorted(keys)}, found {found})")
    return data


def read_pt(path: str | Path, what: str, stage: str = "", content: bytes | None = None,
            writer: str = "this pipeline wrote", legacy: bool = False) -> object:
    """What a PyTorch file holds, read with weights_only=True, every failure one UserError
    naming the file as `a {what} {writer}` (a missing file: run `dvc repro {stage}`).
    `legacy`: also torch's pre-1.6 format, which is not a zip archive (other people's
    files may be in it; torch.save has written zip archives since)."""
    path = Path(path)
    try:
        if content is None:
            regular_file(path, f"a {what}")
        source = path if content is None else io.BytesIO(content)
        # torch.save writes a zip archive; the old format, a pickle (its first byte 0x80)
        if not zipfile.is_zipfile(source) and not (legacy and _opening_bytes(path, content)
                                                   .startswith(b"\x80")):
            raise UserError(f"{path} is not a {what} {writer} (not a PyTorch file: "
                            f"{_opening(path, content)})")
        if content is not None:
            source.seek(0)
        with warnings.catch_warnings():
            # a sparse tensor's check, noted per load (refused by the caller), and the pickle
            # protocol of a file that is refused or read all the same
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants")
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            return torch.load(source, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        command = f"dvc repro {stage}".strip()
        raise UserError(f"{what} {path} not found; run `{command}` first") from None
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} is not a {what} {writer}: it holds Python objects "
                        f"beyond tensors and plain values{_refused_global(err)}, and was "
                        f"refused unread, since loading those could run code") from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a foreign file
        raise UserError(f"{path} is not a {what} {writer} ({type(err).__name__}: "
                        f"{_first_line(err)})") from None


def _opening_bytes(path: Path, content: bytes | None = None) -> bytes:
    if content is not None:
        return content[:16]
    with open(path, "rb") as handle:
        return handle.read(16)


def _opening(path: Path, content: bytes | None = None) -> str:
    """What a file that is not a zip archive starts with, for the message."""
    start = _opening_bytes(path, content)
    if start.startswith(b"PK\x03\x04"):  # a zip's first entry, but no readable end
        return "a zip archive cut short or damaged, as a download cut short is"
    return f"it starts with {start!r}" if start else "it is empty"


def _first_line(err: Exception) -> str:
    """torch's own words for a file it cannot read, without its C++ source location
    (`[enforce fail at inline_container.cc:180] .`) or the advice after the first line."""
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(err)).strip()
    return (text.splitlines() or [""])[0].split(". This is an internal")[0]


def _refused_global(err: Exception) -> str:
    """The object torch's weights_only loader refused (`posix.system`), quoted without the
    rest of its message, whose advice (weights_only=False) would run the file's code."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))  # "Unsupported global: GLOBAL x.y was not..."
    return f" ({found.group(1)})" if found else ""
