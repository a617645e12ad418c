"""Stage `tensorise`: pick data.digits from data/raw, split, save uint8 tensors + meta."""

from __future__ import annotations

import sys

from stages.lib.data.raw import RAW_DIR, check_manifest
from stages.lib.data.splits import (build_splits, check_digits_available, check_no_empty_class,
                                    class_counts, resolve_split)
from stages.lib.data.tensors import TENSOR_DIR, save_split, target_digits, tensors_fingerprint
from stages.lib.infra.errors import run_stage
from stages.lib.infra.files import atomic_dir, read_json, write_json
from stages.lib.infra.params import load_params


def main() -> None:
    params = load_params()
    data = params.data
    manifest = read_json(RAW_DIR / "manifest.json", "the download manifest")
    check_manifest(RAW_DIR, manifest)
    source = manifest["source"]
    split = resolve_split(data.split, manifest["splits"], source)
    check_digits_available(data.digits, manifest["digits"], source)

    train, valid = build_splits(RAW_DIR, data.digits, split, data.valid_pct, params.base.seed)
    counts = {"train": class_counts(train, data.digits), "valid": class_counts(valid, data.digits)}
    check_no_empty_class(counts, split, data.valid_pct, source)

    targets = target_digits(data.digits)
    with atomic_dir(TENSOR_DIR) as out:
        save_split(train, out / "train.pt")
        save_split(valid, out / "valid.pt")
        write_json(out / "meta.json", {
            "source": source, "requested": manifest.get("requested", source),
            "digits": data.digits, "split": split, "target_digits": targets,
            "tensors": tensors_fingerprint(train, valid, data.digits, targets),
            "n_train": len(train), "n_valid": len(valid), "counts": counts})
    print(f"tensorise: {source}, digits {data.digits}, split {split}: "
          f"train {counts['train']}, valid {counts['valid']}", file=sys.stderr)


if __name__ == "__main__":
    run_stage("tensorise", main)
