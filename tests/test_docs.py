"""The README and docs/ stay true: short, every link resolving, every test they name real,
the ten-digit command the one the tests and the bench run, nothing outside the repository."""

from __future__ import annotations

import re
import shlex
import subprocess

from ruamel.yaml import YAML

from stages.lib.infra.experiments import TEN_DIGITS, TEN_DIGITS_FLOORS
from tests.helpers import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page) -> set[str]:
    """The #fragments GitHub gives the page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_fits_on_a_few_screens():
    assert len(README.read_bytes()) <= 12_000
    quick_start = README.read_text().split("## Quick start")[1].split("```bash")[1].split("```")[0]
    assert [line.split("#")[0].strip() for line in quick_start.strip().splitlines()] == [
        "make run", "make test"]


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.is_relative_to(ROOT) or not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and fragment not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    # The one path outside: where CI and the tests find real MNIST, beside the checkout.
    pointing = [name for name in tracked
                if name.endswith((".py", ".md", ".yaml", ".ini", "Makefile"))
                and (ROOT / name).is_file()
                and re.search(r"DESIGN\.md|REFERENCE\.md|\.\./shared/(?!mnist)",
                              (ROOT / name).read_text())]
    assert pointing == []


def test_every_test_the_docs_name_exists():
    named = sorted({found for page in PAGES for found in re.findall(
        r"`(test_\w+\.py)::(\w+)(?:\[([\w-]+)\])?`", page.read_text())})
    assert len(named) > 60
    missing = [f"{file}::{test}[{case}]" for file, test, case in named
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(),
                                re.MULTILINE)
               or case and f'"{case}":' not in (ROOT / "tests" / file).read_text()]
    assert missing == []


def test_the_ten_digit_command_is_the_settings_the_tests_and_bench_run():
    page = (ROOT / "docs" / "experiments.md").read_text()
    section = page.split("## All ten digits")[1]
    block = section.split("```bash")[1].split("```")[0].replace("\\\n", " ")
    words = shlex.split(block)
    assert words[:3] == ["dvc", "exp", "run"]
    settings = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-S")
    yaml = YAML(typ="safe")
    assert {key: yaml.load(value) for key, value in settings.items()} == TEN_DIGITS
    for name, floor in TEN_DIGITS_FLOORS.items():  # the accuracies `make bench` enforces
        assert f"{floor}" in section.split("```")[0], name
