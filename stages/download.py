"""Stage `download`: get MNIST from data.source into data/raw/ with a manifest.

Deliberately free of torch, so it starts fast.
"""

from __future__ import annotations

import sys

from stages.lib.data.raw import RAW_DIR
from stages.lib.data.sources import acquire, build_manifest, configured_mirrors
from stages.lib.infra.errors import run_stage
from stages.lib.infra.files import atomic_dir, write_json
from stages.lib.infra.params import load_params


def main() -> None:
    source = load_params().data.source
    print(f"download: data.source = {source}", file=sys.stderr)
    with atomic_dir(RAW_DIR) as out_dir:
        acquired = acquire(source, out_dir, configured_mirrors())
        manifest = build_manifest(acquired, out_dir, requested=source)
        write_json(out_dir / "manifest.json", manifest)
    print(f"download: {manifest['source']} ({', '.join(manifest['splits'])}) -> {RAW_DIR}/",
          file=sys.stderr)


if __name__ == "__main__":
    run_stage("download", main)
