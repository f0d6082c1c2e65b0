"""The web API of ``siamdiff serve``: each endpoint gives what its command-line twin gives; bad input is a 4xx
``{"error": "one line"}``; the gate bounds bodies and bursts; the page is self-contained."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'siamdiff[web]')")
pytest.importorskip("multipart", reason="python-multipart is not installed (pip install 'siamdiff[web]')")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from siamdiff.cli import main  # noqa: E402
from siamdiff.web.app import Gate, Limits, create_app  # noqa: E402
from siamdiff.web.catalog import Catalog  # noqa: E402
from siamdiff.web.serve import is_loopback, listen  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve as serve_benchmark  # noqa: E402


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def index_file(digit_folder, tmp_path_factory) -> Path:
    from siamdiff.similarity.api import SimilarityModel
    from siamdiff.similarity.index import build_index

    out = tmp_path_factory.mktemp("served") / "digits.index"
    build_index(digit_folder, SimilarityModel.load("mnist"), out)
    return out


@pytest.fixture(scope="module")
def catalog(index_file) -> Catalog:
    return Catalog.load(["mnist"], [str(index_file)])


@pytest.fixture(scope="module")
def client(catalog) -> TestClient:
    return TestClient(create_app(catalog, Limits(max_bytes=200_000, max_pixels=300 * 300, max_calls=500)),
                      base_url="http://localhost")


@pytest.fixture(scope="module")
def digits(digit_folder) -> list[Path]:
    return sorted(digit_folder.rglob("*.png"))


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    return body["error"]


def test_health_lists_what_was_loaded(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert {(m["name"], m["kind"]) for m in body["models"]} == {("mnist", "similarity"), ("mnist", "diffusion")}
    assert body["indexes"] == [{"name": "digits", "images": 80, "model": "mnist"}]


def test_similarity_is_the_cli_object(client, digits, capsys):
    a, b = digits[0], digits[-1]
    assert main(["similarity", str(a), str(b), "--model", "mnist", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    web = client.post("/api/similarity", files={"a": (a.name, a.read_bytes()), "b": (b.name, b.read_bytes())},
                      data={"model": "mnist"}).json()
    assert web == {**cli, "a": a.name, "b": b.name}
    assert set(web) >= {"probability", "distance", "same"}


def test_similarity_with_explain_is_the_explain_object(client, digits, tmp_path, capsys):
    a, b = digits[0], digits[1]
    assert main(["explain", str(a), str(b), "--out", str(tmp_path / "why.png"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    web = client.post("/api/similarity", files={"a": (a.name, a.read_bytes()), "b": (b.name, b.read_bytes())},
                      data={"explain": "true"}).json()
    picture = Image.open(io.BytesIO(base64.b64decode(web.pop("explain_png_base64"))))
    assert picture.format == "PNG" and picture.width > 200
    del cli["output"]
    assert web == {**cli, "a": a.name, "b": b.name}


def test_search_is_the_cli_object_with_thumbnails(client, digits, index_file, capsys):
    query = digits[5]
    assert main(["search", str(query), "--index", str(index_file), "-k", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    web = client.post("/api/search", files={"image": (query.name, query.read_bytes())},
                      data={"index": "digits", "k": "3"}).json()
    assert web["path"] == query.name and web["index"] == "digits" and web["search"] == cli["search"] == "exact"
    assert [{k: v for k, v in h.items() if k not in ("id", "image_url")} for h in web["results"]] == cli["results"]
    first = web["results"][0]
    assert Path(first["path"]) == query.resolve()  # the query is in the index: itself first
    picture = client.get(first["image_url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(picture.content)).convert("L")),
                          np.asarray(Image.open(query).convert("L")))  # 28 px: smaller than a thumbnail
    one_line_error(client.get("/api/indexes/digits/images/80"), 404)
    one_line_error(client.get("/api/indexes/nope/images/0"), 404)


def test_denoise_is_the_cli_record_plus_the_image(client, digits, tmp_path, capsys):
    rng = np.random.default_rng(0)
    clean = np.asarray(Image.open(digits[3]), dtype=np.float64) / 255
    noisy_file = tmp_path / "noisy.png"
    noisy_file.write_bytes(png(np.clip(np.rint((clean + 0.2 * rng.standard_normal(clean.shape)) * 255), 0, 255)
                               .astype(np.uint8)))
    out = tmp_path / "clean.png"
    assert main(["denoise", str(noisy_file), "--out", str(out), "--model", "mnist", "--method", "ddim",
                 "--steps", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    web = client.post("/api/denoise", files={"image": ("noisy.png", noisy_file.read_bytes())},
                      data={"model": "mnist", "method": "ddim", "steps": "3", "chain": "true"}).json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(web.pop("image_png_base64")))))
    assert np.array_equal(image, np.asarray(Image.open(out)))  # the same pixels as the file the CLI wrote
    strip = Image.open(io.BytesIO(base64.b64decode(web.pop("chain_png_base64"))))
    steps = web.pop("chain_steps")
    assert strip.height == 28 and strip.width == 28 * (1 + len(steps)) + 2 * len(steps)
    assert steps == sorted(steps, reverse=True) and steps[0] == cli["t_start"]
    cli.pop("output")
    assert web == {**cli, "path": "noisy.png"}
    assert 0.1 < web["sigma"] < 0.3 and web["sigma_estimated"] == web["sigma"]


GOOD = png(np.zeros((28, 28), np.uint8))
NOISE = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))  # 800 bytes: cut in its data


@pytest.mark.parametrize("files, data, status, words", [
    ({"a": ("a.txt", b"just text"), "b": ("b.png", GOOD)}, {}, 400, "not an image file"),
    ({"a": ("a.png", b""), "b": ("b.png", GOOD)}, {}, 400, "empty"),
    ({"a": ("a.png", GOOD)}, {}, 422, "b"),
    ({"a": ("a.png", GOOD), "b": ("b.png", GOOD)}, {"model": "../../etc/passwd"}, 404, "unknown similarity model"),
    ({"a": ("a.png", NOISE[:400]), "b": ("b.png", GOOD)}, {}, 400, "truncated or corrupt"),
    ({"a": ("a.png", serve_benchmark.claimed_size_png(100_000, 100_000)), "b": ("b.png", GOOD)}, {}, 400,
     "too large"),
    ({"a": ("a.png", png(np.zeros((400, 400), np.uint8))), "b": ("b.png", GOOD)}, {}, 400, "too large"),
    ({"a": ("a.png", bytes(range(256)) * 1000), "b": ("b.png", GOOD)}, {}, 413, "limit"),
])
def test_similarity_refusals(client, files, data, status, words):
    assert words in one_line_error(client.post("/api/similarity", files=files, data=data), status)


@pytest.mark.parametrize("data, status, words", [
    ({"sigma": "-1"}, 400, "sigma"), ({"sigma": "nan"}, 400, "sigma"), ({"sigma": "lots"}, 400, "sigma"),
    ({"steps": "x"}, 422, "steps"), ({"steps": "0"}, 400, "steps"), ({"label": "42"}, 400, "label"),
    ({"method": "magic"}, 400, "method"), ({"precision": "fp8"}, 400, "precision"),
    ({"method": "ancestral", "sigma": "1"}, 400, "network calls"),  # 1,000 steps: above the test's limit of 500
    ({"method": "ddim", "steps": "300", "label": "3"}, 400, "network calls"),  # guided: 600 calls
    ({"model": "cifar10"}, 404, "unknown denoising model"),
])
def test_denoise_refusals(client, data, status, words):
    image = png(np.full((28, 28), 128, np.uint8))
    assert words in one_line_error(client.post("/api/denoise", files={"image": ("n.png", image)}, data=data), status)


def test_work_is_counted_in_tiles(client):
    """A thin image is as many tiles as its length: refused by the call limit however few pixels it has."""
    thin = png(np.zeros((1, 20_000), np.uint8))
    message = one_line_error(client.post("/api/denoise", files={"image": ("thin.png", thin)}), 400)
    assert re.search(r"\d[\d,]* tile\(s\)", message) and "limit of 500" in message
    ok = client.post("/api/denoise", files={"image": ("n.png", png(np.zeros((60, 60), np.uint8)))})
    assert ok.status_code == 200 and ok.json()["tiles"] > 1


def test_other_sites_and_host_names_are_refused(catalog):
    local = TestClient(create_app(catalog), base_url="http://127.0.0.1:8000")
    assert local.get("/health").status_code == 200
    rebound = TestClient(create_app(catalog), base_url="http://attacker.example")
    assert "answers to" in one_line_error(rebound.get("/health"), 403)
    pair = {"a": ("a.png", GOOD), "b": ("b.png", GOOD)}
    foreign = local.post("/api/similarity", files=pair, headers={"origin": "http://evil.example"})
    assert "other sites" in one_line_error(foreign, 403)
    assert local.post("/api/similarity", files=pair, headers={"origin": "http://127.0.0.1:8000"}).status_code == 200
    anywhere = TestClient(create_app(catalog, hosts=None), base_url="http://192.168.1.4:8000")
    assert anywhere.get("/health").status_code == 200


def test_search_refusals(client):
    image = {"image": ("q.png", png(np.zeros((28, 28), np.uint8)))}
    assert "k" in one_line_error(client.post("/api/search", files=image, data={"k": "0"}), 400)
    assert "k must be from 1 to 100" in one_line_error(client.post("/api/search", files=image,
                                                                   data={"k": "1000000000000"}), 400)
    assert "k" in one_line_error(client.post("/api/search", files=image, data={"k": "many"}), 422)
    assert "unknown index" in one_line_error(client.post("/api/search", files=image, data={"index": "x"}), 404)


def test_routes_and_bodies_answer_json(client):
    one_line_error(client.get("/nowhere"), 404)
    one_line_error(client.get("/api/similarity"), 405)
    one_line_error(client.post("/api/similarity", content=b"garbage",
                               headers={"content-type": "multipart/form-data; boundary=zz"}), 400)
    assert "limit" in one_line_error(client.post("/api/similarity", content=b"x" * 500_000,
                                                 headers={"content-type": "multipart/form-data; boundary=zz"}), 413)
    one_line_error(client.post("/api/similarity", json={"a": "/etc/passwd", "b": "/etc/passwd"}), 422)
    assert client.get("/docs").status_code == 404  # FastAPI's page would load Swagger UI from a CDN
    schema = client.get("/openapi.json").json()
    assert {"/health", "/api/similarity", "/api/search", "/api/denoise"} <= set(schema["paths"])


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    texts = [page.text] + [client.get(f"/static/{name}").text for name in ("app.js", "style.css")]
    for text in texts:
        assert not re.search(r"https?://|//cdn|@import|url\(", text), "the page must load nothing from elsewhere"
    assert all(ref in page.text for ref in ('src="/static/app.js"', 'href="/static/style.css"'))


def test_fuzzed_requests_never_fail_the_server(client):
    """A short sample of the fuzzing of ``benchmarks/serve.py`` (1,000 requests there): no 5xx, still healthy."""
    requests = serve_benchmark.fuzz_requests(random.Random(1), 60)
    statuses = [client.request(**r).status_code for r in requests if "raw" not in r]  # raw: sockets only
    assert not [s for s in statuses if s >= 500]
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert client.get("/health").json()["status"] == "ok"


def test_gate_answers_a_burst_with_503():
    """With one worker and no queue, a second request while the first is computed is refused, with Retry-After."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Gate(slow_app, Limits(workers=1, queue=0))

    async def request() -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await gate({"type": "http", "method": "POST", "path": "/api/similarity",
                    "headers": [(b"host", b"127.0.0.1:8000")]}, receive, send)
        return sent

    async def burst():
        first = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        second = await request()
        release.set()
        return await first, second

    first, second = asyncio.run(burst())
    assert first[0]["status"] == 200
    assert second[0]["status"] == 503 and (b"retry-after", b"1") in second[0]["headers"]
    assert "busy" in json.loads(second[1]["body"])["error"]
    assert gate.busy == 0


def test_gate_bounds_slow_bodies_and_counts_every_api_request(monkeypatch):
    """A body that does not arrive in time is answered 408 and frees its place; GETs of the API are admitted like
    POSTs (thumbnails decode images too)."""
    from siamdiff.web import app as web_app

    monkeypatch.setattr(web_app, "BODY_SECONDS", 0.05)
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Gate(slow_app, Limits(workers=1, queue=0))

    async def call(method: str, receive) -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": "/api/indexes/x/images/0",
                 "headers": [(b"host", b"localhost:8000")]}
        await gate(scope, receive, send)
        return sent

    async def never():
        await asyncio.sleep(3600)

    async def scenario():
        slow = await call("POST", never)
        first = asyncio.create_task(call("GET", never))
        await asyncio.sleep(0.01)
        second = await call("GET", never)
        release.set()
        return slow, await first, second

    slow, first, second = asyncio.run(scenario())
    assert slow[0]["status"] == 408 and "did not arrive" in json.loads(slow[1]["body"])["error"]
    assert first[0]["status"] == 200 and second[0]["status"] == 503
    assert gate.busy == 0 and gate.reading == 0


def test_limits_are_checked():
    from siamdiff.core.errors import SiamdiffError

    for bad in (dict(workers=0), dict(queue=-1), dict(max_bytes=0), dict(max_pixels=10**9), dict(max_calls=0)):
        with pytest.raises(SiamdiffError):
            Limits(**bad)


def test_serve_refusals_are_one_line(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "mnist", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("siamdiff: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    (tmp_path / "x.index").write_bytes(b"not an index")
    assert main(["serve", "--model", "mnist", "--index", str(tmp_path / "x.index")]) == 2
    assert "not a siamdiff index" in capsys.readouterr().err
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_loopback_and_ports():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    sock = listen("127.0.0.1", 0)
    assert sock.getsockname()[1] > 0
    sock.close()
