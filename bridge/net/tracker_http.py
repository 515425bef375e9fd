"""HTTP(S) tracker announce (BEP 3) over aiohttp: a thin adapter around :mod:`bridge.proto.tracker`.

The caller owns the :class:`aiohttp.ClientSession`. Every failure (connection, timeout, HTTP status,
oversize or malformed body, ``failure reason``) comes out as :class:`~bridge.errors.TrackerError`.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from yarl import URL

from ..errors import TrackerError
from ..proto.tracker import (
    MAX_HTTP_BODY,
    AnnounceRequest,
    AnnounceResponse,
    build_http_announce_url,
    parse_http_announce_response,
)

__all__ = ["announce_http", "MAX_REDIRECTS"]

log = logging.getLogger(__name__)

#: Redirects followed per announce. Trackers behind a load balancer or moved to https redirect once or
#: twice; more than a few is a loop or a misconfiguration, and each hop costs a connection.
MAX_REDIRECTS = 5
#: Size of the reads the body is streamed in. Small enough that the over-limit check triggers soon after
#: MAX_HTTP_BODY, large enough that a normal answer arrives in one or two reads.
_READ_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def announce_http(
    session: aiohttp.ClientSession,
    url: str,
    req: AnnounceRequest,
    *,
    tracker_id: bytes | None = None,
    timeout: float = 20.0,  # noqa: ASYNC109 -- the public API takes a budget; asyncio.timeout applies it
) -> AnnounceResponse:
    """Announce ``req`` to the HTTP(S) tracker at ``url`` and return its parsed answer.

    ``timeout`` bounds the whole exchange, redirects and body included. Redirects are followed only to
    http(s) URLs. Raises TrackerError on any failure.
    """
    full_url = build_http_announce_url(url, req, tracker_id)
    try:
        async with asyncio.timeout(timeout):
            status, body = await _get(session, full_url, aiohttp.ClientTimeout(total=timeout))
    except TrackerError:
        raise
    except TimeoutError:
        raise TrackerError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise TrackerError(f"HTTP request failed: {type(exc).__name__}: {exc}") from None
    except (OSError, ValueError) as exc:  # socket errors; yarl/aiohttp reject a malformed URL with ValueError
        raise TrackerError(f"HTTP request failed: {type(exc).__name__}: {exc}") from None
    if status != 200:
        reason = ""
        try:
            parse_http_announce_response(body)
        except TrackerError as exc:
            if str(exc).startswith("tracker failure:"):
                reason = ": " + str(exc)
        raise TrackerError(f"HTTP status {status}{reason}")
    return parse_http_announce_response(body)


async def _get(
    session: aiohttp.ClientSession, url: str, client_timeout: aiohttp.ClientTimeout
) -> tuple[int, bytes]:
    # encoded=True: the query is already percent-encoded byte for byte; yarl must not re-quote it.
    current = URL(url, encoded=True)
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(current, allow_redirects=False, timeout=client_timeout) as resp:
            if resp.status in _REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                if not location:
                    raise TrackerError(f"HTTP {resp.status} redirect without a Location header")
                target = current.join(URL(location, encoded=True))
                if target.scheme not in ("http", "https") or not target.host:
                    raise TrackerError(f"refusing redirect to {str(target)[:100]!r}")
                log.debug("tracker %s redirected to %s", current.with_query(None), target.with_query(None))
                current = target
                continue
            return resp.status, await _read_body(resp)
    raise TrackerError(f"more than {MAX_REDIRECTS} redirects")


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    length = resp.content_length
    if length is not None and length > MAX_HTTP_BODY:
        raise TrackerError(f"response body of {length} bytes exceeds the {MAX_HTTP_BODY}-byte limit")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        buf += chunk
        if len(buf) > MAX_HTTP_BODY:
            raise TrackerError(f"response body exceeds the {MAX_HTTP_BODY}-byte limit")
    return bytes(buf)
