"""The commands README.md and docs/ show, run as a reader runs them: each line of each
```bash block is either run here, in a copy of a project the pipeline has run (the cheap
ones), or named below with the test that covers it instead. A new line in the docs fails
until it is one or the other, and a command that fails or prints a traceback fails."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import DVC, ROOT, env_with, git

pytestmark = pytest.mark.pipeline

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Run in a copy of the book's project, in this order (a reader's first experiment, then
# going back): each must exit 0 and print no traceback.
RUN = [
    "dvc exp run -S train_mlp.lr=0.5",
    "dvc exp show --md --only-changed",
    "dvc metrics diff --md",
    "dvc params diff --md",
    "dvc plots show",
    "dvc plots diff -o plots_html",
    "make reset",
    "python -m stages.predict my_digit.jpg",
    "python -m stages.lr_find train_mlp",
]
# Not run here, and why: what runs them instead.
COVERED = {
    ". .venv/bin/activate": "the tests' PATH holds the venv",
    "make run": "test_summary.py::test_make_run_ends_with_the_summary_and_make_metrics_prints_it",
    "make test": "CI (.ci/run)",
    "make serve": "test_serve.py (a real server and browser)",
    "curl ": "test_serve.py::test_the_api_answers_as_predict_does",
    "MNIST_MIRRORS=/path/to/mnist": "a placeholder path; test_sources.py fetches from mirrors",
    "dvc exp run --queue": "test_threads.py (the seed study queues experiments)",
    "dvc queue ": "test_threads.py",
    "python -m stages.seed_study": "test_threads.py",
    "python -m stages.finale": "test_finale.py::test_the_finale_runs_through_the_pipeline",
    "python -m bench.finale": "fastai's resnet34 for 4 epochs on 48,000 images: too long "
                              "for a test (docs/cnn.md has its run)",
    "dvc exp remove seed-": "test_threads.py",
    "dvc exp apply <NAME>": "a placeholder name",
    "dvc exp run -S 'data.digits=": "test_pipeline.py and make bench (the ten digits)",
    "-S ": "continues the command above",
    "dvc remote add": "a placeholder path",
    "git add .dvc/config": "after the placeholder remote",
    "dvc push": "needs the remote above",
    "dvc pull": "needs the remote above",
    "gto register": "tags a commit of the reader's repository",
    "git push origin": "needs the reader's remote",
    "dvc artifacts get": "a placeholder URL",
    "python -m stages.predict my_digit.jpg --model cnn.pt": "needs the fetched cnn.pt above",
    "python -c \"import dvc.api": "needs the registered artifact above",
    "qemu-x86_64": "apt's qemu-user; docs/performance.md gives its result",
    ". .venv/bin/activate && mirror=": "two clones and two full runs (docs/performance.md)",
    "git clone -q . /tmp/old": "the same check",
    "for v in old new": "the same check",
    "python - <<'EOF'": "the same check",
    "pip install -r requirements.txt": "make setup, which CI runs",
    "dvc repro": "test_pipeline.py",
    "pytest": "CI",
}
# docs/what-happens-when.md's reproduction of DVC's stale index, run whole in a new folder.
REPRODUCTION = "git init -q && dvc init -q"


def commands(page: Path) -> list[str]:
    """Each command line of the page's ```bash blocks: comments dropped, continued lines
    joined; the lines of a heredoc (python - <<'EOF' ... EOF) are the command's."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        text = block.replace("\\\n", " ")
        text = re.sub(r"<<'EOF'\n.*?\nEOF", "<<'EOF'", text, flags=re.S)
        for line in text.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def covered(line: str) -> bool:
    return any(line.startswith(prefix) for prefix in COVERED)


def run_here(line: str) -> bool:
    return not covered(line) and any(line == command or line.startswith(command + " ")
                                     for command in RUN)


def test_every_command_the_docs_show_is_run_or_covered():
    unknown = [f"{page.name}: {line}" for page in PAGES for line in commands(page)
               if not (run_here(line) or covered(line) or line.startswith(REPRODUCTION))
               and not _in_reproduction(line)]
    assert unknown == [], "a command the docs show is neither run nor covered here"


def _in_reproduction(line: str) -> bool:
    text = (ROOT / "docs" / "what-happens-when.md").read_text()
    block = text[text.index(REPRODUCTION):].split("```")[0]
    return line in [re.sub(r"\s+#\s.*$", "", ln).strip() for ln in block.splitlines()]


def shell(project: Path, line: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = env_with(PATH=f"{Path(DVC).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", line], cwd=project, capture_output=True, text=True,
                          env=env, timeout=timeout)


def with_make(project: Path) -> Path:
    """The project as a clone has it for `make`: the Makefile, and this checkout's venv."""
    for name in ("Makefile", "requirements.txt"):
        shutil.copy2(ROOT / name, project / name)
    (project / ".venv").symlink_to(ROOT / ".venv")
    git(project, "add", "Makefile", "requirements.txt")
    git(project, "commit", "-qm", "make")
    return project


def test_the_cheap_commands_run_as_the_docs_show(book_copy, shared_mnist):
    with_make(book_copy)
    images = gzip.open(shared_mnist / "t10k-images-idx3-ubyte.gz").read()
    seven = np.frombuffer(images[16:16 + 784], np.uint8).reshape(28, 28)  # MNIST's first
    Image.fromarray(255 - np.kron(seven, np.ones((6, 6), np.uint8))).convert("RGB").save(
        book_copy / "my_digit.jpg")
    shown = {line for page in PAGES for line in commands(page) if run_here(line)}
    ran = []
    for command in RUN:
        for line in sorted(line for line in shown if line == command
                           or line.startswith(command + " ")):
            result = shell(book_copy, line)
            output = result.stdout + result.stderr
            assert result.returncode == 0 and "Traceback" not in output, f"{line}:\n{output}"
            ran.append(line)
    assert len(ran) >= len(RUN), ran  # each command is still in the docs
    assert "7" in shell(book_copy, "python -m stages.predict my_digit.jpg").stdout


def test_the_stale_index_reproduction_runs_as_the_docs_say(tmp_path):
    text = (ROOT / "docs" / "what-happens-when.md").read_text()
    block = text[text.index(REPRODUCTION):].split("```")[0]
    result = shell(tmp_path, block, timeout=120)  # line by line, as pasted: the second run fails
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "dvc.lock differs from HEAD"
