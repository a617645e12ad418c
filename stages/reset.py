"""`python -m stages.reset` (`make reset`): back to the committed params, with every output
matching them, and nothing retrained that this machine already trained.

0. Nothing is lost, and what is trained is what HEAD holds: a params.yaml that differs from
   HEAD's (an edit, staged or not; an experiment's `-S`; a failed `dvc exp run`'s rewritten
   file) is kept in git's stash, under a message it prints; uncommitted changes to a file
   the pipeline runs (its code, dvc.yaml) are refused, before anything changes. Git's index
   is checked first (gitindex.py), so a change it hid is seen;
1. params.yaml is HEAD's (the stash put it back);
2. `dvc repro`: reruns only what those params changed, and DVC's run cache gives back,
   without running it, every stage this machine already ran with the same code, data and
   params (`Stage 'train_mlp' is cached - skipping run, checking out outputs`);
3. `dvc status` must then be clean; the summary ends it.

Not `dvc checkout`: it makes the workspace what dvc.lock names, and deletes each output the
cache lacks. On a fresh clone dvc.lock names checkpoints trained on another machine, whose
last digits differ from this one's, so it would delete the models and the report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stages.lib.infra.errors import UserError, end_with_parent, run_stage
from stages.lib.infra.experiments import DVC
from stages.lib.infra.files import read_yaml
from stages.lib.infra.gitindex import repair_hidden_changes
from stages.lib.results.summary import commit_note, locked_stages, render_summary, summary_rows

UP_TO_DATE = "Data and pipelines are up to date."


STOP_WAIT_S = 30  # for a stopped step's processes to clean up (temp files) before SIGKILL
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _let_through() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def step(*command: str) -> None:
    """Run `command` in a process group of its own; stopped (Ctrl-C, SIGTERM, SIGHUP, `make`
    gone), the whole group is stopped with it: DVC and the stage it runs, not DVC alone."""
    shown = " ".join(command).replace(DVC, "dvc")
    print(f"reset: {shown}", file=sys.stderr)
    # Held off while the process starts (a signal then would leave it running, unknown to
    # us), and let through in it before it runs its command.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        process = subprocess.Popen(command, start_new_session=True, preexec_fn=_let_through)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one that came: raised here
        code = process.wait()
    except BaseException:
        stop_group(process)
        raise
    if code != 0:  # its own output, above, says why
        raise UserError(f"`{shown}` failed (exit {code})")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (each stage removes its temp files on it), then
    SIGKILL to whatever is left after STOP_WAIT_S; returns once none is left."""
    import psutil

    try:
        group = [p for p in psutil.process_iter() if _group_of(p) == process.pid]
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    _, alive = psutil.wait_procs(group, timeout=STOP_WAIT_S)
    for left in alive:
        with contextlib.suppress(psutil.Error):
            left.kill()
    psutil.wait_procs(alive, timeout=5)


def _group_of(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def pipeline_inputs() -> list[str]:
    """dvc.yaml and every file or folder its stages list as deps, but the pipeline's own
    outputs (metrics a later stage reads): those the reset rewrites."""
    stages = (read_yaml(Path("dvc.yaml"), "dvc.yaml").get("stages") or {}).values()

    def paths(key: str) -> set[str]:
        return {str(next(iter(entry)) if isinstance(entry, dict) else entry)
                for stage in stages for entry in stage.get(key) or []}

    outputs = paths("outs") | paths("metrics") | paths("plots")
    return sorted((paths("deps") - outputs) | {"dvc.yaml"})


def changed_since_head() -> list[str]:
    """Tracked files whose content differs from HEAD's, staged or not."""
    listing = subprocess.run(["git", "diff", "HEAD", "--name-only", "-z"], capture_output=True,
                             text=True)
    if listing.returncode != 0:
        raise UserError(f"`git diff HEAD` failed: {listing.stderr.strip()}")
    return [path for path in listing.stdout.split("\0") if path]


def keep_edits() -> None:
    """Refuse (nothing changed) where code the pipeline runs differs from HEAD; keep a
    params.yaml that differs in git's stash, and say where."""
    changed = changed_since_head()
    inputs = pipeline_inputs()
    code = [path for path in changed if path != "params.yaml" and any(
        path == dep or path.startswith(dep.rstrip("/") + "/") for dep in inputs)]
    if code:
        raise UserError(f"{', '.join(code)} differ{'s' if len(code) == 1 else ''} from HEAD "
                        f"(uncommitted, staged or not); `make reset` trains what HEAD holds "
                        f"and would not use them: commit them, or `git stash` them, then run "
                        f"it again. Nothing was changed")
    if "params.yaml" in changed:
        message = f"make reset {time.strftime('%Y-%m-%d %H:%M:%S')}: params.yaml as it was"
        step("git", "stash", "push", "--quiet", "-m", message, "--", "params.yaml")
        print(f"reset: your params.yaml is kept in git's stash as \"{message}\" "
              f"(`git stash list`; `git stash pop` brings it back)", file=sys.stderr)


def main() -> None:
    end_with_parent()
    repair_hidden_changes("reset")
    keep_edits()
    step(DVC, "repro")
    status = subprocess.run([DVC, "status"], capture_output=True, text=True)
    if UP_TO_DATE not in status.stdout:
        raise UserError(f"`dvc status` is not clean after `dvc repro`:\n{status.stdout}"
                        f"{status.stderr}")
    print(f"reset: dvc status: {UP_TO_DATE}\n", file=sys.stderr)
    print(render_summary(*summary_rows(locked_stages())))
    print(commit_note())  # DVC's `git add dvc.lock` hint above, in context


if __name__ == "__main__":
    run_stage("reset", main, kind="command")
