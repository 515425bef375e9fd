"""HTTP streaming of torrent files while they download, and the same URLs as a BEP 19 / WebTorrent web seed.

``GET /torrents/{infohash}/files/{path}`` serves one file of a torrent the session has. ``{path}`` is the
file's path as WebTorrent names it: the torrent name, then (for a multi-file torrent) the path inside it,
each part percent-encoded. So ``http://host:port/torrents/{infohash}/files/`` is a web seed URL that both
BEP 19 clients (aria2, libtorrent) and WebTorrent's ``urlList`` resolve correctly, for single- and
multi-file torrents.

Bytes that are not downloaded yet are waited for (up to ``read_timeout`` per piece), and the pieces under
the request become the most urgent ones of the torrent. A client that goes away releases them.
"""

from __future__ import annotations

import logging
import mimetypes
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ..engine.reader import ReaderClosed, ReadTimeout, TorrentReader
from ..proto.metainfo import FileEntry
from .ranges import RangeNotSatisfiable, parse_range

if TYPE_CHECKING:
    from ..engine.session import Session
    from ..engine.torrent import Torrent

log = logging.getLogger(__name__)

__all__ = ["StreamOptions", "add_stream_routes", "file_url_path"]

#: Types browsers need to play or show common torrent content; mimetypes covers the rest.
_EXTRA_TYPES = {".mkv": "video/x-matroska", ".webm": "video/webm", ".m4v": "video/mp4", ".mp4": "video/mp4",
                ".ogv": "video/ogg", ".opus": "audio/ogg", ".flac": "audio/flac", ".m4a": "audio/mp4",
                ".srt": "text/plain; charset=utf-8", ".vtt": "text/vtt; charset=utf-8"}
#: Headers a page on another origin may read from a range answer (WebTorrent's web seed code reads them).
_EXPOSED = "Accept-Ranges, Content-Length, Content-Range, Content-Type, ETag"


@dataclass(frozen=True)
class StreamOptions:
    #: Seconds one request waits for a missing piece before giving up (503 before the first byte;
    #: after it the connection is cut, as the status line is already sent).
    read_timeout: float = 60.0
    #: ``Access-Control-Allow-Origin`` for file answers: "*" lets pages anywhere use the bridge as a web
    #: seed (the files are public torrent content); "" sends no CORS headers.
    cors_origin: str = "*"


def file_url_path(torrent: Torrent, entry: FileEntry) -> str:
    """The URL path of a file (percent-encoded), matching what the route accepts."""
    from urllib.parse import quote

    parts = "/".join(quote(p, safe="") for p in _parts(torrent, entry))
    return f"/torrents/{torrent.info_hash.hex()}/files/{parts}"


def _parts(torrent: Torrent, entry: FileEntry) -> tuple[str, ...]:
    # FileEntry.path starts with the torrent name for multi-file torrents; a single file is its name.
    return entry.path if len(torrent.info.files) > 1 else (torrent.info.name,)


def _content_type(name: str) -> str:
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot >= 0 else ""
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


class _Streamer:
    def __init__(self, session: Session, options: StreamOptions) -> None:
        self.session = session
        self.opts = options

    def _cors(self, headers: dict[str, str]) -> None:
        if self.opts.cors_origin:
            headers["Access-Control-Allow-Origin"] = self.opts.cors_origin
            headers["Access-Control-Expose-Headers"] = _EXPOSED
            if self.opts.cors_origin != "*":
                headers["Vary"] = "Origin"

    def _find(self, request: web.Request) -> tuple[Torrent, int, FileEntry]:
        raw = request.match_info["infohash"]
        try:
            info_hash = bytes.fromhex(raw)
        except ValueError:
            info_hash = b""
        torrent = self.session.torrents.get(info_hash) if len(info_hash) == 20 else None
        if torrent is None:
            raise self._error(web.HTTPNotFound, "no such torrent here")
        wanted = tuple(request.match_info["path"].split("/"))
        for index, entry in enumerate(torrent.info.files):
            if not entry.padding and _parts(torrent, entry) == wanted:
                return torrent, index, entry
        raise self._error(web.HTTPNotFound, "no such file in this torrent")

    def _error(self, cls: type[web.HTTPException], text: str) -> web.HTTPException:
        headers: dict[str, str] = {}
        self._cors(headers)
        return cls(text=text + "\n", headers=headers)

    async def torrent_file(self, request: web.Request) -> web.Response:
        """The torrent's metainfo (info dict and web seed), for a magnet's ``xs=``: a page can start
        without any peer. Public, like the files themselves."""
        from ..proto.metainfo import build_torrent

        torrent = self.session.torrents.get(bytes.fromhex(request.match_info["infohash"]))
        if torrent is None:
            raise self._error(web.HTTPNotFound, "no such torrent here")
        base = f"{request.scheme}://{request.host}/torrents/{torrent.info_hash.hex()}/files/"
        body = build_torrent(torrent.info, torrent.trackers, [base, *torrent.web_seed_urls])
        headers = {"Content-Type": "application/x-bittorrent",
                   "Content-Disposition": f'attachment; filename="{torrent.info_hash.hex()}.torrent"'}
        self._cors(headers)
        return web.Response(body=body, headers=headers)

    async def options(self, request: web.Request) -> web.Response:
        headers: dict[str, str] = {"Allow": "GET, HEAD, OPTIONS"}
        if self.opts.cors_origin:
            self._cors(headers)
            headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
            # Reflect what the page asks to send (WebTorrent's web seed sends Cache-Control with its Range):
            # these are public files, and a preflight that refuses one header fails the whole fetch.
            asked = request.headers.get("Access-Control-Request-Headers", "")
            ok = len(asked) <= 512 and all(c.isalnum() or c in "-_, " for c in asked)
            headers["Access-Control-Allow-Headers"] = asked if asked and ok else "Range, If-Range, If-None-Match"
            headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204, headers=headers)

    async def get(self, request: web.Request) -> web.StreamResponse:
        torrent, index, entry = self._find(request)
        size = entry.length
        etag = f'"{torrent.info_hash.hex()}-{index}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Type": _content_type(entry.path[-1]),
                   "Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
        self._cors(headers)
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)

        ranges: list[tuple[int, int]] | None = None
        header = request.headers.get("Range")
        if header is not None and _if_range_ok(request.headers.get("If-Range"), etag):
            try:
                ranges = parse_range(header, size)
            except RangeNotSatisfiable as e:
                headers["Content-Range"] = f"bytes */{size}"
                headers["Content-Type"] = "text/plain; charset=utf-8"
                return web.Response(status=416, text=f"{e}\n", headers=headers)

        if ranges is None:
            return await self._send(request, torrent, entry, 200, headers, [(0, size)], None)
        if len(ranges) == 1:
            start, end = ranges[0]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return await self._send(request, torrent, entry, 206, headers, ranges, None)
        boundary = secrets.token_hex(16)
        part_type = headers["Content-Type"]
        headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        heads = [(f"--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {s}-{e - 1}/{size}\r\n\r\n"
                  ).encode() for s, e in ranges]
        tail = f"\r\n--{boundary}--\r\n".encode()
        return await self._send(request, torrent, entry, 206, headers, ranges, (heads, tail))

    async def _send(self, request: web.Request, torrent: Torrent, entry: FileEntry, status: int,
                    headers: dict[str, str], ranges: list[tuple[int, int]],
                    multipart: tuple[list[bytes], bytes] | None) -> web.StreamResponse:
        body_length = sum(e - s for s, e in ranges)
        if multipart is not None:
            heads, tail = multipart
            body_length += sum(len(h) for h in heads) + 2 * (len(heads) - 1) + len(tail)
        headers["Content-Length"] = str(body_length)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        timeout = self.opts.read_timeout
        reader = TorrentReader(torrent)
        try:
            chunks = _chunks(reader, entry, ranges, multipart, timeout)
            try:
                first = await anext(chunks, None)
            except ReadTimeout:
                return web.Response(status=503, text="the torrent did not download these bytes in time; retry\n",
                                    headers={"Retry-After": "5", **{k: v for k, v in headers.items()
                                                                    if k.startswith("Access-Control")}})
            except ReaderClosed as e:
                raise self._error(web.HTTPServiceUnavailable, f"the torrent stopped: {e}") from None
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            try:
                if first is not None:
                    await response.write(first)
                async for chunk in chunks:
                    await response.write(chunk)
            except (ReadTimeout, ReaderClosed) as e:
                log.info("[%s] stream of %s cut: %s", torrent.tag, entry.path[-1], e)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            reader.close()


async def _chunks(reader: TorrentReader, entry: FileEntry, ranges: list[tuple[int, int]],
                  multipart: tuple[list[bytes], bytes] | None, timeout: float
                  ) -> AsyncIterator[bytes | memoryview]:
    for n, (start, end) in enumerate(ranges):
        if multipart is not None:
            yield (b"\r\n" if n else b"") + multipart[0][n]
        if end > start:
            async for chunk in reader.stream(entry.offset + start, end - start, timeout):
                yield chunk
    if multipart is not None:
        yield multipart[1]


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def _if_range_ok(if_range: str | None, etag: str) -> bool:
    """RFC 9110 13.1.5: apply Range only if If-Range (when present) is our strong ETag. A date there
    cannot be checked (we send no Last-Modified), so the range is ignored and the whole file is sent."""
    return if_range is None or if_range.strip() == etag


def add_stream_routes(app: web.Application, session: Session, options: StreamOptions | None = None) -> None:
    streamer = _Streamer(session, options or StreamOptions())
    app.router.add_get("/torrents/{infohash:[0-9a-fA-F]{40}}.torrent", streamer.torrent_file)
    path = "/torrents/{infohash}/files/{path:.+}"
    app.router.add_get(path, streamer.get)  # aiohttp adds HEAD for GET routes
    app.router.add_route("OPTIONS", path, streamer.options)


