"""params.yaml is validated as a whole: unknown keys, wrong types and bad ranges fail early,
with the key and what is allowed in the message."""

from __future__ import annotations

import copy

import pytest
import yaml

from stages.lib.errors import UserError
from stages.lib.params import load_params, validate_params
from tests.helpers import ROOT

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(dotted: str, value) -> dict:
    params = copy.deepcopy(DEFAULTS)
    *path, key = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    node[key] = value
    return params


def error_for(params) -> str:
    with pytest.raises(UserError) as err:
        validate_params(params)
    return str(err.value)


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.digits == [3, 7]
    assert params.train_mlp.hidden == [30]


@pytest.mark.parametrize("dotted", ["trian_mlp", "train_mlp.lrr", "data.digit", "base.sed"])
def test_unknown_key_at_any_level_is_rejected(dotted):
    message = error_for(with_change(dotted, 1))
    assert dotted in message
    assert "unknown key" in message


def test_missing_key_is_rejected():
    params = copy.deepcopy(DEFAULTS)
    del params["train_linear"]["lr"]
    assert "train_linear.lr: Field required" in error_for(params)


@pytest.mark.parametrize("dotted, value, expected", [
    ("train_linear.lr", 0, "greater than 0"),
    ("train_mlp.lr", -0.1, "greater than 0"),
    ("train_mlp.epochs", 0, "greater than or equal to 1"),
    ("train_linear.batch_size", 0, "greater than or equal to 1"),
    ("data.valid_pct", 0, "greater than 0"),
    ("data.valid_pct", 1, "less than 1"),
    ("train_mlp.hidden", [], "at least one hidden layer"),
    ("train_mlp.hidden", [30, 0], "greater than or equal to 1"),
    ("data.digits", [3], "two or more digits"),
    ("data.digits", [3, 3], "distinct"),
    ("data.digits", [3, 10], "less than or equal to 9"),
    ("data.digits", [-1, 3], "greater than or equal to 0"),
    ("data.split", "test", "'auto', 'official' or 'random'"),
    ("train_linear.init", "zeros", "'book' or 'torch'"),
    ("base.device", "tpu", "'cpu', 'cuda' or 'auto'"),
    ("data.source", "", "must be one of auto, mnist, mnist-5k or a local folder"),
])
def test_out_of_range_values_name_the_key_and_the_rule(dotted, value, expected):
    message = error_for(with_change(dotted, value))
    assert dotted in message
    assert expected in message


@pytest.mark.parametrize("dotted, value", [
    ("train_mlp.epochs", "40"), ("train_mlp.epochs", 2.5), ("train_mlp.shuffle", "yes"),
    ("train_linear.lr", "fast"), ("data.digits", "3,7"), ("base.seed", True),
])
def test_wrong_types_are_rejected_not_coerced(dotted, value):
    assert dotted in error_for(with_change(dotted, value))


@pytest.mark.parametrize("value, expected", [("1e-3", 0.001), (1, 1.0), (0.5, 0.5)])
def test_learning_rate_accepts_yaml_exponents_and_ints(value, expected):
    # PyYAML reads `1e-3` (no dot) as a string; the schema takes it as the number it is.
    assert validate_params(with_change("train_mlp.lr", value)).train_mlp.lr == expected


@pytest.mark.parametrize("value", ["inf", "nan", float("inf")])
def test_learning_rate_must_be_finite(value):
    assert "train_mlp.lr" in error_for(with_change("train_mlp.lr", value))


def test_every_problem_is_listed_in_one_message():
    params = with_change("train_mlp.lr", 0)
    params["data"]["digits"] = [4]
    message = error_for(params)
    assert "train_mlp.lr" in message and "data.digits" in message


def test_missing_and_broken_params_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(broken)
