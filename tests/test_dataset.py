"""tensorise's pieces: digit selection and order, targets, splits, counts, safe loading."""

from __future__ import annotations

import pytest
import torch

from stages.lib.data.sources import _write_split
from stages.lib.data.splits import (build_splits, check_digits_available, check_no_empty_class,
                                    class_counts, class_order, encode_targets, random_valid_mask,
                                    resolve_split)
from stages.lib.data.tensors import (Split, load_split, load_tensors, save_split, target_digits,
                                     targets_in_digit_order, tensors_fingerprint)
from stages.lib.infra.errors import UserError
from stages.lib.infra.files import write_json
from tests.helpers import tiny_digits


def test_two_digits_first_is_one_like_the_book():
    labels = torch.tensor([3, 7, 7, 3])
    assert encode_targets(labels, [3, 7]).tolist() == [1, 0, 0, 1]
    assert encode_targets(labels, [7, 3]).tolist() == [0, 1, 1, 0]
    assert target_digits([3, 7]) == [7, 3]
    assert targets_in_digit_order([3, 7]) == [1, 0]


def test_three_or_more_digits_use_the_position():
    labels = torch.tensor([9, 0, 4])
    assert encode_targets(labels, [4, 9, 0]).tolist() == [1, 2, 0]
    assert encode_targets(torch.arange(10), list(range(10))).tolist() == list(range(10))
    assert target_digits([4, 9, 0]) == [4, 9, 0]
    assert targets_in_digit_order([4, 9, 0]) == [0, 1, 2]


def test_class_order_groups_by_digit_in_listed_order_keeping_source_order():
    labels = torch.tensor([7, 3, 1, 7, 3, 3])
    assert class_order(labels, [3, 7]).tolist() == [1, 4, 5, 0, 3]


def test_random_valid_mask_is_seeded_and_sized():
    a, b = random_valid_mask(100, 0.2, seed=1), random_valid_mask(100, 0.2, seed=1)
    assert torch.equal(a, b) and int(a.sum()) == 20
    assert not torch.equal(a, random_valid_mask(100, 0.2, seed=2))


def test_resolve_split():
    assert resolve_split("auto", ["train", "test"], "mnist") == "official"
    assert resolve_split("auto", ["train"], "mnist-5k") == "random"
    assert resolve_split("random", ["train", "test"], "mnist") == "random"
    with pytest.raises(UserError, match="data.split: official needs the MNIST test set, but "
                                        "source 'mnist-5k' has none"):
        resolve_split("official", ["train"], "mnist-5k")


def test_digits_missing_from_the_source():
    with pytest.raises(UserError, match=r"data.digits: \[4\] not in source 'mnist_sample'"):
        check_digits_available([3, 4], [3, 7], "mnist_sample")


@pytest.mark.parametrize("counts, split, advice", [
    ({"train": {"3": 5, "7": 5}, "valid": {"3": 1, "7": 0}}, "random",
     "in the valid split: data.valid_pct: 0.01 leaves none for validation; raise "
     "data.valid_pct"),
    ({"train": {"3": 5, "7": 0}, "valid": {"3": 1, "7": 2}}, "random",
     "in the train split: data.valid_pct: 0.01 puts them all in validation; lower "
     "data.valid_pct"),
    ({"train": {"3": 5, "7": 5}, "valid": {"3": 1, "7": 0}}, "official",
     "in the valid split: source 'mnist_png' has none in its test set; pick other digits, "
     "or use data.split: random"),
])
def test_an_empty_class_gets_the_advice_that_fits(counts, split, advice):
    with pytest.raises(UserError) as err:
        check_no_empty_class(counts, split, 0.01, "mnist_png")
    assert str(err.value).startswith(f"data.digits: no images of digit(s) 7 {advice}")


def write_raw(folder, with_test=True):
    _write_split(folder, "train", *tiny_digits(5, seed=1))
    if with_test:
        _write_split(folder, "test", *tiny_digits(2, seed=2))


def test_official_split_uses_the_test_set(tmp_path):
    write_raw(tmp_path)
    train, valid = build_splits(tmp_path, [3, 7], "official", 0.2, seed=0)
    assert class_counts(train, [3, 7]) == {"3": 5, "7": 5}
    assert class_counts(valid, [3, 7]) == {"3": 2, "7": 2}
    assert train.targets.tolist() == [1] * 5 + [0] * 5
    assert train.images.dtype == torch.uint8 and train.images.shape == (10, 28, 28)
    assert train.targets.dtype == torch.int64


def test_random_split_partitions_the_training_images(tmp_path):
    write_raw(tmp_path, with_test=False)
    train, valid = build_splits(tmp_path, [0, 1, 2], "random", 0.4, seed=3)
    assert len(train) + len(valid) == 15 and len(valid) == 6
    together = torch.cat([train.images, valid.images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == 15  # nothing lost, nothing twice
    again = build_splits(tmp_path, [0, 1, 2], "random", 0.4, seed=3)
    assert torch.equal(again[1].images, valid.images)


def test_save_and_load_split(tmp_path):
    split = Split(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 0]))
    save_split(split, tmp_path / "s.pt")
    loaded = load_split(tmp_path / "s.pt")
    assert torch.equal(loaded.images, split.images) and torch.equal(loaded.targets, split.targets)


def test_loading_a_foreign_or_missing_tensor_file(tmp_path):
    with pytest.raises(UserError, match="not found; run `dvc repro tensorise`"):
        load_split(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a tensor file this pipeline wrote"):
        load_split(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a tensor file this pipeline wrote"):
        load_split(tmp_path / "junk.pt")


def saved_tensors(folder, train: Split, valid: Split, digits=(3, 7), targets=(7, 3)) -> dict:
    folder.mkdir(exist_ok=True)
    save_split(train, folder / "train.pt")
    save_split(valid, folder / "valid.pt")
    meta = {"digits": list(digits), "target_digits": list(targets),
            "tensors": tensors_fingerprint(train, valid, list(digits), list(targets))}
    write_json(folder / "meta.json", meta)
    return meta


def test_the_fingerprint_covers_pixels_targets_and_what_targets_mean():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    train, valid = Split(images[:4], torch.tensor([0, 1, 0, 1])), Split(images[4:],
                                                                        torch.tensor([1, 0]))
    base = tensors_fingerprint(train, valid, [3, 7], [7, 3])
    assert base == tensors_fingerprint(train, valid, [3, 7], [7, 3]) and len(base) == 16
    one_pixel = images.clone()
    one_pixel[5, 0, 0] ^= 1
    changed = [tensors_fingerprint(train, Split(one_pixel[4:], valid.targets), [3, 7], [7, 3]),
               tensors_fingerprint(train, Split(valid.images, torch.tensor([0, 1])), [3, 7],
                                   [7, 3]),
               tensors_fingerprint(train, valid, [4, 9], [9, 4]),
               tensors_fingerprint(valid, train, [3, 7], [7, 3])]  # the splits swapped
    assert base not in changed and len(set(changed)) == len(changed)


def test_tensors_that_are_not_the_ones_meta_describes_are_refused(tmp_path):
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    train, valid = Split(images[:4], torch.tensor([0, 1, 0, 1])), Split(images[4:],
                                                                        torch.tensor([1, 0]))
    meta = saved_tensors(tmp_path, train, valid)
    loaded_meta, loaded_train, _ = load_tensors(tmp_path)
    assert loaded_meta == meta and torch.equal(loaded_train.images, train.images)
    # valid.pt from another run (one label differs) beside this run's meta.json
    save_split(Split(valid.images, torch.tensor([0, 0])), tmp_path / "valid.pt")
    with pytest.raises(UserError, match=r"valid.pt are not the tensors .*meta.json describes "
                                        r".*rerun `dvc repro tensorise`"):
        load_tensors(tmp_path)
