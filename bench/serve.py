"""How fast `python -m stages.serve` answers a drawing: the server-side time of POST
/api/predict (its Server-Timing header: reading the body, preparing the image, every model's
answer, the JSON), and the round trip seen by the client, over many requests.

    python -m bench.serve                 # 300 requests, the models in models/
    python -m bench.serve --requests 500 --model cnn

Each request sends what the page sends as a stroke ends: a 280×280 PNG data URL of a digit
drawn black on white (here, MNIST test digits scaled 10×, a different one each time). Run it
with the machine otherwise idle; the first 10 requests warm up and are not counted.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_serve import serving

WARM_UP = 10
MNIST_TEST = Path("../shared/mnist/t10k-images-idx3-ubyte.gz")


def drawings(n: int) -> list[bytes]:
    """n request bodies: MNIST test digits as the page's canvas would send them."""
    raw = gzip.open(MNIST_TEST).read()[16:]
    digits = np.frombuffer(raw, np.uint8).reshape(-1, 28, 28)[:n]
    bodies = []
    for digit in digits:
        canvas = 255 - np.kron(digit, np.ones((10, 10), np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(canvas).convert("RGBA").save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        bodies.append(json.dumps({"image": url}).encode())
    return bodies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", action="append", metavar="NAME|PATH")
    args = parser.parse_args()
    bodies = drawings(args.requests + WARM_UP)
    server, client = [], []
    extra = [arg for model in args.model or [] for arg in ("--model", model)]
    with serving(Path("."), *extra) as url:
        with urllib.request.urlopen(f"{url}/api/models") as response:
            names = [m["name"] for m in json.loads(response.read())["models"]]
        for i, body in enumerate(bodies):
            request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request) as response:
                response.read()
                timing = response.headers["Server-Timing"]
            if i >= WARM_UP:
                client.append((time.perf_counter() - start) * 1000)
                server.append(float(timing.split("dur=")[1]))
    print(f"POST /api/predict, {len(server)} drawings (280×280 PNG data URLs), models: "
          f"{', '.join(names)}")
    for label, values in (("server side", server), ("round trip", client)):
        print(f"  {label:12s} median {statistics.median(values):5.1f} ms   p95 "
              f"{percentile(values, 95):5.1f} ms   max {max(values):5.1f} ms")


if __name__ == "__main__":
    main()
