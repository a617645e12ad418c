"""`dvc repro` end to end, on real MNIST served by a loopback mirror, and offline."""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import torch

from stages.lib.infra.files import read_yaml
from stages.lib.data.sources import CANONICAL_FILES

from tests.helpers import (ROOT, copy_project, read_json, run, set_params,
                           stages_run)


# Code every stage runs that cannot change an output: how errors are shown, and the
# validation of params whose values DVC itself tracks (read exactly as DVC reads them). For
# check_params, whose whole work is that validation, params.py is the code it runs.
NOT_A_DEPENDENCY = {"stages/lib/infra/errors.py", "stages/lib/infra/params.py"}
MODEL_STAGES = ("baseline", "train_linear", "train_mlp", "train_cnn")
# Code beside the pipeline, which no model stage may depend on: editing it retrains nothing.
# What `python -m stages.<name>` runs before the stage's own imports: the package, which pins
# the CPU kernels torch computes with (kernels.py), and so changes every number.
PACKAGE = ROOT / "stages" / "__init__.py"
NOT_FOR_MODELS = ("stages/lib/data/sources.py", "stages/lib/data/idx.py",
                  "stages/lib/learning/lr_find.py", "stages/lib/own_digits/",
                  "stages/lib/results/summary.py", "stages/lib/results/figures.py",
                  "stages/lib/results/report.py", "stages/lib/results/seed_study.py")


def _imported_files(path: Path, node: ast.ImportFrom) -> list[Path]:
    """The project's module files an `from X import Y` in `path` reads (none for others)."""
    if node.level:
        package = path.parents[node.level - 1]
        base = package.joinpath(*node.module.split(".")) if node.module else package
    elif (node.module or "").split(".")[0] == "stages":
        base = ROOT.joinpath(*node.module.split("."))
    else:
        return []
    if base.with_suffix(".py").is_file():
        return [base.with_suffix(".py")]
    return [base / f"{alias.name}.py" for alias in node.names
            if (base / f"{alias.name}.py").is_file()]  # `from package import module`


def imported_modules(path: Path) -> set[str]:
    """The project's modules `path` imports, directly or through each other."""
    found, todo = set(), [path]
    while todo:
        current = todo.pop()
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("stages") for a in node.names), current
            if isinstance(node, ast.ImportFrom):
                for module in _imported_files(current, node):
                    if module not in found:
                        found.add(module)
                        todo.append(module)
    return {str(p.relative_to(ROOT)) for p in found}


def test_every_stage_depends_on_exactly_the_code_it_runs():
    # A module a stage imports but dvc.yaml does not list would change its outputs without
    # DVC rerunning it: last run's numbers, silently kept. One it lists but does not run
    # reruns it for nothing: rewording a mirror's error would retrain every model.
    stages = read_yaml(ROOT / "dvc.yaml", "dvc.yaml")["stages"]
    for name, stage in stages.items():
        script = ROOT / (stage["cmd"].split()[-1].replace(".", "/") + ".py")
        excluded = NOT_A_DEPENDENCY - ({"stages/lib/infra/params.py"}
                                       if name == "check_params" else set())
        runs = ({str(script.relative_to(ROOT)), str(PACKAGE.relative_to(ROOT))}
                | imported_modules(script) | imported_modules(PACKAGE)) - excluded
        listed = {dep for dep in stage.get("deps", []) if dep.startswith("stages/")}
        assert listed == runs, f"{name}: dvc.yaml lists {sorted(listed - runs)} that it does " \
                               f"not run and misses {sorted(runs - listed)}"
        if name in MODEL_STAGES:
            assert not [dep for dep in listed if dep.startswith(NOT_FOR_MODELS)], name


def test_the_library_imports_go_one_way():
    # infra is what everything leans on, data what everything reads: neither reaches into
    # the chapter's code; learning (the chapter's models and their training) does not reach
    # into results (what reads and shows them); nothing in the library imports a stage.
    allowed = {"infra": {"infra"}, "data": {"infra", "data"},
               "learning": {"infra", "data", "learning"}}
    lib = ROOT / "stages" / "lib"
    for module in lib.rglob("*.py"):
        folder = module.relative_to(lib).parts[0]
        reached = {Path(m).relative_to("stages").parts for m in imported_modules(module)}
        assert all(parts[0] == "lib" for parts in reached), module
        if folder in allowed:
            assert {parts[1] for parts in reached} <= allowed[folder], module


def test_package_files_hold_nothing_a_stage_could_depend_on():
    # Importing a module runs its packages' __init__.py too; dvc.yaml lists only the top
    # one (PACKAGE, for every stage), so the others may hold a docstring and nothing else.
    for init in set((ROOT / "stages").rglob("__init__.py")) - {PACKAGE}:
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init
        assert isinstance(body[0].value, ast.Constant) and body[0].value.value.strip(), init


def test_repro_downloads_and_verifies_real_mnist(book_project):
    project, _ = book_project
    manifest = read_json(project / "data/raw/manifest.json")
    assert manifest["source"] == "mnist" and manifest["splits"] == ["train", "test"]
    expected = {name: sha256 for name, (_, sha256) in CANONICAL_FILES.items()}
    assert {name: f["sha256"] for name, f in manifest["files"].items()} == expected
    for name, sha256 in expected.items():
        assert hashlib.sha256((project / "data/raw" / name).read_bytes()).hexdigest() == sha256


def outputs_by_stage(lock: Path) -> dict[str, dict[str, str]]:
    """Each stage's outputs in a dvc.lock, by path: their md5."""
    stages = read_yaml(lock, "dvc.lock")["stages"]
    return {name: {out["path"]: out["md5"] for out in stage.get("outs", [])}
            for name, stage in stages.items()}


def test_a_fresh_run_computes_the_committed_dvc_lock(book_project):
    """This machine's run of the committed params on real MNIST, at the committed thread
    count (conftest), gives every output the committed dvc.lock records, and the committed
    metrics byte for byte: the portable kernels at work (stages/lib/infra/kernels.py)."""
    project, _ = book_project
    ours, committed = outputs_by_stage(project / "dvc.lock"), outputs_by_stage(ROOT / "dvc.lock")
    assert ours.keys() == committed.keys()
    moved = {stage: sorted(path for path in committed[stage]
                           if ours[stage].get(path) != committed[stage][path])
             for stage in committed}
    moved = {stage: paths for stage, paths in moved.items() if paths}
    assert not moved, (
        f"this run's outputs differ from the committed dvc.lock's: {moved}. If a change of "
        f"code or params meant to move them, rerun the pipeline (`make run` on real MNIST) "
        f"and commit dvc.lock and metrics/; if not, this CPU computes other bits (`python -m "
        f"tools.fingerprints` says which)")
    for metrics in sorted((ROOT / "metrics").glob("*.json")):
        assert (project / "metrics" / metrics.name).read_bytes() == metrics.read_bytes(), \
            metrics.name


def test_tensors_are_exactly_mnist_sample(book_project):
    project, _ = book_project
    meta = read_json(project / "data/tensors/meta.json")
    assert meta["split"] == "official" and meta["source"] == "mnist"
    assert meta["counts"] == {"train": {"3": 6131, "7": 6265}, "valid": {"3": 1010, "7": 1028}}
    train = torch.load(project / "data/tensors/train.pt", weights_only=True)
    assert train["images"].shape == (12396, 28, 28) and train["images"].dtype == torch.uint8
    assert train["targets"].dtype == torch.int64
    # The book's order and labels: all 3s (target 1), then all 7s (target 0).
    assert train["targets"][:6131].eq(1).all() and train["targets"][6131:].eq(0).all()


def test_second_repro_runs_nothing(book_copy):
    result = run(book_copy, "dvc", "repro")
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date." in result.stdout


def test_exp_run_cannot_add_a_misspelt_key(book_copy):
    # DVC's own hint after `-S train_mlp.lrr=0.5` is to force it with '+'.
    before = {p: (book_copy / p).read_bytes() for p in ("data/tensors/meta.json",
                                                         "metrics/mlp.json")}
    result = run(book_copy, "dvc", "exp", "run", "-S", "+train_mlp.lrr=0.5", check=False)
    assert result.returncode != 0
    assert "train_mlp.lrr: unknown key" in result.stderr
    assert stages_run(result.stdout) == ["check_params"]
    assert "exp" not in run(book_copy, "dvc", "exp", "list").stdout
    for path, data in before.items():
        assert (book_copy / path).read_bytes() == data, path


def test_changing_digits_reruns_tensorise_but_not_download(book_project, tmp_path):
    project = copy_project(book_project[0], tmp_path / "copy")
    set_params(project, {"data.digits": [4, 9]})
    result = run(project, "dvc", "repro", "tensorise")
    assert "Stage 'download' didn't change, skipping" in result.stdout
    assert stages_run(result.stdout) == ["tensorise"]
    assert read_json(project / "data/tensors/meta.json")["counts"]["train"] == \
        {"4": 5842, "9": 5949}


def test_offline_repro_falls_back_to_mnist_5k(ten_digit_project):
    project, result = ten_digit_project  # data.source auto, no mirror
    assert "WARNING: full MNIST could not be downloaded" in result.stderr
    meta = read_json(project / "data/tensors/meta.json")
    assert meta["source"] == "mnist-5k" and meta["split"] == "random"
    assert meta["n_train"] + meta["n_valid"] == 5000
    for name in ("baseline", "linear", "mlp", "cnn"):
        assert read_json(project / f"metrics/{name}.json")["source"] == "mnist-5k"
    # 4000 images in batches of 64 give the CNN 62 steps, and it passes the baseline: no
    # caveat (test_reliability's fresh clone has one, 6 steps on 800 images).
    assert "optimizer steps" not in (project / "report/report.md").read_text()


def test_make_run_gets_real_mnist_once_it_can_be_had(ten_digit_project, tmp_path,
                                                      shared_mnist):
    # `make run` starts with stages.refetch; plain `dvc repro` says "up to date" here.
    project = copy_project(ten_digit_project[0], tmp_path / "copy")
    assert "up to date" in run(project, "dvc", "status").stdout
    still_offline = run(project, sys.executable, "-m", "stages.refetch")
    assert "trying real MNIST again" in still_offline.stderr
    assert "WARNING: full MNIST could not be downloaded" in still_offline.stderr
    # The same bytes again: nothing after the download reruns.
    assert "up to date" in run(project, "dvc", "status").stdout

    online = run(project, sys.executable, "-m", "stages.refetch", mirrors=str(shared_mnist))
    assert "verified (from" in online.stderr
    assert read_json(project / "data/raw/manifest.json")["source"] == "mnist"
    status = run(project, "dvc", "status").stdout
    assert "tensorise:" in status and "modified:           data/raw" in status


def test_refetch_does_nothing_after_a_download_that_did_not_fall_back(book_copy):
    result = run(book_copy, sys.executable, "-m", "stages.refetch")
    assert result.stdout == result.stderr == ""
    assert "up to date" in run(book_copy, "dvc", "status").stdout
