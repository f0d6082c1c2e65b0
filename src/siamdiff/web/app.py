"""The web API and page of ``siamdiff serve``: JSON out, images in as multipart uploads (needs FastAPI).

Each endpoint calls the library function its command-line twin calls — ``SimilarityModel.score``, ``search``,
``denoise_one`` — and returns the same object plus what only a page needs (images as base64 PNG, thumbnails).

Safety, in the order a request meets it (:class:`Gate`, then the endpoint):

* a request from another site is refused (403): its ``Origin`` must be the server's own, and a server on loopback
  answers only to loopback host names (no DNS rebinding);
* at most ``workers + queue`` API requests are computed or waiting at once, and as many bodies received; a burst
  beyond is answered 503 with ``Retry-After``, so memory is bounded by ``2 × (workers + queue) × max_body``;
* a body must arrive within :data:`BODY_SECONDS` (408) and fit the limit (413), which is checked from its
  ``Content-Length`` and while it is read, before the application parses any of it;
* an upload is decoded from its content alone (its name and type are not trusted), only as one of the formats of
  :data:`~siamdiff.data.imageio.UPLOAD_FORMATS`, with the pixel limit checked from the header before decoding;
* denoising work of more than ``max_calls`` network calls (tiles × steps) is refused before it starts;
* models and indexes are chosen by name among those the server was started with, never by a path;
* every refusal is a 4xx ``{"error": "one line"}``; the work runs in a pool of ``workers`` threads.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..core.config import auto_or
from ..core.errors import SiamdiffError, one_line
from ..core.version import __version__
from ..data.imageio import MAX_PIXELS, encode_png, read_image_bytes
from ..data.inputs import as_batch, to_uint8
from ..reconstruction.pipeline import chain_strip, denoise_one
from ..similarity.explain import explanation_json, explanation_png
from ..similarity.index import search
from .catalog import Catalog

log = logging.getLogger(__name__)

THUMBNAIL = 160  # the longest side of a search result's picture, in pixels
MAX_K = 100  # the most results one search returns
BODY_SECONDS = 30.0  # the time a request body may take to arrive
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Limits:
    """What one server admits. ``max_bytes``: per uploaded file; ``max_pixels``: per uploaded image (at most the
    files' own decompression-bomb limit); ``max_calls``: network calls (tiles × steps) of one denoising;
    ``workers``: requests computed at once; ``queue``: requests waiting."""

    max_bytes: int = 16 * 2**20
    max_pixels: int = 4096 * 4096
    max_calls: int = 5000
    workers: int = 1
    queue: int = 8

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_calls", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SiamdiffError(f"{{{name}}} must be a positive number, got {value!r}", name)
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) or self.queue < 0:
            raise SiamdiffError(f"{{queue}} must be 0 or more, got {self.queue!r}", "queue")
        if self.max_pixels > MAX_PIXELS:
            raise SiamdiffError(f"{{max_pixels}} must be at most {MAX_PIXELS} (the decompression-bomb limit), got "
                                f"{self.max_pixels}", "max_pixels")

    @property
    def max_body(self) -> int:
        """The largest request body: two files (a pair) and the form fields."""
        return 2 * self.max_bytes + 64 * 1024

    @property
    def capacity(self) -> int:
        return self.workers + self.queue


def megabytes(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal: ``{"error": "one line"}``."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def _hostname(netloc: str) -> str:
    """The host name of ``host[:port]`` (``[::1]:8000`` -> ``::1``), lower-cased."""
    return (urlsplit(f"//{netloc}").hostname or "").lower()


class Gate:
    """ASGI middleware in front of the application: the origin and host checks (403), admission (503 beyond
    capacity), the body's deadline (408) and size (413). ``hosts``: the host names the server answers to (None:
    any, for a server bound beyond loopback)."""

    def __init__(self, app: Any, limits: Limits, hosts: frozenset[str] | None = LOOPBACK_NAMES) -> None:
        self.app = app
        self.limits = limits
        self.hosts = hosts
        self.busy = 0  # API requests computed or waiting (one event loop: no lock needed)
        self.reading = 0  # request bodies being received

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host", "")
        if self.hosts is not None and _hostname(host) not in self.hosts:
            await self._answer(scope, send, 403, f"this server answers to {', '.join(sorted(self.hosts))} only")
            return
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in ("GET", "HEAD") and urlsplit(origin).netloc != host:
            await self._answer(scope, send, 403, "requests from other sites are refused")
            return
        if not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            receive = await self._body(scope, headers, receive, send)
            if receive is None:
                return
        if self.busy >= self.limits.capacity:
            await self._busy(scope, send)
            return
        self.busy += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy -= 1

    async def _busy(self, scope: dict, send: Callable) -> None:
        await self._answer(scope, send, 503, f"the server is busy ({self.busy} requests in progress): retry shortly",
                           {"retry-after": "1"})

    async def _body(self, scope: dict, headers: dict, receive: Callable, send: Callable) -> Callable | None:
        """The whole body, up to the limit and within the deadline, as a ``receive`` that replays it; None when the
        request was answered instead."""
        limit = self.limits.max_body
        too_large = f"the request is larger than the server's limit of {megabytes(limit)}"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._answer(scope, send, 413, too_large)
            return None
        if self.reading >= self.limits.capacity:
            await self._busy(scope, send)
            return None
        self.reading += 1
        body = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_SECONDS
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    await self._answer(scope, send, 408, f"the request body did not arrive within {BODY_SECONDS:g} s")
                    return None
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > limit:
                    await self._answer(scope, send, 413, too_large)
                    return None
                if not message.get("more_body", False):
                    break
        finally:
            self.reading -= 1
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the client's disconnect

        return replay

    @staticmethod
    async def _answer(scope: dict, send: Callable, status: int, message: str,
                      headers: dict[str, str] | None = None) -> None:
        await error_response(status, message, headers)(scope, None, send)


def _png_base64(image: Any) -> str:
    """An image ``(C, H, W)`` in [0, 1] as a base64 PNG."""
    return base64.b64encode(encode_png(to_uint8(image))).decode("ascii")


def _shown(name: str, limit: int = 80) -> str:
    """A name a client sent, as a message shows it: at most ``limit`` characters."""
    return name if len(name) <= limit else name[:limit] + "…"


def _choose(table: dict, name: str | None, what: str, flag: str = "--model") -> Any:
    """The entry of ``table`` called ``name`` (None: the first), or a 404 that lists the names."""
    if not table:
        raise Refused(404, f"this server has no {what}: start it with {flag}")
    if name is None or not name.strip():
        return next(iter(table.values()))
    if name not in table:
        raise Refused(404, f"unknown {what} '{_shown(name)}': this server has {', '.join(table)}")
    return table[name]


def create_app(catalog: Catalog, limits: Limits | None = None,
               hosts: frozenset[str] | None = LOOPBACK_NAMES) -> Any:
    """The FastAPI application serving ``catalog`` within ``limits``, wrapped in its :class:`Gate` (``hosts``: the
    host names it answers to; None: any)."""
    limits = limits or Limits()
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="siamdiff-serve")
    static = resources.files("siamdiff.web").joinpath("static")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)  # a stop does not wait for the queue

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json
    app = FastAPI(title="siamdiff", version=__version__, docs_url=None, redoc_url=None, redirect_slashes=False,
                  lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    async def run(fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        except asyncio.CancelledError:  # the server is stopping: the request is abandoned, and told so
            raise Refused(503, "the server is stopping") from None

    async def upload(file: UploadFile, field: str) -> tuple[bytes, str]:
        data = await file.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise Refused(413, f"{field}: the upload is larger than the limit of {megabytes(limits.max_bytes)}")
        return data, file.filename or field

    def decode(data: bytes, name: str, keep_alpha: bool = False) -> np.ndarray:
        return read_image_bytes(data, name, keep_alpha=keep_alpha, max_pixels=limits.max_pixels)

    @functools.lru_cache(maxsize=1024)
    def thumbnail_png(path: str, stamp: tuple[int, int]) -> bytes:  # stamp: a changed file is read again
        from PIL import Image

        image = Image.fromarray(read_image_bytes(Path(path).read_bytes(), path, channels=3,
                                                 max_pixels=limits.max_pixels))
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return encode_png(np.asarray(image))

    @app.exception_handler(SiamdiffError)
    async def _bad_input(request: Request, exc: SiamdiffError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = first.get("msg", "invalid request")
        return error_response(422, f"{where}: {message}" if where else message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(MemoryError)
    async def _memory(request: Request, exc: MemoryError) -> JSONResponse:
        return error_response(503, "out of memory: try a smaller image", {"retry-after": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        if "can't allocate memory" in str(exc):  # torch's CPU allocator fails with a RuntimeError, not MemoryError
            return error_response(503, "out of memory: try a smaller image", {"retry-after": "5"})
        log.exception("internal error in %s", request.url.path)  # a bug of ours: logged, one line out
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """``{"status": "ok", "models": [...], "indexes": [...]}``."""
        return {"status": "ok", "version": __version__, **catalog.describe()}

    @app.post("/api/similarity")
    async def similarity(a: UploadFile = File(...), b: UploadFile = File(...),
                         model: str | None = Form(None), explain: bool = Form(False)) -> dict[str, Any]:
        """How similar two images are: ``siamdiff similarity --json``'s object (``a``, ``b``, ``similarity``,
        ``probability``, ``distance``, ``same``, ``appearance``); with ``explain``, also ``siamdiff explain
        --json``'s ``cosine``, ``map_a`` and ``map_b``, and its picture as ``explain_png_base64``."""
        chosen = _choose(catalog.similarity, model, "similarity model")
        (da, na), (db, nb) = await upload(a, "a"), await upload(b, "b")
        if not explain:
            return {"a": na, "b": nb, **await run(lambda: chosen.score(decode(da, na), decode(db, nb)))}

        def work() -> dict[str, Any]:
            result = chosen.explain(decode(da, na), decode(db, nb))
            picture = base64.b64encode(explanation_png(result, names=(na, nb))).decode("ascii")
            return {**explanation_json(result), "explain_png_base64": picture}

        return {"a": na, "b": nb, **await run(work)}

    @app.post("/api/search")
    async def search_index(image: UploadFile = File(...), index: str | None = Form(None),
                           k: int = Form(5)) -> dict[str, Any]:
        """The ``k`` nearest images of an index (at most :data:`MAX_K`): ``siamdiff search --json``'s object
        (``path``, ``search``, ``results``), each result with its ``id`` and the address of its thumbnail."""
        served = _choose(catalog.indexes, index, "index", "--index FILE")
        if not 1 <= k <= MAX_K:
            raise Refused(400, f"k must be from 1 to {MAX_K}, got {k}")
        name = next(n for n, s in catalog.indexes.items() if s is served)
        data, query = await upload(image, "image")
        hits = await run(lambda: search(served.index, served.model, decode(data, query), k))
        for hit in hits:
            hit["id"] = served.position[hit["path"]]
            hit["image_url"] = f"/api/indexes/{quote(name, safe='')}/images/{hit['id']}"
        return {"path": query, "index": name, "search": served.index.search_kind(), "results": hits}

    @app.get("/api/indexes/{name}/images/{number}")
    async def thumbnail(name: str, number: int) -> Response:
        """The picture of image ``number`` of an index, at most :data:`THUMBNAIL` pixels a side, as PNG."""
        served = _choose(catalog.indexes, name, "index", "--index FILE")
        if not 0 <= number < len(served.index.paths):
            raise Refused(404, f"index '{name}' has no image {number}")
        path = served.index.paths[number]
        try:
            stat = Path(path).stat()
            data = await run(lambda: thumbnail_png(path, (stat.st_size, stat.st_mtime_ns)))
        except (OSError, SiamdiffError) as exc:  # moved, deleted or damaged since it was indexed
            raise Refused(404, f"image {number} of index '{name}' cannot be read now: {one_line(str(exc))}") \
                from None
        return Response(data, media_type="image/png")

    @app.post("/api/denoise")
    async def denoise(image: UploadFile = File(...), model: str | None = Form(None), sigma: str = Form("auto"),
                      method: str | None = Form(None), label: str | None = Form(None), steps: int = Form(10),
                      guidance: float = Form(1.0), seed: int = Form(0), precision: str = Form("fp32"),
                      chain: bool = Form(False)) -> dict[str, Any]:
        """Clean a noisy image: ``siamdiff denoise --json``'s record (``input``, ``sigma``, ``sigma_estimated``,
        ``t_start``, ``method``, ``label``, ``tiles``, ...; no file is written) with the result as
        ``image_png_base64`` and, with ``chain``, the strip of its reverse chain as ``chain_png_base64``. Work of
        more network calls than the server's ``max_calls`` is refused before it starts."""
        chosen = _choose(catalog.denoisers, model, "denoising model")
        options = dict(sigma=auto_or(float)(sigma), method=method or None, steps=steps, seed=seed,
                       label=auto_or(int)(label) if label and label.strip() else None, guidance=guidance,
                       precision=precision, max_calls=limits.max_calls)
        data, name = await upload(image, "image")

        def work() -> dict[str, Any]:
            noisy = as_batch(decode(data, name, keep_alpha=True), "image")  # alpha kept, as files
            clean, record, frames = denoise_one(chosen, noisy, chain=chain, **options)
            extra = {} if frames is None else {"chain_png_base64": _png_base64(chain_strip(noisy[0], frames)),
                                               "chain_steps": [t for t, _ in frames]}
            return {"path": name, **record, "image_png_base64": _png_base64(clean), **extra}

        return await run(work)

    return Gate(app, limits, hosts)


__all__ = ["LOOPBACK_NAMES", "Limits", "create_app"]
