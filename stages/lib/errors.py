"""One kind of error for bad input, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix: shown as one message, without a traceback."""


def run_stage(name: str, main: Callable[[], None], kind: str = "stage") -> None:
    """Run a stage's main (or a command's: `kind`); expected user errors exit non-zero with
    one clear line.

    Anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except UserError as err:
        print(f"error in {kind} '{name}': {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
