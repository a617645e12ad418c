"""Git's index checked against the files it tracks, and repaired where it hides a change.

After a successful `dvc exp run` and then a failed one, DVC 3.67.1 can leave the index with
HEAD's blob for a file (dvc.lock, a metrics file) beside the stat data of the file as the
good experiment left it: git trusts the stat data, so `git status` and `git diff` say
nothing, and `git commit -a` leaves the file out. docs/what-happens-when.md has a minimal
reproduction. The project's commands a user runs next (make run, make metrics, make reset,
the seed study) call `repair_hidden_changes` first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _git(*args: str, stdin: str | None = None) -> str | None:
    """A git command's output in the current folder; None where git or a repository is not
    there, or the command fails (nothing to check, nothing to repair)."""
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, input=stdin)
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def hidden_changes() -> list[tuple[str, str, str]]:
    """(mode, index blob, path) of each tracked regular file whose content differs from its
    index entry while `git diff` does not list it."""
    listing = _git("ls-files", "-s", "-z")
    shown = _git("diff", "--name-only", "-z")
    if not listing or shown is None:
        return []
    entries = []
    for record in listing.split("\0"):
        if not record:
            continue
        info, path = record.split("\t", 1)
        mode, blob, stage = info.split()
        if stage == "0" and mode in ("100644", "100755") and Path(path).is_file():
            entries.append((mode, blob, path))
    hashes = _git("hash-object", "--no-filters", "--stdin-paths",
                  stdin="".join(f"{path}\n" for _, _, path in entries))
    if hashes is None:
        return []
    listed = set(shown.split("\0"))
    return [(mode, blob, path) for (mode, blob, path), now in zip(entries, hashes.split())
            if now != blob and path not in listed]


def repair_hidden_changes(command: str) -> list[str]:
    """Make `git status` see every changed file again (each stale entry rewritten with its
    own blob and no stat data, so git reads the file next time; nothing staged changes), and
    say so; returns the paths repaired."""
    hidden = hidden_changes()
    for mode, blob, path in hidden:
        _git("update-index", "--cacheinfo", f"{mode},{blob},{path}")
    if hidden:
        paths = [path for _, _, path in hidden]
        print(f"{command}: git's index hid changes to {', '.join(paths)} (`git status` did "
              f"not list them; DVC 3.67.1 leaves this after a failed `dvc exp run`); repaired: "
              f"`git status` lists them now", file=sys.stderr)
        return paths
    return []


def results_changed() -> list[str]:
    """The results (dvc.lock, metrics/) that differ from the last commit: what DVC's `git add
    dvc.lock` hint is about."""
    changed = _git("diff", "--name-only", "HEAD", "--", "dvc.lock", "metrics")
    return changed.split() if changed else []
