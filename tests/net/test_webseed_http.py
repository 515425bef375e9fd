"""The BEP 19 range fetcher against well-behaved and hostile HTTP servers on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bridge.net import webseed_http
from bridge.net.webseed_http import WebSeedError, fetch_range, file_url, stream_range
from bridge.proto.metainfo import InfoDict, build_info

pytestmark = pytest.mark.timeout(60)

DATA = random.Random(7).randbytes(300_000)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """An aiohttp.web app: /static/ serves files with Range support; other paths go to ``handler``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handler: Handler = self.not_found
        self.requests: list[web.Request] = []
        self.base = ""

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        return await self.handler(request)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    (tmp_path / "data.bin").write_bytes(DATA)
    srv = Server(tmp_path)
    app = web.Application()
    app.router.add_static("/static/", tmp_path)
    app.router.add_route("GET", "/{tail:.*}", srv.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    srv.base = f"http://{host}:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def expect_error(coro: Awaitable[object], kind: str) -> WebSeedError:
    async with asyncio.timeout(20):
        with pytest.raises(WebSeedError) as info:
            await coro
    assert info.value.kind == kind, str(info.value)
    return info.value


# --- well-behaved servers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "length"), [(0, 1), (0, len(DATA)), (12_345, 65_536), (len(DATA) - 7, 7)])
async def test_static_server_ranges(server: Server, http: aiohttp.ClientSession, start: int, length: int) -> None:
    async with asyncio.timeout(20):
        got = await fetch_range(http, f"{server.base}/static/data.bin", start, length)
    assert got == DATA[start : start + length]


async def test_stream_delivers_in_order_in_bounded_chunks(server: Server, http: aiohttp.ClientSession) -> None:
    chunks: list[bytes] = []
    async with asyncio.timeout(20):
        await stream_range(http, f"{server.base}/static/data.bin", 100, 250_000, chunks.append)
    assert b"".join(chunks) == DATA[100:250_100]
    assert max(map(len, chunks)) <= webseed_http.READ_CHUNK


async def test_sends_range_and_identity_encoding(server: Server, http: aiohttp.ClientSession) -> None:
    async def partial(request: web.Request) -> web.StreamResponse:
        return web.Response(status=206, body=DATA[10:20], headers={"Content-Range": f"bytes 10-19/{len(DATA)}"})

    server.handler = partial
    async with asyncio.timeout(20):
        assert await fetch_range(http, f"{server.base}/x", 10, 10) == DATA[10:20]
    req = server.requests[-1]
    assert req.headers["Range"] == "bytes=10-19"
    assert req.headers["Accept-Encoding"] == "identity"


async def test_follows_redirects(server: Server, http: aiohttp.ClientSession) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        hop = int(request.query.get("hop", "0"))
        if hop < 3:
            raise web.HTTPFound(f"/r?hop={hop + 1}")
        raise web.HTTPTemporaryRedirect("/static/data.bin")

    server.handler = redirect
    async with asyncio.timeout(20):
        assert await fetch_range(http, f"{server.base}/r", 5, 1000) == DATA[5:1005]


async def test_ignored_range_whole_file_is_cut_to_the_range(server: Server, http: aiohttp.ClientSession) -> None:
    async def whole(request: web.Request) -> web.StreamResponse:
        return web.Response(body=DATA)

    server.handler = whole
    async with asyncio.timeout(20):
        assert await fetch_range(http, f"{server.base}/w", 70_000, 100_000) == DATA[70_000:170_000]
        assert await fetch_range(http, f"{server.base}/w", 0, len(DATA)) == DATA
        # the connection pool still works after a body left unread
        assert await fetch_range(http, f"{server.base}/static/data.bin", 1, 2) == DATA[1:3]


async def test_ignored_range_on_a_huge_file_reads_a_bounded_prefix(server: Server, http: aiohttp.ClientSession) -> None:
    """A 1 GiB streamed body (200, no Range support): only what the range needs is read, then the
    connection is dropped; the server manages to send far less than the file."""
    sent = 0
    done = asyncio.Event()
    block = bytes(range(256)) * 256  # 64 KiB

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.content_length = 1 << 30
        await resp.prepare(request)
        try:
            while sent < 1 << 30:
                await resp.write(block)
                sent += len(block)
        except (ConnectionError, OSError):
            pass
        finally:
            done.set()
        return resp

    server.handler = huge
    async with asyncio.timeout(20):
        got = await fetch_range(http, f"{server.base}/huge", 1_000_000, 70_000)
        assert got == (block * 20)[1_000_000 % len(block) :][:70_000]
        await done.wait()
    assert sent < 32 * 1024 * 1024


async def test_ignored_range_far_into_the_file_is_refused(server: Server, http: aiohttp.ClientSession) -> None:
    async def whole(request: web.Request) -> web.StreamResponse:
        return web.Response(body=DATA)

    server.handler = whole
    start = webseed_http.MAX_UNRANGED_PREFIX
    await expect_error(fetch_range(http, f"{server.base}/w", start, 10), "server ignores Range")
    await expect_error(fetch_range(http, f"{server.base}/w", len(DATA) - 5, 10), "file too short")


# --- hostile servers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_range", "kind"),
    [
        ("bytes 0-9/300000", "wrong Content-Range"),
        ("bytes 10-20/300000", "wrong Content-Range"),
        ("bytes 10-19/15", "bad Content-Range"),
        ("bytes */300000", "bad Content-Range"),
        ("items 10-19/300000", "bad Content-Range"),
        (None, "bad Content-Range"),
    ],
)
async def test_wrong_content_range(server: Server, http: aiohttp.ClientSession, content_range: str | None,
                                   kind: str) -> None:
    async def partial(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Range": content_range} if content_range else {}
        return web.Response(status=206, body=DATA[10:20], headers=headers)

    server.handler = partial
    await expect_error(fetch_range(http, f"{server.base}/x", 10, 10), kind)


async def test_206_with_a_longer_content_length(server: Server, http: aiohttp.ClientSession) -> None:
    async def partial(request: web.Request) -> web.StreamResponse:
        return web.Response(status=206, body=DATA[10:40], headers={"Content-Range": "bytes 10-19/300000"})

    server.handler = partial
    await expect_error(fetch_range(http, f"{server.base}/x", 10, 10), "wrong Content-Length")


@pytest.mark.parametrize("extra", [1, 50_000_000])
async def test_chunked_206_body_too_long(server: Server, http: aiohttp.ClientSession, extra: int) -> None:
    """No Content-Length: the body is read to the requested length plus at most one more chunk, then the
    connection is dropped (the server cannot push its 50 MB)."""
    wrote = 0
    done = asyncio.Event()

    async def partial(request: web.Request) -> web.StreamResponse:
        nonlocal wrote
        resp = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-99999/300000"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            await resp.write(DATA[:100_000])
            wrote = 100_000
            chunk = bytes(min(extra, 65536))
            while wrote < 100_000 + extra:
                await resp.write(chunk[: 100_000 + extra - wrote])
                wrote += len(chunk[: 100_000 + extra - wrote])
        except (ConnectionError, OSError):
            pass
        finally:
            done.set()
        return resp

    server.handler = partial
    await expect_error(fetch_range(http, f"{server.base}/x", 0, 100_000), "body too long")
    async with asyncio.timeout(10):
        await done.wait()
    if extra > 1:
        assert wrote < 20_000_000


async def test_body_too_short(server: Server, http: aiohttp.ClientSession) -> None:
    async def partial(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-99/300000"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(DATA[:60])
        await resp.write_eof()
        return resp

    server.handler = partial
    await expect_error(fetch_range(http, f"{server.base}/x", 0, 100), "body too short")


@pytest.mark.parametrize(("status", "kind"), [(404, "HTTP 404"), (500, "HTTP 500"), (416, "HTTP 416"),
                                              (403, "HTTP 403"), (204, "HTTP 204")])
async def test_error_statuses(server: Server, http: aiohttp.ClientSession, status: int, kind: str) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=b"nope" if status != 204 else None)

    server.handler = fail
    err = await expect_error(fetch_range(http, f"{server.base}/x", 0, 10), kind)
    assert str(status) in str(err)


async def test_gzip_content_encoding_refused(server: Server, http: aiohttp.ClientSession) -> None:
    import gzip

    async def gz(request: web.Request) -> web.StreamResponse:
        return web.Response(status=206, body=gzip.compress(DATA[:10]),
                            headers={"Content-Range": "bytes 0-9/300000", "Content-Encoding": "gzip"})

    server.handler = gz
    await expect_error(fetch_range(http, f"{server.base}/x", 0, 10), "content encoding")


async def test_redirect_loop_and_bad_targets(server: Server, http: aiohttp.ClientSession) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        if request.path == "/ftp":
            raise web.HTTPFound("ftp://127.0.0.1/file")
        if request.path == "/nowhere":
            return web.Response(status=302)
        raise web.HTTPFound("/loop")

    server.handler = loop
    await expect_error(fetch_range(http, f"{server.base}/loop", 0, 10), "redirect loop")
    assert len(server.requests) == webseed_http.MAX_REDIRECTS + 1
    await expect_error(fetch_range(http, f"{server.base}/ftp", 0, 10), "redirect to a non-http URL")
    await expect_error(fetch_range(http, f"{server.base}/nowhere", 0, 10), "redirect without Location")


async def test_slow_headers_time_out(server: Server, http: aiohttp.ClientSession) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(status=206, body=DATA[:10], headers={"Content-Range": "bytes 0-9/300000"})

    server.handler = slow
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await expect_error(fetch_range(http, f"{server.base}/x", 0, 10, read_timeout=0.3), "timeout")
    assert loop.time() - t0 < 3


async def test_trickling_body_hits_the_total_budget(server: Server, http: aiohttp.ClientSession) -> None:
    """A byte every 50 ms never trips the read timeout; the whole-request budget still ends it."""
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-999/300000"})
        resp.content_length = 1000
        await resp.prepare(request)
        for i in range(1000):
            await resp.write(DATA[i : i + 1])
            await asyncio.sleep(0.05)
        return resp

    server.handler = trickle
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got: list[bytes] = []
    await expect_error(stream_range(http, f"{server.base}/x", 0, 1000, got.append, read_timeout=5, timeout=1.0),
                       "timeout")
    assert loop.time() - t0 < 3
    assert b"".join(got) == DATA[: len(b"".join(got))]  # what arrived was passed on in order


async def test_connection_dropped_mid_body(http: aiohttp.ClientSession) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9999/300000\r\n"
                     b"Content-Length: 10000\r\n\r\n" + DATA[:3000])
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        err = await expect_error(fetch_range(http, f"http://127.0.0.1:{port}/x", 0, 10_000),
                                 "request failed: ClientPayloadError")
        assert "ClientPayloadError" in str(err)
    finally:
        srv.close()


async def test_connection_refused(http: aiohttp.ClientSession) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    err = await expect_error(fetch_range(http, f"http://127.0.0.1:{port}/x", 0, 10),
                             "request failed: ClientConnectorError")
    assert str(port) in str(err)


async def test_bad_urls_and_arguments(http: aiohttp.ClientSession) -> None:
    await expect_error(fetch_range(http, "ftp://127.0.0.1/x", 0, 10), "bad URL")
    await expect_error(fetch_range(http, "http:///nohost", 0, 10), "bad URL")
    with pytest.raises(ValueError):
        await fetch_range(http, "http://127.0.0.1/x", 0, 0)
    with pytest.raises(ValueError):
        await fetch_range(http, "http://127.0.0.1/x", 0, webseed_http.MAX_RANGE_BYTES + 1)


# --- BEP 19 URLs ------------------------------------------------------------------------------------------


def _info(name: str, files: list[tuple[list[str], int]] | int) -> InfoDict:
    total = files if isinstance(files, int) else sum(n for _, n in files)
    return build_info(name, files, 16384, hashlib.sha1(b"").digest() * ((total + 16383) // 16384))


def test_file_url_single_file() -> None:
    info = _info("my file+1.iso", 100)
    assert file_url("http://h.example/dl/file.iso", info, 0) == "http://h.example/dl/file.iso"
    assert file_url("http://h.example/dl/", info, 0) == "http://h.example/dl/my%20file%2B1.iso"
    assert file_url("https://h.example:8443/", info, 0) == "https://h.example:8443/my%20file%2B1.iso"


def test_file_url_multi_file() -> None:
    info = _info("top dir", [(["a.bin"], 10), (["sub", "ü 100%", "c#?.txt"], 20)])
    assert file_url("http://h.example/x", info, 0) == "http://h.example/x/top%20dir/a.bin"
    assert file_url("http://h.example/x/", info, 0) == "http://h.example/x/top%20dir/a.bin"
    assert file_url("http://h.example/x/", info, 1) == (
        "http://h.example/x/top%20dir/sub/%C3%BC%20100%25/c%23%3F.txt")
    assert file_url("http://h.example", info, 0) == "http://h.example/top%20dir/a.bin"
    assert file_url("http://h.example/x/?token=a%2Fb", info, 0) == "http://h.example/x/top%20dir/a.bin?token=a%2Fb"


@pytest.mark.parametrize("bad", ["ftp://h.example/x", "/relative/path", "http://", "not a url"])
def test_file_url_rejects_non_http(bad: str) -> None:
    with pytest.raises(WebSeedError):
        file_url(bad, _info("n", 10), 0)
