"""`python -m stages.serve [--port N] [--host H] [--model NAME|PATH ...]` (`make serve`): a
local web page to draw a digit on, and a JSON API, answered by the trained models.

The page and the API use predict's own preparation and checkpoints
(stages/lib/own_digits/app.py): the same image gets the same answers through
`python -m stages.predict`, the API and the page. By default the models in models/; a
checkpoint that `dvc repro` rewrites answers the next request. Binds to 127.0.0.1 unless
--host says otherwise, and answers only requests that name this server as their Host and
come from its own page (stages/lib/own_digits/app.py); connections, waiting requests and
uploads are bounded (stages/lib/own_digits/server.py; docs/own-digits.md lists the limits).
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys

from stages.lib.infra.errors import run_stage
from stages.lib.own_digits.app import make_app, models_thread
from stages.lib.own_digits.classify import ANSWERING, ServedModels


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.serve",
                                     description="Draw a digit in your browser; every trained "
                                                 "model answers.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--model", action="append", metavar="NAME|PATH",
                        help=f"{', '.join(ANSWERING)} or a checkpoint file; repeat for several "
                             f"(default: every model in models/)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1 to 65535")
    return args


def allowed_hosts(host: str) -> tuple[frozenset[str], bool]:
    """The Host names the server answers to, and whether any IP address is one: always the
    loopback names; the address --host names; for a wildcard (0.0.0.0, ::) also this
    machine's own names and any address (a page can rebind a name to this machine, never
    an address)."""
    import socket

    names = {"127.0.0.1", "localhost", "[::1]"}
    bare = host.strip("[]").lower()
    names.add(f"[{bare}]" if ":" in bare else bare)
    wildcard = bare in ("0.0.0.0", "::", "")
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names), wildcard


def main(argv: list[str]) -> None:
    import logging

    import uvicorn

    from stages.lib.own_digits.server import (BACKLOG, KEEP_ALIVE_SECONDS, Counts,
                                              connection_caps,
                                              guarded, is_loopback, listen, quiet_logs)

    args = parse_args(argv)
    served = ServedModels(args.model)
    worker = models_thread()  # loads the models, then answers with them: one thread for torch
    # a missing or foreign checkpoint: one message now
    worker.submit(served.start, bool(args.model)).result()
    sock = listen(args.host, args.port)   # a port in use: one message, before any banner
    total, per_client = connection_caps()
    log = logging.getLogger("stages.serve")
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.propagate = False
    counts = Counts(log)
    quiet_logs(counts)
    hosts, any_ip = allowed_hosts(args.host)
    bare = args.host.strip("[]")
    url_host = f"[{bare}]" if ":" in bare else bare
    print(f"serve: draw a digit at http://{url_host}:{args.port}  (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    if not is_loopback(args.host):
        print(f"serve: listening on {args.host}: anyone who can reach this port can use the "
              f"page and the API; there is no authentication", file=sys.stderr, flush=True)
    config = uvicorn.Config(make_app(served, hosts, args.port, any_ip, counts, worker),
                            http=guarded(total, per_client, counts), log_level="warning",
                            timeout_keep_alive=KEEP_ALIVE_SECONDS, server_header=False,
                            timeout_graceful_shutdown=3, lifespan="off", backlog=BACKLOG,
                            ws="none")  # no WebSocket routes: an upgrade is plain HTTP
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C, uvicorn's shutdown done: how a server is stopped
        pass


if __name__ == "__main__":
    run_stage("serve", lambda: main(sys.argv[1:]), kind="command")
