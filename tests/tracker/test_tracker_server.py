"""The embedded tracker over real sockets: the bridge's own HTTP and UDP tracker clients, raw HTTP/UDP
requests, and libtorrent + aria2 finding each other through it (all on 127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bencodepy
import pytest

from bridge.errors import TrackerError
from bridge.net.tracker_http import announce_http
from bridge.net.tracker_udp import ConnectionIdCache, announce_udp
from bridge.proto.tracker import AnnounceRequest
from bridge.tracker import TrackerServer, run_tracker, start_tracker

pytestmark = pytest.mark.timeout(120)

IH = bytes(range(0xE0, 0xF4))  # high bytes: a latin-1 -> UTF-8 mix-up would show in scrape keys
IH2 = b"\x00" * 19 + b"\x01"


def pid(n: int) -> bytes:
    return b"-WB0001-" + b"%012d" % n


def req(n: int, port: int, left: int = 100, event: str = "started", ih: bytes = IH, numwant: int = 50) -> AnnounceRequest:
    return AnnounceRequest(ih, pid(n), port, 0, 0, left, event, numwant=numwant)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


# ------------------------------------------------------------------------------------------- basics


async def test_urls_and_one_port_for_tcp_and_udp(tracker: TrackerServer) -> None:
    p = tracker.port
    assert p > 0 and tracker.host == "127.0.0.1"
    assert tracker.http_announce_url == f"http://127.0.0.1:{p}/announce"
    assert tracker.udp_announce_url == f"udp://127.0.0.1:{p}"
    assert tracker.ws_url == f"ws://127.0.0.1:{p}"
    # Both protocols really are bound on that number.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", p))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", p))


async def test_root_without_upgrade_says_what_it_is(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    status, body = await get(http, f"http://127.0.0.1:{tracker.port}/")
    assert status == 200 and b"tracker" in body


# ------------------------------------------------------------------------------------------- HTTP


async def test_http_announce_compact_peers_with_the_bridge_client(
    tracker: TrackerServer, http: aiohttp.ClientSession
) -> None:
    url = tracker.http_announce_url
    first = await announce_http(http, url, req(1, 6001, left=0), timeout=10)
    assert first.peers == () and (first.complete, first.incomplete) == (1, 0)
    assert first.interval == 60
    second = await announce_http(http, url, req(2, 6002), timeout=10)
    assert second.peers == (("127.0.0.1", 6001),)
    assert (second.complete, second.incomplete) == (1, 1)
    third = await announce_http(http, url, req(3, 6003, numwant=1), timeout=10)
    assert len(third.peers) == 1 and third.peers[0] in (("127.0.0.1", 6001), ("127.0.0.1", 6002))
    # The seed is not given the other seed... and gets both leechers.
    again = await announce_http(http, url, req(1, 6001, left=0, event=""), timeout=10)
    assert sorted(again.peers) == [("127.0.0.1", 6002), ("127.0.0.1", 6003)]
    # stopped: the peer leaves, no peers handed out.
    gone = await announce_http(http, url, req(2, 6002, event="stopped"), timeout=10)
    assert gone.peers == () and (gone.complete, gone.incomplete) == (1, 1)


async def test_http_non_compact(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    await announce_http(http, tracker.http_announce_url, req(1, 6001), timeout=10)
    q = (f"info_hash={urllib.parse.quote_from_bytes(IH)}&peer_id={urllib.parse.quote_from_bytes(pid(2))}"
         "&port=6002&left=5&compact=0")
    status, body = await get(http, f"{tracker.http_announce_url}?{q}")
    assert status == 200
    assert bencodepy.decode(body)[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6001, b"peer id": pid(1)}]


async def test_http_scrape_has_raw_20_byte_keys(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    await announce_http(http, tracker.http_announce_url, req(1, 6001, left=0), timeout=10)
    await announce_http(http, tracker.http_announce_url, req(2, 6002, left=7), timeout=10)
    await announce_http(http, tracker.http_announce_url, req(2, 6002, left=0, event="completed"), timeout=10)
    await announce_http(http, tracker.http_announce_url, req(3, 6003, ih=IH2), timeout=10)
    q = "&".join("info_hash=" + urllib.parse.quote_from_bytes(h) for h in (IH, IH2, b"z" * 20))
    status, body = await get(http, f"http://127.0.0.1:{tracker.port}/scrape?{q}")
    assert status == 200
    files = bencodepy.decode(body)[b"files"]
    assert set(files) == {IH, IH2, b"z" * 20}
    assert files[IH] == {b"complete": 2, b"incomplete": 0, b"downloaded": 1}
    assert files[IH2] == {b"complete": 0, b"incomplete": 1, b"downloaded": 0}
    assert files[b"z" * 20] == {b"complete": 0, b"incomplete": 0, b"downloaded": 0}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/announce", b"missing info_hash"),
        ("/announce?info_hash=short&peer_id=" + "p" * 20 + "&port=1", b"info_hash must be 20 bytes"),
        ("/announce?info_hash=" + "i" * 20 + "&peer_id=" + "p" * 20 + "&port=99999", b"port is out of range"),
        ("/announce?info_hash=" + "i" * 20 + "&peer_id=" + "p" * 20 + "&port=1&event=nope", b"unknown event"),
        ("/announce?info_hash=" + "i" * 20 + "&peer_id=" + "p" * 20 + "&port=1&left=abc", b"left is not"),
        ("/scrape", b"at least one info_hash"),
        ("/scrape?info_hash=x", b"20 bytes"),
    ],
)
async def test_http_bad_queries_get_a_failure_reason(
    tracker: TrackerServer, http: aiohttp.ClientSession, path: str, reason: bytes
) -> None:
    status, body = await get(http, f"http://127.0.0.1:{tracker.port}{path}")
    assert status == 200
    assert reason in bencodepy.decode(body)[b"failure reason"]
    # ... and the tracker goes on serving.
    ok = await announce_http(http, tracker.http_announce_url, req(1, 6001), timeout=10)
    assert ok.incomplete == 1


async def test_http_failure_through_the_bridge_client(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    with pytest.raises(TrackerError, match="tracker failure: port 0"):
        await announce_http(http, tracker.http_announce_url, req(1, 0), timeout=10)


async def test_stats_json(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    await announce_http(http, tracker.http_announce_url, req(1, 6001), timeout=10)
    await announce_udp(tracker.udp_announce_url, req(2, 6002, left=0), timeout=10, cache=ConnectionIdCache())
    await announce_http(http, tracker.http_announce_url, req(1, 6001, ih=IH2), timeout=10)
    async with http.get(tracker.stats_url) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        stats = await resp.json()
    assert stats["swarms"] == 2
    assert stats["peers"] == {"http": 2, "udp": 1, "ws": 0, "total": 3}
    assert stats["announces"] == {"http": 2, "udp": 1, "ws": 0, "total": 3}
    assert stats["seeders"] == 1 and stats["leechers"] == 2
    assert stats["ws_connections"] == 0 and stats["udp_connects"] == 1


# ------------------------------------------------------------------------------------------- UDP


async def test_udp_announce_with_the_bridge_client(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    cache = ConnectionIdCache()
    url = tracker.udp_announce_url
    first = await announce_udp(url, req(1, 7001, left=0), timeout=10, cache=cache)
    assert first.peers == () and (first.complete, first.incomplete) == (1, 0) and first.interval == 60
    # An HTTP peer and a UDP peer share the swarm.
    await announce_http(http, tracker.http_announce_url, req(2, 7002), timeout=10)
    third = await announce_udp(url, req(3, 7003), timeout=10, cache=cache)  # reuses the cached id
    assert sorted(third.peers) == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    assert (third.complete, third.incomplete) == (1, 2)
    stopped = await announce_udp(url, req(3, 7003, event="stopped"), timeout=10, cache=cache)
    assert stopped.peers == () and stopped.incomplete == 1
    assert tracker.stats()["udp_connects"] == 1


def _udp_exchange(port: int, datagram: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(datagram, ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        return data


def _udp_silent(port: int, datagram: bytes, wait: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(datagram, ("127.0.0.1", port))
        try:
            s.recvfrom(65535)
        except TimeoutError:
            return True
        return False


async def test_udp_connection_ids_scrape_and_errors(tracker: TrackerServer) -> None:
    port = tracker.port
    await announce_udp(tracker.udp_announce_url, req(1, 7001, left=0), timeout=10, cache=ConnectionIdCache())

    def raw() -> None:
        reply = _udp_exchange(port, struct.pack(">QII", 0x41727101980, 0, 11))
        action, tid, cid = struct.unpack(">IIQ", reply)
        assert (action, tid) == (0, 11)
        # Scrape with the id: seeders, completed, leechers per hash, in order.
        reply = _udp_exchange(port, struct.pack(">QII", cid, 2, 12) + IH + IH2)
        assert struct.unpack(">IIIIIIII", reply) == (2, 12, 1, 0, 0, 0, 0, 0)
        # A made-up connection id is refused with an error datagram.
        reply = _udp_exchange(port, struct.pack(">QII", cid ^ 0xFFFF, 2, 13) + IH)
        assert struct.unpack(">II", reply[:8]) == (3, 13) and reply[8:] == b"bad connection id"
        # Malformed request with a readable header: error; not a BEP 15 request at all: silence.
        reply = _udp_exchange(port, struct.pack(">QII", cid, 2, 14) + b"short")
        assert struct.unpack(">II", reply[:8]) == (3, 14)
        # Without a valid connection id, nothing but a connect is answered (no reflection).
        assert _udp_silent(port, struct.pack(">QII", cid ^ 1, 2, 16) + b"short")
        assert _udp_silent(port, struct.pack(">QII", cid ^ 1, 9, 17))  # unknown action
        assert _udp_silent(port, b"GET / HTTP/1.0\r\n\r\n")
        assert _udp_silent(port, struct.pack(">QII", 12345, 0, 15))  # connect without the protocol id

    await asyncio.to_thread(raw)
    # Still serving.
    again = await announce_udp(tracker.udp_announce_url, req(2, 7002), timeout=10, cache=ConnectionIdCache())
    assert again.peers == (("127.0.0.1", 7001),)


# ------------------------------------------------------------------------------------------- lifecycle


async def test_run_tracker_until_stop() -> None:
    stop = asyncio.Event()
    seen: list[TrackerServer] = []
    task = asyncio.create_task(run_tracker("127.0.0.1", 0, stop, ready=seen.append))
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.01)
    url = seen[0].http_announce_url
    async with aiohttp.ClientSession() as http:
        assert (await announce_http(http, url, req(1, 6001), timeout=5)).incomplete == 1
    stop.set()
    await asyncio.wait_for(task, 10)
    with pytest.raises(TrackerError):
        async with aiohttp.ClientSession() as http:
            await announce_http(http, url, req(1, 6001), timeout=5)


async def test_close_ends_websockets(tracker: TrackerServer, http: aiohttp.ClientSession) -> None:
    ws = await http.ws_connect(tracker.ws_url)
    await tracker.close()
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()


# ------------------------------------------------------------------------------------------- real clients

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
import peers  # noqa: E402  -- tests/interop/peers.py: libtorrent and aria2 harness (imported as a top-level module)


class ThreadedTracker:
    """The embedded tracker on its own event loop in a thread, so the synchronous libtorrent/aria2
    harness can block without stalling it."""

    def __init__(self, interval: int = 2) -> None:
        self.interval = interval
        self.server: TrackerServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server = await start_tracker("127.0.0.1", 0, interval=self.interval)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def __enter__(self) -> TrackerServer:
        self._thread.start()
        if not self._ready.wait(10):
            pytest.fail("the tracker thread did not start within 10 s")
        if self._error is not None or self.server is None:
            pytest.fail(f"the tracker did not start: {self._error!r}")
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def scrape(self, info_hash: bytes) -> dict[bytes, int]:
        assert self.server is not None
        url = f"http://127.0.0.1:{self.server.port}/scrape?info_hash=" + urllib.parse.quote_from_bytes(info_hash)
        with urllib.request.urlopen(url, timeout=5) as resp:
            entry: dict[bytes, int] = bencodepy.decode(resp.read())[b"files"][info_hash]
            return entry

    def wait_scrape(self, info_hash: bytes, done: Callable[[dict[bytes, int]], bool], what: str,
                    context: Callable[[], str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done(entry := self.scrape(info_hash)):
            if time.monotonic() > deadline:
                pytest.fail(f"the tracker never saw {what} within {timeout:.0f} s: {entry}\n{context()}")
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        assert self.server is not None
        with urllib.request.urlopen(self.server.stats_url, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[peers.Harness]:
    h = peers.Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.interop
def test_libtorrent_seed_aria2_and_libtorrent_over_udp_find_each_other(
    harness: peers.Harness, tmp_path: Path
) -> None:
    """libtorrent seeds and announces over HTTP; aria2 (HTTP) and a second libtorrent (UDP only) find it
    through the embedded tracker alone and download; SHA-256 matches."""
    source = tmp_path / "data" / "payload.bin"
    source.parent.mkdir(parents=True)
    source.write_bytes(bytes(range(256)) * 4096 + b"tail" * 1000)  # ~1 MiB, not piece-aligned
    digest = peers.sha256_file(source)
    threaded = ThreadedTracker(interval=2)
    with threaded as tracker:
        torrent = harness.torrent(source, announce=[tracker.http_announce_url], piece_length=64 * 1024)
        torrent_udp = harness.torrent(source, announce=[tracker.udp_announce_url], piece_length=64 * 1024)
        assert torrent.info_hash == torrent_udp.info_hash

        seed = harness.libtorrent(name="lt-seed")
        seed.add_seed(torrent, source.parent, timeout=30)
        # (Not seed.wait_announced: add_seed may already have consumed libtorrent's reply alert.)
        threaded.wait_scrape(torrent.info_hash, lambda e: e[b"complete"] >= 1, "the seed", seed.log_excerpt)

        aria = harness.aria2(torrent, tmp_path / "aria2-out")
        leech = harness.libtorrent(name="lt-udp-leech")
        leech_handle = leech.add(torrent_udp, tmp_path / "lt-out")

        def context() -> str:
            return f"tracker stats: {threaded.stats()}\n{harness.describe()}"

        leech.wait_complete(leech_handle, timeout=60, context=context)
        rc = aria.wait_done(timeout=60, context=context)
        assert rc == 0, context()
        assert peers.sha256_file(tmp_path / "aria2-out" / "payload.bin") == digest
        assert peers.sha256_file(tmp_path / "lt-out" / "payload.bin") == digest

        stats = threaded.stats()
        assert stats["announces"]["http"] >= 2, stats  # libtorrent seed + aria2
        assert stats["announces"]["udp"] >= 1, stats  # the UDP-only libtorrent
        # A downloader was seen going from leeching to complete (aria2 may have stopped already).
        threaded.wait_scrape(torrent.info_hash, lambda e: e[b"downloaded"] >= 1, "a completed download", context)


@pytest.mark.interop
def test_aria2_finds_the_bridge_through_the_embedded_trackers_http_announce(
    harness: peers.Harness, tmp_path: Path
) -> None:
    """The bridge seeds and announces over HTTP to the embedded tracker; aria2 learns of it only from that
    tracker and downloads; SHA-256 matches and the bridge's uploaded count covers the file."""
    source = tmp_path / "data" / "payload.bin"
    source.parent.mkdir(parents=True)
    source.write_bytes(bytes(range(256)) * 4096 * 2 + b"odd" * 777)
    digest = peers.sha256_file(source)
    threaded = ThreadedTracker(interval=2)
    with threaded as tracker:
        torrent = harness.torrent(source, announce=[tracker.http_announce_url], piece_length=64 * 1024)
        seed = harness.bridge_seed(torrent, source.parent)
        seed.wait_listening()
        threaded.wait_scrape(torrent.info_hash, lambda e: e[b"complete"] >= 1, "the bridge seed", seed.log_excerpt)

        def context() -> str:
            return f"tracker stats: {threaded.stats()}\n{harness.describe()}"

        aria = harness.aria2(torrent, tmp_path / "aria2-out")
        rc = aria.wait_done(timeout=60, context=context)
        assert rc == 0, context()
        assert peers.sha256_file(tmp_path / "aria2-out" / "payload.bin") == digest
        assert seed.stop_cleanly() == 0, context()
        uploaded, _ = seed.stats()
        assert uploaded >= source.stat().st_size, context()
        assert threaded.stats()["announces"]["http"] >= 2, context()  # the bridge and aria2
