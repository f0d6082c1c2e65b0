"""Start the server: check everything (the extra installed, the address, the models) before answering."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import socket
import sys

from ..core.errors import SiamdiffError, number, require


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is reachable from this machine only."""
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
          indexes: list[str] | None = None, max_upload_mb: float | None = None, **limits: int | None) -> None:
    """Listen, load the models and indexes, then serve the page and the API until interrupted. ``limits``: the
    fields of :class:`~siamdiff.web.app.Limits` (None: its default)."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401 - python-multipart, which FastAPI needs for uploads
        import uvicorn
    except ImportError:
        raise SiamdiffError("the web server needs FastAPI and uvicorn: pip install 'siamdiff[web]'") from None
    from .app import LOOPBACK_NAMES, Limits, create_app
    from .catalog import Catalog

    given = {k: v for k, v in limits.items() if v is not None}
    if max_upload_mb is not None:
        megabytes = number(max_upload_mb, "max_upload_mb")
        require(math.isfinite(megabytes) and megabytes > 0, "max_upload_mb", "a positive number", max_upload_mb)
        given["max_bytes"] = max(1, int(megabytes * 2**20))
    unknown = set(given) - {f.name for f in dataclasses.fields(Limits)}
    if unknown:
        raise TypeError(f"unknown limits: {', '.join(sorted(unknown))}")
    settings = Limits(**given)
    sock = listen(host, port)  # a port in use is said at once, not after the models are loaded
    try:
        bound = sock.getsockname()[0]
        local = is_loopback(bound)
        catalog = Catalog.load(models, indexes)
        catalog.warm_up()
    except BaseException:
        sock.close()
        raise
    if not local:
        print(f"siamdiff: warning: listening on {host}, not on loopback: anyone who can reach this machine can use "
              f"the server (it has no authentication)", file=sys.stderr)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]
    print(f"siamdiff: serving on http://{shown}:{where[1]}/ ({len(catalog.similarity)} similarity, "
          f"{len(catalog.denoisers)} denoising model(s), {len(catalog.indexes)} index(es)); Ctrl-C stops",
          flush=True)
    app = create_app(catalog, settings, LOOPBACK_NAMES | {host.lower(), bound} if local else None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    interrupted = False
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        interrupted = True
    # A request still being computed would hold the exit until it ends (the pool's thread is joined at exit): a
    # stop is a stop, so leave without it, with the command line's code for an interruption.
    print("siamdiff: stopped", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130 if interrupted else 0)
