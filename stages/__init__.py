"""DVC stages of the MNIST-basics pipeline; run each as `python -m stages.<name>`.

Importing this package, before any stage, tool or test imports torch, fixes which CPU kernels
torch computes with (params.yaml's base.kernels; stages/lib/infra/kernels.py says why)."""

from .lib.infra.kernels import pin_for_project

pin_for_project()
