"""BEP 19 web seeds over aiohttp: file URLs and one validated byte-range GET.

The caller owns the :class:`aiohttp.ClientSession`. Every failure (connection, timeout, HTTP status, a
``Content-Range`` that does not match, a body that is too short or too long, a redirect loop) comes out as
:class:`WebSeedError`, whose ``kind`` is a short stable label for logging a problem once.

A server answering ``206 Partial Content`` must name exactly the requested range. A server that ignores
``Range`` and answers ``200`` with the whole file is used only while the requested range ends within
:data:`MAX_UNRANGED_PREFIX`: the bytes before the range are read and dropped, the rest is never read.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from ..errors import BridgeError
from ..proto.metainfo import InfoDict

__all__ = [
    "WebSeedError",
    "file_url",
    "stream_range",
    "fetch_range",
    "MAX_RANGE_BYTES",
    "MAX_UNRANGED_PREFIX",
    "MAX_REDIRECTS",
    "CONNECT_TIMEOUT",
    "READ_TIMEOUT",
]

log = logging.getLogger(__name__)

#: Largest range asked for in one request. Bigger ranges are split by the caller; a failed request then
#: costs at most this much to fetch again.
MAX_RANGE_BYTES = 4 * 1024 * 1024
#: A server that ignores Range (HTTP 200, whole file) is used only for ranges ending within this many
#: bytes of the file's start: everything before the range has to be read and dropped.
MAX_UNRANGED_PREFIX = 32 * 1024 * 1024
#: Redirects followed per request (CDNs and mirrors redirect once or twice; more is a loop).
MAX_REDIRECTS = 5
#: Seconds to open the TCP (and TLS) connection.
CONNECT_TIMEOUT = 10.0
#: Seconds without any byte from the server while waiting for headers or body.
READ_TIMEOUT = 30.0
#: Whole-request budget: this many seconds plus the bytes to read at MIN_RATE, so a server that trickles a
#: byte just often enough to dodge READ_TIMEOUT is still cut off.
TOTAL_TIMEOUT_BASE = 30.0
#: Slowest transfer (bytes/s) a request is given time for.
MIN_RATE = 8 * 1024
#: Size of the reads the body is streamed in; also the most read past the requested range.
READ_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)\s*", re.IGNORECASE)


class WebSeedError(BridgeError):
    """A web seed request failed. ``kind`` is a stable short label (for logging each problem once)."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or message


def file_url(base: str, info: InfoDict, index: int) -> str:
    """The URL of file ``index`` of a torrent on the web seed ``base`` (BEP 19, GetRight style).

    Single-file torrent: ``base`` itself, or ``base + name`` when ``base`` ends with ``/``. Multi-file
    torrent: ``base`` (plus ``/`` if missing) + name + ``/`` + path, each part percent-encoded. The base's
    query string, if any, is kept. Raises WebSeedError for a URL that is not http(s) with a host.
    """
    try:
        u = URL(base)
    except (ValueError, TypeError) as e:
        raise WebSeedError(f"bad web seed URL {base[:100]!r}: {e}", "bad URL") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise WebSeedError(f"web seed URL {base[:100]!r} is not http(s)://host/...", "bad URL")
    raw_path = u.raw_path or "/"
    if not (info.multi_file or raw_path.endswith("/")):
        return str(u)
    if not raw_path.endswith("/"):
        raw_path += "/"
    raw_path += "/".join(quote(part, safe="") for part in info.files[index].path)
    out = str(u.with_path(raw_path, encoded=True))
    query = urlsplit(base).query  # as given: yarl would decode e.g. %2F in a signed token
    if query:
        out += "?" + quote(query, safe="%/?:@!$&'()*+,;=~")
    return out


def _budget(nbytes: int) -> float:
    return TOTAL_TIMEOUT_BASE + nbytes / MIN_RATE


async def stream_range(
    session: aiohttp.ClientSession,
    url: str,
    start: int,
    length: int,
    sink: Callable[[bytes], None],
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    timeout: float | None = None,  # noqa: ASYNC109 -- a budget for the whole request, applied with asyncio.timeout
) -> None:
    """GET bytes ``start`` .. ``start + length - 1`` of ``url``, handing them to ``sink`` in order as they
    arrive (chunks of at most READ_CHUNK bytes, exactly ``length`` bytes in all when it returns).

    ``timeout`` bounds the whole request (default: TOTAL_TIMEOUT_BASE + the bytes at MIN_RATE). An
    exception from ``sink`` aborts the request and propagates. Raises WebSeedError on any failure; by then
    ``sink`` may have had part of the range.
    """
    if not 0 < length <= MAX_RANGE_BYTES:
        raise ValueError(f"range length {length} is outside 1..{MAX_RANGE_BYTES}")
    if start < 0:
        raise ValueError(f"range start {start} is negative")
    budget = timeout if timeout is not None else _budget(length)
    client_timeout = aiohttp.ClientTimeout(
        total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
    )
    try:
        async with asyncio.timeout(budget):
            await _get(session, url, start, length, sink, client_timeout)
    except WebSeedError:
        raise
    except aiohttp.ServerTimeoutError as e:  # connect or sock_read timeout (also a TimeoutError)
        raise WebSeedError(f"{_short(url)}: timed out ({type(e).__name__}: {e})", "timeout") from None
    except TimeoutError:
        raise WebSeedError(f"{_short(url)}: no complete answer within {budget:g} s", "timeout") from None
    except aiohttp.ClientResponseError as e:
        raise WebSeedError(f"{_short(url)}: bad HTTP response: {e.message}", "bad HTTP response") from None
    except aiohttp.ClientError as e:
        raise WebSeedError(f"{_short(url)}: HTTP request failed: {type(e).__name__}: {e}",
                           f"request failed: {type(e).__name__}") from None
    except (OSError, ValueError) as e:  # socket errors; yarl/aiohttp reject a malformed URL with ValueError
        raise WebSeedError(f"{_short(url)}: HTTP request failed: {type(e).__name__}: {e}",
                           f"request failed: {type(e).__name__}") from None


async def fetch_range(
    session: aiohttp.ClientSession,
    url: str,
    start: int,
    length: int,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    timeout: float | None = None,  # noqa: ASYNC109 -- see stream_range
) -> bytes:
    """:func:`stream_range` collected into one bytes object (at most MAX_RANGE_BYTES)."""
    buf = bytearray()
    await stream_range(session, url, start, length, buf.extend, connect_timeout=connect_timeout,
                       read_timeout=read_timeout, timeout=timeout)
    return bytes(buf)


def _short(url: str | URL) -> str:
    text = str(url)
    return text if len(text) <= 120 else text[:117] + "..."


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    start: int,
    length: int,
    sink: Callable[[bytes], None],
    client_timeout: aiohttp.ClientTimeout,
) -> None:
    try:
        current = URL(url, encoded=True)
    except (ValueError, TypeError) as e:
        raise WebSeedError(f"bad web seed URL {url[:100]!r}: {e}", "bad URL") from None
    if current.scheme not in ("http", "https") or not current.host:
        raise WebSeedError(f"web seed URL {url[:100]!r} is not http(s)://host/...", "bad URL")
    headers = {"Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity"}
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(current, headers=headers, allow_redirects=False, timeout=client_timeout) as resp:
            if resp.status in _REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                if not location:
                    raise WebSeedError(f"{_short(current)}: HTTP {resp.status} redirect without a Location",
                                       "redirect without Location")
                target = current.join(URL(location, encoded=True))
                if target.scheme not in ("http", "https") or not target.host:
                    raise WebSeedError(f"{_short(current)}: refusing redirect to {_short(target)!r}",
                                       "redirect to a non-http URL")
                log.debug("web seed %s redirected to %s", _short(current), _short(target))
                current = target
                continue
            try:
                await _read(resp, current, start, length, sink)
            finally:
                # Never drain what is left (a whole file from a server ignoring Range): drop the connection
                # unless the body was read to its end.
                if not resp.content.at_eof():
                    resp.close()
            return
    raise WebSeedError(f"{_short(url)}: more than {MAX_REDIRECTS} redirects", "redirect loop")


async def _read(
    resp: aiohttp.ClientResponse, url: URL, start: int, length: int, sink: Callable[[bytes], None]
) -> None:
    where = _short(url)
    end = start + length  # exclusive
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise WebSeedError(f"{where}: answered with Content-Encoding {encoding[:40]!r} (asked for identity)",
                           "content encoding")
    declared = resp.content_length
    if resp.status == 206:
        header = resp.headers.get("Content-Range", "")
        m = _CONTENT_RANGE.fullmatch(header)
        if m is None:
            raise WebSeedError(f"{where}: HTTP 206 without a single-range Content-Range (got {header[:60]!r})",
                               "bad Content-Range")
        first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
        if first != start or last != end - 1:
            raise WebSeedError(f"{where}: asked for bytes {start}-{end - 1}, got Content-Range {header[:60]!r}",
                               "wrong Content-Range")
        if total != "*" and int(total) < end:
            raise WebSeedError(f"{where}: Content-Range {header[:60]!r} is past the end of the file",
                               "bad Content-Range")
        if declared is not None and declared != length:
            raise WebSeedError(f"{where}: HTTP 206 for {length} bytes has Content-Length {declared}",
                               "wrong Content-Length")
        skip = 0
    elif resp.status == 200:
        # The server ignored Range and sends the whole file from byte 0.
        if end > MAX_UNRANGED_PREFIX:
            raise WebSeedError(
                f"{where}: the server ignores Range requests (HTTP 200) and bytes {start}-{end - 1} lie past "
                f"the first {MAX_UNRANGED_PREFIX} bytes read that way", "server ignores Range")
        if declared is not None and declared < end:
            raise WebSeedError(f"{where}: file has {declared} bytes, the torrent needs {end}", "file too short")
        skip = start
    elif resp.status == 416:
        raise WebSeedError(f"{where}: HTTP 416, bytes {start}-{end - 1} are not in the file (shorter than the "
                           f"torrent says?)", "HTTP 416")
    else:
        raise WebSeedError(f"{where}: HTTP {resp.status} {resp.reason or ''}".rstrip(), f"HTTP {resp.status}")

    remaining = length
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk = chunk[skip:]
            skip = 0
        if len(chunk) > remaining:
            if resp.status == 206:
                raise WebSeedError(f"{where}: HTTP 206 body is longer than the {length} bytes asked for",
                                   "body too long")
            chunk = chunk[:remaining]
        sink(chunk)
        remaining -= len(chunk)
        if not remaining:
            break
    if remaining:
        raise WebSeedError(f"{where}: body ended after {length - remaining} of {length} bytes", "body too short")
    if resp.status == 206 and declared is None:
        # A chunked 206 must end here; read at most one more chunk to make sure it does.
        extra = await resp.content.read(READ_CHUNK)
        if extra:
            raise WebSeedError(f"{where}: HTTP 206 body is longer than the {length} bytes asked for",
                               "body too long")
