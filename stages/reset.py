"""`python -m stages.reset` (`make reset`): back to the committed params, with every output
matching them, and nothing retrained that this machine already trained.

1. `git checkout -- params.yaml`: the committed params (an experiment's `-S` undone, a
   failed `dvc exp run`'s rewritten file too);
2. `dvc repro`: reruns only what those params changed, and DVC's run cache gives back,
   without running it, every stage this machine already ran with the same code, data and
   params (`Stage 'train_mlp' is cached - skipping run, checking out outputs`);
3. `dvc status` must then be clean; the summary ends it.

Not `dvc checkout`: it makes the workspace what dvc.lock names, and deletes each output the
cache lacks. On a fresh clone dvc.lock names checkpoints trained on another machine, whose
last digits differ from this one's, so it would delete the models and the report.
"""

from __future__ import annotations

import subprocess
import sys

from stages.lib.infra.errors import UserError, run_stage
from stages.lib.infra.experiments import DVC
from stages.lib.results.summary import locked_stages, render_summary, summary_rows

UP_TO_DATE = "Data and pipelines are up to date."


def step(*command: str) -> None:
    shown = " ".join(command).replace(DVC, "dvc")
    print(f"reset: {shown}", file=sys.stderr)
    result = subprocess.run(command)
    if result.returncode != 0:  # its own output, above, says why
        raise UserError(f"`{shown}` failed (exit {result.returncode})")


def main() -> None:
    step("git", "checkout", "--", "params.yaml")
    step(DVC, "repro")
    status = subprocess.run([DVC, "status"], capture_output=True, text=True)
    if UP_TO_DATE not in status.stdout:
        raise UserError(f"`dvc status` is not clean after `dvc repro`:\n{status.stdout}"
                        f"{status.stderr}")
    print(f"reset: dvc status: {UP_TO_DATE}\n", file=sys.stderr)
    print(render_summary(*summary_rows(locked_stages())))


if __name__ == "__main__":
    run_stage("reset", main, kind="command")
