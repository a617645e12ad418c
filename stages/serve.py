"""`python -m stages.serve [--port N] [--host H] [--model NAME|PATH ...]` (`make serve`): a
local web page to draw a digit on, and a JSON API, answered by the trained models.

The page and the API use predict's own preparation and checkpoints
(stages/lib/own_digits/app.py): the same image gets the same answers through
`python -m stages.predict`, the API and the page. By default the models in models/; a
checkpoint that `dvc repro` rewrites answers the next request. Binds to 127.0.0.1 unless
--host says otherwise. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys

from stages.lib.infra.errors import run_stage
from stages.lib.learning.models import TRAINED
from stages.lib.own_digits.app import make_app
from stages.lib.own_digits.classify import ServedModels


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.serve",
                                     description="Draw a digit in your browser; every trained "
                                                 "model answers.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--model", action="append", metavar="NAME|PATH",
                        help=f"{', '.join(TRAINED)} or a checkpoint file; repeat for several "
                             f"(default: every model in models/)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1 to 65535")
    return args


def main(argv: list[str]) -> None:
    import uvicorn

    args = parse_args(argv)
    served = ServedModels(args.model)
    served.current()  # a missing or foreign checkpoint is one message now, not per request
    print(f"serve: draw a digit at http://{args.host}:{args.port}  (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    uvicorn.run(make_app(served), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_stage("serve", lambda: main(sys.argv[1:]), kind="command")
