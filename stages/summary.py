"""`python -m stages.summary` (and `make metrics`; `make run` ends with it): each model's
accuracy and balanced accuracy beside the book's figure, from the committed metrics and the
params dvc.lock records for them. Not a DVC stage: it reads, and writes nothing."""

from __future__ import annotations

from stages.lib.infra.errors import UserError, run_stage
from stages.lib.infra.gitindex import repair_hidden_changes
from stages.lib.results.summary import commit_note, locked_stages, render_summary, summary_rows


def main() -> None:
    repair_hidden_changes("summary")  # a change git's index hides is seen, and said
    meta, rows = summary_rows(locked_stages())
    print(render_summary(meta, rows))
    print(commit_note())
    if meta["mismatched"]:
        stages = " ".join(meta["mismatched"])
        raise UserError(f"the metrics of {', '.join(meta['mismatched'])} are not the scores "
                        f"their checkpoints record (above); `dvc repro --force {stages}` "
                        f"computes both again")


if __name__ == "__main__":
    run_stage("summary", main, kind="command")
