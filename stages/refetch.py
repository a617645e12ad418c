"""`python -m stages.refetch` (`make run` starts with it): after a run whose download fell
back to the mnist-5k sample, try real MNIST again.

DVC reruns the download stage only when data.source or its code changes, so once a run has
fallen back, becoming able to reach MNIST (being online again, or MNIST_MIRRORS set) would
change nothing: `dvc repro` says "up to date" and the 5k numbers stay. This reruns the
download (`dvc repro -f download`) while the last one fell back. If MNIST is still out of
reach it falls back to the same bytes, so nothing after it reruns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stages.lib.data.raw import RAW_DIR, fell_back
from stages.lib.infra.errors import UserError, run_stage
from stages.lib.infra.experiments import DVC
from stages.lib.infra.files import read_text
from stages.lib.infra.gitindex import repair_hidden_changes

MANIFEST = RAW_DIR / "manifest.json"


def last_download_fell_back(manifest: Path = MANIFEST) -> bool:
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(read_text(manifest))
    except (ValueError, UserError, RecursionError):  # not JSON, not UTF-8, not a file
        return False  # not ours to judge: the download stage rewrites it
    if not isinstance(recorded, dict):
        return False
    return fell_back(recorded.get("source"), recorded.get("requested"))


def main() -> None:
    repair_hidden_changes("run")  # a change git's index hides is seen, and said
    if not last_download_fell_back():
        return
    print("refetch: the last download fell back to mnist-5k; trying real MNIST again "
          "(dvc repro -f download)", file=sys.stderr)
    result = subprocess.run([DVC, "repro", "--force", "download"])
    if result.returncode != 0:
        raise UserError(f"`dvc repro -f download` failed (exit {result.returncode})")


if __name__ == "__main__":
    run_stage("refetch", main, kind="command")
