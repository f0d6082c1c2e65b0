"""The web server under load, on loopback: latency of ``/api/similarity`` (sequential, then 4 concurrent clients),
``/api/denoise`` at 32x32 and 256x256, a burst beyond the server's queue, and fuzzed requests (none may get a 5xx,
the server must stay healthy). Written to docs/benchmarks/serve.{json,md}.

    python benchmarks/serve.py                 # 300 sequential pairs, 4 x 100 concurrent, 1,000 fuzzed requests
    python benchmarks/serve.py --pairs 50 --fuzz 100

The server is ``siamdiff serve`` itself, started as a subprocess (``--threads`` torch threads, default 2) with the
shipped MNIST and CIFAR-10 models, an index of the embedded MNIST sample, ``--max-upload-mb 1`` and
``--max-calls 500`` (so that the fuzzer's oversized uploads and its denoisings of thousands of tiles or steps are
refused at once, as the limits are there to do). Each client keeps one connection open, as a script would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, describe, provenance, write  # noqa: E402

MAX_UPLOAD_MB = 1
MAX_CALLS = 500  # network calls of one denoising: the fuzzer's costly requests are refused, not computed
# what uvicorn answers (400, plain text) to a request it cannot parse as HTTP, such as a Content-Length of -5
PROTOCOL_REFUSAL = "Invalid HTTP request received."


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels over a few bytes of data: a decompression bomb's shape."""
    small = png(np.zeros((1, 1), np.uint8))
    ihdr = struct.pack(">II", width, height) + small[24:29]
    chunk = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[33:]


def fuzz_requests(rng: random.Random, n: int) -> list[dict]:
    """``n`` requests (keyword arguments of ``httpx.Client.request``) of every kind a careless or hostile client
    sends: wrong or missing fields, truncated, oversized, huge-claimed and non-image uploads, bad numbers, unknown or
    path-like names, malformed bodies, wrong methods and routes — with some good requests among them."""
    digit = (np.random.default_rng(rng.randrange(2**32)).random((28, 28)) * 255).astype(np.uint8)
    good = png(digit)
    uploads = {
        "good": good, "colour": png(np.dstack([digit] * 3)), "text": b"hello, I am not an image\n",
        "empty": b"", "truncated": good[: len(good) // 2], "random": bytes(rng.randrange(256) for _ in range(300)),
        "bomb": claimed_size_png(100_000, 100_000), "wide": claimed_size_png(70_000, 1),
        "oversized": b"\x89PNG" + bytes(MAX_UPLOAD_MB * 2**20 + 10), "html": b"<html><script>alert(1)</script>",
        "gif-header": b"GIF89a" + bytes(20), "tiny": png(np.zeros((1, 1), np.uint8)),
        "thin": png(np.zeros((1, 60_000), np.uint8)), "flat": png(np.zeros((3000, 3000), np.uint8)),
    }
    weights = {"good": 6, "colour": 2, "text": 2, "empty": 1, "truncated": 2, "random": 2, "bomb": 2, "wide": 1,
               "oversized": 1, "html": 1, "gif-header": 1, "tiny": 2, "thin": 1, "flat": 1}
    numbers = ["", "0", "1", "-1", "3", "nan", "inf", "-inf", "1e309", "1e-309", "abc", "0x10", "2", " 5 ",
               "99999999999999999999999", "1.5", "10", "auto", "AUTO", "\x00", "../../etc/passwd"]
    names = [None, "", "mnist", "cifar10", "fashion-mnist", "nope", "../weights/similarity-mnist",
             "/etc/passwd", "MNIST", "digits", "index", "a" * 300]

    def upload() -> tuple[str, bytes, str]:
        kind = rng.choices(list(weights), list(weights.values()))[0]
        return (rng.choice(["x.png", "x.jpg", "../../x.png", "", "x" * 200, "x\n.png"]), uploads[kind],
                rng.choice(["image/png", "text/plain", "application/octet-stream"]))

    def fields(keys: list[str]) -> dict:
        return {k: rng.choice(numbers if k not in ("model", "index") else [n for n in names if n is not None])
                for k in keys if rng.random() < 0.5}

    out: list[dict] = []
    for _ in range(n):
        kind = rng.randrange(10)
        if kind <= 2:
            files = {f: upload() for f in ("a", "b") if rng.random() < 0.9}
            if rng.random() < 0.1:
                files["c"] = upload()
            out.append({"method": "POST", "url": "/api/similarity", "files": files, "data": fields(["model"])})
        elif kind <= 4:
            files = {"image": upload()} if rng.random() < 0.9 else {"img": upload()}
            out.append({"method": "POST", "url": "/api/search", "files": files, "data": fields(["index", "k"])})
        elif kind <= 6:
            files = {"image": upload()} if rng.random() < 0.9 else {"file": upload()}
            data = fields(["model", "sigma", "label", "guidance", "seed", "precision", "chain"])
            data["method"] = rng.choice(["tweedie", "ddim", "ancestral", "magic", "", "direct"])
            data["steps"] = rng.choice(["1", "3", "0", "-4", "1000", "1000000000", "x", "2.5"])
            if data["method"] == "ancestral" and files.get("image", (0, b""))[1] not in (uploads["thin"],
                                                                                          uploads["flat"]):
                data["sigma"] = rng.choice(["0.05", "0.1"])  # a chain of a hundred steps or so
                data.pop("label", None)
            out.append({"method": "POST", "url": "/api/denoise", "files": files, "data": data})
        elif kind == 7:
            body = rng.choice([b"", b"garbage", b"--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n",
                               bytes(rng.randrange(256) for _ in range(200))])
            ctype = rng.choice(["multipart/form-data; boundary=zz", "multipart/form-data", "application/json",
                                "text/plain", "multipart/form-data; boundary="])
            out.append({"method": "POST", "url": rng.choice(["/api/similarity", "/api/search", "/api/denoise"]),
                        "content": body, "headers": {"content-type": ctype}})
        elif kind == 8:  # a declared length the client libraries refuse to send: written on the socket
            length = rng.choice(["1000", "99999999999", "-5", "abc", "900"])
            out.append({"raw": (f"POST /api/similarity HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                f"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: {length}\r\n"
                                f"\r\n").encode() + b"x" * 1000})
        else:
            number = rng.choice(["0", "1", "-1", "79", "80", "99999999999999999999", "abc", "%2e%2e"])
            out.append({"method": rng.choice(["GET", "PUT", "DELETE", "POST"]),
                        "url": rng.choice([f"/api/indexes/{rng.choice(['digits', 'nope', '..'])}/images/{number}",
                                           "/api/similarity", "/nowhere", "/static/../app.py", "/static/app.js",
                                           "/health", "/", "/docs", "/static/%2e%2e/app.py"])})
    return out


def start_server(args, index: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "siamdiff", "serve", "--port", "0", "--model", "mnist", "cifar10",
               "--index", str(index), "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-calls", str(MAX_CALLS),
               "--workers", str(args.workers),
               "--queue", str(args.queue)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"http://[^/]+:(\d+)/", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def percentiles(ms: list[float]) -> dict:
    q = np.percentile(ms, [50, 90, 99])
    return {"n": len(ms), "p50_ms": round(float(q[0]), 2), "p90_ms": round(float(q[1]), 2),
            "p99_ms": round(float(q[2]), 2), "mean_ms": round(float(np.mean(ms)), 2)}


def timed(client, n: int, **request) -> list[float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        response = client.request(**request)
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{request['url']} answered {response.status_code}: {response.text}")
    return times


def main() -> None:
    import httpx

    from siamdiff.data.datasets import load_sample
    from siamdiff.data.imageio import write_png_atomic
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.index import build_index

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=300, help="sequential similarity requests")
    p.add_argument("--concurrent", type=int, default=100, help="requests per client of the 4 concurrent clients")
    p.add_argument("--denoise", type=int, default=20, help="requests per denoise size")
    p.add_argument("--fuzz", type=int, default=1000, help="fuzzed requests")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--queue", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DOCS)
    args = p.parse_args()

    sample = load_sample("mnist")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits"
        folder.mkdir()
        for k in range(80):
            write_png_atomic(sample.images[k].numpy()[0], folder / f"{k:03d}.png")
        index = Path(tmp) / "digits.index"
        build_index(folder, SimilarityModel.load("mnist"), index)
        proc, base = start_server(args, index)
        try:
            result = run(args, base, sample, httpx)
            result["server_alive"] = proc.poll() is None
        finally:
            proc.terminate()
            try:
                _, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
    result["server_tracebacks"] = stderr.count("Traceback")
    result = {**provenance(), "settings": {k: getattr(args, k) for k in ("pairs", "concurrent", "denoise", "fuzz",
                                                                         "threads", "workers", "queue", "seed")},
              **result}
    write(result, markdown(result), args.out, "serve")
    print(markdown(result))


def run(args, base: str, sample, httpx) -> dict:
    from skimage import data as photos

    a, b = png(sample.images[0].numpy()[0]), png(sample.images[1].numpy()[0])
    pair = {"method": "POST", "url": "/api/similarity", "files": {"a": ("a.png", a), "b": ("b.png", b)},
            "data": {"model": "mnist"}}
    with httpx.Client(base_url=base, timeout=120) as client:
        timed(client, 20, **pair)  # warm-up: connection, allocator
        sequential = percentiles(timed(client, args.pairs, **pair))

    per_client: list[list[float]] = [[] for _ in range(4)]

    def worker(k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            per_client[k] = timed(client, args.concurrent, **pair)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    concurrent = {**percentiles([t for ts in per_client for t in ts]), "clients": 4,
                  "requests_per_s": round(4 * args.concurrent / wall, 1)}

    rng = np.random.default_rng(args.seed)
    astronaut = photos.astronaut()  # 512x512 RGB, bundled with scikit-image
    denoise = {}
    for side in (32, 256):
        clean = astronaut[::512 // side, ::512 // side].astype(np.float64) / 255
        noisy = np.clip(np.rint((clean + 0.1 * rng.standard_normal(clean.shape)) * 255), 0, 255).astype(np.uint8)
        request = {"method": "POST", "url": "/api/denoise", "files": {"image": ("noisy.png", png(noisy))},
                   "data": {"model": "cifar10", "method": "tweedie"}}
        with httpx.Client(base_url=base, timeout=300) as client:
            timed(client, 2, **request)
            denoise[f"{side}x{side}"] = percentiles(timed(client, args.denoise, **request))

    burst = burst_beyond_queue(base, httpx, args.workers + args.queue + 8)
    fuzz = fuzz_server(base, httpx, random.Random(args.seed), args.fuzz)
    return {"similarity_sequential": sequential, "similarity_concurrent": concurrent, "denoise": denoise,
            "burst": burst, "fuzz": fuzz}


def burst_beyond_queue(base: str, httpx, n: int) -> dict:
    """``n`` slow requests at once (256x256 denoising): those beyond workers + queue must be answered 503."""
    image = png((np.random.default_rng(1).random((256, 256, 3)) * 255).astype(np.uint8))
    statuses: list[int] = []
    retry_after: list[str | None] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=base, timeout=600) as client:
            r = client.post("/api/denoise", files={"image": ("n.png", image)}, data={"model": "cifar10"})
        with lock:
            statuses.append(r.status_code)
            retry_after.append(r.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": n, "ok": statuses.count(200), "busy_503": statuses.count(503),
            "busy_with_retry_after": sum(1 for s, h in zip(statuses, retry_after) if s == 503 and h),
            "other": len([s for s in statuses if s not in (200, 503)])}


def send_raw(base: str, raw: bytes) -> tuple[int, str]:
    """Send bytes as they are on a new connection; the answer's status and body."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


def fuzz_server(base: str, httpx, rng: random.Random, n: int) -> dict:
    counts: dict[str, int] = {}
    not_json = server_errors = protocol = 0
    examples: dict[int, str] = {}
    began = time.perf_counter()
    with httpx.Client(base_url=base, timeout=300) as client:
        for request in fuzz_requests(rng, n):
            status, text = send_raw(base, request["raw"]) if "raw" in request else \
                (lambda r: (r.status_code, r.text))(client.request(**request))
            counts[str(status)] = counts.get(str(status), 0) + 1
            if status >= 400:
                try:
                    body = json.loads(text)
                    if set(body) != {"error"} or "\n" in body["error"]:
                        not_json += 1
                    examples.setdefault(status, body["error"][:120])
                except (ValueError, KeyError, TypeError):
                    if status == 400 and text.strip() == PROTOCOL_REFUSAL:
                        protocol += 1  # uvicorn's HTTP parser, before any application code runs
                    else:
                        not_json += 1
                        examples.setdefault(status, f"(not JSON) {text[:80]!r}")
            server_errors += status >= 500
        healthy = client.get("/health").json().get("status") == "ok"
    return {"requests": n, "seconds": round(time.perf_counter() - began, 1), "status_counts": dict(sorted(
        counts.items())), "status_5xx": server_errors, "errors_not_one_line_json": not_json,
        "protocol_refusals": protocol,
        "healthy_after": healthy, "example_errors": {str(k): v for k, v in sorted(examples.items())}}


def markdown(r: dict) -> str:
    s, c, f, b = r["similarity_sequential"], r["similarity_concurrent"], r["fuzz"], r["burst"]
    lines = [
        "# Web server (`siamdiff serve`) on loopback", "",
        f"Command: `{r['command']}`  ", f"Code: {r['code_version']}; {describe(r['hardware'])}; {r['date']}; "
        f"server torch threads {r['settings']['threads']}, workers {r['settings']['workers']}, queue "
        f"{r['settings']['queue']}.", "",
        "| Request | n | p50 ms | p90 ms | p99 ms | throughput |", "|---|---|---|---|---|---|",
        f"| `/api/similarity`, two 28×28 PNGs, sequential | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | "
        f"{s['p99_ms']} | {1000 / s['mean_ms']:.0f} req/s |",
        f"| `/api/similarity`, 4 concurrent clients | {c['n']} | {c['p50_ms']} | {c['p90_ms']} | {c['p99_ms']} | "
        f"{c['requests_per_s']} req/s |",
    ]
    for size, d in r["denoise"].items():
        lines.append(f"| `/api/denoise` cifar10 tweedie, {size} photo, σ 0.1 | {d['n']} | {d['p50_ms']} | "
                     f"{d['p90_ms']} | {d['p99_ms']} | |")
    lines += ["", f"Burst of {b['requests']} 256×256 denoisings at once: {b['ok']} answered 200, {b['busy_503']} "
              f"answered 503 ({b['busy_with_retry_after']} with Retry-After), {b['other']} other.", "",
              f"Fuzzing: {f['requests']} requests in {f['seconds']} s; status counts {f['status_counts']}; "
              f"**{f['status_5xx']} answers with status 5xx**; {f['errors_not_one_line_json']} errors not a one-line "
              f"`{{\"error\"}}` JSON (besides {f['protocol_refusals']} requests that are not valid HTTP, such as a "
              f"negative Content-Length, refused by uvicorn's parser in plain text before the application sees "
              f"them); healthy afterwards: {f['healthy_after']}; server alive: {r['server_alive']}; "
              f"tracebacks in its log: {r['server_tracebacks']}.", ""]
    lines += [f"- {k}: {v}" for k, v in f["example_errors"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
