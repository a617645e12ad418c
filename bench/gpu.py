"""The GPU checks, for a machine with a CUDA GPU: one run, one JSON file of figures.

1. the CUDA-only test (tests/test_optim.py: the CNN trains on the GPU as on the CPU);
2. the train_cnn stage with `base.device: cuda`, one epoch, as `dvc repro` runs it (a copy of
   the project: params.yaml and data/tensors/ are read, the copy's outputs written);
3. `make bench`'s resnet18 comparison on the GPU: our epoch (the fit alone, twice: the first
   pays for cuDNN's start) and the book's fastai code (bench/fastai_cnn.py), whose fit the
   book times at 11 s on its GPU;
4. the cross-machine fingerprints (tools/fingerprints.py) on this machine's CPU.

Each check runs even when one before it failed; each one's outcome is in the JSON.

    python -m bench.gpu OUT.json         # needs data/tensors/ (dvc repro tensorise)
    python -m bench.gpu OUT.json --checks cuda_test cnn_stage_cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.bench import our_cnn_epoch, write_mnist_sample
from stages.lib.infra.files import parse_yaml
from stages.lib.infra.kernels import cpu_name

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], cwd: Path = ROOT, timeout: float = 240) -> dict:
    """A command's exit status, wall seconds and the end of its output."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return {"command": " ".join(command), "rc": done.returncode,
            "seconds": round(time.perf_counter() - start, 2),
            "output": (done.stdout + done.stderr)[-4000:]}


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version()}


def cuda_project(workdir: Path) -> Path:
    """A copy of the project's code, params.yaml (base.device: cuda) and data/tensors/."""
    project = workdir / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".whl", "models", "metrics", "plots", "dvclive", "bench",
        "__pycache__"))
    params_file = project / "params.yaml"
    text = params_file.read_text()
    params = parse_yaml(text, "params.yaml")
    params["base"]["device"] = "cuda"
    params_file.write_text(json.dumps(params, indent=2) + "\n")  # JSON is YAML
    return project


def cnn_stage(project: Path) -> dict:
    """`python -m stages.train_cnn` in the copy, as DVC runs it."""
    result = run([sys.executable, "-m", "stages.train_cnn"], cwd=project)
    metrics = project / "metrics" / "cnn.json"
    if metrics.exists():
        result["metrics"] = json.loads(metrics.read_text())
    return result


def fastai_epoch(sample: Path) -> dict:
    """The book's resnet18 epoch with fastai (which picks the GPU itself)."""
    result = run([sys.executable, str(ROOT / "bench" / "fastai_cnn.py"), str(sample)])
    if result["rc"] == 0:
        result["fit"] = json.loads(result["output"].strip().splitlines()[-1])
    return result


def check(results: dict, name: str, work) -> None:
    print(f"gpu: {name} ...", file=sys.stderr, flush=True)
    try:
        results[name] = work()
    except Exception:  # one check failing must not hide the others' figures
        results[name] = {"error": traceback.format_exc()[-4000:]}
    print(json.dumps({name: results[name]}, indent=1, default=str)[:3000], file=sys.stderr)


CHECKS = ("cuda_test", "cnn_stage_cuda", "our_epoch_cuda", "fastai_epoch_cuda", "fingerprints")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    args = parser.parse_args()
    results = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="mnist-gpu-") as tmp:
        workdir = Path(tmp)
        project = cuda_project(workdir)
        checks = {
            "cuda_test": lambda: run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                 "tests/test_optim.py::test_cnn_trains_on_a_gpu_as_on_the_cpu"]),
            "cnn_stage_cuda": lambda: cnn_stage(project),
            # twice: the first pays for cuDNN's start
            "our_epoch_cuda": lambda: [our_cnn_epoch(project) for _ in range(2)],
            "fastai_epoch_cuda": lambda: fastai_epoch(
                write_mnist_sample(ROOT / "data" / "tensors", workdir / "mnist_sample")),
            "fingerprints": lambda: run(
                [sys.executable, "-m", "tools.fingerprints", "--threads", "1", "2", "3", "4"]),
        }
        for name in args.checks:
            check(results, name, checks[name])
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"gpu: written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
