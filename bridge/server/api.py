"""The JSON API of `serve`, under /api/v1/ (documented in OpenAPI at /api/v1/openapi.json).

Every answer is JSON; errors are ``{"error": message}`` with the right status (507 when the state cannot
be saved because the disk is full). When the daemon has a token, every route but /api/v1/health needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from ..proto.metainfo import MAX_TORRENT_SIZE

if TYPE_CHECKING:
    from ..daemon import Daemon

__all__ = ["add_api_routes", "OPENAPI", "MAX_API_BODY"]

#: Largest request body: a base64 .torrent of MAX_TORRENT_SIZE plus the JSON around it.
MAX_API_BODY = MAX_TORRENT_SIZE * 4 // 3 + 64 * 1024
#: Keys an "add" body may have.
_ADD_KEYS = {"magnet", "torrent", "url", "path", "peers", "paused"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=None))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def add_api_routes(app: web.Application, daemon: Daemon) -> None:
    api = _Api(daemon)
    r = app.router
    r.add_get("/api/v1/health", api.health)
    r.add_get("/api/v1/openapi.json", api.openapi)
    r.add_get("/api/v1/stats", api.stats)
    r.add_get("/api/v1/torrents", api.list)
    r.add_post("/api/v1/torrents", api.add)
    r.add_get("/api/v1/torrents/{infohash}", api.show)
    r.add_delete("/api/v1/torrents/{infohash}", api.remove)
    r.add_post("/api/v1/torrents/{infohash}/pause", api.pause)
    r.add_post("/api/v1/torrents/{infohash}/resume", api.resume)
    r.add_put("/api/v1/torrents/{infohash}/priorities", api.priorities)
    app.middlewares.append(_middleware(daemon.options.api_token))  # type: ignore[arg-type]


def _middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    from ..daemon import ApiError

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        is_api = path.startswith("/api/")
        guarded = path == "/metrics" or (is_api and path != "/api/v1/health")
        if token and guarded and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                                         f"Bearer {token}".encode()):
            return _error(401, "missing or wrong API token (Authorization: Bearer ...)")
        if not is_api:
            return await handler(request)
        try:
            return await handler(request)
        except ApiError as e:
            return _error(e.status, str(e))
        except OSError as e:  # a state file or folder that cannot be written: still a JSON answer
            full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            return _error(507 if full else 500, f"{type(e).__name__}: {e.strerror or e}")
        except web.HTTPException as e:
            if e.status >= 400:
                return _error(e.status, e.reason if e.text is None or e.text.startswith(str(e.status)) else e.text)
            raise
    return middleware


class _Api:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "torrents": len(self.d.entries)})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.d.stats_json())

    async def list(self, request: web.Request) -> web.Response:
        return _json([self.d.torrent_json(e) for e in self.d.entries.values()])

    async def show(self, request: web.Request) -> web.Response:
        return _json(self.d.torrent_json(self.d.get(request.match_info["infohash"]), detail=True))

    async def add(self, request: web.Request) -> web.Response:
        from ..daemon import ApiError

        fields: dict[str, Any]
        if request.content_type.startswith("multipart/"):
            try:
                fields = await _read_form(request)
            except ApiError:
                raise
            except (ValueError, LookupError, aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as e:
                raise ApiError(400, f"the multipart form cannot be read: {str(e)[:200]}") from None
        else:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError, LookupError):
                raise ApiError(400, "the body must be JSON (or a multipart form with a torrent file)") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object")
            unknown = set(body) - _ADD_KEYS
            if unknown:
                raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
            fields = dict(body)
            for key in ("magnet", "url", "path"):
                if key in fields and not isinstance(fields[key], str):
                    raise ApiError(400, f"{key} must be a string")
            if "torrent" in fields:
                if not isinstance(fields["torrent"], str):
                    raise ApiError(400, "torrent must be base64 text")
                try:
                    fields["torrent"] = base64.b64decode(fields["torrent"], validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(400, "torrent is not valid base64") from None
        peers = fields.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise ApiError(400, 'peers must be a list of "host:port" strings')
        paused = fields.get("paused", False)
        if not isinstance(paused, bool):
            raise ApiError(400, "paused must be true or false")
        entry = await self.d.add(magnet=fields.get("magnet"), torrent=fields.get("torrent"), url=fields.get("url"),
                                 path=fields.get("path"), peers=peers, paused=paused)
        return _json(self.d.torrent_json(entry), 201)

    async def remove(self, request: web.Request) -> web.Response:
        entry = self.d.get(request.match_info["infohash"])
        delete = request.query.get("delete_data", "false").lower() in ("1", "true", "yes")
        await self.d.remove(entry, delete)
        return _json({"removed": entry.info_hash, "data_deleted": delete})

    async def pause(self, request: web.Request) -> web.Response:
        entry = self.d.get(request.match_info["infohash"])
        await self.d.pause(entry)
        return _json(self.d.torrent_json(entry))

    async def resume(self, request: web.Request) -> web.Response:
        entry = self.d.get(request.match_info["infohash"])
        await self.d.resume(entry)
        return _json(self.d.torrent_json(entry))

    async def priorities(self, request: web.Request) -> web.Response:
        from ..daemon import ApiError

        entry = self.d.get(request.match_info["infohash"])
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, LookupError):
            raise ApiError(400, "the body must be JSON") from None
        prios = body.get("files") if isinstance(body, dict) else None
        if not isinstance(prios, list):
            raise ApiError(400, 'the body must be {"files": [priority per file]}')
        await self.d.set_priorities(entry, prios)
        return _json(self.d.torrent_json(entry, detail=True))


async def _read_form(request: web.Request) -> dict[str, Any]:
    from ..daemon import ApiError

    fields: dict[str, Any] = {}
    reader = await request.multipart()
    async for part in reader:
        name = getattr(part, "name", None)
        if name not in ("torrent", "peers", "paused"):
            raise ApiError(400, f"unknown form field {str(name)[:40]!r}")
        data = await part.read()  # type: ignore[union-attr]
        if name == "torrent":
            fields["torrent"] = bytes(data)
        elif name == "peers":
            fields["peers"] = [p for p in bytes(data).decode(errors="replace").split(",") if p.strip()]
        else:
            fields["paused"] = bytes(data).strip().lower() in (b"1", b"true", b"yes")
    return fields


_TORRENT = {
    "type": "object",
    "required": ["infohash", "name", "state", "progress", "download_rate", "upload_rate", "peers"],
    "properties": {
        "infohash": {"type": "string", "description": "40 hex digits"},
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["starting", "metadata", "checking", "downloading", "seeding",
                                             "paused", "error"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "size": {"type": ["integer", "null"]},
        "downloaded": {"type": "integer"}, "uploaded": {"type": "integer"},
        "download_rate": {"type": "integer", "description": "bytes per second"},
        "upload_rate": {"type": "integer", "description": "bytes per second"},
        "peers": {"type": "object", "description": "connected peers by kind",
                  "properties": {k: {"type": "integer"} for k in ("tcp", "utp", "webrtc", "webseed")}},
        "added_at": {"type": "number"}, "error": {"type": ["string", "null"]},
    },
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}
_IH = [{"name": "infohash", "in": "path", "required": True, "schema": {"type": "string"}}]


def _ok(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "webtorrent-bridge", "version": "1",
             "description": "Torrents of a running `webtorrent-bridge serve`. With a token, every route but "
                            "/api/v1/health needs `Authorization: Bearer <token>`."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                   "schemas": {"Torrent": _TORRENT}},
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/health": {"get": {"summary": "liveness (no token needed)", "security": [],
                                   "responses": {"200": _ok("alive")}}},
        "/api/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": _ok("OpenAPI")}}},
        "/api/v1/stats": {"get": {"summary": "global figures: torrents by state, rates, peers by kind",
                                  "responses": {"200": _ok("stats"), "401": _ERROR}}},
        "/api/v1/torrents": {
            "get": {"summary": "every torrent", "responses": {"200": _ok("list", {
                "type": "array", "items": {"$ref": "#/components/schemas/Torrent"}}), "401": _ERROR}},
            "post": {"summary": "add a torrent: exactly one of magnet, torrent (base64), url, path",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": {"type": "object", "properties": {
                             "magnet": {"type": "string"}, "torrent": {"type": "string", "format": "byte"},
                             "url": {"type": "string", "description": "http(s) URL of a .torrent"},
                             "path": {"type": "string", "description": "file or folder on the server to seed"},
                             "peers": {"type": "array", "items": {"type": "string"}},
                             "paused": {"type": "boolean"}}}},
                         "multipart/form-data": {"schema": {"type": "object", "properties": {
                             "torrent": {"type": "string", "format": "binary"}}}}}},
                     "responses": {"201": _ok("added", {"$ref": "#/components/schemas/Torrent"}),
                                   "400": _ERROR, "401": _ERROR, "409": _ERROR, "502": _ERROR,
                                   "507": _ERROR}},
        },
        "/api/v1/torrents/{infohash}": {
            "get": {"summary": "one torrent with files, pieces and peers", "parameters": _IH,
                    "responses": {"200": _ok("torrent"), "404": _ERROR}},
            "delete": {"summary": "remove (add ?delete_data=true to delete its files)", "parameters": [
                *_IH, {"name": "delete_data", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": _ok("removed"), "404": _ERROR}},
        },
        "/api/v1/torrents/{infohash}/pause": {"post": {"summary": "pause", "parameters": _IH,
                                                       "responses": {"200": _ok("paused"), "404": _ERROR, "507": _ERROR}}},
        "/api/v1/torrents/{infohash}/resume": {"post": {"summary": "resume (also restarts a torrent in state "
                                                        "error, e.g. after disk space was freed)", "parameters": _IH,
                                                        "responses": {"200": _ok("resumed"), "404": _ERROR, "507": _ERROR}}},
        "/api/v1/torrents/{infohash}/priorities": {"put": {
            "summary": "file priorities: {\"files\": [0..7 per file]} (0 skips a file)", "parameters": _IH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": _ok("torrent"), "400": _ERROR, "404": _ERROR, "507": _ERROR}}},
    },
}
