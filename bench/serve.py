"""How fast `python -m stages.serve` answers drawings, alone and under load, and how much
memory it keeps.

    python -m bench.serve                  # the models in models/
    python -m bench.serve --requests 200 --model cnn

Each request sends what the page sends while a digit is drawn: a 280×280 PNG data URL of a
digit drawn black on white, to /api/predict?why=1 (every answer with its why; `--no-why`: the
answers alone) (MNIST test digits scaled 10×, a different one each time, from the
pipeline's data/raw/ or ../shared/mnist). It measures:
- 1, 10 and 50 clients at once, each its own address (127.0.0.x) posting one drawing after
  another: the server-side time's p50 and p95 (its Server-Timing header: reading, waiting in
  the queue, preparing, every model's answer and why), the time to an answer's p50 and p95 (a client turned
  away with 503, the queue full, waits Retry-After and tries again, as the page does),
  answers per second, and how many tries were turned away;
- the server's memory (RSS) idle, and after 1,000 requests of which 50 are 4000×4000 noise
  PNGs (8.5 MB each, 16 million pixels to decode).
Run it with the machine otherwise idle; the first 10 requests warm up and are not counted.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from stages.lib.infra.kernels import cpu_name
from tests.test_serve import start_server
from tests.test_serve_network import MULTIPART, multipart, noise_png

WARM_UP = 10
SOURCES = [Path("data/raw/t10k-images-idx3-ubyte.gz"),
           Path("../shared/mnist/t10k-images-idx3-ubyte.gz")]


def test_digits(n: int, bench: str) -> np.ndarray:
    """The first n MNIST test digits (n×28×28 uint8), from the pipeline's data/raw/ or
    ../shared/mnist; `bench` names the script in the message when there are none."""
    source = next((path for path in SOURCES if path.is_file()), None)
    if source is None:
        sys.exit(f"{bench}: no MNIST test images at {' or '.join(map(str, SOURCES))}; "
                 f"run `dvc repro download` first")
    raw = gzip.open(source).read()[16:]
    return np.frombuffer(raw, np.uint8).reshape(-1, 28, 28)[:n]


def drawings(n: int) -> list[bytes]:
    """n request bodies: MNIST test digits as the page's canvas would send them."""
    bodies = []
    for digit in test_digits(n, "bench.serve"):
        canvas = 255 - np.kron(digit, np.ones((10, 10), np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(canvas).convert("RGBA").save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        bodies.append(json.dumps({"image": url}).encode())
    return bodies


PREDICT = "/api/predict?why=1"  # as the page asks


def send(port: int, body: bytes, kind: str, source: str) -> tuple[int, float, float | None, int]:
    """(status, ms until answered, server-side ms, 503s first) of one POST, each try on its
    own connection; turned away (503, the queue full), it waits Retry-After and tries again,
    as the page does."""
    start, turned_away = time.perf_counter(), 0
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                                source_address=(source, 0))
        try:
            connection.request("POST", PREDICT, body, {"Content-Type": kind})
            response = connection.getresponse()
            answer = json.loads(response.read())
            timing, retry = response.getheader("Server-Timing"), response.getheader("Retry-After")
        finally:
            connection.close()
        if response.status == 503 and retry and "unavailable" not in answer:
            turned_away += 1
            time.sleep(float(retry))
            continue
        ms = (time.perf_counter() - start) * 1000
        return (response.status, ms, float(timing.split("dur=")[1]) if timing else None,
                turned_away)


def load(port: int, bodies: list[bytes], clients: int) -> dict:
    """`clients` threads, each its own address, sharing `bodies` one after another."""
    results, lock, next_body = [], threading.Lock(), iter(bodies)

    def client(i: int) -> None:
        while True:
            with lock:
                body = next(next_body, None)
            if body is None:
                return
            outcome = send(port, body, "application/json", f"127.0.0.{2 + i}")
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    answered = [r for r in results if r[0] == 200]
    trips = [ms for _, ms, _, _ in answered]
    server = [s for _, _, s, _ in answered if s is not None]
    return {"clients": clients, "requests": len(results), "answered": len(answered),
            "busy_503": sum(r[3] for r in results),
            "other": sorted({r[0] for r in results} - {200}),
            "server_p50_ms": statistics.median(server),
            "server_p95_ms": float(np.percentile(server, 95)), "round_trip_p50_ms":
                statistics.median(trips), "round_trip_p95_ms": float(np.percentile(trips, 95)),
            "answers_per_s": len(answered) / seconds}


def memory_after_a_thousand(port: int, pid: int, bodies: list[bytes]) -> tuple[float, float]:
    """(idle MB, MB after 1,000 requests, 50 of them 4000×4000 noise PNGs)."""
    process = psutil.Process(pid)
    idle = process.memory_info().rss / 2**20
    large = multipart([("image", "noise.png", noise_png(4000))])
    for i in range(1000):
        if i % 20 == 0:
            send(port, large, MULTIPART, "127.0.0.1")
        else:
            send(port, bodies[i % len(bodies)], "application/json", "127.0.0.1")
    return idle, process.memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("--requests", type=int, default=300,
                        help="drawings per load level (default 300)")
    parser.add_argument("--model", action="append", metavar="NAME|PATH")
    parser.add_argument("--no-why", action="store_true",
                        help="ask for the answers alone (/api/predict), not their why")
    args = parser.parse_args()
    global PREDICT
    if args.no_why:
        PREDICT = "/api/predict"
    bodies = drawings(args.requests + WARM_UP)
    extra = [arg for model in args.model or [] for arg in ("--model", model)]
    launched = time.perf_counter()
    process, url = start_server(Path("."), *extra)
    ready = time.perf_counter() - launched
    port = int(url.rsplit(":", 1)[1])
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", "/api/models")
        names = [m["name"] for m in json.loads(connection.getresponse().read())["models"]]
        connection.close()
        send(port, bodies[0], "application/json", "127.0.0.1")
        first = time.perf_counter() - launched
        for body in bodies[1:WARM_UP]:
            send(port, body, "application/json", "127.0.0.1")
        print(f"POST {PREDICT}: drawings (280×280 PNG data URLs), models: {', '.join(names)}; "
              f"cpu: {cpu_name()}, {psutil.cpu_count()} cores")
        print(f"start: {ready:.1f} s from launching `python -m stages.serve` to its first "
              f"answer (/api/models), {first:.1f} s to a drawing's answers")
        print("each client its own address, one drawing after another; a 503 (the queue full) "
              "waits Retry-After and tries again, as the page does")
        print(f"{'clients':>8} {'answered':>9} {'503 first':>10} {'server p50':>11} "
              f"{'server p95':>11} {'answer p50':>11} {'answer p95':>11} {'answers/s':>10}")
        for clients in (1, 10, 50):
            row = load(port, bodies[WARM_UP:], clients)
            print(f"{clients:>8} {row['answered']:>9} {row['busy_503']:>10} "
                  f"{row['server_p50_ms']:>8.1f} ms {row['server_p95_ms']:>8.1f} ms "
                  f"{row['round_trip_p50_ms']:>8.1f} ms "
                  f"{row['round_trip_p95_ms']:>8.1f} ms {row['answers_per_s']:>10.1f}"
                  + (f"  other statuses: {row['other']}" if row["other"] else ""))
        idle, after = memory_after_a_thousand(port, process.pid, bodies[WARM_UP:])
        print(f"memory (RSS): {idle:.0f} MB idle, {after:.0f} MB after 1,000 requests "
              f"(50 of them 4000×4000 noise PNGs): +{after - idle:.0f} MB")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
