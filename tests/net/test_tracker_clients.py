"""The HTTP and UDP tracker clients against small real trackers on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from bridge.errors import TrackerError
from bridge.net.tracker_http import announce_http
from bridge.net.tracker_udp import ConnectionIdCache, announce_udp
from bridge.proto.tracker import MAX_HTTP_BODY, AnnounceRequest

pytestmark = pytest.mark.timeout(60)

INFO_HASH = bytes(range(100, 120))
PEER_ID = b"-WB0001-\x00\xff%&=?+ /#\x80\x7f"
REQ = AnnounceRequest(INFO_HASH, PEER_ID, 6881, 10, 20, 30, "started", numwant=25, key=0x1234)


def benc(v: Any) -> bytes:
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    items = sorted((k.encode(), x) for k, x in v.items())
    return b"d" + b"".join(benc(k) + benc(x) for k, x in items) + b"e"


def raw_query(request: web.Request) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in request.rel_url.raw_query_string.split("&"):
        k, _, v = part.partition("=")
        out[k] = urllib.parse.unquote_to_bytes(v)
    return out


# --- HTTP ---------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpTracker:
    """An aiohttp.web app whose /announce behaviour each test sets; records raw queries."""

    def __init__(self) -> None:
        self.handler: Handler = self.ok
        self.queries: list[dict[str, bytes]] = []
        self.base = ""

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=benc({"interval": 900, "peers": b"\x01\x02\x03\x04\x1a\xe1"}))

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(raw_query(request))
        return await self.handler(request)


@pytest.fixture
async def http_tracker() -> AsyncIterator[HttpTracker]:
    tracker = HttpTracker()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", tracker.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    tracker.base = f"http://{host}:{port}"
    try:
        yield tracker
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_http_announce_sends_exact_bytes_and_parses(
    http_tracker: HttpTracker, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(10):
        resp = await announce_http(session, http_tracker.base + "/announce?passkey=s3cr%2Bt", REQ)
    assert resp.peers == (("1.2.3.4", 6881),) and resp.interval == 900
    q = http_tracker.queries[0]
    assert q["passkey"] == b"s3cr+t"
    assert q["info_hash"] == INFO_HASH and q["peer_id"] == PEER_ID
    assert q["event"] == b"started" and q["compact"] == b"1" and q["numwant"] == b"25"
    assert q["left"] == b"30" and q["port"] == b"6881"


async def test_http_tracker_id_is_echoed(http_tracker: HttpTracker, session: aiohttp.ClientSession) -> None:
    async def with_id(request: web.Request) -> web.Response:
        return web.Response(body=benc({"interval": 900, "peers": b"", "tracker id": b"T\x00id"}))

    http_tracker.handler = with_id
    async with asyncio.timeout(10):
        resp = await announce_http(session, http_tracker.base + "/a", REQ)
        assert resp.tracker_id == b"T\x00id"
        await announce_http(session, http_tracker.base + "/a", REQ, tracker_id=resp.tracker_id)
    assert "trackerid" not in http_tracker.queries[0]
    assert http_tracker.queries[1]["trackerid"] == b"T\x00id"


async def test_http_failure_reason(http_tracker: HttpTracker, session: aiohttp.ClientSession) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(body=benc({"failure reason": "torrent not registered"}))

    http_tracker.handler = fail
    with pytest.raises(TrackerError, match="torrent not registered"):
        async with asyncio.timeout(10):
            await announce_http(session, http_tracker.base + "/a", REQ)


async def test_http_error_status(http_tracker: HttpTracker, session: aiohttp.ClientSession) -> None:
    async def status(request: web.Request) -> web.Response:
        if request.path == "/reason":
            return web.Response(status=400, body=benc({"failure reason": "bad passkey"}))
        return web.Response(status=503, text="<html>down</html>")

    http_tracker.handler = status
    async with asyncio.timeout(10):
        with pytest.raises(TrackerError, match="503"):
            await announce_http(session, http_tracker.base + "/a", REQ)
        with pytest.raises(TrackerError, match="400.*bad passkey"):
            await announce_http(session, http_tracker.base + "/reason", REQ)


@pytest.mark.parametrize("body", [b"", b"<html>hello</html>", b"d5:peers5:abcdee", b"\xff" * 1000])
async def test_http_garbage_body(
    http_tracker: HttpTracker, session: aiohttp.ClientSession, body: bytes
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=body)

    http_tracker.handler = garbage
    with pytest.raises(TrackerError):
        async with asyncio.timeout(10):
            await announce_http(session, http_tracker.base + "/a", REQ)


@pytest.mark.parametrize("chunked", [False, True])
async def test_http_oversize_body(
    http_tracker: HttpTracker, session: aiohttp.ClientSession, chunked: bool
) -> None:
    sent = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = 10 * MAX_HTTP_BODY
        await resp.prepare(request)
        try:
            while sent < 10 * MAX_HTTP_BODY:
                await resp.write(b"x" * 65536)
                sent += 65536
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    http_tracker.handler = huge
    with pytest.raises(TrackerError, match="limit"):
        async with asyncio.timeout(10):
            await announce_http(session, http_tracker.base + "/a", REQ)
    assert sent < 10 * MAX_HTTP_BODY


async def test_http_timeout(http_tracker: HttpTracker, session: aiohttp.ClientSession) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=b"")

    http_tracker.handler = slow
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TrackerError, match="no answer"):
        async with asyncio.timeout(10):
            await announce_http(session, http_tracker.base + "/a", REQ, timeout=0.3)
    assert loop.time() - start < 8


async def test_http_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackerError):
        async with asyncio.timeout(10):
            await announce_http(session, f"http://127.0.0.1:{port}/announce", REQ)


async def test_http_redirects(http_tracker: HttpTracker, session: aiohttp.ClientSession) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/old":
            raise web.HTTPFound("/new?" + request.rel_url.raw_query_string)
        if request.path == "/ftp":
            raise web.HTTPFound("ftp://127.0.0.1/x")
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return await http_tracker.ok(request)

    http_tracker.handler = redirect
    async with asyncio.timeout(10):
        resp = await announce_http(session, http_tracker.base + "/old", REQ)
        assert resp.peers == (("1.2.3.4", 6881),)
        assert http_tracker.queries[-1]["info_hash"] == INFO_HASH
        with pytest.raises(TrackerError, match="redirect"):
            await announce_http(session, http_tracker.base + "/ftp", REQ)
        with pytest.raises(TrackerError, match="redirects"):
            await announce_http(session, http_tracker.base + "/loop", REQ)


@pytest.mark.parametrize("url", ["udp://127.0.0.1:1/a", "wss://127.0.0.1/a", "http://[::1/"])
async def test_http_rejects_bad_urls(session: aiohttp.ClientSession, url: str) -> None:
    with pytest.raises(TrackerError):
        await announce_http(session, url, REQ)


# --- UDP ----------------------------------------------------------------------------------------------------


class UdpTracker(asyncio.DatagramProtocol):
    """A BEP 15 tracker whose misbehaviour each test chooses."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        self.connects = 0
        self.announces: list[tuple[Any, ...]] = []
        self.drop = 0  # drop this many incoming requests first
        self.mode = "ok"  # ok | silent | error | garbage | stray | bad_cid_error
        self.next_cid = 0x1000

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (the selector loop's datagram transport is not a DatagramTransport subclass in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.received.append(data)
        if self.drop:
            self.drop -= 1
            return
        if self.mode == "silent":
            return
        if len(data) == 16:
            proto, action, tid = struct.unpack(">QII", data)
            assert proto == 0x41727101980 and action == 0
            self.connects += 1
            self.next_cid += 1
            if self.mode == "stray":
                self.transport.sendto(struct.pack(">IIQ", 0, tid ^ 1, 1), addr)
            self.transport.sendto(struct.pack(">IIQ", 0, tid, self.next_cid), addr)
            return
        fields = struct.unpack(">QII20s20sQQQIIIiH", data)
        self.announces.append(fields)
        tid = fields[2]
        if self.mode == "error":
            self.transport.sendto(struct.pack(">II", 3, tid) + b"torrent banned", addr)
        elif self.mode == "garbage":
            self.transport.sendto(struct.pack(">IIIII", 1, tid, 60, 0, 0) + b"\x01\x02\x03", addr)
        else:
            peers = bytes([5, 6, 7, 8]) + struct.pack(">H", 51413)
            self.transport.sendto(struct.pack(">IIIII", 1, tid, 1200, 3, 4) + peers, addr)


@pytest.fixture
async def udp_tracker() -> AsyncIterator[tuple[UdpTracker, str]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(UdpTracker, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield proto, f"udp://127.0.0.1:{port}/announce"
    finally:
        transport.close()


async def test_udp_announce(udp_tracker: tuple[UdpTracker, str]) -> None:
    tracker, url = udp_tracker
    cache = ConnectionIdCache()
    async with asyncio.timeout(10):
        resp = await announce_udp(url, REQ, cache=cache)
    assert resp.peers == (("5.6.7.8", 51413),)
    assert resp.interval == 1200 and resp.incomplete == 3 and resp.complete == 4
    (fields,) = tracker.announces
    cid, action, _, ih, pid, downloaded, left, uploaded, event, ip, key, numwant, port = fields
    assert (cid, action, ih, pid) == (0x1001, 1, INFO_HASH, PEER_ID)
    assert (downloaded, left, uploaded, event, ip, key, numwant, port) == (20, 30, 10, 2, 0, 0x1234, 25, 6881)


async def test_udp_connection_id_reused_then_expires(udp_tracker: tuple[UdpTracker, str]) -> None:
    tracker, url = udp_tracker
    cache = ConnectionIdCache()
    async with asyncio.timeout(10):
        await announce_udp(url, REQ, cache=cache)
        await announce_udp(url, REQ, cache=cache)
        assert tracker.connects == 1
        assert [f[0] for f in tracker.announces] == [0x1001, 0x1001]
        short = ConnectionIdCache(lifetime=0.05)
        await announce_udp(url, REQ, cache=short)
        await asyncio.sleep(0.1)
        await announce_udp(url, REQ, cache=short)
    assert tracker.connects == 3


async def test_udp_retransmits_lost_datagrams(udp_tracker: tuple[UdpTracker, str]) -> None:
    tracker, url = udp_tracker
    tracker.drop = 1  # the first connect request is lost
    async with asyncio.timeout(20):
        resp = await announce_udp(url, REQ, timeout=8.0, cache=ConnectionIdCache())
    assert resp.peers
    connects = [d for d in tracker.received if len(d) == 16]
    assert len(connects) >= 2
    assert len({d[12:16] for d in connects}) == 1  # same transaction id on every retransmission


async def test_udp_ignores_stray_transaction_ids(udp_tracker: tuple[UdpTracker, str]) -> None:
    tracker, url = udp_tracker
    tracker.mode = "stray"
    async with asyncio.timeout(10):
        resp = await announce_udp(url, REQ, cache=ConnectionIdCache())
    assert resp.peers == (("5.6.7.8", 51413),)


async def test_udp_timeout(udp_tracker: tuple[UdpTracker, str]) -> None:
    tracker, url = udp_tracker
    tracker.mode = "silent"
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TrackerError, match="no answer"):
        async with asyncio.timeout(20):
            await announce_udp(url, REQ, timeout=0.6, cache=ConnectionIdCache())
    assert loop.time() - start < 10
    assert tracker.received  # (retransmission itself is checked above, where there is time for it)


@pytest.mark.parametrize("mode, match", [("error", "torrent banned"), ("garbage", "multiple of 6")])
async def test_udp_error_and_garbage(udp_tracker: tuple[UdpTracker, str], mode: str, match: str) -> None:
    tracker, url = udp_tracker
    tracker.mode = mode
    cache = ConnectionIdCache()
    with pytest.raises(TrackerError, match=match):
        async with asyncio.timeout(10):
            await announce_udp(url, REQ, cache=cache)
    assert len(cache) == 0  # a failed announce forgets the connection id


async def test_udp_unreachable_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackerError):
        async with asyncio.timeout(10):
            await announce_udp(f"udp://127.0.0.1:{port}", REQ, timeout=2.0, cache=ConnectionIdCache())


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/a", "udp://127.0.0.1/a", "ws://x/", "udp://:5"])
async def test_udp_rejects_bad_urls(url: str) -> None:
    with pytest.raises(TrackerError):
        await announce_udp(url, REQ, timeout=1.0)
