"""BEP 19 web seeds end to end: the real engine downloading from aiohttp file servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from bridge.config import PeerConfig, SessionConfig
from bridge.engine.session import Session
from bridge.engine.torrent import Torrent
from bridge.engine.webseed import WebSeed, start_web_seeds
from bridge.proto.metainfo import InfoDict, build_info, parse_torrent

pytestmark = pytest.mark.timeout(120)

PIECE = 32 * 1024
#: Names that need percent-encoding in a URL, a folder inside a folder, a file boundary inside a piece, an
#: empty file.
MULTI = {"a b.bin": 100_001, "sub/ü+x.bin": 50_000, "sub/deeper/c%1.bin": 234_567, "empty.txt": 0, "z.bin": 7}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MakeServer = Callable[[Path], Awaitable["FileServer"]]


def loopback(**peer: object) -> SessionConfig:
    return SessionConfig(host="127.0.0.1", port=0, peer=PeerConfig(**peer),  # type: ignore[arg-type]
                         trackers_enabled=False, webrtc=False)


def write_files(root: Path, name: str, sizes: dict[str, int], seed: int = 1) -> bytes:
    rng = random.Random(seed)
    blob = b""
    for rel, size in sizes.items():
        data = rng.randbytes(size)
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        blob += data
    return blob


def hashes(blob: bytes, piece: int = PIECE) -> bytes:
    return b"".join(hashlib.sha1(blob[i : i + piece]).digest() for i in range(0, len(blob), piece))


def multi_torrent(root: Path, sizes: dict[str, int] = MULTI, name: str = "t") -> InfoDict:
    blob = write_files(root, name, sizes)
    return build_info(name, [(rel.split("/"), n) for rel, n in sizes.items()], PIECE, hashes(blob))


def single_torrent(root: Path, size: int, name: str = "one file.bin") -> tuple[InfoDict, bytes]:
    data = random.Random(size).randbytes(size)
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
    return build_info(name, size, PIECE, hashes(data)), data


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            p = Path(dirpath) / fn
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class FileServer:
    """aiohttp.web on 127.0.0.1:0: /seed/ serves ``root`` with Range support (web.FileResponse via
    add_static); every other path goes to ``handler``. Counts requests per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handler: Handler | None = None
        self.hits: dict[str, int] = {}
        self.base = ""
        self.runner: web.AppRunner | None = None

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        return await handler(request)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.handler is None:
            raise web.HTTPNotFound()
        return await self.handler(request)

    async def start(self) -> FileServer:
        app = web.Application(middlewares=[self.count])
        app.router.add_static("/seed/", self.root)
        app.router.add_route("GET", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def leecher() -> AsyncIterator[Session]:
    session = Session(loopback())
    await session.start()
    try:
        yield session
    finally:
        await session.aclose()


@pytest.fixture
async def servers() -> AsyncIterator[MakeServer]:
    started: list[FileServer] = []

    async def make(root: Path) -> FileServer:
        srv = await FileServer(root).start()
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in started:
            await srv.stop()


def seeds_for(torrent: Torrent, session: Session, urls: list[str], **options: object) -> list[WebSeed]:
    assert session.http is not None
    return start_web_seeds(torrent, urls, session.http, **options)


async def wait_complete(torrent: Torrent, seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        await torrent.completed.wait()


def range_of(request: web.Request, size: int) -> tuple[int, int]:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
    assert m, request.headers.get("Range")
    return int(m.group(1)), min(int(m.group(2)), size - 1)


# --- downloads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["file", "folder/"])
async def test_single_file_only_from_web_seed(tmp_path: Path, leecher: Session, servers: MakeServer, form: str) -> None:
    info, data = single_torrent(tmp_path / "www", 700_001)
    srv = await servers(tmp_path / "www")
    url = f"{srv.base}/seed/one%20file.bin" if form == "file" else f"{srv.base}/seed/"
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    [seed] = seeds_for(lt, leecher, [url])
    await wait_complete(lt)
    assert hashlib.sha256((tmp_path / "dl" / "one file.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not lt.peers
    assert lt.downloaded == info.total_length
    stats = seed.stats()
    assert stats.downloaded == info.total_length and stats.errors == 0
    async with asyncio.timeout(5):
        while seed.state != "done" or seed.outstanding:
            await asyncio.sleep(0.02)
    assert srv.hits[f"/seed/{info.name}"] <= info.num_pieces  # ranges, not one request per block


@pytest.mark.parametrize("slash", ["", "/"])
async def test_multi_file_torrent(tmp_path: Path, leecher: Session, servers: MakeServer, slash: str) -> None:
    info = multi_torrent(tmp_path / "www")
    srv = await servers(tmp_path / "www")
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    [seed] = seeds_for(lt, leecher, [f"{srv.base}/seed{slash}"])
    await wait_complete(lt)
    assert tree_digest(tmp_path / "dl") == tree_digest(tmp_path / "www")
    assert (tmp_path / "dl" / "t" / "empty.txt").stat().st_size == 0
    assert seed.stats().downloaded == info.total_length
    # every non-empty file was asked for under its percent-encoded BEP 19 path
    assert {"/seed/t/a b.bin", "/seed/t/sub/ü+x.bin", "/seed/t/sub/deeper/c%1.bin", "/seed/t/z.bin"} <= set(srv.hits)
    assert "/seed/t/empty.txt" not in srv.hits


async def test_two_web_seeds_and_a_peer_share_the_work(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    info = multi_torrent(tmp_path / "www", {"big.bin": 3_000_000, "small.bin": 5})
    srv1, srv2 = await servers(tmp_path / "www"), await servers(tmp_path / "www")
    seeder = Session(loopback())
    await seeder.start()
    try:
        await seeder.add_torrent(info, tmp_path / "www", seed=True)
        lt = await leecher.add_torrent(info, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)])
        seeds = seeds_for(lt, leecher, [f"{srv1.base}/seed/", f"{srv2.base}/seed"])
        await wait_complete(lt)
        assert tree_digest(tmp_path / "dl") == tree_digest(tmp_path / "www")
        assert sum(s.stats().downloaded for s in seeds) > 0
        assert lt.downloaded >= info.total_length
    finally:
        await seeder.aclose()


async def test_server_ignoring_range_still_gives_correct_data(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    info = multi_torrent(tmp_path / "www", {"a.bin": 200_000, "sub/b.bin": 150_001})
    srv = await servers(tmp_path / "www")
    seen_ranges: list[str] = []

    async def whole_file(request: web.Request) -> web.StreamResponse:
        seen_ranges.append(request.headers.get("Range", ""))
        rel = request.match_info["tail"].removeprefix("plain/")
        return web.Response(body=(tmp_path / "www" / rel).read_bytes())  # 200, Range ignored

    srv.handler = whole_file
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    [seed] = seeds_for(lt, leecher, [f"{srv.base}/plain"])
    await wait_complete(lt)
    assert tree_digest(tmp_path / "dl") == tree_digest(tmp_path / "www")
    assert seed.stats().errors == 0
    assert seen_ranges and all(r.startswith("bytes=") for r in seen_ranges)


async def test_libtorrent_made_torrent_with_pad_files(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    """A torrent made by libtorrent (v1 only, BEP 47 pad files, url-list): pads are zeros, never fetched."""
    lt_ = pytest.importorskip("libtorrent")
    www = tmp_path / "www"
    write_files(www, "lt dir", {"a.bin": 100_001, "empty": 0, "sub/b b.bin": 50_000, "sub/ü.txt": 33_333})
    srv = await servers(www)
    ct = lt_.create_torrent(lt_.list_files(str(www / "lt dir")), PIECE,
                            lt_.create_torrent.v1_only | lt_.create_torrent.canonical_files)
    ct.add_url_seed(f"{srv.base}/seed/")
    lt_.set_piece_hashes(ct, str(www))
    meta = parse_torrent(lt_.bencode(ct.generate()))
    assert any(f.padding for f in meta.info.files)
    assert meta.url_list == (f"{srv.base}/seed/",)
    lt = await leecher.add_torrent(meta.info, tmp_path / "dl")
    seeds_for(lt, leecher, list(meta.url_list))
    await wait_complete(lt)
    assert tree_digest(tmp_path / "dl") == tree_digest(www)
    assert not any(".pad" in path for path in srv.hits)


async def test_libtorrent_made_single_file_torrent(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    lt_ = pytest.importorskip("libtorrent")
    www = tmp_path / "www"
    www.mkdir()
    data = random.Random(3).randbytes(333_333)
    (www / "single.iso").write_bytes(data)
    srv = await servers(www)
    ct = lt_.create_torrent(lt_.list_files(str(www / "single.iso")), 16384, lt_.create_torrent.v1_only)
    ct.add_url_seed(f"{srv.base}/seed/single.iso")
    lt_.set_piece_hashes(ct, str(www))
    meta = parse_torrent(lt_.bencode(ct.generate()))
    assert not meta.info.multi_file
    lt = await leecher.add_torrent(meta.info, tmp_path / "dl")
    seeds_for(lt, leecher, list(meta.url_list))
    await wait_complete(lt)
    assert (tmp_path / "dl" / "single.iso").read_bytes() == data


# --- misbehaving web seeds ------------------------------------------------------------------------------


async def test_corrupt_web_seed_is_banned_and_nothing_written(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    info, _ = single_torrent(tmp_path / "www", 8 * PIECE, name="a.bin")
    srv = await servers(tmp_path / "www")

    async def garbage(request: web.Request) -> web.StreamResponse:
        a, b = range_of(request, info.total_length)
        return web.Response(status=206, body=b"\xaa" * (b - a + 1),
                            headers={"Content-Range": f"bytes {a}-{b}/{info.total_length}"})

    srv.handler = garbage
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    [seed] = seeds_for(lt, leecher, [f"{srv.base}/bad/a.bin"])
    async with asyncio.timeout(20):
        while "127.0.0.1" not in lt.banned:
            await asyncio.sleep(0.02)
        while seed.state != "banned" or seed.outstanding:
            await asyncio.sleep(0.02)
    assert lt.hash_failures["127.0.0.1"] >= 2
    assert len(lt.picker.have) == 0
    assert not lt.picker.partial or all(p.requested == bytes(p.nblocks) for p in lt.picker.partial.values())
    hits = srv.hits["/bad/a.bin"]
    await asyncio.sleep(0.5)
    assert srv.hits["/bad/a.bin"] == hits  # stopped asking
    path = tmp_path / "dl" / "a.bin"
    assert not path.exists() or b"\xaa" * PIECE not in path.read_bytes()


async def _drop_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a range request with its headers and 100 bytes, then hangs up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"Range: bytes=(\d+)-(\d+)", head, re.IGNORECASE)
        a, b = (int(m.group(1)), int(m.group(2))) if m else (0, 99)
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/*\r\nContent-Length: %d\r\n\r\n"
                     % (a, b, b - a + 1) + bytes(100))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("other", ["web seed", "peer"])
async def test_failing_web_seeds_back_off_and_another_source_finishes(
    tmp_path: Path, leecher: Session, servers: MakeServer, other: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.engine.webseed")
    info = multi_torrent(tmp_path / "www", {"a.bin": 600_000, "b.bin": 12_345})
    srv = await servers(tmp_path / "www")

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500 if request.path.startswith("/error/") else 404, text="boom")

    srv.handler = failing
    dropper = await asyncio.start_server(_drop_connection, "127.0.0.1", 0)
    drop_port = dropper.sockets[0].getsockname()[1]
    bad_urls = [f"{srv.base}/missing/", f"{srv.base}/error/", f"http://127.0.0.1:{drop_port}/x/"]
    seeder: Session | None = None
    try:
        lt = await leecher.add_torrent(info, tmp_path / "dl")
        bad = seeds_for(lt, leecher, bad_urls)
        async with asyncio.timeout(10):
            while not all(s.state == "backoff" for s in bad):
                await asyncio.sleep(0.02)
        assert all(s.errors and s.stats().retry_in > 1 for s in bad)  # 5 s +- 20 %, minus the wait above
        assert all(not s.outstanding for s in bad)  # blocks went back to the picker
        if other == "peer":
            seeder = Session(loopback())
            await seeder.start()
            await seeder.add_torrent(info, tmp_path / "www", seed=True)
            lt.add_peers([("127.0.0.1", seeder.listen_port)], sticky=True)
        else:
            seeds_for(lt, leecher, [f"{srv.base}/seed/"])
        await wait_complete(lt)
        assert tree_digest(tmp_path / "dl") == tree_digest(tmp_path / "www")
        assert "404" in (bad[0].last_error or "") and "500" in (bad[1].last_error or "")
        assert "ClientPayloadError" in (bad[2].last_error or ""), bad[2].last_error
        assert all(s.stats().errors <= 4 for s in bad)  # backing off, not hammering
        assert all(s.state == "done" for s in bad)
        assert not lt.banned
    finally:
        dropper.close()
        if seeder is not None:
            await seeder.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("HTTP 404" in w for w in warnings) == 1, warnings
    assert sum("HTTP 500" in w for w in warnings) == 1, warnings


async def _not_found(request: web.Request) -> web.StreamResponse:
    return web.Response(status=404)


async def test_backoff_grows_and_is_capped(tmp_path: Path, leecher: Session, servers: MakeServer) -> None:
    info, _ = single_torrent(tmp_path / "www", 4 * PIECE, name="a.bin")
    srv = await servers(tmp_path / "www")
    srv.handler = _not_found
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    [seed] = seeds_for(lt, leecher, [f"{srv.base}/gone/"], backoff_base=0.1, backoff_max=0.4)
    await asyncio.sleep(2.0)
    # Without backoff this would be thousands of requests; with it about 0.1+0.2+0.4+0.4+... apart.
    assert 3 <= seed.errors <= 10, seed.errors
    assert 3 <= srv.hits["/gone/a.bin"] <= 10
    assert not lt.is_complete and seed.state in ("backoff", "fetching", "idle")
    await seed.close()
    assert seed.state == "stopped" and not seed.outstanding
    assert all(p.requested == bytes(p.nblocks) for p in lt.picker.partial.values())


async def test_bad_urls_are_skipped(tmp_path: Path, leecher: Session) -> None:
    info, _ = single_torrent(tmp_path / "www", 2 * PIECE, name="a.bin")
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    seeds = seeds_for(lt, leecher, ["ftp://127.0.0.1/a.bin", "http:///x", "http://127.0.0.1:99999/a",
                                    "http://127.0.0.1:1/a", "http://127.0.0.1:1/a"])
    assert [s.url for s in seeds] == ["http://127.0.0.1:1/a"]
    assert seeds[0].address == ("127.0.0.1", 1)
    await seeds[0].close()
