"""IDX parsing: round trips, and every malformed file is a clear error naming the file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from stages.lib.infra.errors import UserError
from stages.lib.data.idx import idx_bytes, read_idx, read_images_and_labels, write_idx_gz
from tests.helpers import tiny_digits


def test_round_trip_gz_and_plain(tmp_path):
    images, labels = tiny_digits(2)
    write_idx_gz(tmp_path / "images.gz", images)
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    assert np.array_equal(read_idx(tmp_path / "images.gz", ndim=3), images)
    assert np.array_equal(read_idx(tmp_path / "labels", ndim=1), labels)


def test_written_gz_is_byte_stable(tmp_path):
    images, _ = tiny_digits(2)
    write_idx_gz(tmp_path / "a.gz", images)
    write_idx_gz(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_bad_magic_number(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")
    with pytest.raises(UserError, match=f"{path}: bad IDX magic number 00000901"):
        read_idx(path, ndim=1)


def test_images_file_given_as_labels_is_a_magic_error(tmp_path):
    images, _ = tiny_digits(1)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    with pytest.raises(UserError, match="expected 00000801"):
        read_idx(tmp_path / "images", ndim=1)


def test_header_that_disagrees_with_size(tmp_path):
    data = bytearray(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8)))
    data[4:8] = (6).to_bytes(4, "big")  # claims 6 images, holds 5
    path = tmp_path / "images"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"header says shape \(6, 28, 28\).*holds"):
        read_idx(path, ndim=3)


def test_truncated_gz(tmp_path):
    images, _ = tiny_digits(3)
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-40])
    with pytest.raises(UserError, match=f"{path}: not a readable gzip file"):
        read_idx(path, ndim=3)


def test_corrupted_gz(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(UserError, match="truncated or corrupted"):
        read_idx(path, ndim=3)


def test_image_and_label_counts_must_agree(tmp_path):
    images, labels = tiny_digits(2)
    write_idx_gz(tmp_path / "images.gz", images)
    write_idx_gz(tmp_path / "labels.gz", labels[:-1])
    with pytest.raises(UserError, match=f"holds {len(images)} images but .* holds "
                                        f"{len(labels) - 1} labels"):
        read_images_and_labels(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_images_must_be_28_by_28(tmp_path):
    write_idx_gz(tmp_path / "images.gz", np.zeros((2, 27, 28), dtype=np.uint8))
    write_idx_gz(tmp_path / "labels.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(UserError, match="27×28, expected 28×28"):
        read_images_and_labels(tmp_path / "images.gz", tmp_path / "labels.gz")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_idx(tmp_path / "nope.gz", ndim=1)
