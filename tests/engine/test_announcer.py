"""Announcer: BEP 12 tiers, events, timing and shutdown, with a fake clock and a fake transport."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.engine.announcer import BACKOFF_BASE, BACKOFF_MAX, DEFAULT_MIN_GAP, Announcer
from bridge.errors import TrackerError
from bridge.proto.tracker import AnnounceRequest, AnnounceResponse

pytestmark = pytest.mark.timeout(60)

INFO_HASH = bytes(range(20))
PEER_ID = b"-WB0001-abcdefghijkl"
PEER = ("10.0.0.1", 6881)


def ok(
    interval: int = 1800, min_interval: int | None = None, tracker_id: bytes | None = None
) -> AnnounceResponse:
    return AnnounceResponse(interval, min_interval, (PEER,), 1, 2, None, tracker_id)


class FakeTime:
    """A clock that only moves when the test says so; sleepers wake when their deadline passes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleepers: list[tuple[float, float, asyncio.Future[None]]] = []  # (deadline, delay, future)
        self.changed = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        entry = (self.now + delay, delay, fut)
        self.sleepers.append(entry)
        self.changed.set()
        try:
            await fut
        finally:
            if entry in self.sleepers:
                self.sleepers.remove(entry)

    async def next_sleep(self) -> float:
        """Wait until the announcer sleeps; return the delay it asked for."""
        while not self.sleepers:
            self.changed.clear()
            await self.changed.wait()
        return self.sleepers[-1][1]

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in list(self.sleepers):
            deadline, _, fut = entry
            if deadline <= self.now + 1e-9:
                self.sleepers.remove(entry)  # gone at once, so next_sleep() never sees a stale sleeper
                if not fut.done():
                    fut.set_result(None)
        await asyncio.sleep(0.001)


Behaviour = Callable[[AnnounceRequest], Any]


class FakeTransport:
    """Records announces; per-URL behaviour: a response, an exception, or 'hang'."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes | None]] = []  # (url, event, tracker id)
        self.requests: list[AnnounceRequest] = []
        self.behaviour: dict[str, Any] = {}
        self.changed = asyncio.Event()

    async def __call__(self, url: str, req: AnnounceRequest, tracker_id: bytes | None) -> AnnounceResponse:
        self.calls.append((url, req.event, tracker_id))
        self.requests.append(req)
        self.changed.set()
        b = self.behaviour.get(url, ok())
        if callable(b) and not isinstance(b, AnnounceResponse):
            b = b(req)
        if b == "hang":
            await asyncio.Event().wait()
        if isinstance(b, BaseException):
            raise b
        assert isinstance(b, AnnounceResponse)
        return b

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            self.changed.clear()
            await self.changed.wait()

    def events(self, url: str | None = None) -> list[str]:
        return [e for u, e, _ in self.calls if url is None or u == url]


class Harness:
    def __init__(self, tiers: list[list[str]], seed: int = 1) -> None:
        self.time = FakeTime()
        self.transport = FakeTransport()
        self.peers: list[list[tuple[str, int]]] = []
        self.left = 100
        self.announcer = Announcer(
            tiers,
            INFO_HASH,
            PEER_ID,
            6881,
            stats=lambda: (5, 6, self.left),
            on_peers=self.peers.append,
            clock=self.time.clock,
            sleep=self.time.sleep,
            rng=random.Random(seed),
            announce=self.transport,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.announcer.run())

    async def close(self, stop_timeout: float = 1.0) -> None:
        await self.announcer.stop(timeout=stop_timeout)
        assert self.task is not None
        await asyncio.wait_for(self.task, 2)


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(tiers: list[list[str]], seed: int = 1) -> Harness:
        h = Harness(tiers, seed)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.task is not None and not h.task.done():
            h.task.cancel()
            await asyncio.gather(h.task, return_exceptions=True)


A, B, C = "http://a.example/announce", "udp://b.example:6969", "https://c.example/announce"


async def test_started_then_regular_announces(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        assert await h.time.next_sleep() == pytest.approx(1800)
        assert h.peers == [[PEER]]
        req = h.transport.requests[0]
        assert (req.event, req.uploaded, req.downloaded, req.left, req.port) == ("started", 5, 6, 100, 6881)
        assert req.info_hash == INFO_HASH and req.peer_id == PEER_ID and req.numwant == 50
        await h.time.advance(1799)
        assert len(h.transport.calls) == 1
        await h.time.advance(1)
        await h.transport.wait_calls(2)
        assert h.transport.events() == ["started", ""]
        assert h.transport.requests[1].key == req.key  # the key stays the same
        await h.close()
    assert h.transport.events() == ["started", "", "stopped"]
    assert h.transport.requests[-1].numwant == 0


async def test_interval_from_tracker(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = ok(interval=120)
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        assert await h.time.next_sleep() == pytest.approx(120)
        await h.close()


async def test_tiers_in_order_and_move_to_front(harness_factory: Callable[..., Harness]) -> None:
    t1 = ["http://t1a/ann", "http://t1b/ann", "http://t1c/ann"]
    t2 = ["udp://t2a:1", "udp://t2b:1"]
    h = harness_factory([t1, t2], seed=7)
    order1, order2 = h.announcer.tiers
    assert sorted(order1) == sorted(t1) and sorted(order2) == sorted(t2)
    # The whole first tier fails; the second tracker of tier 2 is the first to work.
    for url in t1:
        h.transport.behaviour[url] = TrackerError("down")
    h.transport.behaviour[order2[0]] = TrackerError("down")
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(5)
        await h.time.next_sleep()
        assert [u for u, _, _ in h.transport.calls] == order1 + order2
        assert h.announcer.tiers == [order1, [order2[1], order2[0]]]
        # Next announce starts again at tier 1 (BEP 12), then goes to the tracker now at the front of tier 2.
        h.transport.behaviour[order1[1]] = ok()
        await h.time.advance(1800)
        await h.transport.wait_calls(7)
        await h.time.next_sleep()
        assert [u for u, _, _ in h.transport.calls[5:]] == [order1[0], order1[1]]
        assert h.announcer.tiers[0] == [order1[1], order1[0], order1[2]]
        assert h.transport.events(order1[1]) == ["started", "started"]  # failed once, then answered
        await h.close()
    # stopped goes to every tracker that had received started, and to no other
    stopped = sorted(u for u, e, _ in h.transport.calls if e == "stopped")
    assert stopped == sorted([order1[1], order2[1]])


async def test_shuffle_is_seeded_and_per_tier() -> None:
    tiers = [[f"http://t{i}/a" for i in range(8)], ["http://x/a"]]
    a = Announcer(tiers, INFO_HASH, PEER_ID, 1, lambda: (0, 0, 0), lambda p: None, rng=random.Random(3))
    b = Announcer(tiers, INFO_HASH, PEER_ID, 1, lambda: (0, 0, 0), lambda p: None, rng=random.Random(3))
    assert a.tiers == b.tiers
    assert sorted(a.tiers[0]) == sorted(tiers[0]) and a.tiers[1] == tiers[1]
    assert tiers[0] == [f"http://t{i}/a" for i in range(8)]  # the caller's list is not modified


async def test_backoff_on_failure(
    harness_factory: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness_factory([[A, B]])
    h.transport.behaviour[A] = TrackerError("connection refused")
    h.transport.behaviour[B] = TrackerError("no answer within 15 s")
    delays = []
    caplog.set_level(logging.WARNING, logger="bridge.engine.announcer")
    async with asyncio.timeout(5):
        h.start()
        for i in range(12):
            await h.transport.wait_calls(2 * (i + 1))
            delay = await h.time.next_sleep()
            delays.append(delay)
            await h.time.advance(delay)
        await h.close()
    for i, delay in enumerate(delays):
        nominal = min(BACKOFF_BASE * 2**i, BACKOFF_MAX)
        assert min(0.8 * nominal, BACKOFF_MAX) - 1e-6 <= delay <= min(1.2 * nominal, BACKOFF_MAX) + 1e-6
    assert 0.8 * BACKOFF_MAX <= delays[-1] <= BACKOFF_MAX + 1e-6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(h.transport.calls) == 26  # 13 rounds of 2 (the last advance started a 13th)
    assert len(warnings) == len(h.transport.calls)  # one line per failed attempt
    assert all((A in r.getMessage()) or (B in r.getMessage()) for r in warnings)
    assert all("\n" not in r.getMessage() for r in warnings)
    assert h.transport.events(A) == ["started"] * 13
    # nobody ever received started, so nobody gets stopped
    assert "stopped" not in h.transport.events()


async def test_backoff_resets_after_success(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = TrackerError("down")
    async with asyncio.timeout(5):
        h.start()
        for _ in range(2):
            await h.time.advance(await h.time.next_sleep())
        h.transport.behaviour[A] = ok(interval=600)
        await h.time.advance(await h.time.next_sleep())
        await h.transport.wait_calls(4)
        assert await h.time.next_sleep() == pytest.approx(600)
        h.transport.behaviour[A] = TrackerError("down again")
        await h.time.advance(600)
        await h.transport.wait_calls(5)
        assert await h.time.next_sleep() <= 1.2 * BACKOFF_BASE
        await h.close()


async def test_announce_now_honours_min_interval(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = ok(interval=1800, min_interval=300)
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        assert await h.time.next_sleep() == pytest.approx(1800)
        await h.time.advance(100)
        h.announcer.announce_now()
        await asyncio.sleep(0.01)
        assert await h.time.next_sleep() == pytest.approx(200)  # min interval counts from the last announce
        assert len(h.transport.calls) == 1
        await h.time.advance(200)
        await h.transport.wait_calls(2)
        assert h.transport.events() == ["started", ""]
        await h.close()


async def test_announce_now_without_min_interval_uses_default_gap(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory([[A]])
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        await h.time.next_sleep()
        await h.time.advance(DEFAULT_MIN_GAP + 1)
        h.announcer.announce_now()
        await h.transport.wait_calls(2)
        await h.close()


async def test_completed_sent_once(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = ok(interval=1800, min_interval=60)
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        await h.time.next_sleep()
        await h.time.advance(500)
        h.left = 0
        h.announcer.completed()
        h.announcer.completed()
        await h.transport.wait_calls(2)
        assert h.transport.events() == ["started", "completed"]
        assert h.transport.requests[1].left == 0
        h.announcer.completed()
        assert await h.time.next_sleep() == pytest.approx(1800)
        await h.time.advance(1800)
        await h.transport.wait_calls(3)
        await h.close()
    assert h.transport.events() == ["started", "completed", "", "stopped"]


async def test_completed_before_started_follows_started(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = ok(interval=1800, min_interval=60)
    h.announcer.completed()
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        assert await h.time.next_sleep() == pytest.approx(60)
        await h.time.advance(60)
        await h.transport.wait_calls(2)
        assert h.transport.events() == ["started", "completed"]
        assert await h.time.next_sleep() == pytest.approx(1800)
        await h.close()


async def test_completed_retried_until_acknowledged(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        await h.time.next_sleep()
        await h.time.advance(DEFAULT_MIN_GAP)
        h.transport.behaviour[A] = TrackerError("down")
        h.announcer.completed()
        await h.transport.wait_calls(2)
        h.transport.behaviour[A] = ok()
        await h.time.advance(await h.time.next_sleep())
        await h.transport.wait_calls(3)
        await h.time.next_sleep()
        await h.close()
    assert h.transport.events() == ["started", "completed", "completed", "stopped"]


async def test_tracker_id_is_echoed(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = ok(tracker_id=b"tid")
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        await h.time.advance(await h.time.next_sleep())
        await h.transport.wait_calls(2)
        await h.close()
    assert [t for _, _, t in h.transport.calls] == [None, b"tid", b"tid"]


async def test_stop_is_bounded_and_never_raises(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A], [B]])
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        await h.time.next_sleep()
        h.transport.behaviour[A] = "hang"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await h.close(stop_timeout=0.2)
        assert loop.time() - start < 1.5
        await h.announcer.stop()  # idempotent
    assert h.transport.events() == ["started", "stopped"]


async def test_stop_with_announce_in_flight(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    h.transport.behaviour[A] = "hang"
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(1)
        h.transport.behaviour[A] = TrackerError("refused")
        await h.close(stop_timeout=0.5)
    # the started may have reached the tracker, so it is told we stopped
    assert h.transport.events() == ["started", "stopped"]
    assert h.task is not None and h.task.done() and h.task.exception() is None


async def test_stop_before_run_and_without_trackers(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    async with asyncio.timeout(5):
        await h.announcer.stop()
    assert h.transport.calls == []
    empty = harness_factory([["wss://tracker.example"]])
    async with asyncio.timeout(5):
        empty.start()
        await asyncio.sleep(0.01)
        await empty.close()
    assert empty.transport.calls == []


async def test_run_survives_callback_and_transport_bugs(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A, B]])

    def bad_peers(peers: list[tuple[str, int]]) -> None:
        raise RuntimeError("consumer bug")

    h.announcer._on_peers = bad_peers  # type: ignore[assignment]
    h.transport.behaviour[A] = ValueError("transport bug")
    h.transport.behaviour[B] = ValueError("transport bug")
    async with asyncio.timeout(5):
        h.start()
        await h.transport.wait_calls(2)
        await h.time.advance(await h.time.next_sleep())
        h.transport.behaviour[A] = ok()
        h.transport.behaviour[B] = ok()
        await h.transport.wait_calls(3)
        await h.time.next_sleep()
        assert not h.task.done()  # type: ignore[union-attr]
        await h.close()


async def test_stats_failure_is_a_failed_round(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory([[A]])
    calls = 0

    def stats() -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return (0, 0, -5 if calls == 2 else 0)  # then an invalid value, then fine

    h.announcer._stats = stats  # type: ignore[method-assign]
    async with asyncio.timeout(5):
        h.start()
        await h.time.advance(await h.time.next_sleep())
        await h.time.advance(await h.time.next_sleep())
        await h.transport.wait_calls(1)
        await h.close()
    assert h.transport.events() == ["started", "stopped"]


async def test_unsupported_invalid_and_duplicate_urls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.engine.announcer")
    a = Announcer(
        [["wss://tracker.example", A, "ftp://x/", A], [A, "ws://y/"], ["udp://nport/"]],
        INFO_HASH,
        PEER_ID,
        1,
        lambda: (0, 0, 0),
        lambda p: None,
    )
    assert a.tiers == [[A]]
    skipped = [r for r in caplog.records if "wss://tracker.example" in r.getMessage()]
    assert skipped and all(r.levelno == logging.DEBUG for r in skipped)
    assert any(r.levelno == logging.WARNING and "ftp://x/" in r.getMessage() for r in caplog.records)


# --- against a real HTTP tracker on loopback ------------------------------------------------------------------


async def test_real_http_tracker_started_and_stopped() -> None:
    events: list[str] = []
    got_peers: list[list[tuple[str, int]]] = []
    first = asyncio.Event()

    def on_peers(peers: list[tuple[str, int]]) -> None:
        got_peers.append(peers)
        first.set()

    async def announce(request: web.Request) -> web.Response:
        events.append(request.query.get("event", ""))
        return web.Response(body=b"d8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1a\xe1e")

    app = web.Application()
    app.router.add_get("/announce", announce)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with asyncio.timeout(10), aiohttp.ClientSession() as session:
            announcer = Announcer(
                [[f"http://{host}:{port}/announce"]],
                INFO_HASH,
                PEER_ID,
                6881,
                lambda: (0, 0, 10),
                on_peers,
                session,
            )
            task = asyncio.create_task(announcer.run())
            await first.wait()
            await announcer.stop()
            await task
    finally:
        await runner.cleanup()
    assert events == ["started", "stopped"]
    assert got_peers == [[("127.0.0.1", 6881)]]
