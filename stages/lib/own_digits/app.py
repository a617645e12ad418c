"""The draw-a-digit web app (`python -m stages.serve`): one hand-written page and a JSON API,
answering with the same preparation and checkpoints as `python -m stages.predict`.

GET /               the page (page/index.html, page/app.js, page/style.css, all served here:
                    nothing is fetched from another host)
GET /api/models     the models served: checkpoint, fingerprint, digits, what each can answer,
                    and the accuracy metrics/<name>.json gives for that very checkpoint
                    (none, and why, where the file does not hold the scores the checkpoint
                    records); and each model that cannot answer now, with why
POST /api/predict   an image as a multipart file (field `image`) or JSON {"image": "data:
                    image/png;base64,..."}: per model the digit, its probability and every
                    digit's probability (the baseline: its distance to each digit's mean
                    image; the shape of `predict --json`), the 28×28 image the models saw as
                    a PNG data URL, and `unavailable`: each served model that could not
                    answer, with why. `?why=1`: each answer with its why (own_digits/why.py)

Every answer that is not a 200 is JSON {"error": "..."} (docs/own-digits.md lists them): 400 for
a request that cannot be read (an empty body, a non-image, a blank drawing, malformed JSON
or multipart), 403 for a Host or Origin that is not this server's own, 404/405, 408 for a
body that does not arrive in time, 413 past MAX_BYTES or MAX_DECODED pixels, 414/431 for a
path or headers past their bounds, 415 for a content type the API does not take, 503 with
Retry-After when the queue is full, and 503 when no model can answer (each named, with why).

One request is answered at a time, in arrival order, on one worker thread (torch's threads
are not shared between requests, and one thread's memory arena serves every decode). At
most UPLOADS bodies are read at once and QUEUED requests wait for the models, a few of each
from one address, so one client's flood holds neither the memory nor another's drawing for
more than a few answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..infra.errors import UserError
from .classify import ServedModels, answer_range, as_json, classify, recorded_accuracy
from .prepare import SERVED_FORMATS, TooLarge, read_digit
from .why import explain, png_data_url

MAX_BYTES = 10 * 1024 * 1024  # an upload: a phone photo is 2-8 MB
DRAIN_BYTES = 4 * MAX_BYTES
BODY_SECONDS = 30             # a body must arrive whole within this of its headers
QUEUED = 16                   # requests waiting for the models, all clients together
PER_CLIENT_QUEUED = 4         # of which from one address
UPLOADS = 32                  # bodies being read at once (at most 320 MB held) ...
PER_CLIENT_UPLOADS = 4        # ... of which from one address
RETRY_SECONDS = 1
MAX_NAME = 255                # an uploaded file's name, as file systems allow
MAX_HEADERS = 100             # header fields in a request; a browser sends about 15
MAX_HEADER_BYTES = 16 * 1024  # all of them together (h11's own limit while they arrive)
MAX_TARGET = 2048             # the path and query: this server's are a few bytes
PAGE_DIR = Path(__file__).with_name("page")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
DRAWING = "drawing"  # the name an image sent as a data URL gets in answers and errors
ACCEPTED = ("multipart/form-data", "application/json")
USAGE = ("an image file (multipart field `image`) or JSON "
         "{\"image\": \"data:image/png;base64,...\"}")


class Refused(Exception):
    """A request answered with a 4xx or 503 and one JSON message."""

    def __init__(self, status: int, message: str, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.headers, self.extra = status, headers or {}, extra or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self), **self.extra}, status_code=self.status,
                            headers=self.headers)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return Refused(status, message, headers).response()


# --- who may ask: this server's own Host and origin ------------------------------------------

class LocalOnly:
    """Refuses (403, JSON) a request whose Host is not a name this server was started on,
    or that a page of another origin sent: a DNS-rebinding page names its own host, and a
    cross-site form or fetch carries its Origin (or Sec-Fetch-Site: cross-site)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str], port: int, any_ip: bool = False):
        self.app, self.hosts, self.port, self.any_ip = app, hosts, port, any_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem:
                await error(*problem, headers={"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, scope: Scope) -> tuple[int, str] | None:
        names = ", ".join(sorted(self.hosts))
        raw = scope["headers"]
        size = sum(len(k) + len(v) for k, v in raw)
        if len(raw) > MAX_HEADERS or size > MAX_HEADER_BYTES:
            return 431, (f"the request's headers are too large ({len(raw)} fields, {size:,} "
                         f"bytes; at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES:,} bytes)")
        target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        if target > MAX_TARGET:
            return 414, (f"the request's path and query are {target:,} bytes long (at most "
                         f"{MAX_TARGET:,})")
        headers = Headers(scope=scope)
        given = headers.getlist("host")
        if not given:
            return 400, f"the request has no Host header (this server answers to {names})"
        if len(given) > 1:
            return 400, "the request has more than one Host header"
        host = given[0]
        parsed = split_host(host)
        if parsed is None or not self.allowed(*parsed):
            return 403, (f"Host {host[:100]!r} is not this server: it answers to {names} on "
                         f"port {self.port}")
        for origin in headers.getlist("origin"):
            if origin.lower() != f"http://{host.lower()}":
                return 403, (f"a page from another origin ({origin[:100]}) cannot use this "
                             f"server; open http://{host} itself")
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "a page from another site cannot use this server"
        return None

    def allowed(self, name: str, port: int | None) -> bool:
        if (port or 80) != self.port:  # a browser names the port unless it is 80
            return False
        if name.lower() in self.hosts:
            return True
        return self.any_ip and is_ip(name)


def split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header ("[::1]" keeps its brackets), or None if malformed."""
    name, port = value.strip(), None
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return None
        name, rest = name[:end + 1], name[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, _, port_text = name.partition(":")
        port_text = port_text if ":" in value else None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and not port_text.startswith("0")
                and int(port_text) < 65536):
            return None
        port = int(port_text)
    return (name, port) if name else None


def is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


# --- reading a request ------------------------------------------------------------------------

async def read_body(request: Request, upload: Upload | None = None) -> bytes:
    """The request's body, refused (413) once it passes MAX_BYTES, or (408) when it has not
    arrived whole within BODY_SECONDS (or 503 when `upload` is stopped to make room). What is
    past the limit is read and dropped (up to DRAIN_BYTES), so that the client, still
    sending, gets the 413 rather than a reset connection; a larger body is cut off."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > DRAIN_BYTES:
        raise Refused(413, f"the upload is over the limit of {MAX_BYTES:,} bytes",
                      {"Connection": "close"})
    body, seen = bytearray(), 0
    try:
        async with asyncio.timeout(BODY_SECONDS) as deadline:
            if upload is not None:
                upload.started(deadline)
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= MAX_BYTES:
                    body += chunk
                elif seen > DRAIN_BYTES:
                    break
    except TimeoutError:
        if upload is not None and upload.evicted:
            raise Refused(503, "stopped to make room for another client's upload (the oldest "
                               "still arriving, from the address with the most); send it "
                               "again", {"Retry-After": str(RETRY_SECONDS),
                                         "Connection": "close"}) from None
        raise Refused(408, f"the request's body did not arrive within {BODY_SECONDS} s",
                      {"Connection": "close"}) from None
    if seen > MAX_BYTES:
        raise Refused(413, f"the upload is over the limit of {MAX_BYTES:,} bytes",
                      {"Connection": "close"})
    return bytes(body)


class InMemoryMultiPart(MultiPartParser):
    spool_max_size = MAX_BYTES  # the upload stays in memory: no temporary file to leave


async def image_of(request: Request, upload: Upload | None = None) -> tuple[str, bytes]:
    """(name, bytes) of the image a request carries: a multipart file or a data URL."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ACCEPTED:
        raise Refused(415, f"content type {kind or '(none)'!r} is not taken here: send {USAGE}")
    body = await read_body(request, upload)
    if not body:
        raise Refused(400, f"the request is empty: send {USAGE}")
    if kind == "multipart/form-data":
        return await uploaded_file(request.headers, body)
    return DRAWING, data_url_image(body)


async def uploaded_file(headers: Headers, body: bytes) -> tuple[str, bytes]:
    async def once():
        yield body

    try:
        form = await InMemoryMultiPart(headers, once(), max_files=1, max_fields=4,
                                       max_part_size=64 * 1024).parse()
    except MultiPartException as err:
        raise Refused(400, f"malformed multipart form: {err.message} (send {USAGE})") from None
    except Exception as err:  # noqa: BLE001 - the parser raises KeyError, ValueError... for a bad body
        raise Refused(400, f"malformed multipart form ({type(err).__name__}): send {USAGE}") \
            from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise Refused(400, "the form has no file in field `image`")
        name = upload.filename or "upload"
        if len(name) > MAX_NAME:
            raise Refused(400, f"the file's name is {len(name):,} characters long (at most "
                               f"{MAX_NAME})")
        data = await upload.read()
        if not data:
            raise Refused(400, f"{name}: the file is empty")
        return name, data
    finally:
        await form.close()


def data_url_image(body: bytes) -> bytes:
    try:
        url = json.loads(body)["image"]
        header, encoded = url.split(",", 1)
        if not header.startswith("data:image/"):
            raise ValueError(header)
        return base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise Refused(400, f"expected {USAGE}") from None


# --- answering ----------------------------------------------------------------------------

def models_json(served: ServedModels) -> dict:
    classifiers, problems = served.current()
    models = []
    for c in classifiers:
        accuracy, problem = recorded_accuracy(c)
        models.append({"name": c.name, "checkpoint": str(c.path), "fingerprint": c.fingerprint,
                       "kind": c.kind, "digits": c.digits, "answers": answer_range([c])[0],
                       "accuracy": accuracy, "accuracy_problem": problem})
    return {"models": models, "unavailable": served.unavailable(problems)}


def none_can_answer(served: ServedModels, problems: dict[str, str]) -> Refused:
    missing = served.unavailable(problems)
    listing = "; ".join(f"{m['name']}: {m['error']}" for m in missing)
    return Refused(503, f"no model can answer ({listing})", extra={"unavailable": missing})


def answer(served: ServedModels, name: str, data: bytes, why: bool = False) -> dict:
    """Prepare one image and ask every model that can answer (with `why`, each answer with
    its why: own_digits/why.py); each other one is named in `unavailable` with why (a
    missing, rewritten or broken checkpoint is the server's problem, not the client's)."""
    classifiers, problems = served.current()
    if not classifiers:
        raise none_can_answer(served, problems)
    pixels = read_digit(name, data, SERVED_FORMATS)
    answers, answered = {}, []
    for classifier in classifiers:
        try:
            answers[classifier.name] = classify(classifier, pixels[None])[0]
            if why:
                answers[classifier.name]["why"] = explain(classifier, pixels,
                                                          answers[classifier.name])
            answered.append(classifier)
        except UserError as err:  # NaN or infinite outputs: the checkpoint is broken
            problems[classifier.name] = str(err)
    if not answered:
        raise none_can_answer(served, problems)
    return {**as_json(answered, [{"file": name, "predictions": answers}], {}),
            "prepared": png_data_url(pixels), "unavailable": served.unavailable(problems)}


def why_asked(request: Request) -> bool:
    """`?why=1`: each answer with its why (pictures and a sentence, 30-40 ms more for the CNN
    on a 2-core CPU); `?why=0` or none: the answers alone."""
    values = request.query_params.getlist("why")
    if values not in ([], ["0"], ["1"]):
        shown = ", ".join(repr(v[:20]) for v in values[:3])
        raise Refused(400, f"?why={shown}: expected one why, 0 or 1")
    return values == ["1"]


class Slots:
    """At most `total` requests at a stage (their bodies being read, or waiting for the
    models), `per_client` of them from one address; past either, 503 with Retry-After."""

    def __init__(self, total: int, per_client: int, what: str, close: bool = False):
        self.total, self.per_client, self.what = total, per_client, what
        self.taken: dict[str, int] = {}
        # Refused before its body is read, a request's connection cannot carry another.
        self.headers = {"Retry-After": str(RETRY_SECONDS),
                        **({"Connection": "close"} if close else {})}

    def admit(self, client: str) -> None:
        if sum(self.taken.values()) >= self.total:
            raise Refused(503, f"busy: {self.total} {self.what} already; try again in "
                               f"{RETRY_SECONDS} s", self.headers)
        if self.taken.get(client, 0) >= self.per_client:
            raise Refused(503, f"busy: {self.per_client} of your {self.what} already; send "
                               f"the next when one is answered", self.headers)
        self.taken[client] = self.taken.get(client, 0) + 1

    def leave(self, client: str) -> None:
        self.taken[client] -= 1
        if not self.taken[client]:
            del self.taken[client]

    @contextlib.contextmanager
    def held(self, client: str):
        self.admit(client)
        try:
            yield
        finally:
            self.leave(client)


class Upload:
    """A body being read, whose deadline can be brought forward to make room for another."""

    def __init__(self, client: str):
        self.client, self.deadline, self.evicted = client, None, False

    def started(self, deadline: asyncio.Timeout) -> None:
        self.deadline = deadline
        if self.evicted:
            deadline.reschedule(asyncio.get_running_loop().time())

    def evict(self) -> None:
        self.evicted = True
        if self.deadline is not None:
            self.deadline.reschedule(asyncio.get_running_loop().time())


class Uploads(Slots):
    """Slots for bodies being read. When all are taken, the oldest upload of the address
    holding the most (more than the newcomer's address, by two or more) is stopped (503) and
    its slot given to the newcomer: slow uploads from a few addresses cannot lock out
    another's drawing."""

    def __init__(self, total: int, per_client: int):
        super().__init__(total, per_client, "uploads being read", close=True)
        self.reading: list[Upload] = []

    @contextlib.contextmanager
    def held(self, client: str):
        self.make_room(client)
        self.admit(client)
        upload = Upload(client)
        self.reading.append(upload)
        try:
            yield upload
        finally:
            self.reading.remove(upload)
            if not upload.evicted:  # an evicted upload's slot was given away already
                self.leave(client)

    def make_room(self, client: str) -> None:
        if sum(self.taken.values()) < self.total:
            return
        counts = Counter(self.taken)
        top, most = counts.most_common(1)[0]
        if most < counts[client] + 2:
            return  # the newcomer's address holds as many as any: it waits its turn
        oldest = next((u for u in self.reading if u.client == top and not u.evicted), None)
        if oldest is not None:
            oldest.evict()
            self.leave(top)


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def release_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise), so a large upload's
    decode does not stay in the server's size."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None
if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):
    _LIBC = None


def models_thread() -> ThreadPoolExecutor:
    """The one thread that loads the models and answers with them. torch's OpenMP threads
    answer the first thread that gives them work at once; once a second one does (the main
    thread loading the models, then this one answering), libgomp counts more threads than
    cores and its threads sleep between operations: 0.1 ms to wake for each, 10 ms of the
    CNN's 40 ms answer with its why on a 2-core CPU (docs/own-digits.md)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="models")


def make_app(served: ServedModels, hosts: frozenset[str] = frozenset(
        {"127.0.0.1", "localhost", "[::1]"}), port: int = 8000, any_ip: bool = False,
        counts=None, worker: ThreadPoolExecutor | None = None) -> ASGIApp:
    """The app; `worker`: the thread that loaded `served` (models_thread), to answer on."""
    assets = {route: ((PAGE_DIR / name).read_bytes(), kind)
              for route, (name, kind) in ASSETS.items()}  # read once: nothing else is read
    worker = worker or models_thread()
    uploads = Uploads(UPLOADS, PER_CLIENT_UPLOADS)
    queue = Slots(QUEUED, PER_CLIENT_QUEUED, "requests waiting for the models")
    turn = asyncio.Lock()  # asyncio's lock wakes its waiters first come, first served

    def asset(request: Request) -> Response:
        content, kind = assets[request.url.path]
        return Response(content, media_type=kind, headers={"Cache-Control": "no-cache"})

    async def in_turn(request: Request, work, *args):
        with queue.held(client_of(request)):
            async with turn:
                return await asyncio.get_running_loop().run_in_executor(worker, work, *args)

    async def list_models(request: Request) -> Response:
        try:
            return JSONResponse(await in_turn(request, models_json, served))
        except Refused as err:
            return err.response()

    def predict_one(name: str, data: bytes, why: bool) -> dict:
        try:
            return answer(served, name, data, why)
        finally:
            if len(data) > 1024 * 1024:
                release_memory()

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            why = why_asked(request)
            with uploads.held(client_of(request)) as upload:  # before the body is read
                name, data = await image_of(request, upload)
            result = await in_turn(request, predict_one, name, data, why)
        except Refused as err:
            return err.response()
        except TooLarge as err:
            return error(413, str(err))
        except UserError as err:  # not an image, blank: predict's own words
            return error(400, str(err))
        except ClientDisconnect:
            if counts is not None:
                counts.add("a client closed its connection before its upload was complete")
            return Response(status_code=400)  # never sent: the client is gone
        ms = (time.perf_counter() - start) * 1000
        return JSONResponse(result, headers={"Server-Timing": f"predict;dur={ms:.1f}"})

    async def server_error(request: Request, exc: Exception) -> Response:
        # A bug of the server's, not the client's (uvicorn logs its traceback, once per cause).
        return error(500, f"the server failed ({type(exc).__name__}); see its log")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        path = quote(request.url.path[:100], safe="/")  # as sent: a NUL stays %00
        message = {404: f"no such page: {path} (the page is /, the API /api/models and "
                        f"/api/predict)",
                   405: f"{request.method[:20]} is not allowed on {path}"}
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                     dict(exc.headers or {}))

    routes = [Route(path, asset) for path in ASSETS]
    routes += [Route("/api/models", list_models), Route("/api/predict", predict,
                                                       methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error,
                                                       Exception: server_error})
    return LocalOnly(app, hosts, port, any_ip)
