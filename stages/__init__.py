"""DVC stages of the MNIST-basics pipeline; run each as `python -m stages.<name>`.

Importing this package, before any stage, tool or test imports torch, fixes which CPU kernels
torch computes with (params.yaml's base.kernels; stages/lib/infra/kernels.py says why)."""

import importlib.util
import os
import sys

# Run outside the project's venv, a stage would end in a ModuleNotFoundError traceback deep in
# its imports; one line says where the packages are instead (find_spec imports nothing).
_missing = [name for name in ("torch", "psutil", "ruamel.yaml", "pydantic")
            if importlib.util.find_spec(name.split(".")[0]) is None]
if _missing:
    sys.exit(f"this Python ({sys.executable}) lacks the project's packages "
             f"({', '.join(_missing)}): run it in the project's venv, `. .venv/bin/activate` "
             f"(`make setup` builds it), or `pip install -r requirements.txt`")

# The process that started this one, seen before anything slow (torch's import): a stage
# stops when it dies (errors.end_with_parent), also when it died before the stage was ready.
PARENT = os.getppid()

from .lib.infra.kernels import pin_for_project  # noqa: E402

pin_for_project()
