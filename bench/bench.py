"""Benchmark: our Learner against the chapter's DataLoader loop, our resnet18 epoch against the
book's fastai code, training FLOP/s against a large matmul, cold / no-op `dvc repro` per
stage for MNIST 3/7 and for all ten digits (whose accuracies must reach those
docs/experiments.md gives), each training stage with the portable and the native kernels
(base.kernels), and a 4-experiment sweep through DVC's queue at -j 1 and -j 2.

Runs offline on real MNIST from ../shared/mnist (or the folder/URL in MNIST_MIRRORS), in
temp copies of the project. Prints a table and writes bench/results/bench.json.

    python -m bench.bench              # everything (about 8 minutes on 2 cores)
    python -m bench.bench --quick      # skip the ten-digit pipeline
    python -m bench.bench --no-fastai  # skip the fastai comparison (and its venv)

The fastai comparison installs fastai into bench/.fastai-venv on first use (about 270 MB:
fastai and what it needs beyond the project's own packages, which it shares through a .pth
file), never into the project's requirements.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from stages.lib.data.tensors import as_inputs, load_split
from stages.lib.infra.errors import TIMES_ENV
from stages.lib.infra.experiments import BOOK_DATA, DVC, TEN_DIGITS, TEN_DIGITS_FLOORS
from stages.lib.infra.kernels import cpu_name, kernels_setting, pin, use_kernels
from stages.lib.learning.learner import Learner
from stages.lib.learning.losses import mnist_loss
from stages.lib.learning.models import build_model, init_params
from stages.lib.learning.optim import BasicOptim
from stages.lib.learning.predictions import predict
from tests.helpers import ROOT, SHARED_MNIST, git, make_project, serve_folder, set_params

RESULTS = ROOT / "bench" / "results" / "bench.json"
STAGES = ("check_params", "download", "tensorise", "baseline", "train_linear", "train_mlp",
          "train_cnn", "report")
FASTAI_VENV = ROOT / "bench" / ".fastai-venv"
FASTAI = "fastai==2.8.12"
THREAD_POLICY = "each stage takes the cores shared evenly among the DVC queue's workers"
# Runs a command and prints the peak RSS of its process tree (the largest process in it).
_PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


# --- the machine -------------------------------------------------------------------------------

def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "kernels": str(use_kernels(kernels_setting())),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# --- training loops ----------------------------------------------------------------------------

def book_loop(model, opt, train_x, train_y, valid_x, valid_y, epochs, batch_size):
    """The chapter's loop: DataLoader over list(zip(x, y)), then per-batch accuracies."""
    from torch.utils.data import DataLoader

    dl = DataLoader(list(zip(train_x, train_y)), batch_size=batch_size)
    valid_dl = DataLoader(list(zip(valid_x, valid_y)), batch_size=batch_size)
    for _ in range(epochs):
        for xb, yb in dl:
            loss = mnist_loss(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            accs = [(predict(model(xb)) == yb).float().mean() for xb, yb in valid_dl]
            round(torch.stack(accs).mean().item(), 4)


def fresh_model(config: dict, book_init: bool, seed: int = 42):
    torch.manual_seed(seed)
    model = build_model(config)
    return init_params(model) if book_init else model


def time_training(name, config, book_init, lr, epochs, tensors, batch_size=256) -> dict:
    """Seconds per epoch of both loops from the same init; their final weights must match."""
    (train_x, train_y), (valid_x, valid_y) = tensors
    ours = fresh_model(config, book_init)
    learner = Learner(ours, train_x, train_y, valid_x, valid_y, loss_fn=mnist_loss,
                      opt=BasicOptim(ours.parameters(), lr), batch_size=batch_size, log=None)
    start = time.perf_counter()
    learner.fit(epochs)
    ours_s = (time.perf_counter() - start) / epochs

    book = fresh_model(config, book_init)
    start = time.perf_counter()
    book_loop(book, BasicOptim(book.parameters(), lr), train_x, train_y, valid_x, valid_y, epochs,
              batch_size)
    book_s = (time.perf_counter() - start) / epochs

    max_diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(),
                                                             book.parameters()))
    n_params = sum(p.numel() for p in ours.parameters())
    # 6 FLOPs per parameter per training example (forward 2, backward 4), 2 per validation one.
    flops = 6 * n_params * len(train_y) + 2 * n_params * len(valid_y)
    return {"model": name, "epochs": epochs, "ours_s_per_epoch": ours_s,
            "book_s_per_epoch": book_s, "speedup": book_s / ours_s,
            "max_weight_diff": max_diff, "same_final_weights": max_diff == 0.0,
            "gflops_per_s": flops / ours_s / 1e9}


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


# --- the pipeline ------------------------------------------------------------------------------

def timed(project: Path, *command: str, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of a command run in the project."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], cwd=project, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, int(result.stdout.strip().splitlines()[-1]) // 1024


def bench_env(mirror: str) -> dict:
    return dict(os.environ, MNIST_MIRRORS=mirror, MNIST_OFFLINE="1", DVC_NO_ANALYTICS="1",
                DVC_STUDIO_OFFLINE="1", MPLBACKEND="Agg",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def stage_times(path: Path) -> dict[str, dict]:
    """What each stage recorded of itself ($MNIST_STAGE_TIMES): the last run of each."""
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {record["stage"]: record for record in records}


def pipeline(params: dict, mirror: str, workdir: Path, label: str) -> dict:
    """Cold repro (to train_mlp, then the report), no-op repro, and each stage alone: its
    wall time, of which its start (Python, imports) and its own work as it records them."""
    env = bench_env(mirror)

    whole = make_project(workdir / "whole", params)
    to_mlp, _ = timed(whole, DVC, "repro", "-q", "baseline", "train_linear", "train_mlp",
                      env=env)
    report, _ = timed(whole, DVC, "repro", "-q", env=env)
    noop = statistics.median(timed(whole, DVC, "repro", "-q", env=env)[0] for _ in range(3))

    single = make_project(workdir / "stages", params)
    times_file = workdir / "stage-times.jsonl"
    stages = {}
    for stage in STAGES:
        seconds, rss = timed(single, DVC, "repro", "-q", "--single-item", stage,
                             env={**env, TIMES_ENV: str(times_file)})
        own = stage_times(times_file)[stage]
        stages[stage] = {"seconds": seconds, "peak_rss_mb": rss, "start_s": own["start_s"],
                         "work_s": own["work_s"], "rest_s": seconds - own["work_s"]}
    metrics = {name: json.loads((whole / f"metrics/{name}.json").read_text())
               for name in ("baseline", "linear", "mlp", "cnn")}
    return {"label": label, "cold_to_train_mlp_s": to_mlp, "cold_total_s": to_mlp + report,
            "noop_s": noop, "stages": stages,
            "accuracy": {"baseline_l1": metrics["baseline"]["l1"]["accuracy"],
                         "linear": metrics["linear"]["accuracy"],
                         "mlp": metrics["mlp"]["accuracy"], "cnn": metrics["cnn"]["accuracy"]}}


def stage_floor(workdir: Path, env: dict) -> dict:
    """The least a torch stage can cost beyond its work: `import torch` in a fresh Python,
    and a no-op `dvc repro` of a project of one stage (medians of 3)."""
    import_torch = statistics.median(timed(ROOT, sys.executable, "-c", "import torch",
                                           env=env)[0] for _ in range(3))
    project = workdir / "one-stage"
    project.mkdir()
    git(project, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=project, env=env, check=True)
    (project / "dvc.yaml").write_text("stages:\n  one:\n    cmd: echo one > out.txt\n"
                                      "    outs: [out.txt]\n")
    timed(project, DVC, "repro", "-q", env=env)
    noop = statistics.median(timed(project, DVC, "repro", "-q", env=env)[0] for _ in range(3))
    return {"import_torch_s": import_torch, "noop_one_stage_s": noop,
            "floor_s": import_torch + noop}


# --- the kernels: portable against native ----------------------------------------------------

TRAINING_STAGES = ("train_linear", "train_mlp", "train_cnn")
KERNEL_RUNS = 3  # of each stage with each setting, taken in turn
# What a training stage prints of its own work: "(25.1 s on cpu, ...": the fit and the save.
_OWN_SECONDS = re.compile(r"\(([\d.]+) s on \w+, ")


def stage_run(project: Path, stage: str, kernels: str, env: dict) -> tuple[float, float]:
    """`python -m stages.<stage>` with base.kernels set so: its wall seconds (starting Python,
    torch and the rest included) and the seconds it prints for its own work."""
    set_params(project, {"base.kernels": kernels})
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{stage} with {kernels} kernels failed:\n{result.stderr[-3000:]}")
    return seconds, float(_OWN_SECONDS.search(result.stderr).group(1))


def kernels_cost(project: Path, env: dict) -> list[dict]:
    """Each training stage run alone with the portable and the native kernels, the two
    settings in turn (a drift in the machine's speed touches both alike): the medians."""
    rows = []
    for stage in TRAINING_STAGES:
        runs: dict[str, list[tuple[float, float]]] = {"portable": [], "native": []}
        for _ in range(KERNEL_RUNS):
            for kernels, timed in runs.items():
                timed.append(stage_run(project, stage, kernels, env))
        row = {"stage": stage, "runs": KERNEL_RUNS}
        for kernels, timed in runs.items():
            row[f"{kernels}_s"] = statistics.median(wall for wall, _ in timed)
            row[f"{kernels}_own_s"] = statistics.median(own for _, own in timed)
        rows.append(row)
    return rows


# --- a sweep through DVC's queue ---------------------------------------------------------------

# Four train_mlp.lr values per sweep; each sweep gets its own, so DVC's run cache serves none.
SWEEP_LRS = {1: (0.05, 0.08, 0.12, 0.2), 2: (0.06, 0.09, 0.13, 0.25)}


def experiment_refs(project: Path) -> set[str]:
    """The experiments DVC has saved: refs/exps/<2 hex>/<38 hex>/<name>, one per experiment
    (the queue's own refs under refs/exps/celery and refs/exps/exec are not)."""
    refs = git(project, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return {ref for ref in refs if re.fullmatch(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+", ref)}


def sweep(project: Path, jobs: int, env: dict) -> dict:
    """Queue four experiments (train_mlp.lr varied) and time `dvc exp run --run-all -j jobs`:
    until the last experiment is saved, and until the command returns. The difference is DVC
    stopping its workers: each checks for an empty queue every 10 s, so the command returns
    0-10 s after the work is done, whatever the work."""
    from stages.lib.infra.experiments import experiments

    for lr in SWEEP_LRS[jobs]:
        subprocess.run([DVC, "exp", "run", "--queue", "-S", f"train_mlp.lr={lr}"], cwd=project,
                       env=env, check=True, capture_output=True)
    before, saved = experiment_refs(project), None
    start = time.perf_counter()
    command = subprocess.Popen([DVC, "exp", "run", "--run-all", "-j", str(jobs)], cwd=project,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    while command.poll() is None:
        if saved is None and len(experiment_refs(project) - before) >= len(SWEEP_LRS[jobs]):
            saved = time.perf_counter() - start
        time.sleep(0.2)
    returned = time.perf_counter() - start
    if command.returncode != 0:
        raise RuntimeError(f"the -j {jobs} sweep failed:\n{command.stderr.read()[-3000:]}")
    with contextlib.chdir(project):
        ran = [exp for exp in experiments()
               if exp.params["train_mlp"]["lr"] in SWEEP_LRS[jobs]]
    if len(ran) != len(SWEEP_LRS[jobs]):
        raise RuntimeError(f"the -j {jobs} sweep finished {len(ran)} of "
                           f"{len(SWEEP_LRS[jobs])} experiments")
    seconds = saved or returned
    return {"jobs": jobs, "experiments": len(ran), "seconds": seconds,
            "command_seconds": returned, "per_minute": len(ran) / seconds * 60,
            "threads_per_stage": sorted({exp.metrics["metrics/mlp.json"]["threads"]
                                         for exp in ran})}


def wait_for_no_queue_workers(timeout_s: float = 120) -> None:
    """A worker idles on for up to a minute after its queue empties and would join the next
    sweep, so each sweep starts with none. (`dvc queue stop` would end them sooner, but its
    message stays in the queue's folder and stops the next workers after one task each.)"""
    from stages.lib.infra.threads import live_queue_workers

    deadline = time.monotonic() + timeout_s
    while live_queue_workers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"DVC queue workers still running after {timeout_s:.0f} s")
        time.sleep(1)


def sweeps(project: Path, env: dict) -> list[dict]:
    results = []
    for jobs in (1, 2):
        wait_for_no_queue_workers()
        results.append(sweep(project, jobs, env))
    wait_for_no_queue_workers()  # before the project folder is removed
    return results


# --- the CNN against the book's fastai code ----------------------------------------------------

def our_cnn_epoch(project: Path, arch: str | None = None) -> dict:
    """One epoch of train_cnn with the project's params (train_cnn.arch set to `arch` where
    given), timed in this process."""
    from stages import train_cnn
    from stages.lib.infra.params import load_params
    from stages.lib.learning.training import TrainingRun

    with contextlib.chdir(project):
        params = load_params()
        if arch is not None:
            params = params.model_copy(update={"train_cnn": params.train_cnn.model_copy(
                update={"arch": arch})})
        learner, _ = train_cnn.learner(params, TrainingRun("train_cnn", params).data, log=None)
    lr = params.train_cnn.lr
    flops = epoch_flops(learner)
    start = time.perf_counter()
    history = learner.fit_one_cycle(1, lr)
    seconds = time.perf_counter() - start
    accuracy = history[-1]["valid_accuracy"]
    return {"seconds": seconds, "accuracy": accuracy, "n_valid": len(learner.valid_y),
            "wrong": round((1 - accuracy) * len(learner.valid_y)),
            "arch": params.train_cnn.arch, "batch_size": learner.batch_size, "lr": lr,
            "gflop": flops / 1e9,
            "gflops_per_s": flops / seconds / 1e9}


def epoch_flops(learner: Learner) -> float:
    """The FLOPs of one epoch of `learner`, as torch's FlopCounterMode counts the model it
    trains (speed-ups on, so the taps it skips are not counted): each training batch's
    forward and backward, and the forward of every validation image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(learner.model)  # a step here must not touch the model timed
    x, y = learner.train_x[:learner.batch_size], learner.train_y[:learner.batch_size]
    with FlopCounterMode(display=False) as training:
        learner.loss_fn(model.train()(x), y).backward()
    with FlopCounterMode(display=False) as validation, torch.no_grad():
        model.eval()(learner.valid_x[:1])
    return (training.get_total_flops() * learner.n_batches()
            + validation.get_total_flops() * len(learner.valid_y))


def fastai_python() -> Path:
    """bench/.fastai-venv's python, with fastai installed beside the project's packages."""
    python = FASTAI_VENV / "bin" / "python"
    if not (FASTAI_VENV / ".installed").exists():
        print(f"bench: installing {FASTAI} into {FASTAI_VENV.relative_to(ROOT)} ...",
              file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", "--clear", str(FASTAI_VENV)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], check=True,
                              capture_output=True, text=True).stdout.strip()
        ours = sysconfig.get_paths()["purelib"]
        # The project's packages (torch above all) are seen, not installed a second time.
        Path(site, "project.pth").write_text(ours + "\n")
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", FASTAI], capture_output=True,
                             text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"installing {FASTAI} failed:\n{pip.stderr[-3000:]}")
        (FASTAI_VENV / ".installed").touch()
    return python


def write_mnist_sample(tensors_dir: Path, folder: Path) -> Path:
    """fast.ai's MNIST_SAMPLE layout (train/3, train/7, valid/3, valid/7 PNGs) from tensors
    (a folder per digit of data/tensors: ten of them for all ten digits)."""
    from PIL import Image

    for split, name in (("train", "train"), ("valid", "valid")):
        data = load_split(tensors_dir / f"{split}.pt")
        digits = json.loads((tensors_dir / "meta.json").read_text())["target_digits"]
        for i, (image, target) in enumerate(zip(data.images.numpy(), data.targets.tolist())):
            digit_dir = folder / name / str(digits[target])
            digit_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(digit_dir / f"{i}.png")
    return folder


def run_fastai(script: str, sample: Path, *args: str) -> tuple[dict, float]:
    """bench/<script> on the MNIST_SAMPLE folder (then `args`), as a reader runs the book's
    code: with the kernels torch picks for this CPU (this process pinned its own, which a
    child would inherit). Its JSON line, and the wall seconds of the whole process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    pin("native", env)
    start = time.perf_counter()
    result = subprocess.run([str(fastai_python()), str(ROOT / "bench" / script), str(sample),
                             *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"bench/{script} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), seconds


def fastai_cnn_epoch(sample: Path) -> dict:
    """The book's resnet18 epoch (the fit alone, as it times it)."""
    return run_fastai("fastai_cnn.py", sample)[0]


def fastai_chapter(sample: Path) -> dict:
    """The chapter's code up to simple_net, as one cold process (median of 3 runs)."""
    runs = [run_fastai("fastai_chapter.py", sample) for _ in range(3)]
    seconds = statistics.median(wall for _, wall in runs)
    return {"seconds": seconds, "accuracy": runs[0][0]}


# --- output ------------------------------------------------------------------------------------

def print_report(results: dict) -> None:
    m = results["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
          f"({m['torch_threads']} threads, {m['kernels']}), Python {m['python']}, "
          f"GPU: {m['gpu'] or 'none'}")
    print("\nTraining on real MNIST 3/7, same init, loss, lr, epochs, batch 256, no shuffling")
    print(f"{'model':<8}{'ours s/epoch':>14}{'book s/epoch':>14}{'speedup':>9}"
          f"{'GFLOP/s':>10}{'of mm':>8}  same final weights")
    for row in results["training"]:
        print(f"{row['model']:<8}{row['ours_s_per_epoch']:>14.4f}{row['book_s_per_epoch']:>14.4f}"
              f"{row['speedup']:>8.1f}x{row['gflops_per_s']:>10.1f}"
              f"{row['gflops_per_s'] / results['matmul_gflops']:>8.1%}  {row['same_final_weights']}")
    print(f"large torch.mm (2048²): {results['matmul_gflops']:.1f} GFLOP/s")
    if "cnn" in results:
        ours, book = results["cnn"]["ours"], results["cnn"].get("fastai")
        print("\nresnet18, one epoch of fit_one_cycle(1, lr) on MNIST 3/7")
        print(f"{'':<22}{'seconds':>9}{'batch':>7}{'lr':>7}{'accuracy':>10}{'wrong':>7}")
        for label, row in (("ours (train_cnn)", ours),
                           ("ours, resnet34", results["cnn"].get("ours_resnet34")),
                           ("fastai, native kernels", book)):
            if row:
                print(f"{label:<22}{row['seconds']:>9.1f}{row['batch_size']:>7}{row['lr']:>7g}"
                      f"{row['accuracy']:>10.4f}{row['wrong']:>7}")
        print(f"ours: {ours['gflop']:.0f} GFLOP an epoch (torch's FlopCounterMode, the skipped "
              f"taps not counted), {ours['gflops_per_s']:.1f} GFLOP/s, "
              f"{ours['gflops_per_s'] / results['matmul_gflops']:.0%} of torch.mm's")
        if book:
            print(f"speed-up: {book['seconds'] / ours['seconds']:.2f}x")
    if "kernels" in results:
        print(f"\nEach training stage alone (`python -m stages.NAME`, MNIST 3/7), base.kernels "
              f"portable and native in turn, median of {KERNEL_RUNS} runs each")
        print(f"{'stage':<14}{'portable, s':>13}{'native, s':>11}{'portable/native':>17}"
              f"{'its own work: portable, s':>28}{'native, s':>11}{'portable/native':>17}")
        for row in results["kernels"]:
            print(f"{row['stage']:<14}{row['portable_s']:>13.1f}{row['native_s']:>11.1f}"
                  f"{row['portable_s'] / row['native_s']:>16.2f}x"
                  f"{row['portable_own_s']:>28.1f}{row['native_own_s']:>11.1f}"
                  f"{row['portable_own_s'] / row['native_own_s']:>16.2f}x")
    if "sweeps" in results:
        print("\nA sweep of 4 experiments (train_mlp.lr varied) by `dvc exp run --run-all -j N`; "
              f"thread policy: base.threads auto ({THREAD_POLICY})")
        print(f"{'jobs':>6}{'all saved, s':>14}{'exp/min':>9}{'command returned, s':>21}"
              f"  threads per stage")
        for row in results["sweeps"]:
            print(f"{row['jobs']:>6}{row['seconds']:>14.1f}{row['per_minute']:>9.1f}"
                  f"{row['command_seconds']:>21.1f}  {row['threads_per_stage']}")
        one, two = results["sweeps"]
        print(f"-j 2 takes {two['seconds'] / one['seconds']:.2f}x the time of -j 1 until all are "
              f"saved ({two['command_seconds'] / one['command_seconds']:.2f}x until the command "
              f"returns: DVC stops idle workers on a 10 s tick)")
    floor = results["floor"]
    print(f"\nA stage's floor: `import torch` {floor['import_torch_s']:.2f} s + a no-op "
          f"`dvc repro` of one stage {floor['noop_one_stage_s']:.2f} s = "
          f"{floor['floor_s']:.2f} s")
    chapter = results.get("chapter")
    for run in results["pipelines"]:
        print(f"\n`dvc repro`, {run['label']}: cold to train_mlp {run['cold_to_train_mlp_s']:.1f} s, "
              f"whole pipeline {run['cold_total_s']:.1f} s, no-op {run['noop_s']:.2f} s")
        if chapter and run is results["pipelines"][0]:
            print(f"  the chapter's fastai code up to simple_net, one process: "
                  f"{chapter['seconds']:.1f} s (cold repro to train_mlp: "
                  f"{run['cold_to_train_mlp_s'] / chapter['seconds']:.2f}x its time)")
        print(f"  {'stage (each alone, dvc included)':<34}{'seconds':>9}{'its start':>11}"
              f"{'its work':>10}{'the rest':>10}{'rest/floor':>12}{'peak RSS MB':>13}")
        for stage, row in run["stages"].items():
            print(f"  {stage:<34}{row['seconds']:>9.2f}{row['start_s']:>11.2f}"
                  f"{row['work_s']:>10.2f}{row['rest_s']:>10.2f}"
                  f"{row['rest_s'] / floor['floor_s']:>11.2f}x{row['peak_rss_mb']:>13}")
        print("  (its start: Python and the imports before the stage's main; its work: the "
              "stage's main, as it records it; the rest: the seconds beyond its work, its start "
              "and DVC's own included)")
        print(f"  accuracy: {run['accuracy']}")
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the ten-digit pipeline")
    parser.add_argument("--no-fastai", action="store_true",
                        help="skip the fastai comparison (installs fastai into a side venv)")
    args = parser.parse_args()
    if not os.environ.get("MNIST_MIRRORS") and not SHARED_MNIST.is_dir():
        sys.exit(f"bench: real MNIST not found at {SHARED_MNIST}; set MNIST_MIRRORS")

    results = {"machine": machine(), "pipelines": []}
    # Without MNIST_MIRRORS, serve ../shared/mnist over loopback HTTP: the real download path.
    mirror_context = (contextlib.nullcontext(os.environ["MNIST_MIRRORS"])
                      if os.environ.get("MNIST_MIRRORS") else serve_folder(SHARED_MNIST))
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp, mirror_context as mirror:
        workdir = Path(tmp)
        runs = [("mnist37", "MNIST 3/7, book params", BOOK_DATA)]
        if not args.quick:
            runs.append(("ten", "all ten digits, docs/experiments.md's params",
                         {**BOOK_DATA, **TEN_DIGITS}))
        print("bench: the floor of a stage's start ...", file=sys.stderr)
        results["floor"] = stage_floor(workdir, bench_env(mirror))
        for slug, label, params in runs:
            print(f"bench: cold dvc repro, {label} ...", file=sys.stderr)
            results["pipelines"].append(pipeline(params, mirror, workdir / slug, label))

        print("bench: each training stage with portable and native kernels ...", file=sys.stderr)
        kernels_project = workdir / "mnist37" / "kernels"
        shutil.copytree(workdir / "mnist37" / "whole", kernels_project, symlinks=True)
        results["kernels"] = kernels_cost(kernels_project, bench_env(mirror))

        print("bench: a 4-experiment sweep through DVC's queue, -j 1 then -j 2 ...",
              file=sys.stderr)
        swept = workdir / "mnist37" / "whole"
        git(swept, "add", "-A")
        git(swept, "commit", "-qm", "ran")  # experiments start from the commit
        results["sweeps"] = sweeps(swept, bench_env(mirror))

        print("bench: training loops ...", file=sys.stderr)
        tensors_dir = workdir / "mnist37" / "whole" / "data" / "tensors"
        device = torch.device("cpu")
        tensors = tuple(as_inputs(load_split(tensors_dir / f"{s}.pt"), device)
                        for s in ("train", "valid"))
        results["training"] = [
            time_training("linear", {"kind": "linear", "n_outputs": 1}, True, 1.0, 21, tensors),
            time_training("mlp", {"kind": "mlp", "n_outputs": 1, "hidden": [30]}, False, 0.1,
                          40, tensors)]
        results["matmul_gflops"] = matmul_gflops()

        print("bench: resnet18 epoch, ours (and resnet34's) then fastai's ...",
              file=sys.stderr)
        results["cnn"] = {"ours": our_cnn_epoch(workdir / "mnist37" / "whole"),
                          "ours_resnet34": our_cnn_epoch(workdir / "mnist37" / "whole",
                                                         "resnet34")}
        if not args.no_fastai:
            sample = write_mnist_sample(tensors_dir, workdir / "mnist_sample")
            results["cnn"]["fastai"] = fastai_cnn_epoch(sample)
            print("bench: the chapter's fastai code up to simple_net ...", file=sys.stderr)
            results["chapter"] = fastai_chapter(sample)
        different = [r["model"] for r in results["training"] if not r["same_final_weights"]]

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    problems = [f"our Learner and the book's loop ended at different weights for "
                f"{different}: the timings compare different work"] if different else []
    problems += below_readme_figures(results["pipelines"])
    if problems:
        sys.exit("bench: " + "\nbench: ".join(problems))


def below_readme_figures(pipelines: list[dict]) -> list[str]:
    """The ten-digit accuracies docs/experiments.md gives, on all of MNIST (the tests train
    on mnist-5k)."""
    return [f"all ten digits: {name} reached {run['accuracy'][name]}, below the docs' "
            f"{bound}" for run in pipelines if run["label"].startswith("all ten digits")
            for name, bound in TEN_DIGITS_FLOORS.items() if run["accuracy"][name] < bound]


if __name__ == "__main__":
    main()
