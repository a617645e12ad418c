"""params.yaml is validated as a whole: unknown keys, wrong types and bad ranges fail early,
with the key and what is allowed in the message."""

from __future__ import annotations

import copy
import time

import pytest

from stages.lib.infra.errors import UserError
from stages.lib.infra.files import parse_yaml, read_yaml
from stages.lib.infra.params import load_params, validate_params
from tests.helpers import ROOT

DEFAULTS = read_yaml(ROOT / "params.yaml", "params")


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
    ("train_mlp.hidden", [100_000_000], "an MLP 784-100000000-... has 79,500,000,010 "
                                        "parameters: 888 GiB to train"),
    ("data.digits", [3], "two or more digits"),
    ("data.digits", [3, 3], "distinct"),
    ("data.digits", [3, 10], "less than or equal to 9"),
    ("data.digits", [-1, 3], "greater than or equal to 0"),
    ("data.split", "test", "'auto', 'official' or 'random'"),
    ("train_linear.init", "zeros", "'book' or 'torch'"),
    ("base.device", "tpu", "'cpu', 'cuda' or 'auto'"),
    ("data.source", "", "must be one of auto, mnist, mnist-5k or a local folder"),
    ("base.threads", 0, "must be auto or a whole number of threads, 1 or more (got 0)"),
    ("base.threads", "four", "must be auto or a whole number of threads, 1 or more"),
    ("train_cnn.batch_size", 1, "must be 2 or more: the resnet's BatchNorm layers need two"),
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


def params_text_with(tmp_path, line_from: str, line_to: str):
    """The project's params.yaml with one line replaced, loaded as a stage loads it."""
    text = (ROOT / "params.yaml").read_text()
    assert line_from in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(line_from, line_to, 1))
    return path


@pytest.mark.parametrize("spelling, expected", [
    ("010", 10),        # YAML 1.1 (PyYAML) reads octal 8; DVC, and so the stages, read 10
    ("0o10", 8), ("0x10", 16), ("1_000", 1000), ("7", 7)])
def test_seed_is_read_as_yaml_1_2_reads_it(tmp_path, spelling, expected):
    path = params_text_with(tmp_path, "seed: 42", f"seed: {spelling}")
    assert load_params(path).base.seed == expected


@pytest.mark.parametrize("spelling, expected", [
    ("1e-3", 0.001), ("5e-1", 0.5), ("1", 1.0), ("0.5", 0.5), (".5", 0.5)])
def test_learning_rate_is_read_as_yaml_1_2_reads_it(tmp_path, spelling, expected):
    path = params_text_with(tmp_path, "lr: 1.0", f"lr: {spelling}")
    assert load_params(path).train_linear.lr == expected


@pytest.mark.parametrize("spelling", ["'0.1'", '"1e-3"', "1:30", "0.1.2"])
def test_a_learning_rate_yaml_reads_as_a_string_is_a_type_error(tmp_path, spelling):
    path = params_text_with(tmp_path, "lr: 1.0", f"lr: {spelling}")
    with pytest.raises(UserError, match=r"train_linear\.lr: Input should be a valid number"):
        load_params(path)


def test_a_duplicate_key_is_an_error_naming_it(tmp_path):
    path = params_text_with(tmp_path, "seed: 42", "seed: 42\n  seed: 7")
    with pytest.raises(UserError, match=r'duplicate key "seed".*\(line 6, column 3\)'):
        load_params(path)


@pytest.mark.parametrize("text", [
    "a: 010", "a: 1e-3", "a: 0o10", "a: yes", "a: on", "a: 08", "a: 1:30", "a: ~",
    "a: [1, 2]", "a: {b: .5}", "a: 2026-01-01", "a: 0b11", "a: !!str 5"])
def test_yaml_is_parsed_exactly_as_dvc_parses_params(text):
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml
    assert parse_yaml(text, "params") == dvc_parse_yaml(text, "params.yaml")


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


def test_a_union_is_described_in_plain_words_not_pydantics():
    message = error_for(with_change("base.threads", 0))
    assert message.count("base.threads") == 1
    assert "literal" not in message and "constrained" not in message


def test_a_huge_bad_value_is_shown_cut_short(tmp_path):
    # A YAML alias bomb: a few lines that expand to hundreds of thousands of characters.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 7)]
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "\n".join(lines) + "\n")
    with pytest.raises(UserError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "a6: unknown key" in message and "characters)" in message
    assert len(message) < 200 * len(lines)  # not the 174,760 characters a6 expands to


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    # 25 levels: 8 × 4**24 values, which check_params took for ever to look at.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 25)]
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"params.yaml: its YAML aliases \(\*name\) expand to "
                                        r"over 100,000 values"):
        load_params(path)
    assert time.monotonic() - start < 5


def test_a_params_file_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes().replace(b"seed: 42", b"seed: 4\xb2"))
    with pytest.raises(UserError, match=r"params.yaml is not UTF-8 text: byte 0xb2 on line "
                                        r"\d+ \(save it as UTF-8\)"):
        load_params(path)
