"""The README's "What happens when..." table names a test for each row: each must exist."""

from __future__ import annotations

import re

from tests.helpers import ROOT


def test_every_test_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text()
    named = sorted(set(re.findall(r"`(test_\w+\.py)::(\w+)`", readme)))
    assert len(named) > 60
    missing = [f"{file}::{test}" for file, test in named
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(),
                                re.MULTILINE)]
    assert missing == []
