"""One kind of error for bad input, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix: shown as one message, without a traceback."""


class Terminated(BaseException):
    """SIGTERM (`timeout`, a cancelled CI job, `kill`): unwinds like Ctrl-C's
    KeyboardInterrupt, so every temp file and folder is removed on the way out."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_stage(name: str, main: Callable[[], None], kind: str = "stage") -> None:
    """Run a stage's main (or a command's: `kind`); expected user errors exit non-zero with
    one clear line; Ctrl-C and SIGTERM leave the outputs as they were, and no temp files.

    Anything else is a bug and keeps its traceback.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        main()
    except UserError as err:
        print(f"error in {kind} '{name}': {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except (KeyboardInterrupt, Terminated) as err:
        signum = signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM
        print(f"{kind} '{name}' stopped by {signal.Signals(signum).name}; no output was "
              "half-written and no temp file is left", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
