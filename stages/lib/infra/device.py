"""The device the training stages run on: base.device against what torch sees."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, or for `auto` cuda when torch sees a GPU; `cuda` without one is a
    UserError (check_params asks before any stage deletes an output)."""
    import torch  # here: check_params imports this module, and needs torch only for cuda

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("base.device: cuda asked for, but torch sees no CUDA GPU; "
                        "use cpu or auto")
    return torch.device(name)
