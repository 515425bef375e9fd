"""The aiohttp application: streaming routes, the demo page from ``web/``, and its WebTorrent bundle.

``web/`` is found next to the package in a source checkout or an editable install; elsewhere (a wheel, a
container) pass ``web_root`` or set ``BRIDGE_WEB_ROOT``. WebTorrent's browser bundle is never committed:
``npm install`` in ``web/`` (scripts/setup does it) puts it in ``web/node_modules``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .stream import StreamOptions, add_stream_routes

if TYPE_CHECKING:
    from ..engine.session import Session

log = logging.getLogger(__name__)

#: Files of web/ served at the root, by suffix. package.json and the like stay private.
_STATIC_SUFFIXES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                    ".ico": "image/x-icon", ".webmanifest": "application/manifest+json"}
#: WebTorrent's files, served from the root (the service worker's scope must cover the page).
_BUNDLE = {"webtorrent.min.js": "webtorrent.min.js", "sw.min.js": "sw.min.js"}
#: Security headers of the page: no framing by other sites, no MIME sniffing.
_PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                 "Referrer-Policy": "no-referrer"}


def default_web_root() -> Path | None:
    env = os.environ.get("BRIDGE_WEB_ROOT")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2] / "web"
    return candidate if (candidate / "index.html").is_file() else None


def bundle_path(web_root: Path) -> Path:
    return web_root / "node_modules" / "webtorrent" / "dist" / "webtorrent.min.js"


def make_app(session: Session, web_root: Path | None = None, options: StreamOptions | None = None) -> web.Application:
    app = web.Application()
    add_stream_routes(app, session, options)
    root = web_root if web_root is not None else default_web_root()
    if root is not None:
        _add_page_routes(app, root)
    return app


def _add_page_routes(app: web.Application, root: Path, index: str = "index.html") -> None:
    """Top-level files of ``root`` by name, WebTorrent's bundle, and ``index`` at ``/`` (the demo's player
    is index.html; `serve` puts its torrent list there and keeps the player at /index.html)."""
    files: dict[str, tuple[Path, str]] = {}
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        ctype = _STATIC_SUFFIXES.get(entry.suffix.lower())
        if ctype and entry.is_file() and not entry.is_symlink():
            files[entry.name] = (entry, ctype)
    dist = root / "node_modules" / "webtorrent" / "dist"
    for name, dist_name in _BUNDLE.items():
        files[name] = (dist / dist_name, "text/javascript; charset=utf-8")

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or index
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound(text="not found\n")
        path, ctype = found
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{name} is missing: run `npm install --ignore-scripts` in {root}\n")
        headers = {"Content-Type": ctype, "Cache-Control": "no-cache", **_PAGE_HEADERS}
        if name == "sw.min.js":
            headers["Service-Worker-Allowed"] = "/"
        return web.FileResponse(path, headers=headers)

    app.router.add_get("/", serve)
    app.router.add_get("/{name:[A-Za-z0-9._-]+}", serve)


@dataclass
class HttpServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_http_server(session: Session, host: str = "127.0.0.1", port: int = 0, *,
                            web_root: Path | None = None, options: StreamOptions | None = None) -> HttpServer:
    """Serve streaming (and the demo page when ``web/`` is found) on ``host:port``. Raises OSError when
    the address cannot be bound."""
    app = make_app(session, web_root, options)
    server = await _serve(app, host, port)
    log.info("HTTP server on %s:%d", host, server.port)
    return server


async def _serve(app: web.Application, host: str, port: int) -> HttpServer:
    # handler_cancellation: a client that disconnects while its request waits for a piece cancels the
    # handler, which closes its reader and so gives the piece priorities back at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return HttpServer(runner, host, bound)


async def start_api_server(daemon: Any, host: str, port: int, *, web_root: Path | None = None) -> HttpServer:
    """`serve`'s HTTP server: the JSON API, streaming, and the page; raises OSError if it cannot bind."""
    from .api import MAX_API_BODY, add_api_routes
    from .metrics import add_metrics_route

    app = web.Application(client_max_size=MAX_API_BODY)
    add_api_routes(app, daemon)
    add_metrics_route(app, daemon)
    add_stream_routes(app, daemon.session)
    root = web_root if web_root is not None else default_web_root()
    if root is not None:
        _add_page_routes(app, root, index="ui.html")
    server = await _serve(app, host, port)
    log.info("API and streams on %s:%d", host, server.port)
    return server
