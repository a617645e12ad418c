"""The draw-a-digit web app (`python -m stages.serve`): one hand-written page and a JSON API,
answering with the same preparation and checkpoints as `python -m stages.predict`.

GET /               the page (page/index.html, page/app.js, page/style.css, all served here:
                    nothing is fetched from another host)
GET /api/models     the models served: checkpoint, fingerprint, digits, what each can answer,
                    and the accuracy metrics/<name>.json gives for that very checkpoint
POST /api/predict   an image as a multipart file (field `image`) or JSON {"image": "data:
                    image/png;base64,..."}: per model the digit, its probability and every
                    digit's probability (the shape of `predict --json`), and the 28×28 image
                    the models saw, as a PNG data URL

Bad input gets a 4xx with {"error": "..."} in predict's words: 413 past MAX_BYTES or
Pillow's pixel limit, 400 for an empty body, a non-image or a blank drawing; 503 when no
checkpoint can be loaded. Classification runs one request at a time (a lock), so a burst of
requests queues instead of sharing torch's threads.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..infra.errors import UserError
from .classify import ServedModels, answer_range, as_json, classify, recorded_accuracy
from .prepare import TooLarge, read_digit

MAX_BYTES = 10 * 1024 * 1024  # an upload: a phone photo is 2-8 MB
DRAIN_BYTES = 4 * MAX_BYTES
PAGE_DIR = Path(__file__).with_name("page")
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
DRAWING = "drawing"  # the name an image sent as a data URL gets in answers and errors


class Unavailable(Exception):
    """No checkpoint could be loaded (not trained yet, or not one this pipeline wrote)."""


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request) -> bytes:
    """The request's body, refused (413) once it passes MAX_BYTES. What is past the limit is
    read and dropped (up to DRAIN_BYTES), so that the client, still sending, gets the 413
    rather than a reset connection; a larger body is cut off."""
    body, seen = bytearray(), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen <= MAX_BYTES:
            body += chunk
        elif seen > DRAIN_BYTES:
            break
    if seen > MAX_BYTES:
        raise BadRequest(413, f"the upload is over the limit of {MAX_BYTES:,} bytes")
    return bytes(body)


async def image_of(request: Request) -> tuple[str, bytes]:
    """(name, bytes) of the image a request carries: a multipart file or a data URL."""
    kind = request.headers.get("content-type", "")
    body = await read_body(request)
    if not body:
        raise BadRequest(400, "the request is empty: send an image file (multipart field "
                              "`image`) or JSON {\"image\": \"data:image/png;base64,...\"}")
    if kind.startswith("multipart/form-data"):
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartParser

        async def once():
            yield body
        form = await MultiPartParser(request.headers, once()).parse()
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest(400, "the form has no file in field `image`")
        data = await upload.read()
        if not data:
            raise BadRequest(400, f"{upload.filename or 'the upload'}: the file is empty")
        return upload.filename or "upload", data
    try:
        url = json.loads(body)["image"]
        header, encoded = url.split(",", 1)
        if not header.startswith("data:image/"):
            raise ValueError(header)
        return DRAWING, base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise BadRequest(400, "expected an image file (multipart field `image`) or JSON "
                              "{\"image\": \"data:image/png;base64,...\"}") from None


def png_data_url(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def models_json(served: ServedModels) -> dict:
    classifiers = served.current()
    return {"models": [{"name": c.name, "checkpoint": str(c.path), "fingerprint": c.fingerprint,
                        "kind": c.kind, "digits": c.digits, "answers": answer_range([c])[0],
                        "accuracy": recorded_accuracy(c)} for c in classifiers],
            "untrained": served.untrained}


def make_app(served: ServedModels) -> Starlette:
    assets = {route: ((PAGE_DIR / name).read_bytes(), kind)
              for route, (name, kind) in ASSETS.items()}  # read once: nothing else is read
    lock = threading.Lock()

    def asset(request: Request) -> Response:
        content, kind = assets[request.url.path]
        return Response(content, media_type=kind, headers={"Cache-Control": "no-cache"})

    def list_models(request: Request) -> JSONResponse:
        try:
            with lock:
                return JSONResponse(models_json(served))
        except UserError as err:  # no checkpoint to load
            return error(503, str(err))

    def answer(name: str, data: bytes) -> dict:
        """Prepare and classify one image, under the lock; timed for Server-Timing."""
        with lock:
            try:
                classifiers = served.current()
            except UserError as err:
                raise Unavailable(str(err)) from None
            pixels = read_digit(name, data)
            answers = {c.name: classify(c, pixels[None])[0] for c in classifiers}
        return {**as_json(classifiers, [{"file": name, "predictions": answers}], {}),
                "prepared": png_data_url(pixels)}

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            name, data = await image_of(request)
            result = await run_in_threadpool(answer, name, data)  # torch off the event loop
        except BadRequest as err:
            return error(err.status, str(err))
        except Unavailable as err:
            return error(503, str(err))
        except TooLarge as err:
            return error(413, str(err))
        except UserError as err:  # not an image, blank: predict's own words
            return error(400, str(err))
        ms = (time.perf_counter() - start) * 1000
        return JSONResponse(result, headers={"Server-Timing": f"predict;dur={ms:.1f}"})

    routes = [Route(path, asset) for path in ASSETS]
    routes += [Route("/api/models", list_models), Route("/api/predict", predict,
                                                       methods=["POST"])]
    return Starlette(routes=routes)
