"""The WebSocket tracker client: against a scripted ``websockets`` server, then against the real
bittorrent-tracker (npm) on 127.0.0.1, port 0.

Scheduled waits (intervals, offer expiry, backoff) run on a FastClock, 50 times faster than real time, so the
default WebTorrent timings (50 s offer expiry, 10 s backoff base) are exercised as they are, in under a
second or two each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from bridge.net.tracker_ws import (
    WsTrackerOptions,
    WsTrackerPool,
    reconnect_delay,
    redact_url,
)
from bridge.proto.wstracker import MAX_MESSAGE_SIZE, MAX_SDP_LENGTH, id_to_str

pytestmark = pytest.mark.timeout(60)

TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"
WAIT = 5.0  # real seconds any single expected event may take
SPEED = 50.0

# Ids with bytes above 0x7f and JSON-special characters: they must travel as 20-character binary strings.
IH1 = bytes(range(0xEC, 0x100))
IH2 = b"\x00\"\\/\x7f\x80" + bytes(range(0x90, 0x9E))
OTHER_IH = b"\x11" * 20
PEER = b"-WB0001-\x00\xff\"\\\x80\x7f%&=?+ "
REMOTE = b"-WW0208-" + bytes(range(0xA0, 0xAC))


def s(raw: bytes) -> str:
    return id_to_str(raw)


class FastClock:
    """A clock running SPEED times faster than real time; records the sleeps asked of it."""

    def __init__(self, speed: float = SPEED) -> None:
        self.speed = speed
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic() * self.speed

    def sleep(self, seconds: float) -> Any:
        self.sleeps.append(seconds)
        return asyncio.sleep(seconds / self.speed)


class FakeTorrent:
    """A WsSwarmHandler that records every call; offers and answers are fake SDP strings."""

    def __init__(self, tag: int, left: int | None = None, answer: bool = True) -> None:
        self.tag = tag
        self.left = left
        self.answer = answer
        self.uploaded = 1000 + tag
        self.downloaded = 2000 + tag
        self.made: list[bytes] = []
        self.requested: list[int] = []
        self.offers: asyncio.Queue[tuple[bytes, bytes, str]] = asyncio.Queue()
        self.answers: asyncio.Queue[tuple[bytes, bytes, str]] = asyncio.Queue()
        self.expired: asyncio.Queue[bytes] = asyncio.Queue()
        self._counter = 0

    def stats(self) -> tuple[int, int, int | None]:
        return self.uploaded, self.downloaded, self.left

    async def make_offers(self, n: int) -> list[tuple[bytes, str]]:
        self.requested.append(n)
        out = []
        for _ in range(n):
            self._counter += 1
            offer_id = bytes([0xF0, self.tag, self._counter]) + b"\x80\"\\" + bytes(14)
            self.made.append(offer_id)
            out.append((offer_id, f"v=0 offer {self.tag}/{self._counter}"))
        return out

    async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
        await self.offers.put((peer_id, offer_id, sdp))
        return f"v=0 answer to {sdp}" if self.answer else None

    def on_answer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> None:
        self.answers.put_nowait((peer_id, offer_id, sdp))

    def offer_expired(self, offer_id: bytes) -> None:
        self.expired.put_nowait(offer_id)


async def get(queue: asyncio.Queue[Any], timeout: float = WAIT) -> Any:
    async with asyncio.timeout(timeout):
        return await queue.get()


async def until(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


class ScriptedTracker:
    """A websockets server on 127.0.0.1:0 that records every message and lets the test script replies.

    By default it answers each announce (not answers) like the reference tracker does, with an interval
    of one hour so that no regular update interferes with a test that does not ask for one.
    """

    def __init__(self) -> None:
        self.server: Server | None = None
        self.url = ""
        self.conns: list[ServerConnection] = []
        self.messages: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.raw: list[str] = []
        self.auto_reply = True
        self.reply_extra: dict[str, Any] = {"interval": 3600}
        self.reject = 0

    async def start(self) -> None:
        self.server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                  max_size=None, compression=None)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/announce?passkey=secret"

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.reject > 0:
            self.reject -= 1
            return conn.respond(503, "busy\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        index = len(self.conns)
        self.conns.append(ws)
        with contextlib.suppress(Exception):
            async for raw in ws:
                assert isinstance(raw, str)
                self.raw.append(raw)
                obj = json.loads(raw)
                await self.messages.put((index, obj))
                if self.auto_reply and obj.get("action") == "announce" and "answer" not in obj:
                    reply = {"action": "announce", "info_hash": obj["info_hash"], "complete": 1,
                             "incomplete": 2, **self.reply_extra}
                    await ws.send(json.dumps(reply))

    async def next(self, pred: Callable[[dict[str, Any]], bool] = lambda m: True,
                   timeout: float = WAIT) -> tuple[int, dict[str, Any]]:
        """The next received message matching ``pred`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                index, msg = await self.messages.get()
                if pred(msg):
                    return index, msg

    async def started(self, info_hash: bytes) -> tuple[int, dict[str, Any]]:
        return await self.next(lambda m: m.get("event") == "started" and m["info_hash"] == s(info_hash))

    async def send(self, msg: dict[str, Any] | str | bytes, conn: int = -1) -> None:
        await self.conns[conn].send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def tracker() -> AsyncIterator[ScriptedTracker]:
    t = ScriptedTracker()
    await t.start()
    try:
        yield t
    finally:
        await t.close()


def options(**kw: Any) -> WsTrackerOptions:
    base: dict[str, Any] = {"backoff_jitter": 5.0}
    base.update(kw)
    return WsTrackerOptions(**base)


@pytest.fixture
async def pool() -> AsyncIterator[tuple[WsTrackerPool, FastClock]]:
    clock = FastClock()
    p = WsTrackerPool(options(), clock=clock, rng=random.Random(7))
    try:
        yield p, clock
    finally:
        async with asyncio.timeout(WAIT):
            await p.aclose()


def offer_msg(info_hash: bytes, peer_id: bytes, offer_id: bytes, sdp: str = "v=0 remote offer") -> dict[str, Any]:
    return {"action": "announce", "info_hash": s(info_hash), "peer_id": s(peer_id), "offer_id": s(offer_id),
            "offer": {"type": "offer", "sdp": sdp}}


def answer_msg(info_hash: bytes, peer_id: bytes, offer_id: bytes, sdp: str = "v=0 remote answer") -> dict[str, Any]:
    return {"action": "announce", "info_hash": s(info_hash), "peer_id": s(peer_id), "offer_id": s(offer_id),
            "answer": {"type": "answer", "sdp": sdp}}


# ------------------------------------------------------------------------------------- pure parts


def test_reconnect_delay_shape() -> None:
    rng = random.Random(1)
    assert [reconnect_delay(n, rng, jitter=0) for n in range(8)] == [10, 20, 40, 80, 160, 320, 600, 600]
    assert reconnect_delay(10_000, rng, jitter=0) == 600
    delays = [reconnect_delay(0, rng) for _ in range(200)]
    assert all(10 <= d <= 20 for d in delays) and max(delays) > 18
    a, b = random.Random(5), random.Random(5)
    assert reconnect_delay(3, a, base=1, cap=5, jitter=2) == reconnect_delay(3, b, base=1, cap=5, jitter=2)


def test_options_and_urls_validated() -> None:
    with pytest.raises(ValueError):
        WsTrackerOptions(offers=11)
    with pytest.raises(ValueError):
        WsTrackerOptions(numwant=-1)
    with pytest.raises(ValueError):
        WsTrackerOptions(offer_timeout=0)
    with pytest.raises(ValueError):
        WsTrackerPool().client("http://tracker.example/announce")
    assert redact_url("wss://user:pw@t.example:8443/announce?passkey=x#f") == "wss://t.example:8443/announce"


async def test_pool_shares_one_client_per_url() -> None:
    p = WsTrackerPool()
    a = p.client("wss://tracker.example/announce")
    assert p.client("wss://tracker.example/announce") is a
    assert p.client("wss://other.example/announce") is not a
    await p.aclose()
    with pytest.raises(RuntimeError):
        p.client("wss://tracker.example/announce")
    with pytest.raises(RuntimeError):
        a.join(IH1, PEER, FakeTorrent(1))


# --------------------------------------------------------------------------------- scripted tracker


async def test_started_announce_contents(tracker: ScriptedTracker,
                                         pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    torrent = FakeTorrent(1, left=None)
    swarm = p.client(tracker.url).join(IH1, PEER, torrent)
    index, msg = await tracker.started(IH1)
    assert index == 0
    assert msg["action"] == "announce"
    assert msg["info_hash"] == s(IH1) and len(msg["info_hash"]) == 20
    assert msg["peer_id"] == s(PEER) and len(msg["peer_id"]) == 20
    assert msg["numwant"] == 5
    assert (msg["uploaded"], msg["downloaded"]) == (1001, 2001)
    assert "left" in msg and msg["left"] is None
    assert '"left": null' in tracker.raw[0]
    assert torrent.requested == [5]
    assert msg["offers"] == [{"offer": {"type": "offer", "sdp": f"v=0 offer 1/{n}"}, "offer_id": s(oid)}
                             for n, oid in enumerate(torrent.made, 1)]
    await until(lambda: swarm.complete == 1 and swarm.incomplete == 2, "the announce reply to be read")


async def test_forwarded_offer_is_answered(tracker: ScriptedTracker,
                                           pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    torrent = FakeTorrent(1)
    p.client(tracker.url).join(IH1, PEER, torrent)
    await tracker.started(IH1)

    torrent.answer = False  # the first offer is ignored by the torrent: nothing is sent back
    first = b"\xa1" * 20
    await tracker.send(offer_msg(IH1, REMOTE, first, "v=0 first"))
    assert await get(torrent.offers) == (REMOTE, first, "v=0 first")
    torrent.answer = True
    second = b"\xa2\x00\"" + b"\xfe" * 17
    await tracker.send(offer_msg(IH1, REMOTE, second, "v=0 second"))
    assert await get(torrent.offers) == (REMOTE, second, "v=0 second")

    _, msg = await tracker.next(lambda m: "answer" in m)
    assert msg == {"action": "announce", "info_hash": s(IH1), "peer_id": s(PEER), "to_peer_id": s(REMOTE),
                   "offer_id": s(second), "answer": {"type": "answer", "sdp": "v=0 answer to v=0 second"}}


async def test_relayed_answer_reaches_on_answer(tracker: ScriptedTracker,
                                                pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    torrent = FakeTorrent(1)
    p.client(tracker.url).join(IH1, PEER, torrent)
    await tracker.started(IH1)
    target = torrent.made[2]
    await tracker.send(answer_msg(IH1, REMOTE, b"\x99" * 20))  # unknown offer_id: ignored
    await tracker.send(answer_msg(IH1, REMOTE, target, "v=0 the answer"))
    await tracker.send(answer_msg(IH1, REMOTE, target, "v=0 duplicate"))  # already answered: ignored
    await tracker.send(answer_msg(IH1, REMOTE, torrent.made[0], "v=0 marker"))
    assert await get(torrent.answers) == (REMOTE, target, "v=0 the answer")
    assert await get(torrent.answers) == (REMOTE, torrent.made[0], "v=0 marker")
    assert torrent.answers.empty()


async def test_unanswered_offers_expire(tracker: ScriptedTracker) -> None:
    clock = FastClock()
    async with WsTrackerPool(options(offer_timeout=20.0), clock=clock) as p:
        torrent = FakeTorrent(1)
        p.client(tracker.url).join(IH1, PEER, torrent)
        await tracker.started(IH1)
        start = time.monotonic()
        answered = torrent.made[1]
        await tracker.send(answer_msg(IH1, REMOTE, answered))
        await get(torrent.answers)
        expired = {await get(torrent.expired) for _ in range(4)}
        elapsed = time.monotonic() - start
        assert expired == set(torrent.made) - {answered}
        assert 20.0 in clock.sleeps
        assert elapsed < 20.0 / SPEED + 1.0
        # an answer after expiry is not delivered
        await tracker.send(answer_msg(IH1, REMOTE, torrent.made[0]))
        await tracker.send(offer_msg(IH1, REMOTE, b"\x42" * 20))
        await get(torrent.offers)
        assert torrent.answers.empty() and torrent.expired.empty()


async def test_other_info_hashes_and_own_peer_id_ignored(tracker: ScriptedTracker,
                                                         pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    torrent = FakeTorrent(1)
    swarm = p.client(tracker.url).join(IH1, PEER, torrent)
    await tracker.started(IH1)
    await until(lambda: swarm.complete is not None, "the announce reply")
    await tracker.send(offer_msg(OTHER_IH, REMOTE, b"\x01" * 20))
    await tracker.send(answer_msg(OTHER_IH, REMOTE, torrent.made[0]))
    await tracker.send({"action": "announce", "info_hash": s(OTHER_IH), "interval": 1, "complete": 99})
    await tracker.send(offer_msg(IH1, PEER, b"\x02" * 20))  # our own offer bounced back
    await tracker.send(answer_msg(IH1, PEER, torrent.made[1]))  # "answered" by ourselves
    await tracker.send(offer_msg(IH1, REMOTE, b"\x03" * 20, "v=0 marker"))
    assert await get(torrent.offers) == (REMOTE, b"\x03" * 20, "v=0 marker")
    assert torrent.offers.empty() and torrent.answers.empty()
    assert swarm.complete == 1 and swarm.interval == 3600
    # the offer "answered" by ourselves is still pending: a real answer is delivered
    await tracker.send(answer_msg(IH1, REMOTE, torrent.made[1]))
    assert (await get(torrent.answers))[1] == torrent.made[1]


async def test_malformed_messages_dropped_socket_stays_up(tracker: ScriptedTracker,
                                                          pool: tuple[WsTrackerPool, FastClock],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    p, _ = pool
    torrent = FakeTorrent(1)
    client = p.client(tracker.url)
    swarm = client.join(IH1, PEER, torrent)
    await tracker.started(IH1)
    await until(lambda: swarm.complete is not None, "the announce reply")
    caplog.set_level(logging.WARNING, logger="bridge.net.tracker_ws")
    bad: list[str | bytes | dict[str, Any]] = [
        "not json {",
        "[1, 2, 3]",
        '"a string"',
        {"action": "announce", "info_hash": 12345},
        {"action": "announce", "info_hash": "too short"},
        {"action": "announce", "info_hash": "\u0100" * 20},
        {"info_hash": s(IH1), "interval": 10},  # no action
        {"action": "dance", "info_hash": s(IH1)},
        {"action": "announce", "info_hash": s(IH1), "interval": "soon"},
        {"action": "announce", "info_hash": s(IH1), "interval": -5},
        {**offer_msg(IH1, REMOTE, b"\x05" * 20), "offer": {"type": "answer", "sdp": "x"}},
        {**offer_msg(IH1, REMOTE, b"\x05" * 20), "offer": "v=0"},
        {**offer_msg(IH1, REMOTE, b"\x05" * 20), "offer_id": 5},
        offer_msg(IH1, REMOTE, b"\x06" * 20, "v" * (MAX_SDP_LENGTH + 1)),  # over the SDP limit, under 64 KiB
        b"\xff\xfe\x00 binary garbage",
        json.dumps(offer_msg(IH1, REMOTE, b"\x06" * 20))[:-3],
    ]
    for msg in bad:
        await tracker.send(msg)
    await tracker.send(offer_msg(IH1, REMOTE, b"\x07" * 20, "v=0 valid"))
    assert await get(torrent.offers) == (REMOTE, b"\x07" * 20, "v=0 valid")
    assert torrent.offers.empty()
    assert swarm.interval == 3600
    dropped = [r for r in caplog.records if "dropping a malformed message" in r.getMessage()]
    assert len(dropped) == len(bad)
    assert all(r.levelno == logging.WARNING for r in dropped)
    assert all(r.getMessage().startswith(redact_url(tracker.url) + ":") for r in dropped)
    assert "secret" not in caplog.text
    assert len(tracker.conns) == 1 and client.connected and client.generation == 1


async def test_message_over_max_size_drops_connection_then_reconnects(
        tracker: ScriptedTracker, pool: tuple[WsTrackerPool, FastClock]) -> None:
    # websockets must refuse a frame over MAX_MESSAGE_SIZE (max_size) rather than buffer it; it closes with
    # 1009 and the client reconnects as after any drop.
    p, _ = pool
    torrent = FakeTorrent(1)
    client = p.client(tracker.url)
    client.join(IH1, PEER, torrent)
    await tracker.started(IH1)
    await tracker.send(offer_msg(IH1, REMOTE, b"\x08" * 20, "v" * MAX_MESSAGE_SIZE))
    index, _ = await tracker.started(IH1)
    assert index == 1
    assert tracker.conns[0].close_code == 1009
    assert torrent.offers.empty()
    # exactly MAX_MESSAGE_SIZE bytes is still taken (and then refused by the codec for its SDP length)
    msg = json.dumps(offer_msg(IH1, REMOTE, b"\x08" * 20, ""))
    msg = msg.replace('"sdp": ""', '"sdp": "' + "v" * (MAX_MESSAGE_SIZE - len(msg)) + '"')
    assert len(msg.encode()) == MAX_MESSAGE_SIZE
    await tracker.send(msg)
    await tracker.send(offer_msg(IH1, REMOTE, b"\x09" * 20, "v=0 after"))
    assert (await get(torrent.offers))[2] == "v=0 after"
    assert len(tracker.conns) == 2


async def test_reconnect_with_backoff_reannounces_every_swarm(
        tracker: ScriptedTracker, caplog: pytest.LogCaptureFixture) -> None:
    clock = FastClock()
    seed = 11
    async with WsTrackerPool(options(), clock=clock, rng=random.Random(seed)) as p:
        client = p.client(tracker.url)
        t1, t2 = FakeTorrent(1), FakeTorrent(2, left=0)
        client.join(IH1, PEER, t1)
        client.join(IH2, PEER, t2)
        await tracker.started(IH1)
        await tracker.started(IH2)
        caplog.set_level(logging.INFO, logger="bridge.net.tracker_ws")
        pending = list(t1.made)
        await tracker.conns[0].close()
        got = {(await tracker.started(IH1))[0], (await tracker.started(IH2))[0]}
        assert got == {1}
        assert client.generation == 2
        expected = reconnect_delay(0, random.Random(seed), jitter=5.0)
        assert expected in clock.sleeps and 10 <= expected <= 15
        assert any("connection" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        # offers made before the drop still get their answers on the new connection
        await tracker.send(answer_msg(IH1, REMOTE, pending[0]))
        assert (await get(t1.answers))[1] == pending[0]


async def test_refused_handshakes_back_off_exponentially(tracker: ScriptedTracker,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.net.tracker_ws")
    clock = FastClock()
    seed = 3
    tracker.reject = 3
    async with WsTrackerPool(options(), clock=clock, rng=random.Random(seed)) as p:
        swarm = p.client(tracker.url).join(IH1, PEER, FakeTorrent(1))
        await tracker.started(IH1)
        rng = random.Random(seed)
        assert clock.sleeps[:3] == [reconnect_delay(n, rng, jitter=5.0) for n in range(3)]
        assert [round(d // 10) * 10 for d in clock.sleeps[:3]] == [10, 20, 40]
        assert swarm.active
    refused = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refused) == 3 and all(r.levelno == logging.WARNING for r in refused)
    assert "503" in refused[0].getMessage()


async def test_tracker_failure_is_a_warning(tracker: ScriptedTracker, pool: tuple[WsTrackerPool, FastClock],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.net.tracker_ws")
    p, _ = pool
    torrent = FakeTorrent(1)
    client = p.client(tracker.url)
    client.join(IH1, PEER, torrent)
    await tracker.started(IH1)
    await tracker.send({"failure reason": "invalid info_hash"})
    await tracker.send({"action": "announce", "info_hash": s(IH1), "failure reason": "swarm full"})
    await tracker.send({"action": "announce", "info_hash": s(IH1), "warning message": "be nice"})
    await tracker.send(offer_msg(IH1, REMOTE, b"\x07" * 20))
    await get(torrent.offers)
    text = caplog.text
    assert "tracker failure: invalid info_hash" in text
    assert f"{IH1.hex()[:8]}: tracker failure: swarm full" in text
    assert "tracker warning: be nice" in text
    assert client.connected and len(tracker.conns) == 1


async def test_regular_updates_honour_interval_and_min_interval(tracker: ScriptedTracker) -> None:
    clock = FastClock()
    tracker.reply_extra = {"interval": 60, "min interval": 90}
    async with WsTrackerPool(options(), clock=clock) as p:
        torrent = FakeTorrent(1, left=500)
        swarm = p.client(tracker.url).join(IH1, PEER, torrent)
        await tracker.started(IH1)
        start = time.monotonic()
        await until(lambda: swarm.interval == 90, "the tracker's min interval")
        tracker.reply_extra = {"interval": 0}  # the reply to the coming update: a floor protects against 0
        _, update = await tracker.next(lambda m: m["info_hash"] == s(IH1))
        elapsed = time.monotonic() - start
        assert "event" not in update
        assert update["left"] == 500 and update["numwant"] == 5 and len(update["offers"]) == 5
        assert 85 / SPEED <= elapsed <= 90 / SPEED + 1.0
        assert any(80 < d <= 90 for d in clock.sleeps)
        await until(lambda: swarm.interval == 10, "the floored interval")
        start = time.monotonic()
        _, update = await tracker.next(lambda m: m["info_hash"] == s(IH1))
        assert "event" not in update and 8 / SPEED <= time.monotonic() - start <= 10 / SPEED + 1.0


async def test_a_seeder_offers_only_while_the_tracker_counts_leechers(tracker: ScriptedTracker) -> None:
    """Offers from a seeder can only reach leechers: with none counted in the last reply, regular updates
    carry no offers (and make none), and they come back once the tracker counts a leecher."""
    clock = FastClock()
    tracker.reply_extra = {"interval": 60, "incomplete": 0}
    async with WsTrackerPool(options(), clock=clock) as p:
        torrent = FakeTorrent(1, left=0)
        swarm = p.client(tracker.url).join(IH1, PEER, torrent)
        _, started = await tracker.started(IH1)
        assert len(started["offers"]) == 5  # no reply yet: nothing is known about the swarm
        await until(lambda: swarm.incomplete == 0, "the first reply")
        tracker.reply_extra = {"interval": 60, "incomplete": 3}
        _, update = await tracker.next(lambda m: m["info_hash"] == s(IH1))
        assert "event" not in update and "offers" not in update and update["numwant"] == 0
        assert torrent.requested == [5]
        _, update = await tracker.next(lambda m: m["info_hash"] == s(IH1))
        assert "event" not in update and len(update["offers"]) == 5 and update["numwant"] == 5
        assert torrent.requested == [5, 5]
        # a leecher keeps offering whatever the counts say
        torrent.left = 10
        tracker.reply_extra = {"interval": 60, "incomplete": 0}
        await tracker.next(lambda m: m["info_hash"] == s(IH1))
        _, update = await tracker.next(lambda m: m["info_hash"] == s(IH1))
        assert len(update["offers"]) == 5


async def test_completed_and_stop(tracker: ScriptedTracker, pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    torrent = FakeTorrent(1, left=100)
    client = p.client(tracker.url)
    swarm = client.join(IH1, PEER, torrent)
    await tracker.started(IH1)
    torrent.left = 0
    swarm.completed()
    _, msg = await tracker.next()
    assert msg["event"] == "completed" and msg["left"] == 0 and msg["numwant"] == 0 and "offers" not in msg
    torrent.uploaded = 7777
    start = time.monotonic()
    await swarm.stop()
    _, msg = await tracker.next()
    assert msg["event"] == "stopped" and msg["numwant"] == 0 and "offers" not in msg
    assert msg["uploaded"] == 7777 and msg["info_hash"] == s(IH1) and msg["peer_id"] == s(PEER)
    assert not swarm.active and not client.connected and client.swarms == {}
    # the last swarm left: the socket is closed
    async with asyncio.timeout(WAIT):
        await tracker.conns[0].wait_closed()
    assert time.monotonic() - start < 2.0
    await swarm.stop()  # idempotent
    # joining again reconnects
    client.join(IH1, PEER, torrent)
    index, _ = await tracker.started(IH1)
    assert index == 1


async def test_stop_without_tracker_is_quick(pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    # a port nobody listens on: the client is in backoff when stop() is called
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    swarm = p.client(f"ws://127.0.0.1:{port}/").join(IH1, PEER, FakeTorrent(1))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await swarm.stop()
    assert time.monotonic() - start < 1.0


async def test_two_torrents_share_one_socket(tracker: ScriptedTracker,
                                             pool: tuple[WsTrackerPool, FastClock]) -> None:
    p, _ = pool
    t1, t2 = FakeTorrent(1), FakeTorrent(2)
    c1 = p.client(tracker.url)
    c2 = p.client(tracker.url)
    assert c1 is c2
    s1 = c1.join(IH1, PEER, t1)
    peer2 = b"-WB0001-" + b"\x02" * 12
    s2 = c2.join(IH2, peer2, t2)
    with pytest.raises(ValueError):
        c1.join(IH1, peer2, FakeTorrent(3))
    (i1, m1), (i2, m2) = await tracker.started(IH1), await tracker.started(IH2)
    assert (i1, i2) == (0, 0) and m1["peer_id"] == s(PEER) and m2["peer_id"] == s(peer2)
    assert len(tracker.conns) == 1

    await tracker.send(offer_msg(IH2, REMOTE, b"\x21" * 20, "v=0 for two"))
    assert await get(t2.offers) == (REMOTE, b"\x21" * 20, "v=0 for two")
    _, ans = await tracker.next(lambda m: "answer" in m)
    assert ans["info_hash"] == s(IH2) and ans["peer_id"] == s(peer2) and ans["to_peer_id"] == s(REMOTE)
    # answers are routed by offer_id to the swarm that made the offer, and only under its info-hash
    await tracker.send(answer_msg(IH1, REMOTE, t2.made[0]))  # t2's offer under IH1: ignored
    await tracker.send(answer_msg(IH2, REMOTE, t2.made[0], "v=0 a2"))
    await tracker.send(answer_msg(IH1, REMOTE, t1.made[0], "v=0 a1"))
    assert await get(t2.answers) == (REMOTE, t2.made[0], "v=0 a2")
    assert await get(t1.answers) == (REMOTE, t1.made[0], "v=0 a1")
    assert t1.offers.empty() and t2.answers.empty()

    await s1.stop()
    _, msg = await tracker.next()
    assert msg["event"] == "stopped" and msg["info_hash"] == s(IH1)
    assert c1.connected and len(tracker.conns) == 1
    await tracker.send(offer_msg(IH1, REMOTE, b"\x22" * 20))  # IH1 left: ignored
    await tracker.send(offer_msg(IH2, REMOTE, b"\x23" * 20))
    assert (await get(t2.offers))[1] == b"\x23" * 20
    assert t1.offers.empty()
    await s2.stop()
    async with asyncio.timeout(WAIT):
        await tracker.conns[0].wait_closed()
    assert not c1.connected


async def test_handler_errors_are_contained(tracker: ScriptedTracker, pool: tuple[WsTrackerPool, FastClock],
                                            caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeTorrent):
        async def make_offers(self, n: int) -> list[tuple[bytes, str]]:
            raise RuntimeError("no WebRTC today")

        async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
            await self.offers.put((peer_id, offer_id, sdp))
            raise RuntimeError("cannot answer")

    p, _ = pool
    torrent = Broken(1)
    client = p.client(tracker.url)
    client.join(IH1, PEER, torrent)
    _, msg = await tracker.started(IH1)
    assert "offers" not in msg
    await tracker.send(offer_msg(IH1, REMOTE, b"\x31" * 20))
    await get(torrent.offers)
    await tracker.send(offer_msg(IH1, REMOTE, b"\x32" * 20))
    await get(torrent.offers)
    assert "no WebRTC today" in caplog.text and "cannot answer" in caplog.text
    assert client.connected


async def test_concurrent_answers_are_bounded(tracker: ScriptedTracker) -> None:
    release = asyncio.Event()

    class Slow(FakeTorrent):
        async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
            await self.offers.put((peer_id, offer_id, sdp))
            await release.wait()
            return "v=0 late answer"

    async with WsTrackerPool(options(max_concurrent_answers=3), clock=FastClock()) as p:
        torrent = Slow(1)
        p.client(tracker.url).join(IH1, PEER, torrent)
        await tracker.started(IH1)
        for n in range(6):
            await tracker.send(offer_msg(IH1, REMOTE, bytes([0x50 + n]) * 20))
        got = [(await get(torrent.offers))[1] for _ in range(3)]
        assert got == [bytes([0x50 + n]) * 20 for n in range(3)]
        release.set()
        answered = {(await tracker.next(lambda m: "answer" in m))[1]["offer_id"] for _ in range(3)}
        assert answered == {s(bytes([0x50 + n]) * 20) for n in range(3)}
        await tracker.send(offer_msg(IH1, REMOTE, b"\x60" * 20))  # room again
        assert (await get(torrent.offers))[1] == b"\x60" * 20
        assert torrent.offers.empty()


# ------------------------------------------------------------------------------ reference tracker


class ReferenceTracker:
    """bittorrent-tracker's WebSocket server, started by tests/tools/ws_tracker.mjs."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.stderr = b""

    async def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed (not on PATH); run scripts/setup", pytrace=False)
        if not (TOOLS_DIR / "node_modules" / "bittorrent-tracker").is_dir():
            pytest.fail(f"bittorrent-tracker is not installed in {TOOLS_DIR}/node_modules; run scripts/setup",
                        pytrace=False)
        self.proc = await asyncio.create_subprocess_exec(
            node, str(TOOLS_DIR / "ws_tracker.mjs"), "--host", "127.0.0.1", cwd=TOOLS_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(15):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            pytest.fail("ws_tracker.mjs printed no port within 15 s" + await self.stop(), pytrace=False)
        if not line:
            pytest.fail("ws_tracker.mjs exited before printing its port" + await self.stop(), pytrace=False)
        self.url = json.loads(line)["url"]

    async def stop(self) -> str:
        proc = self.proc
        if proc is None:
            return ""
        self.proc = None
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        self.stderr = err
        return "\n--- ws_tracker.mjs stderr ---\n" + err.decode(errors="replace")[-3000:]


async def test_offer_answer_through_reference_tracker() -> None:
    ref = ReferenceTracker()
    await ref.start()
    try:
        async with asyncio.timeout(30):
            await _offer_answer_through(ref.url)
    except BaseException:
        print(await ref.stop())
        raise
    finally:
        await ref.stop()


async def _offer_answer_through(url: str) -> None:
    peer_a = b"-WB0001-" + bytes(range(0xF0, 0xFC))
    peer_b = b"-WW0208-" + b"\x00\x7f\x80\xff\"\\" + bytes(6)
    pool_a = WsTrackerPool(options(), clock=FastClock())
    pool_b = WsTrackerPool(options(offers=0))
    try:
        a, b = FakeTorrent(0xA, left=1000), FakeTorrent(0xB, left=1000)
        client_a, client_b = pool_a.client(url), pool_b.client(url)
        assert client_a is not client_b
        # B joins first and makes no offers; once the tracker has it in the swarm, A's offers reach it
        swarm_b = client_b.join(IH1, peer_b, b)
        await until(lambda: swarm_b.incomplete is not None, "B's announce reply", timeout=10)
        assert swarm_b.interval == 120  # the reference tracker's interval
        assert b.made == []
        swarm_a = client_a.join(IH1, peer_a, a)
        peer, offer_id, sdp = await get(b.offers, timeout=10)
        assert peer == peer_a and offer_id in a.made and sdp.startswith("v=0 offer 10/")
        got = await get(a.answers, timeout=10)
        assert got == (peer_b, offer_id, f"v=0 answer to {sdp}")
        await until(lambda: swarm_a.incomplete == 2, "A to see two leechers")
        assert swarm_a.complete == 0
        assert b.answers.empty() and a.offers.empty()
    finally:
        await pool_a.aclose()
        await pool_b.aclose()
