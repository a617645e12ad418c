"""The report stage, and the experiment workflow around it: change a param, rerun only what
depends on it, compare with `dvc metrics diff`, and push/pull through a DVC remote."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from stages.lib.results.book import book_figure, figure_text
from stages.lib.data.tensors import Split
from stages.lib.results.report import ModelResult, confusion_by_digit, results_table, worst_mistakes
from tests.helpers import ROOT, copy_project, run, set_params, stages_run

BOOK_META = {"source": "mnist", "digits": [3, 7], "split": "official"}
BOOK_MLP = {"hidden": [30], "lr": 0.1, "epochs": 40, "batch_size": 256, "shuffle": False,
            "loss": "mnist", "seed": 42}


def test_book_figure_only_for_the_books_data_and_settings():
    assert book_figure("mlp", BOOK_MLP, BOOK_META) == {"accuracy": 0.9828}
    assert book_figure("mlp", {**BOOK_MLP, "lr": 0.5}, BOOK_META) is None
    assert book_figure("mlp", BOOK_MLP, {**BOOK_META, "split": "random"}) is None
    assert book_figure("mlp", BOOK_MLP, {**BOOK_META, "source": "mnist-5k"}) is None
    assert book_figure("baseline_l1", {}, BOOK_META)["balanced_accuracy"] == 0.9511
    assert book_figure("baseline_l2", {}, BOOK_META) is None
    torch_linear = {"init": "torch", "lr": 1.0, "epochs": 20, "batch_size": 256,
                    "shuffle": False, "loss": "mnist"}
    assert book_figure("linear", torch_linear, BOOK_META) == {"accuracy": 0.9785}


def test_the_cnns_book_figure_names_the_book_settings_ours_differ_from():
    book_step = {"lr": 0.1, "epochs": 1, "batch_size": 64, "wd": 0.01}
    assert book_figure("cnn", book_step, BOOK_META) == {"accuracy": 0.997}
    ours = book_figure("cnn", {**book_step, "lr": 0.02, "batch_size": 128}, BOOK_META)
    assert ours == {"accuracy": 0.997, "book_settings": {"lr": 0.1, "batch_size": 64}}
    assert figure_text(ours) == "0.9970 (book: lr 0.1, batch_size 64)"
    assert book_figure("cnn", {**book_step, "epochs": 2}, BOOK_META) is None


def hand_result(preds, scores):
    return ModelResult("m", "m", {"accuracy": 0.5, "balanced_accuracy": 0.5,
                                  "per_class": {"3": 0.5, "7": 0.5}},
                       torch.tensor(preds), torch.tensor(scores), "loss", {})


def test_worst_mistakes_are_the_most_confident_wrong_ones():
    valid = Split(torch.arange(5, dtype=torch.uint8)[:, None, None].expand(5, 28, 28),
                  torch.tensor([1, 1, 0, 0, 1]))
    result = hand_result([0, 1, 1, 0, 0], [6.0, 0.01, 9.0, 0.2, 7.0])
    mistakes = worst_mistakes(result, valid, names=[7, 3], k=2)
    # wrong: 0 (loss 6), 2 (loss 9), 4 (loss 7) -> the two worst: 2 then 4
    assert [(int(img[0, 0]), true, pred) for img, true, pred, _ in mistakes] == \
        [(2, 7, 3), (4, 3, 7)]
    assert mistakes[0][3] == "loss 9.00"


def test_confusion_rows_follow_the_digits_order():
    valid = Split(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.tensor([1, 1, 0]))
    result = hand_result([1, 0, 0], [1.0, 1.0, 1.0])
    # digits [3, 7]: target 1 is 3. Two 3s (one right, one called 7), one 7 (right).
    assert confusion_by_digit(result, valid, [3, 7]).tolist() == [[1, 1], [0, 1]]


def test_results_table_has_a_book_column_only_for_book_data():
    result = hand_result([1], [1.0])
    assert "the book" in results_table([result], {**BOOK_META, "counts": {}})
    assert "the book" not in results_table([result], {**BOOK_META, "split": "random"})


def test_report_on_real_mnist(book_project):
    project, result = book_project
    assert "Running stage 'report'" in result.stdout
    report = (project / "report/report.md").read_text()
    assert "WARNING" not in report  # real MNIST, asked for by name: nothing to warn of
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 6
    for relative in images:
        with Image.open(project / "report" / relative) as png:
            assert png.format == "PNG" and png.width >= 250 and png.height >= 200
    # ours beside the book's, for each model the book has a figure for
    assert "| baseline L1 | 0.9514 | 0.9511 | 0.9168 | 0.9854 | 0.9511 balanced" in report
    assert re.search(r"\| mlp \| 0\.98\d\d \| .* \| 0\.9828 \|", report)
    # The CNN's book figure names the book's settings that ours differ from.
    assert re.search(r"\| cnn \| 0\.99\d\d \| .* \| 0\.9970 \(book: lr 0\.1, batch_size 64\) \|",
                     report)
    assert re.search(r"\| cnn \| resnet18 \| none \| one_cycle \| False \| adam \| 0\.005 \| 1 \| "
                     r"128 \| True \| cross_entropy \|", report)
    # the book's recipe: no line on how the CNN was trained, the book's words on its schedule
    assert "error rate" not in report and "trains as the book's `fit_one_cycle`" in report
    assert "| train | 6131 | 6265 | 12396 |" in report


def test_changing_a_training_param_reruns_only_its_stage_and_the_report(book_project,
                                                                         tmp_path):
    project = copy_project(book_project[0], tmp_path / "copy")
    set_params(project, {"train_linear.epochs": 5})
    result = run(project, "dvc", "repro")
    assert stages_run(result.stdout) == ["check_params", "train_linear", "report"]
    lock = (project / "dvc.lock").read_text()
    assert "epochs: 5" in lock
    diff = json.loads(run(project, "dvc", "metrics", "diff", "--json").stdout)
    assert set(diff) == {"metrics/linear.json"}
    assert diff["metrics/linear.json"]["epochs"] == {"old": 21, "new": 5, "diff": -16}
    assert "accuracy" in diff["metrics/linear.json"]
    params = json.loads(run(project, "dvc", "params", "diff", "--json").stdout)
    assert params["params.yaml"]["train_linear.epochs"] == {"old": 21, "new": 5, "diff": -16}


# A page element that would load something: <script src=...>, <link href=...>, <img src=...>,
# CSS url(...), with an http(s) or protocol-relative address.
REMOTE_LOAD = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:https?:)?//""",
                         re.IGNORECASE)


def test_dvc_plots_pages_load_nothing_from_the_network(book_copy, tmp_path):
    # The default page would load Vega from a CDN: the pattern finds that.
    assert REMOTE_LOAD.search('<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2">')
    # A workspace that differs from HEAD, for `dvc plots diff` to draw both.
    accuracy = book_copy / "dvclive/linear/plots/metrics/valid_accuracy.tsv"
    accuracy.write_text("".join(accuracy.read_text().splitlines(keepends=True)[:6]))
    for command in (("show",), ("diff", "HEAD")):
        out = tmp_path / command[0]
        run(book_copy, "dvc", "plots", *command, "-o", str(out))
        page = (out / "index.html").read_text()
        assert not REMOTE_LOAD.search(page), REMOTE_LOAD.search(page)
        assert "vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2" in page  # inlined
        assert page.count("vegaEmbed(") == 3  # accuracy, loss, the CNN's learning rate
        for name in ("linear", "mlp", "cnn"):
            assert f"{name}/plots/metrics/valid_accuracy.tsv" in page


def test_push_clear_pull_gives_identical_outputs(book_project, tmp_path):
    project = copy_project(book_project[0], tmp_path / "copy")
    outputs = ["data/raw/train-images-idx3-ubyte.gz", "data/tensors/train.pt",
               "models/mlp.pt", "report/report.md", "report/figures/worst_mistakes.png"]
    digest = {path: hashlib.sha256((project / path).read_bytes()).hexdigest()
              for path in outputs}
    run(project, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run(project, "dvc", "push")
    shutil.rmtree(project / ".dvc" / "cache")
    for path in ("data/raw", "data/tensors", "models/mlp.pt", "report"):
        target = project / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run(project, "dvc", "pull")
    for path, expected in digest.items():
        assert hashlib.sha256((project / path).read_bytes()).hexdigest() == expected, path
    assert "up to date" in run(project, "dvc", "status").stdout.lower()


@pytest.mark.parametrize("workflow, steps", [
    (".github/workflows/pipeline.yaml",
     ("fetch-depth: 0", "cache: pip", "pip install -r requirements.txt", "dvc repro",
      "dvc metrics diff", "GITHUB_STEP_SUMMARY", "actions/upload-artifact")),
    (".github/workflows/seed-sweep.yaml",
     ("workflow_dispatch", "fromJSON(inputs.seeds)", "fetch-depth: 0",
      "pip install -r requirements.txt", 'dvc exp run -n "seed-${{ matrix.seed }}" -S '
      '"base.seed=${{ matrix.seed }}"', "dvc exp push", "dvc exp pull",
      "python -m stages.seed_study --summarise", "GITHUB_STEP_SUMMARY")),
])
def test_github_workflow_is_valid(workflow, steps):
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows",
                             str(ROOT / workflow)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / workflow).read_text()
    for step in steps:
        assert step in text


def test_dvc_plots_draw_each_model_in_its_own_colour_with_a_point_per_epoch(book_copy):
    shown = json.loads(run(book_copy, "dvc", "plots", "show", "--json").stdout)["data"]
    for plot, sets in (("valid_accuracy", {"valid"}), ("loss", {"train", "valid"})):
        spec = shown[plot][0]["content"]
        encoding = spec["encoding"]
        assert encoding["color"]["field"] == "model"  # not DVC's one colour per revision
        assert encoding["color"]["scale"]["domain"] == ["linear", "mlp", "cnn"]
        assert encoding["strokeDash"]["field"] == "set" and spec["mark"]["point"]
        # What the template's transforms derive from each row, as Vega-Lite will.
        rows = spec["data"]["values"]
        sources = [row.get("filename") or row.get("filename::field") for row in rows]
        models = {source.split("/")[0] for source in sources}
        assert models == {"linear", "mlp", "cnn"}  # legend names, not cut file paths
        assert {"train" if "train_" in source else "valid" for source in sources} == sets
        cnn_points = [s for s in sources if s.startswith("cnn/")]
        assert len(cnn_points) == len(sets)  # one epoch: one point per series, drawn
