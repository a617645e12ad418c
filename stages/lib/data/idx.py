"""Read and write IDX files (the MNIST format), gzipped or not, with numpy only.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian uint32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..infra.errors import UserError
from ..infra.files import atomic_open

_UBYTE = 0x08


def _read_bytes(path: Path) -> bytearray:
    # A writable buffer, so torch.from_numpy can share it without copying or warning.
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return bytearray(handle.read())
        return bytearray(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: not a readable gzip file ({err}); the file is truncated "
                        "or corrupted: delete it and download again") from None


def parse_idx(data: bytes | bytearray, ndim: int, name: str) -> np.ndarray:
    """Parse IDX bytes holding unsigned bytes in `ndim` dimensions."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] != ndim:
        magic = data[:4].hex() if len(data) >= 4 else f"only {len(data)} bytes"
        raise UserError(f"{name}: bad IDX magic number {magic}, expected "
                        f"0000{_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimension(s))")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise UserError(f"{name}: IDX header cut short ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise UserError(f"{name}: IDX header says shape {tuple(shape)} ({expected} bytes) "
                        f"but the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    path = Path(path)
    return parse_idx(_read_bytes(path), ndim, str(path))


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×28×28 uint8) and their labels, checked against each other."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise UserError(f"{images_path}: images are {images.shape[1]}×{images.shape[2]}, "
                        "expected 28×28")
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; they must match")
    if len(labels) and labels.max() > 9:
        raise UserError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_gz(path: str | os.PathLike, array: np.ndarray) -> None:
    # mtime=0 keeps the bytes, hence the sha256 in the manifest, the same on every run.
    with atomic_open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0,
                                                        compresslevel=6) as handle:
        handle.write(idx_bytes(array))
