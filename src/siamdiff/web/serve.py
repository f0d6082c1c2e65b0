"""Start the server: check everything (the extra installed, the models, the address) before listening."""

from __future__ import annotations

import ipaddress
import math
import socket
import sys

from ..core.errors import SiamdiffError, number, require


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (port 0: a free one), or one line saying why not."""
    require(isinstance(port, int) and 0 <= port <= 65535, "port", "from 0 to 65535", port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SiamdiffError(f"cannot listen on '{host}': no such address", "host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        raise SiamdiffError(f"cannot listen on {host}:{port}: {reason}", "port") from None
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[str] | None = None,
          indexes: list[str] | None = None, workers: int = 1, queue: int = 8, max_upload_mb: float = 16,
          max_pixels: int = 2048 * 2048) -> None:
    """Load the models and indexes, then serve the page and the API until interrupted."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401 - python-multipart, which FastAPI needs for uploads
        import uvicorn
    except ImportError:
        raise SiamdiffError("the web server needs FastAPI and uvicorn: pip install 'siamdiff[web]'") from None
    from .app import Limits, create_app
    from .catalog import Catalog

    megabytes = number(max_upload_mb, "max_upload_mb")
    require(math.isfinite(megabytes) and megabytes > 0, "max_upload_mb", "a positive number", max_upload_mb)
    limits = Limits(max_bytes=max(1, int(megabytes * 2**20)), max_pixels=max_pixels, workers=workers, queue=queue)
    catalog = Catalog.load(models, indexes)
    catalog.warm_up()
    sock = listen(host, port)
    if not is_loopback(host):
        print(f"siamdiff: warning: listening on {host}, not on loopback: anyone who can reach this machine can use "
              f"the server (it has no authentication)", file=sys.stderr)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]
    print(f"siamdiff: serving on http://{shown}:{where[1]}/ ({len(catalog.similarity)} similarity, "
          f"{len(catalog.denoisers)} denoising model(s), {len(catalog.indexes)} index(es)); Ctrl-C stops",
          flush=True)
    config = uvicorn.Config(create_app(catalog, limits), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
