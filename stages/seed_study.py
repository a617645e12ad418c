"""`python -m stages.seed_study`: the pipeline over several seeds through DVC's queue.

Queues one experiment per seed (`dvc exp run --queue -n seed-N -S base.seed=N -S
base.threads=T`, T the cores shared among the J jobs), runs the queue with J workers
(`dvc exp run --run-all -j J`), then summarises each model's accuracy
over the seeds (mean, sd, min, max) beside the book's figure, in seed_study/. The
experiments stay, for `dvc exp show`; remove them with `dvc exp remove` (printed at the end).
With --summarise it only summarises seed-N experiments already here (run elsewhere and
fetched with `dvc exp pull`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stages.lib.infra import experiments
from stages.lib.infra.errors import Terminated, UserError, run_stage
from stages.lib.infra.files import together, write_text
from stages.lib.infra.gitindex import repair_hidden_changes
from stages.lib.infra.params import load_params
from stages.lib.infra.threads import available_cores
from stages.lib.results.seed_study import (runs_markdown, study_frame, succeeded, summarise,
                                           summary_markdown)

OUT_DIR = Path("seed_study")
DEFAULT_SEEDS = [0, 1, 2, 3, 4]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.seed_study",
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, metavar="N",
                        help=f"the seeds to run (default {' '.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("-j", "--jobs", type=int, default=2,
                        help="experiments run at once by DVC's queue (default 2)")
    parser.add_argument("--summarise", action="store_true",
                        help="run nothing: summarise the seed-N experiments already here")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds needs two or more distinct seeds")
    if min(args.seeds) < 0 or args.jobs < 1:
        parser.error("seeds must be >= 0 and --jobs >= 1")
    return args


def check_names_free(names: list[str]) -> None:
    taken = sorted(set(names) & {exp.name for exp in experiments.experiments()})
    if taken:
        raise UserError(f"experiments {', '.join(taken)} exist from an earlier study; remove "
                        f"them first: dvc exp remove {' '.join(taken)}")


def run_study(names: dict[int, str], jobs: int) -> float:
    """Queue one experiment per seed and run the queue; returns the minutes it took.

    Each runs with the cores shared among the jobs, set as base.threads rather than left to
    `auto`: an experiment that ends up running alone would otherwise take more threads, and
    its numbers would depend on timing. So any seed's row is reproduced bit for bit by
    `dvc exp run -S base.seed=N -S base.threads=T`."""
    check_names_free(list(names.values()))
    threads = max(1, available_cores() // jobs)
    start = time.perf_counter()
    for seed, name in names.items():
        experiments.queue(name, {"base.seed": seed, "base.threads": threads})
    print(f"seed_study: queued {len(names)} experiments ({', '.join(names.values())}) with "
          f"base.threads={threads}; running them {jobs} at a time", file=sys.stderr)
    try:
        experiments.run_queue(jobs)
    except (KeyboardInterrupt, Terminated):
        print(stopped_study(list(names.values())), file=sys.stderr)
        raise
    return (time.perf_counter() - start) / 60


def stopped_study(names: list[str]) -> str:
    """What a stopped study left (the queue is stopped by then), and how to clear it."""
    left = {exp.name: exp for exp in experiments.experiments() if exp.name in names}
    finished = [name for name, exp in left.items() if not exp.failed]
    stopped = [name for name in left if name not in finished]
    removed = [name for name in names if name not in left]
    lines = ["seed_study: stopped DVC's queue: its workers are gone and nothing runs on."]
    if finished:
        lines.append(f"  kept, finished: {', '.join(finished)} (see `dvc exp show`)")
    if stopped:
        lines.append(f"  stopped mid-run (DVC lists them as failed): {', '.join(stopped)}")
    if removed:
        lines.append(f"  removed before they started: {', '.join(removed)}")
    if left:
        lines.append(f"  before the next study: dvc exp remove {' '.join(left)}")
    return "\n".join(lines)


def write_summary(names: dict[int, str], heading: str) -> tuple[str, list[str]]:
    """The summary of the experiments that succeeded, written to OUT_DIR, and a line for
    each that did not; a UserError when fewer than two succeeded (nothing is written)."""
    ran = [exp for exp in experiments.experiments() if exp.name in names.values()]
    missing = sorted(set(names.values()) - {exp.name for exp in ran})
    if missing:
        raise UserError(f"no experiment {', '.join(missing)} here; see "
                        f"`dvc queue status` and `dvc queue logs NAME`, or fetch them with "
                        f"`dvc exp pull REMOTE {' '.join(missing)}`")
    good, failed = succeeded(ran)
    if len(good) < 2:
        raise UserError("\n".join([f"{len(good)} of {len(ran)} experiments succeeded: too few "
                                    f"to summarise", *failed]))
    runs = study_frame(good)
    table = summary_markdown(summarise(runs))
    failures = ("\n## Not results\n\n" + "".join(f"- {line}\n" for line in failed)
                if failed else "")
    with together():  # the table and its rows: both new, or both as they were
        write_text(OUT_DIR / "summary.md", f"# {heading}\n\n{table}\n\n## Each seed\n\n"
                                           f"{runs_markdown(runs)}\n{failures}")
        write_text(OUT_DIR / "runs.tsv", runs.to_csv(sep="\t", index=False))
    return table, failed


def main(argv: list[str]) -> None:
    repair_hidden_changes("seed_study")  # a change git's index hides is seen, and said
    args = parse_args(argv)
    load_params()  # a bad params.yaml fails here, not once per queued experiment
    names = {seed: f"seed-{seed}" for seed in args.seeds}
    if args.summarise:
        heading = f"Seed study: {len(names)} seeds"
    else:
        minutes = run_study(names, args.jobs)
        heading = f"Seed study: {len(names)} seeds, {minutes:.1f} min with -j {args.jobs}"
    table, failed = write_summary(names, heading)
    print(f"\n{heading}\n\n{table}\n\nwritten: {OUT_DIR}/summary.md, {OUT_DIR}/runs.tsv\n"
          f"remove the study's experiments: dvc exp remove {' '.join(names.values())}")
    if failed:
        raise UserError("\n".join([f"{len(failed)} of {len(names)} experiments are not results "
                                    f"(the summary above leaves them out):", *failed]))


if __name__ == "__main__":
    run_stage("seed_study", lambda: main(sys.argv[1:]), kind="command")
