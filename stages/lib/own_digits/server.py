"""The network side of `python -m stages.serve`: uvicorn, bound and bounded for a real network.

- `listen` binds the port before anything is printed: a port in use is one line, not a
  banner followed by uvicorn's traceback.
- `GuardedH11` is uvicorn's HTTP/1.1 protocol with a deadline for each request's line and
  headers (slow and silent clients are closed) and a cap on connections, overall and per
  client address: at a cap a connection of the address with the most is closed (the oldest
  with no request in progress, else the oldest still uploading), so the file descriptors
  never run out and a flood from a few addresses cannot lock out another.
- `OncePerCause` keeps the log bounded: each kind of message once, then a count per minute.

The limits are documented in docs/own-digits.md; the app's own (hosts, content types, body
time, queue) are in app.py.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import resource
import socket
import time
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..infra.errors import UserError

HEADER_SECONDS = 10      # a request's line and headers must arrive within this
KEEP_ALIVE_SECONDS = 5   # an idle connection between requests is closed after this
MAX_CONNECTIONS = 256    # open connections at once, all clients together
PER_CLIENT = 32          # open connections at once from one address
BACKLOG = 64             # connections accepted in one go before the caps see them
LOG_WINDOW_SECONDS = 60  # a repeated log message is counted, and said once a window


def listen(host: str, port: int) -> socket.socket:
    """The listening socket on host:port, or a UserError saying why it cannot be had."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror})") \
            from None
    except UnicodeError:  # a name part over 63 characters: no DNS name can hold it
        raise UserError(f"--host {host}: not an address of this machine (a part of the name "
                        f"is over 63 characters)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another `make serve`?); stop "
                            f"it, or choose another port: --port N (make serve PORT=N)") \
                from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"port {port}: not allowed here (ports under 1024 need root); "
                            f"choose --port 1024 or above") from None
        raise UserError(f"--host {host} --port {port}: cannot listen there "
                        f"({err.strerror or err})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def connection_caps() -> tuple[int, int]:
    """(all connections, per address) that fit in this process's file descriptors: the soft
    limit is raised to the hard one, and room is kept for what the process has open (torch's
    libraries, the checkpoints) and for a backlog's worth accepted at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    room = soft - in_use - BACKLOG - 32
    if room < 16:
        raise UserError(f"only {soft} open files are allowed (ulimit -n); serve needs "
                        f"{in_use + BACKLOG + 48} or more")
    total = min(MAX_CONNECTIONS, room)
    return total, min(PER_CLIENT, total)


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline and connection caps (set on the
    subclass `guarded` makes)."""

    max_connections = MAX_CONNECTIONS
    per_client = PER_CLIENT
    header_seconds: float = HEADER_SECONDS
    stats: "Counts"

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened = time.monotonic()
        self.received = False  # bytes of a request not yet complete
        self.half_closed = False
        self.deadline: asyncio.TimerHandle | None = None
        self._arm()
        self._keep_within_caps()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.received = True
        super().data_received(data)

    def eof_received(self) -> bool:
        """A client that has sent its whole request and closed its sending side (half-close)
        still gets the answer; otherwise the connection ends here."""
        self.half_closed = True
        return self.busy() and not self.cycle.more_body

    def on_response_complete(self) -> None:
        self._arm()  # the next request's headers are due in time too
        super().on_response_complete()
        if self.half_closed and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers arrived whole
            self.received = False
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request h11 cannot parse (a bad request line, a header
        over h11's 16 KB, a body both chunked and sized...): one JSON message, not text."""
        body = json.dumps({"error": "not a valid HTTP/1.1 request: its request line or "
                                    "headers are malformed, or past 16 KB"}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
        self.transport.close()

    def busy(self) -> bool:
        """A request is being answered on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.header_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        """No whole request line and headers in time: a 408 where part of a request came,
        else closed without a word (a browser's spare connection, a silent client)."""
        self.deadline = None
        if self.transport.is_closing() or self.busy():
            return
        if self.received and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = (b'{"error": "the request\'s headers did not arrive within '
                    + str(self.header_seconds).encode() + b' s"}')
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: "
                                 b"application/json\r\nConnection: close\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.stats.add("closed a connection whose request's headers did not arrive within "
                       f"{self.header_seconds:g} s")
        self.transport.close()

    def _keep_within_caps(self) -> None:
        """Past a cap, one connection goes: at the per-address cap one of this address's
        own; at the overall cap one of the address with the most, if it has more than this
        one's. The oldest with no request in progress goes first, then the oldest still
        sending its body (a slow upload); if every one is being answered, this one goes."""
        others = [c for c in self.connections if c is not self and isinstance(c, GuardedH11)
                  and not c.transport.is_closing()]
        counts = Counter(c.address() for c in others)
        mine = self.address()
        if counts[mine] >= self.per_client:
            pool, why = mine, f"the cap of {self.per_client} connections from one address"
        elif len(others) >= self.max_connections:
            top, most = counts.most_common(1)[0]
            pool = top if most > counts[mine] + 1 else mine
            why = f"the cap of {self.max_connections} connections"
        else:
            return
        candidates = sorted((c for c in others if c.address() == pool),
                            key=lambda c: (c.busy(), not c.uploading(), c.opened))
        victim = candidates[0] if candidates and not (
            candidates[0].busy() and not candidates[0].uploading()) else self
        self.stats.add(f"closed a connection at {why}")
        victim._disarm()
        victim.transport.close()

    def address(self) -> str:
        return self.client[0] if self.client else ""

    def uploading(self) -> bool:
        """Its request's body is still arriving."""
        return self.busy() and self.cycle.more_body


def guarded(max_connections: int, per_client: int, stats: "Counts",
            header_seconds: float = HEADER_SECONDS) -> type[GuardedH11]:
    return type("GuardedH11", (GuardedH11,), {
        "max_connections": max_connections, "per_client": per_client, "stats": stats,
        "header_seconds": header_seconds})


class Counts:
    """What the server closed or refused, by cause, said in the log once per cause and then
    as a count once a window (not a line per event)."""

    def __init__(self, log: logging.Logger, window: float = LOG_WINDOW_SECONDS):
        self.log, self.window = log, window
        self.seen: dict[str, tuple[float, int]] = {}  # cause: (when last said, count since)

    def add(self, cause: str, say: bool = True) -> bool:
        """Count one event; True when it is the first of its cause (said, where `say`)."""
        now = time.monotonic()
        said, count = self.seen.get(cause, (None, 0))
        if said is None:
            if say:
                self.log.warning("serve: %s", cause)
            self.seen[cause] = (now, 0)
            return True
        if now - said >= self.window:
            self.log.warning("serve: %s (%d times in the last %d s)", cause.rstrip("."),
                             count + 1, round(now - said))
            self.seen[cause] = (now, 0)
        else:
            self.seen[cause] = (said, count + 1)
        return False


class OncePerCause(logging.Filter):
    """uvicorn's and asyncio's own messages (an invalid request, a refused accept, an error
    in the app) as they come the first time, traceback and all; after that counted by
    cause, and said as a count once a window."""

    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def filter(self, record: logging.LogRecord) -> bool:
        return self.counts.add(str(record.msg), say=False)


def quiet_logs(counts: Counts) -> None:
    """Every library's log through OncePerCause: uvicorn's (its own handler) and, through
    one handler on the root logger, the rest (asyncio's, python-multipart's...)."""
    logging.getLogger("uvicorn.error").addFilter(OncePerCause(counts))
    handler = logging.StreamHandler()
    handler.addFilter(OncePerCause(counts))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
