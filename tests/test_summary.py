"""`python -m stages.summary` (`make metrics`, the end of `make run`): each model's accuracy
beside the book's, from metrics/*.json and the params dvc.lock records for them."""

from __future__ import annotations

import pytest

import hashlib
import json
import re
import subprocess


from stages.lib.infra.errors import UserError
from stages.lib.infra.files import read_yaml
from tests.helpers import ROOT, env_with, read_json, run_module, write_yaml

BOOK_PARAMS = {
    "download": {"data.source": "auto"},
    "tensorise": {"data.digits": [3, 7], "data.split": "auto"},
    "baseline": {},
    "train_linear": {"train_linear.init": "book", "train_linear.lr": 1.0,
                     "train_linear.epochs": 21, "train_linear.batch_size": 256,
                     "train_linear.shuffle": False, "train_linear.loss": "mnist"},
    "train_mlp": {"train_mlp.hidden": [30], "train_mlp.lr": 0.1, "train_mlp.epochs": 40,
                  "train_mlp.batch_size": 256, "train_mlp.shuffle": False,
                  "train_mlp.loss": "mnist"},
    "train_cnn": {"train_cnn.lr": 0.005, "train_cnn.epochs": 1, "train_cnn.batch_size": 128,
                  "train_cnn.shuffle": True, "train_cnn.wd": 0.01},
}
COMMON = {"n_train": 12396, "n_valid": 2038, "source": "mnist", "split": "official",
          "seed": 42, "device": "cpu", "threads": 2, "kernels": "portable",
          "tensors": "0d1b82d4a813d029"}
PRODUCED = "seed 42, cpu, 2 threads, portable".split()
TENSORS = {"path": "data/tensors", "hash": "md5", "md5": "6b7b8e2d5d1b.dir"}


def scores(accuracy, balanced):
    return {"accuracy": accuracy, "balanced_accuracy": balanced,
            "per_class": {"3": balanced, "7": balanced}}


def write_run(folder, params=BOOK_PARAMS, common=COMMON, tensorised=TENSORS,
              cnn=(0.9966, 0.9965), mlp_settings=None):
    """metrics/*.json and the dvc.lock that records them, as `dvc repro` leaves them;
    `tensorised`: what dvc.lock says tensorise last wrote."""
    n = common["n_train"]  # the optimizer steps the stages count with the book's params:
    steps = {"linear": 21 * -(-n // 256), "mlp": 40 * -(-n // 256),  # the last batch kept
             "cnn": n // 128}                                         # dropped
    metrics = {"baseline": {"l1": scores(0.9514, 0.9511), "l2": scores(0.9661, 0.9661), **common,
                            "seed": None},
               "linear": {**scores(0.9725, 0.9724), **common, "steps": steps["linear"]},
               "mlp": {**scores(0.9828, 0.9828), **common, **(mlp_settings or {}),
                       "steps": steps["mlp"]},
               "cnn": {**scores(*cnn), **common, "steps": steps["cnn"]}}
    stages = {}
    (folder / "metrics").mkdir()
    for stage, stage_params in params.items():
        stages[stage] = {"params": {"params.yaml": stage_params}, "outs": [], "deps": []}
        name = stage.removeprefix("train_")
        if stage == "tensorise":
            stages[stage]["outs"].append(tensorised)
        if name in metrics:
            stages[stage]["deps"].append(TENSORS)
            path = folder / f"metrics/{name}.json"
            path.write_text(json.dumps(metrics[name]))
            stages[stage]["outs"].append({"path": f"metrics/{name}.json", "hash": "md5",
                                          "md5": hashlib.md5(path.read_bytes()).hexdigest()})
    write_yaml(folder / "dvc.lock", {"schema": "2.0", "stages": stages})


def words(output: str) -> str:
    """The output with its line breaks as spaces: the notes under the table are wrapped."""
    return " ".join(output.split())


def table(output: str) -> dict[str, list[str]]:
    return {m.group(1): m.group(2).split() for m in
            re.finditer(r"^(baseline \(L1\)|linear|mlp|cnn) +(.+)$", output, re.MULTILINE)}


def test_book_settings_get_the_books_figure_and_others_a_dash(tmp_path):
    write_run(tmp_path)
    rows = table(run_module(tmp_path, "stages.summary", check=True).stdout)
    assert rows == {"baseline (L1)": ["0.9514", "0.9511", "0.9511", "balanced", "cpu,", "2",
                                      "threads,", "portable"],
                    "linear": ["0.9725", "0.9724", "0.9696", *PRODUCED],
                    "mlp": ["0.9828", "0.9828", "0.9828", *PRODUCED],
                    "cnn": "0.9966 0.9965 0.9970 (book: lr 0.1, batch_size 64)".split() + PRODUCED}
    # The MLP as dvc.lock says it ran with lr 0.5 (whatever params.yaml says now): no figure;
    # the CNN trained for two epochs is not the book's one-epoch step.
    changed = {**BOOK_PARAMS, "train_mlp": {**BOOK_PARAMS["train_mlp"], "train_mlp.lr": 0.5},
               "train_cnn": {**BOOK_PARAMS["train_cnn"], "train_cnn.epochs": 2}}
    other = tmp_path / "other"
    other.mkdir()
    write_run(other, changed)
    rows = table(run_module(other, "stages.summary", check=True).stdout)
    assert rows["mlp"][2] == "—" and rows["cnn"][2] == "—"


def test_a_model_no_better_than_chance_is_called_out(tmp_path):
    # As after an offline fallback: the CNN's one epoch on 800 images is 6 steps.
    write_run(tmp_path, cnn=(0.4950, 0.5000))
    output = words(run_module(tmp_path, "stages.summary", check=True).stdout)
    assert ("cnn: balanced accuracy 0.5000 is chance level for 2 digits: it learnt nothing "
            "(1 epoch(s) of 12396 images in batches of 128: 96 optimizer steps). What to do: "
            "check train_cnn's settings (docs/training.md).") in output
    assert "mlp:" not in output and "linear:" not in output


def test_the_offline_samples_cnn_is_explained_with_what_to_do(tmp_path):
    # The first run offline: 800 training images, so the one-epoch CNN takes 6 steps and
    # scores below the pixel-similarity baseline.
    sample = {**COMMON, "n_train": 800, "n_valid": 200, "source": "mnist-5k",
              "split": "random"}
    params = {**BOOK_PARAMS, "download": {"data.source": "auto"}}
    write_run(tmp_path, params, common=sample, cnn=(0.6450, 0.6414))
    printed = run_module(tmp_path, "stages.summary", check=True).stdout
    assert max(len(line) for line in printed.splitlines()) <= 100  # wrapped for a terminal
    output = words(printed)
    assert ("cnn: accuracy 0.6450 is below the pixel-similarity baseline's 0.9514; too "
            "few optimizer steps to mean much (1 epoch(s) of 800 images in batches "
            "of 128: 6 optimizer steps). What to do: train on real MNIST (`MNIST_MIRRORS="
            "/path/to/mnist make run`: 15 times the images), or on this sample `dvc exp run "
            "-S train_cnn.epochs=4 -S train_cnn.batch_size=32` (100 steps).") in output
    assert "linear:" not in output and "mlp:" not in output  # 84 and 160 steps, above it


def test_a_metrics_file_changed_after_dvc_ran_is_an_error(tmp_path):
    write_run(tmp_path)
    path = tmp_path / "metrics/mlp.json"
    path.write_text(path.read_text().replace("0.9828", "0.9900", 1))
    result = run_module(tmp_path, "stages.summary")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("error in command 'summary': metrics/mlp.json is not the file dvc.lock records "
            "for stage 'train_mlp'") in result.stderr
    (tmp_path / "dvc.lock").unlink()
    assert "dvc.lock not found" in run_module(tmp_path, "stages.summary").stderr


def test_metrics_from_before_the_last_tensorise_are_an_error(tmp_path):
    # `dvc repro -s tensorise` with other digits: dvc.lock's tensorise moved on, the models
    # did not; the summary would print old numbers under the new digits.
    write_run(tmp_path, tensorised={**TENSORS, "md5": "a0a0a0a0a0a0.dir"})
    result = run_module(tmp_path, "stages.summary")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("the metrics of baseline, train_linear, train_mlp, train_cnn were computed from "
            "other tensors than tensorise last wrote") in result.stderr


def test_the_offline_fallback_is_repeated_and_other_data_has_no_book_column(ten_digit_project):
    project, _ = ten_digit_project
    output = run_module(project, "stages.summary", check=True).stdout
    assert "Digits 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 from mnist-5k" in output
    assert "the book" not in output.splitlines()[2] and "no book figures" in output
    assert table(output)["cnn"][0] == f"{read_json(project / 'metrics/cnn.json')['accuracy']:.4f}"
    assert "WARNING: these numbers are from mnist-5k" in output


@pytest.mark.pipeline
def test_make_run_ends_with_the_summary_and_make_metrics_prints_it():
    def commands(target):
        # Under `make test` this make is a sub-make: --no-print-directory keeps its
        # "Entering directory" lines out, and the outer make's flags are dropped.
        result = subprocess.run(["make", "-n", "--no-print-directory", "-o",
                                 ".venv/.installed-from-requirements", target], cwd=ROOT,
                                capture_output=True, text=True, check=True,
                                env=env_with(MAKEFLAGS=None, MAKELEVEL=None, MFLAGS=None))
        return [line.lstrip("@") for line in result.stdout.splitlines()]
    assert commands("run")[-1] == "python -m stages.summary"
    assert commands("run").index("dvc repro") < len(commands("run")) - 1
    assert commands("metrics") == ["python -m stages.summary"]
    assert commands("reset") == ["python -m stages.reset"]  # the tests run it on a clone


def test_models_produced_with_other_settings_are_called_out(tmp_path):
    # `base.seed: 7`, then `dvc repro -s train_mlp`: one model of seed 7 beside seed-42 ones.
    write_run(tmp_path, mlp_settings={"seed": 7})
    write_yaml(tmp_path / "params.yaml", {"base": {"seed": 7, "device": "cpu",
                                                   "threads": "auto"}})
    output = run_module(tmp_path, "stages.summary", check=True).stdout
    assert table(output)["mlp"][-5:] == ["7,", "cpu,", "2", "threads,", "portable"]
    output = words(output)
    assert ("The models were not all produced with the same seed (linear, cnn: 42; mlp: 7). "
            "Rerun them together: `dvc repro`.") in output
    # One setting for all, but not the one params.yaml says now.
    other = tmp_path / "other"
    other.mkdir()
    write_run(other)
    write_yaml(other / "params.yaml", {"base": {"seed": 42, "device": "cpu", "threads": 1}})
    output = words(run_module(other, "stages.summary", check=True).stdout)
    assert ("params.yaml now says base.threads: 1, but the models were produced with threads "
            "2; `dvc repro` reruns them with 1.") in output
    assert "not all produced" not in output


def test_models_computed_with_native_kernels_are_called_out(tmp_path):
    # `dvc exp run -S base.kernels=native -s train_mlp`: one model this CPU's own, beside
    # portable ones, and params.yaml still saying portable.
    write_run(tmp_path, mlp_settings={"kernels": "native"})
    write_yaml(tmp_path / "params.yaml", {"base": {"seed": 42, "device": "cpu",
                                                   "threads": "auto", "kernels": "portable"}})
    output = run_module(tmp_path, "stages.summary", check=True).stdout
    assert table(output)["mlp"][-1] == "native"
    output = words(output)
    assert ("The models were not all produced with the same kernels (baseline (L1), linear, "
            "cnn: portable; mlp: native). Rerun them together: `dvc repro`.") in output
    assert ("Computed with base.kernels: native, this CPU's own fastest kernels: mlp. Their "
            "numbers are reproducible bit for bit on this kind of CPU only (another CPU gets "
            "other last digits); for numbers every x86-64 CPU reproduces: `dvc exp run -S "
            "base.kernels=portable`.") in output


@pytest.mark.parametrize("file,text", [("dvc.lock", b"schema"), ("metrics/mlp.json", b"0.98")])
def test_a_file_that_is_not_utf8_is_named(tmp_path, file, text):
    write_run(tmp_path)
    path = tmp_path / file
    path.write_bytes(path.read_bytes().replace(text, text[:-1] + b"\xe8", 1))
    if file != "dvc.lock":  # the lock records the file as written
        lock = read_yaml(tmp_path / "dvc.lock", "dvc.lock")
        out = next(o for o in lock["stages"]["train_mlp"]["outs"] if o["path"] == file)
        out["md5"] = hashlib.md5(path.read_bytes()).hexdigest()
        write_yaml(tmp_path / "dvc.lock", lock)
    result = run_module(tmp_path, "stages.summary")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{file} is not UTF-8 text: byte 0xe8 on line" in result.stderr


@pytest.mark.parametrize("change, expected", [
    (("  train_mlp:\n", "  train_mlp: 5\n  x_mlp:\n"),
     "stage 'train_mlp' is int, not a mapping"),
    (("      params.yaml:\n", "      params.yaml: 7\n      p_yaml:\n"),
     "stage 'download' has params that are not a mapping of files to their values"),
    (("    outs:\n", "    outs: 3\n    o_uts:\n"),
     "stage 'download' has outs that are not a list of entries with a path"),
])
def test_an_odd_dvc_lock_is_one_line_naming_the_stage_and_key(tmp_path, change, expected):
    from stages.lib.results.summary import locked_stages

    lock = tmp_path / "dvc.lock"
    lock.write_text((ROOT / "dvc.lock").read_text().replace(*change, 1))
    with pytest.raises(UserError, match=re.escape(f"{lock}: {expected}, not what DVC writes; "
                                                  f"run `dvc repro` to write it again")):
        locked_stages(lock)
    lock.write_text("stages: [1, 2]\n")
    with pytest.raises(UserError, match="is not a lock file DVC wrote"):
        locked_stages(lock)


def commit_edited_metrics(project, name: str, old: str, new: str) -> None:
    """Edit metrics/<name>.json by hand and make dvc.lock record it, as `dvc commit -f`
    does: the summary's check against dvc.lock then passes."""
    path = project / f"metrics/{name}.json"
    path.write_text(path.read_text().replace(old, new, 1))
    lock = read_yaml(project / "dvc.lock", "dvc.lock")
    for out in lock["stages"][f"train_{name}"]["outs"]:
        if out["path"] == f"metrics/{name}.json":
            out["md5"] = hashlib.md5(path.read_bytes()).hexdigest()
            out["size"] = path.stat().st_size
    write_yaml(project / "dvc.lock", lock)


def test_metrics_that_are_not_their_checkpoint_s_scores_are_not_shown(book_copy):
    result = run_module(book_copy, "stages.summary", check=True)
    assert "Not shown" not in result.stdout and "Not held" not in result.stdout
    accuracy = read_json(book_copy / "metrics/cnn.json")["accuracy"]
    commit_edited_metrics(book_copy, "cnn", f'"accuracy": {accuracy}', '"accuracy": 0.9999')
    result = run_module(book_copy, "stages.summary")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert table(result.stdout)["cnn"][:4] == ["not", "shown", "not", "shown"]
    assert "0.9999" not in table(result.stdout)["cnn"]
    assert (f"Not shown: metrics/cnn.json does not hold the scores models/cnn.pt records: "
            f"accuracy is 0.9999 there but {accuracy} in the checkpoint") in words(result.stdout)
    assert ("the metrics of train_cnn are not the scores their checkpoints record (above); "
            "`dvc repro --force train_cnn` computes both again") in result.stderr
    assert table(result.stdout)["mlp"][0] == f"{read_json(book_copy / 'metrics/mlp.json')['accuracy']:.4f}"


def test_results_that_differ_from_the_last_commit_say_when_to_commit_them(book_copy):
    """DVC's `git add dvc.lock` hint, after a run, is put in context."""
    committed = run_module(book_copy, "stages.summary", check=True).stdout
    assert "differ from the last commit" not in committed
    assert ("dvc.lock and metrics/ are the last commit's: nothing to commit (DVC's `git add "
            "dvc.lock` hint, if it printed one, can be passed by)") in words(committed)
    path = book_copy / "metrics/mlp.json"
    ran = path.read_text()
    path.write_text(ran.replace("0.98", "0.97", 1))  # the commit holds other results
    subprocess.run(["git", "commit", "-qam", "other results"], cwd=book_copy, check=True)
    path.write_text(ran)
    result = run_module(book_copy, "stages.summary", check=True)
    assert ("dvc.lock and metrics/ differ from the last commit (DVC's `git add dvc.lock` hint "
            "is about them). Commit both only to make these the project's results") in words(
                result.stdout)
