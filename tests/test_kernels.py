"""base.kernels: the portable kernels compute the committed bits on this CPU, every output
says which kernels computed it, and a process that cannot honour the setting refuses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stages.lib.infra.errors import UserError
from stages.lib.infra.kernels import (PORTABLE_ENV, PORTABLE_IN_EFFECT, check_setting, cpu_name,
                                      kernels_in_effect, kernels_setting, pin, portable_problem,
                                      use_kernels)
from tests.helpers import (ROOT, make_project, read_json, run, set_params, stages_run,
                           write_png_folder)
from tools import fingerprints

HASWELL_FLAGS = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2\n"


def test_this_cpu_computes_the_committed_fingerprints():
    """The proof on every machine that runs the tests: a few training steps of each model,
    by the stages' own code, at every committed thread count, give the committed bits. A
    CPU that fails this would compute another dvc.lock (docs/performance.md)."""
    assert use_kernels("portable").in_effect == PORTABLE_IN_EFFECT  # conftest pinned them
    committed = json.loads(fingerprints.COMMITTED.read_text())
    assert set(committed) == {str(n) for n in fingerprints.THREADS}
    before = torch.get_num_threads()
    try:
        found = fingerprints.compute(list(fingerprints.THREADS))
    finally:
        torch.set_num_threads(before)
    assert fingerprints.compare(found, committed) == [], (
        f"{fingerprints.cpu_name()} computes other bits than tools/fingerprints.json: if a "
        f"change of code meant to move the numbers, rerun `python -m tools.fingerprints "
        f"--write` and the pipeline (dvc.lock); if not, this CPU is one the portable kernels "
        f"do not cover")


def test_the_thread_count_matters_only_where_the_docs_say():
    # docs/performance.md: the baseline and the linear model give the same bits at any
    # thread count, the MLP at 1, 2 and 4 (MKL splits its sums otherwise at 3), the CNN only
    # at the same count (BatchNorm's and some convolutions' sums are split by thread).
    committed = json.loads(fingerprints.COMMITTED.read_text())
    by_model = {model: {threads: found[model] for threads, found in committed.items()}
                for model in committed["1"]}
    assert len(set(by_model["baseline"].values())) == 1
    assert len(set(by_model["linear"].values())) == 1
    assert len({by_model["mlp"][t] for t in ("1", "2", "4")}) == 1
    assert by_model["mlp"]["3"] != by_model["mlp"]["1"]
    assert len(set(by_model["cnn"].values())) == 4


def test_pin_sets_or_clears_the_three_variables():
    env = {"MKL_CBWR": "AVX2", "PATH": "/bin"}
    pin("portable", env)
    assert env == {**PORTABLE_ENV, "PATH": "/bin"}
    pin("native", env)
    assert env == {"PATH": "/bin"}  # each library's own choice, not a leftover of the shell


def test_the_setting_is_read_from_params_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kernels_setting() == "portable"  # no params.yaml: the default
    for text, setting in (("base:\n  kernels: native\n", "native"),
                          ("base:\n  kernels: fast\n", "portable"),  # check_params says why
                          ("base: [\n", "portable"), ("- 1\n", "portable")):
        (tmp_path / "params.yaml").write_text(text)
        assert kernels_setting() == setting, text


def test_a_cpu_without_avx2_is_told_to_use_native():
    assert portable_problem("x86_64", HASWELL_FLAGS) is None
    assert portable_problem("x86_64", HASWELL_FLAGS.replace(" avx2", "").replace(" fma", "")) \
        == "this CPU lacks AVX2 and FMA"
    assert portable_problem("aarch64", "") == "they are x86-64 kernels and this CPU is aarch64"
    check_setting("native")  # any CPU
    if portable_problem() is None:
        check_setting("portable")
    else:
        with pytest.raises(UserError, match="set base.kernels: native in params.yaml"):
            check_setting("portable")


def test_the_cpu_is_named_with_its_widest_vector_instructions():
    haswell = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz\n" + HASWELL_FLAGS
    assert cpu_name(haswell) == "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz (AVX2)"
    assert cpu_name(haswell.replace(" avx2", " avx2 avx512f")).endswith(" (AVX-512)")
    assert cpu_name("model name\t: Old\nflags\t\t: fpu sse2\n") == "Old"


def test_kernels_pinned_after_torch_computed_are_refused(tmp_path):
    # Torch ran before stages/__init__.py: the libraries chose the CPU's own kernels, and a
    # stage would record `portable` for numbers that are not. It refuses, naming each.
    code = ("import torch; torch.mm(torch.ones(2, 2), torch.ones(2, 2)); "
            "torch.nn.functional.conv2d(torch.ones(16, 3, 8, 8), torch.ones(8, 3, 3, 3)); "
            "import stages; from stages.lib.infra.kernels import use_kernels; "
            "print(use_kernels('portable'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "base.kernels: portable, but this process computes with mkl OFF (not COMPATIBLE)" \
        in result.stderr
    assert "torch ran before the kernels were pinned" in result.stderr


def test_each_library_reports_the_portable_kernels_in_this_process():
    assert kernels_in_effect() == {"mkl": "COMPATIBLE", "onednn": "Intel AVX2", "aten": "AVX2"}
    assert str(use_kernels("portable")) == \
        "portable kernels (MKL COMPATIBLE, oneDNN Intel AVX2, ATen AVX2)"
    with pytest.raises(UserError, match="base.kernels: native, but MKL computes with its "
                                        "COMPATIBLE branch"):
        use_kernels("native")


@pytest.mark.pipeline
def test_native_kernels_through_dvc_are_recorded_and_rerun_back(tmp_path):
    """`base.kernels: native` through DVC: the stage runs with each library's own choice and
    records it in its checkpoint and metrics (the summary's words on it: test_summary.py);
    back to portable, DVC reruns the stage, since the kernels change every number."""
    sample = write_png_folder(tmp_path / "mnist_sample", "mnist_sample", per_digit=8)
    project = make_project(tmp_path / "project", {"data.source": str(sample),
                                                  "base.kernels": "native"})
    result = run(project, "dvc", "repro", "train_linear")
    assert "native kernels (MKL OFF, oneDNN " in result.stderr
    assert read_json(project / "metrics/linear.json")["kernels"] == "native"
    checkpoint = torch.load(project / "models/linear.pt", weights_only=True)
    assert checkpoint["training"]["kernels"] == "native"
    set_params(project, {"base.kernels": "portable"})
    result = run(project, "dvc", "repro", "train_linear")
    assert stages_run(result.stdout) == ["train_linear"]
    assert "portable kernels (MKL COMPATIBLE, oneDNN Intel AVX2, ATen AVX2)" in result.stderr
    assert read_json(project / "metrics/linear.json")["kernels"] == "portable"
