"""HTTP streaming of a torrent that is still downloading (bridge/server/): ranges, waiting, priorities."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl
from test_engine import PIECE, loopback, make_torrent
from test_reader import idle_leecher, payload_of

from bridge.engine.session import Session
from bridge.server import StreamOptions, file_url_path, start_http_server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def seeded(tmp_path, sizes: dict[str, int], **opts: Any):
    info = make_torrent(str(tmp_path / "src"), sizes)
    session = Session(loopback())
    await session.start()
    torrent = await session.add_torrent(info, tmp_path / "src", seed=True)
    server = await start_http_server(session, "127.0.0.1", 0, web_root=tmp_path / "no-web",
                                     options=StreamOptions(**opts))
    return session, torrent, server


def src_bytes(tmp_path, rel: str) -> bytes:
    return (tmp_path / "src" / "t" / rel).read_bytes()


async def test_whole_file_ranges_head_etag_and_cors(tmp_path, http) -> None:
    session, torrent, server = await seeded(tmp_path, {"movie.mp4": 5 * PIECE + 7, "sub/notes.txt": 1000})
    try:
        movie = next(f for f in torrent.info.files if f.path[-1] == "movie.mp4")
        url = server.url + file_url_path(torrent, movie)
        assert url.endswith("/files/t/movie.mp4")
        data = src_bytes(tmp_path, "movie.mp4")
        async with http.get(url) as r:
            assert r.status == 200
            assert await r.read() == data
            assert r.headers["Content-Type"] == "video/mp4"
            assert r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            etag = r.headers["ETag"]
        async with http.get(url, headers={"Range": "bytes=100-"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
            assert await r.read() == data[100:]
        async with http.get(url, headers={"Range": "bytes=-10"}) as r:
            assert r.status == 206 and await r.read() == data[-10:]
        async with http.head(url) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(data))
            assert await r.read() == b""
        async with http.get(url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.get(url, headers={"Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        async with http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'}) as r:
            assert r.status == 200 and len(await r.read()) == len(data)  # If-Range mismatch: whole file
        async with http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}) as r:
            assert r.status == 206 and await r.read() == data[:10]
        async with http.options(url, headers={"Origin": "http://elsewhere.example",
                                              "Access-Control-Request-Method": "GET"}) as r:
            assert r.status == 204 and "Range" in r.headers["Access-Control-Allow-Headers"]
        async with http.options(url, headers={"Origin": "http://elsewhere.example",
                                              "Access-Control-Request-Method": "GET",
                                              "Access-Control-Request-Headers": "cache-control, range"}) as r:
            assert r.headers["Access-Control-Allow-Headers"] == "cache-control, range"  # WebTorrent's web seed
        async with http.get(server.url + "/torrents/" + "00" * 20 + "/files/t/movie.mp4") as r:
            assert r.status == 404
        async with http.get(server.url + f"/torrents/{torrent.info_hash.hex()}/files/t/nope.mp4") as r:
            assert r.status == 404
        raw = yarl.URL(server.url + f"/torrents/{torrent.info_hash.hex()}/files/t/%2E%2E/t/movie.mp4", encoded=True)
        async with http.get(raw) as r:
            assert r.status == 404
        notes = next(f for f in torrent.info.files if f.path[-1] == "notes.txt")
        async with http.get(server.url + file_url_path(torrent, notes)) as r:
            assert r.status == 200 and await r.read() == src_bytes(tmp_path, "sub/notes.txt")
    finally:
        await server.close()
        await session.aclose()


async def test_multiple_ranges_are_multipart(tmp_path, http) -> None:
    session, torrent, server = await seeded(tmp_path, {"a.bin": 3 * PIECE})
    try:
        data = src_bytes(tmp_path, "a.bin")
        url = server.url + file_url_path(torrent, torrent.info.files[0])
        async with http.get(url, headers={"Range": "bytes=0-9,50000-50009,-5"}) as r:
            assert r.status == 206
            assert r.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
            body = await r.read()
            assert int(r.headers["Content-Length"]) == len(body)
            # The stdlib's MIME parser reads it independently.
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + r.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            assert message.is_multipart() and not message.defects
            parts = [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]
        size = len(data)
        assert parts == [(f"bytes 0-9/{size}", data[:10]), (f"bytes 50000-50009/{size}", data[50000:50010]),
                         (f"bytes {size - 5}-{size - 1}/{size}", data[-5:])]
    finally:
        await server.close()
        await session.aclose()


async def test_a_request_waits_for_pieces_and_makes_them_urgent(tmp_path, http) -> None:
    info, seeder, leecher, lt = await idle_leecher(tmp_path, 40)
    server = await start_http_server(leecher, "127.0.0.1", 0, web_root=tmp_path / "no-web")
    data = payload_of(str(tmp_path / "src"))
    try:
        assert len(lt.picker.have) == 0
        url = server.url + file_url_path(lt, info.files[0])
        start = 25 * PIECE + 17
        async with http.get(url, headers={"Range": f"bytes={start}-{start + 3 * PIECE - 1}"}) as r:
            assert r.status == 206
            assert await r.read() == data[start:start + 3 * PIECE]
        await asyncio.sleep(0.2)
        assert min(lt.picker.have) == 25  # nothing before the request was fetched
        assert lt.picker.deadlines == {}  # the finished request gave its priorities back
    finally:
        await server.close()
        await leecher.aclose()
        await seeder.aclose()


async def test_a_client_that_leaves_releases_its_priorities(tmp_path, http) -> None:
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 50 * PIECE})
    session = Session(loopback())
    await session.start()
    torrent = await session.add_torrent(info, tmp_path / "dl")  # no peers: nothing ever arrives
    server = await start_http_server(session, "127.0.0.1", 0, web_root=tmp_path / "no-web")
    try:
        url = server.url + file_url_path(torrent, info.files[0])
        task = asyncio.create_task(http.get(url, headers={"Range": f"bytes={10 * PIECE}-"}))
        async with asyncio.timeout(5):
            while not torrent.picker.deadlines:
                await asyncio.sleep(0.02)
        assert min(torrent.picker.deadlines) == 10
        task.cancel()  # the client goes away
        async with asyncio.timeout(5):
            while torrent.picker.deadlines:
                await asyncio.sleep(0.02)
    finally:
        await server.close()
        await session.aclose()


async def test_bytes_that_never_come_give_503_before_the_first_byte(tmp_path, http) -> None:
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 4 * PIECE})
    session = Session(loopback())
    await session.start()
    torrent = await session.add_torrent(info, tmp_path / "dl")
    server = await start_http_server(session, "127.0.0.1", 0, web_root=tmp_path / "no-web",
                                     options=StreamOptions(read_timeout=0.3))
    try:
        async with http.get(server.url + file_url_path(torrent, info.files[0])) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert torrent.picker.deadlines == {}
    finally:
        await server.close()
        await session.aclose()


async def test_streaming_a_large_file_keeps_memory_flat(tmp_path, http) -> None:
    """A 24 MiB file through the server: it arrives intact, and the digest is computed as it streams."""
    session, torrent, server = await seeded(tmp_path, {"big.bin": 24 * 1024 * 1024})
    try:
        digest = hashlib.sha256()
        async with http.get(server.url + file_url_path(torrent, torrent.info.files[0])) as r:
            async for chunk in r.content.iter_chunked(256 * 1024):
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(src_bytes(tmp_path, "big.bin")).hexdigest()
    finally:
        await server.close()
        await session.aclose()


async def test_the_metainfo_is_served_for_a_magnets_xs(tmp_path, http) -> None:
    from bridge.proto.metainfo import parse_torrent

    session, torrent, server = await seeded(tmp_path, {"a.bin": 3 * PIECE})
    try:
        async with http.get(f"{server.url}/torrents/{torrent.info_hash.hex()}.torrent") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/x-bittorrent"
            meta = parse_torrent(await r.read())
        assert meta.info.info_hash == torrent.info_hash
        assert meta.url_list[0] == f"{server.url}/torrents/{torrent.info_hash.hex()}/files/"
        async with http.get(f"{server.url}/torrents/{'00' * 20}.torrent") as r:
            assert r.status == 404
    finally:
        await server.close()
        await session.aclose()
