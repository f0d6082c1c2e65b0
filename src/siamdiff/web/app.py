"""The web API and page of ``siamdiff serve``: JSON out, images in as multipart uploads (needs FastAPI).

Each endpoint calls the library function its command-line twin calls — ``SimilarityModel.score``, ``search``,
``denoise_one`` — and returns the same object plus what only a page needs (images as base64 PNG, thumbnails).

Safety, in the order a request meets it (:class:`Gate`, then the endpoint):

* at most ``workers + queue`` API requests are admitted at once; a burst beyond is answered 503 with
  ``Retry-After``, before its body is read, so memory is bounded by ``(workers + queue) × max_body``;
* a request body above the limit is answered 413 without being read further;
* an upload is decoded from its content alone (its name and type are not trusted), only as one of the formats of
  :data:`~siamdiff.data.imageio.UPLOAD_FORMATS`, with the pixel limit checked from the header before decoding;
* models and indexes are chosen by name among those the server was started with, never by a path;
* every refusal is a 4xx ``{"error": "one line"}``; the work itself runs in a bounded pool of threads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..core.errors import SiamdiffError, one_line
from ..core.version import __version__
from ..data.imageio import MAX_PIXELS, encode_png, read_image, read_image_bytes
from ..data.inputs import as_batch, to_uint8
from ..reconstruction.pipeline import chain_strip, denoise_one
from ..similarity.index import search
from .catalog import Catalog

log = logging.getLogger(__name__)

THUMBNAIL = 160  # the longest side of a search result's picture, in pixels


@dataclass(frozen=True)
class Limits:
    """What one server admits. ``max_bytes``: per uploaded file; ``max_pixels``: per uploaded image (at most the
    files' own decompression-bomb limit); ``workers``: requests computed at once; ``queue``: requests waiting."""

    max_bytes: int = 16 * 2**20
    max_pixels: int = 2048 * 2048
    workers: int = 1
    queue: int = 8

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "workers"):
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


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class Gate:
    """ASGI middleware in front of the API: admission (503 beyond capacity) and the body limit (413)."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.busy = 0  # API requests admitted and not yet answered (one event loop: no lock needed)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        capacity = self.limits.workers + self.limits.queue
        if self.busy >= capacity:
            await _answer(send, 503, f"the server is busy ({self.busy} requests in progress): retry shortly",
                          {"retry-after": "1"})
            return
        self.busy += 1
        try:
            await self._admitted(scope, receive, send)
        finally:
            self.busy -= 1

    async def _admitted(self, scope: dict, receive: Callable, send: Callable) -> None:
        limit = self.limits.max_body
        too_large = f"the request is larger than the server's limit of {limit // 2**20} MB"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413 if declared.isdigit() else 400,
                          too_large if declared.isdigit() else "the Content-Length header is not a number")
            return
        body = bytearray()
        while True:  # the whole body, up to the limit, before the application parses any of it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _answer(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)


async def _answer(send: Callable, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": one_line(message)}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _png_base64(image: Any) -> str:
    """An image ``(C, H, W)`` in [0, 1] as a base64 PNG."""
    return base64.b64encode(encode_png(to_uint8(image))).decode("ascii")


def _parse_sigma(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise SiamdiffError(f"{{sigma}} must be a number or auto, got {text!r}", "sigma") from None


def _parse_label(text: str | None) -> int | str | None:
    if text is None or not text.strip():
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise SiamdiffError(f"{{label}} must be a class number or auto, got {text!r}", "label") from None


def _choose(table: dict, name: str | None, what: str, flag: str = "--model") -> Any:
    """The entry of ``table`` called ``name`` (None: the first), or a 404 that lists the names."""
    if not table:
        raise Refused(404, f"this server has no {what}: start it with {flag}")
    if name is None or not name.strip():
        return next(iter(table.values()))
    if name not in table:
        raise Refused(404, f"unknown {what} '{name}': this server has {', '.join(table)}")
    return table[name]


def create_app(catalog: Catalog, limits: Limits | None = None) -> Any:
    """The FastAPI application serving ``catalog`` within ``limits``, wrapped in its :class:`Gate`."""
    limits = limits or Limits()
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="siamdiff-serve")
    static = resources.files("siamdiff.web").joinpath("static")
    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json
    app = FastAPI(title="siamdiff", version=__version__, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def upload(file: UploadFile, field: str) -> tuple[bytes, str]:
        data = await file.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise Refused(413, f"{field}: the upload is larger than the limit of {limits.max_bytes // 2**20} MB")
        return data, file.filename or field

    def decode(data: bytes, name: str, keep_alpha: bool = False) -> np.ndarray:
        return read_image_bytes(data, name, keep_alpha=keep_alpha, max_pixels=limits.max_pixels)

    @app.exception_handler(SiamdiffError)
    async def _bad_input(request: Request, exc: SiamdiffError) -> JSONResponse:
        return JSONResponse({"error": one_line(str(exc))}, status_code=400)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": one_line(str(exc))}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = first.get("msg", "invalid request")
        return JSONResponse({"error": one_line(f"{where}: {message}" if where else message)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(str(exc.detail))}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(MemoryError)
    async def _memory(request: Request, exc: MemoryError) -> JSONResponse:
        return JSONResponse({"error": "out of memory: try a smaller image"}, status_code=503,
                            headers={"retry-after": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # a bug of ours: logged, one line out
        log.exception("internal error in %s", request.url.path)
        return JSONResponse({"error": one_line(f"internal error: {type(exc).__name__}")}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """``{"status": "ok", "models": [...], "indexes": [...]}``."""
        return {"status": "ok", "version": __version__, **catalog.describe()}

    @app.post("/api/similarity")
    async def similarity(a: UploadFile = File(...), b: UploadFile = File(...),
                         model: str | None = Form(None)) -> dict[str, Any]:
        """How similar two images are: ``siamdiff similarity --json``'s object (``a``, ``b``, ``probability``,
        ``distance``, ``same``)."""
        chosen = _choose(catalog.similarity, model, "similarity model")
        (da, na), (db, nb) = await upload(a, "a"), await upload(b, "b")
        result = await run(lambda: chosen.score(decode(da, na), decode(db, nb)))
        return {"a": na, "b": nb, **result}

    @app.post("/api/search")
    async def search_index(image: UploadFile = File(...), index: str | None = Form(None),
                           k: int = Form(5)) -> dict[str, Any]:
        """The ``k`` nearest images of an index: ``siamdiff search --json``'s object (``query``, ``results``), each
        result with its ``id`` and the address of its thumbnail."""
        served = _choose(catalog.indexes, index, "index", "--index FILE")
        name = next(n for n, s in catalog.indexes.items() if s is served)
        data, query = await upload(image, "image")
        hits = await run(lambda: search(served.index, served.model, decode(data, query), k))
        for hit in hits:
            hit["id"] = served.position[hit["path"]]
            hit["image_url"] = f"/api/indexes/{name}/images/{hit['id']}"
        return {"query": query, "index": name, "results": hits}

    @app.get("/api/indexes/{name}/images/{number}")
    async def thumbnail(name: str, number: int) -> Response:
        """The picture of image ``number`` of an index, at most :data:`THUMBNAIL` pixels a side, as PNG."""
        served = _choose(catalog.indexes, name, "index", "--index FILE")
        if not 0 <= number < len(served.index.paths):
            raise Refused(404, f"index '{name}' has no image {number}")

        def picture() -> bytes:
            from PIL import Image

            image = Image.fromarray(np.ascontiguousarray(read_image(served.index.paths[number], channels=3)))
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            return encode_png(np.asarray(image))

        try:
            data = await run(picture)
        except SiamdiffError as exc:  # moved or deleted since it was indexed
            raise Refused(404, str(exc)) from None
        return Response(data, media_type="image/png")

    @app.post("/api/denoise")
    async def denoise(image: UploadFile = File(...), model: str | None = Form(None), sigma: str = Form("auto"),
                      method: str | None = Form(None), label: str | None = Form(None), steps: int = Form(10),
                      guidance: float = Form(1.0), seed: int = Form(0), precision: str = Form("fp32"),
                      chain: bool = Form(False)) -> dict[str, Any]:
        """Clean a noisy image: ``siamdiff denoise --json``'s record (``input``, ``sigma``, ``sigma_estimated``,
        ``t_start``, ``method``, ``label``, ``tiles``, ...; no file is written) with the result as
        ``image_png_base64`` and, with ``chain``, the strip of its reverse chain as ``chain_png_base64``."""
        chosen = _choose(catalog.denoisers, model, "denoising model")
        options = dict(sigma=_parse_sigma(sigma), method=method or None, steps=steps, label=_parse_label(label),
                       seed=seed, precision=precision)
        options["guidance"] = guidance if options["label"] is not None else 0.0
        data, name = await upload(image, "image")

        def work() -> dict[str, Any]:
            noisy = as_batch(decode(data, name, keep_alpha=True), "image")  # alpha kept, as files
            clean, record, frames = denoise_one(chosen, noisy, chain=chain, **options)
            extra = {} if frames is None else {"chain_png_base64": _png_base64(chain_strip(noisy[0], frames)),
                                               "chain_steps": [t for t, _ in frames]}
            return {"input": name, **record, "image_png_base64": _png_base64(clean), **extra}

        return await run(work)

    return Gate(app, limits)


__all__ = ["Limits", "create_app"]
