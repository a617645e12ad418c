"""What outputs record of what they were computed from, and the check that refuses a mix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from stages.lib.infra.errors import UserError
from tests.helpers import run_module
from stages.lib.infra.provenance import (ModelOutputs, check_one_run, file_fingerprint,
                                   metrics_origin, stale_outputs)

META = {"digits": [3, 7], "target_digits": [7, 3], "tensors": "aaaa", "source": "mnist"}
HISTORY = [{"epoch": 0, "train_loss": 0.3, "valid_loss": 0.4, "valid_accuracy": 0.5},
           {"epoch": 1, "train_loss": 0.123456, "valid_loss": 0.234544, "valid_accuracy": 0.9}]


def outputs(tmp_path: Path, **changes) -> ModelOutputs:
    checkpoint = tmp_path / "mlp.pt"
    if not checkpoint.exists():
        checkpoint.write_bytes(b"weights")
    metrics = {"accuracy": 0.9, "epochs": 2, "train_loss": 0.1235, "valid_loss": 0.2345,
               **metrics_origin(META, file_fingerprint(checkpoint))}
    scores = {"accuracy": 0.9, "epochs": 2, "train_loss": 0.1235, "valid_loss": 0.2345}
    fields = dict(stage="train_mlp", checkpoint_path=checkpoint,
                  checkpoint={"tensors": "aaaa", "digits": [3, 7], "target_digits": [7, 3],
                              "metrics": scores},
                  metrics_path=Path("metrics/mlp.json"), metrics=metrics,
                  history_path=Path("plots/mlp.tsv"), history=HISTORY)
    for key, value in changes.items():
        if key.startswith("metrics_"):  # as the stage wrote it: the checkpoint records it too
            key = key.removeprefix("metrics_")
            fields["metrics"] = {**metrics, key: value}
            if key in scores:
                fields["checkpoint"] = {**fields["checkpoint"], "metrics": {**scores, key: value}}
        else:
            fields[key] = value
    return ModelOutputs(**fields)


def test_outputs_of_one_run_on_these_tensors_pass(tmp_path):
    assert stale_outputs(META, outputs(tmp_path)) == []
    check_one_run(META, [outputs(tmp_path)], reader="the report")


@pytest.mark.parametrize("change, expected", [
    ({"checkpoint": {"tensors": "bbbb"}}, "mlp.pt was computed from tensors bbbb"),
    ({"metrics_tensors": "bbbb"}, "metrics/mlp.json was computed from tensors bbbb"),
    ({"metrics_model": "0123456789abcdef"}, "metrics/mlp.json was not computed from"),
    ({"metrics_epochs": 3}, "plots/mlp.tsv is not the history of the run that wrote"),
    ({"metrics_valid_loss": 0.2346}, "plots/mlp.tsv is not the history"),
    ({"checkpoint": {}}, "mlp.pt was computed from tensors None"),  # written before fingerprints
])
def test_each_kind_of_mix_is_named_with_its_stage(tmp_path, change, expected):
    problems = stale_outputs(META, outputs(tmp_path, **change))
    assert len(problems) == 1 and expected in problems[0] and "(stage train_mlp)" in problems[0]
    with pytest.raises(UserError, match="rerun the stale stages first: `dvc repro train_mlp`"):
        check_one_run(META, [outputs(tmp_path, **change)], reader="the report")


@pytest.mark.parametrize("edit, expected", [
    ({"accuracy": 0.99}, "accuracy is 0.99 there but 0.9 in the checkpoint"),
    ({"seed": 7}, "seed is 7 there but None in the checkpoint"),
])
def test_a_metrics_file_edited_by_hand_is_told_from_the_stages_own(tmp_path, edit, expected):
    edited = outputs(tmp_path)
    edited.metrics = {**edited.metrics, **edit}
    problems = stale_outputs(META, edited)
    assert problems == [f"metrics/mlp.json does not hold the scores {tmp_path / 'mlp.pt'} "
                        f"records: {expected} (edited after the stage wrote it?) "
                        f"(stage train_mlp)"]


def test_a_changed_checkpoint_no_longer_matches_its_metrics(tmp_path):
    before = outputs(tmp_path)
    (tmp_path / "mlp.pt").write_bytes(b"other weights")
    assert "was not computed from" in stale_outputs(META, before)[0]


def test_a_checkpoint_whose_labels_were_edited_is_refused(book_copy, monkeypatch):
    """Swapping what the two outputs mean would answer every 3 as a 7: predict, serve and the
    report refuse the checkpoint, naming its labels and the tensors' own."""
    from stages.lib.own_digits.classify import load_classifier

    monkeypatch.chdir(book_copy)
    assert load_classifier("mlp").target_digits == [7, 3]
    checkpoint = torch.load("models/mlp.pt", weights_only=True)
    checkpoint["target_digits"] = [3, 7]
    torch.save(checkpoint, "models/mlp.pt")
    expected = ("models/mlp.pt: its labels (digits [3, 7], target_digits [3, 7]) are not those "
                "of the tensors")
    with pytest.raises(UserError, match=re.escape(expected)):
        load_classifier("mlp")
    report = run_module(book_copy, "stages.report")
    assert report.returncode == 2 and expected in report.stderr
