"""DVC stages of the MNIST-basics pipeline; run each as `python -m stages.<name>`.

Importing this package, before any stage, tool or test imports torch, fixes which CPU kernels
torch computes with (params.yaml's base.kernels; stages/lib/infra/kernels.py says why)."""

import os

# The process that started this one, seen before anything slow (torch's import): a stage
# stops when it dies (errors.end_with_parent), also when it died before the stage was ready.
PARENT = os.getppid()

from .lib.infra.kernels import pin_for_project  # noqa: E402

pin_for_project()
