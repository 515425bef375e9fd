"""Trackers that go away and come back, with the bridge's engine running against the embedded tracker.

The tracker (bridge/tracker: HTTP, UDP and WebSocket on one port) is stopped under a running torrent, then
started again on the same port. The bridge must not fail, must retry with growing gaps, and must announce
again and find a peer through the new tracker. Delays are scaled down for the test (the HTTP announcer's
BACKOFF_BASE and the 60 s floor under a tracker's interval; the WebSocket pool's backoff options): the
logic is the engine's, only the unit of time is shorter. Everything is on 127.0.0.1; every wait is bounded.

Each scenario prints one ``FAULT | scenario | outcome | figure`` line (see ``pytest -s``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from peers import Harness
from scripted_peer import GOOD_IP, MIB, bridge_config, file_sha256, make_data, report, sha256, until

from bridge.engine import announcer as announcer_mod
from bridge.engine.session import Session
from bridge.engine.torrent import Torrent
from bridge.errors import TrackerError
from bridge.net import tracker_http
from bridge.net.tracker_ws import WsTrackerOptions, WsTrackerPool
from bridge.proto import tracker as tracker_proto
from bridge.tracker.server import start_tracker

#: The HTTP announcer's first retry delay for these tests (15 s in production), doubling per failed round.
BACKOFF_BASE = 0.25


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def announcer_alive(torrent: Torrent) -> bool:
    return any(t.get_name().startswith("announce") and not t.done() for t in torrent._tasks)


async def test_http_tracker_down_and_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bridge leeches with only an HTTP tracker to find peers. The tracker stops: announces fail, the
    retries come at growing intervals (exponential backoff) and nothing else breaks. The tracker restarts on
    the same port and a libtorrent seed announces to it: the bridge's next retry gets the seed's address and
    the download completes."""
    monkeypatch.setattr(announcer_mod, "BACKOFF_BASE", BACKOFF_BASE)
    monkeypatch.setattr(tracker_proto, "MIN_ANNOUNCE_INTERVAL", 1)  # honour the tracker's 1 s interval
    attempts: list[tuple[float, bool]] = []
    real_announce = tracker_http.announce_http

    async def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            resp = await real_announce(*args, **kwargs)
        except TrackerError:
            attempts.append((time.monotonic(), False))
            raise
        attempts.append((time.monotonic(), True))
        return resp

    monkeypatch.setattr(announcer_mod, "announce_http", recording)
    data, torrent_file, info = make_data(tmp_path, 1 * MIB, 64 * 1024)
    harness = Harness(tmp_path)
    tracker = await start_tracker(GOOD_IP, 0, interval=1)
    port, url = tracker.port, tracker.http_announce_url
    session = Session(bridge_config(trackers=True))
    try:
        await session.start()
        bt = await session.add_torrent(info, tmp_path / "bridge", trackers=[[url]])
        await until(lambda: any(ok for _, ok in attempts), "no successful announce", 10)

        down_at = time.monotonic()
        await tracker.close()

        def failures() -> list[float]:
            return [t for t, ok in attempts if not ok and t > down_at]

        await until(lambda: len(failures()) >= 4, "fewer than 4 retries while the tracker was down", 15)
        retry_gaps = gaps(failures())
        assert all(b > 1.2 * a for a, b in zip(retry_gaps, retry_gaps[1:], strict=False)), (
            f"retries not backing off: gaps {[round(g, 2) for g in retry_gaps]}")
        assert announcer_alive(bt) and bt.error is None and not bt.failed.is_set()

        up_at = time.monotonic()
        tracker = await start_tracker(GOOD_IP, port, interval=1)
        assert tracker.http_announce_url == url
        seed = harness.libtorrent(name="lt-seed")
        seed_handle = seed.add_seed(torrent_file, tmp_path / "src", trackers=[url])
        await until(lambda: any(ok and t > up_at for t, ok in attempts), "no announce after the restart", 20)
        reannounced = next(t for t, ok in attempts if ok and t > up_at) - up_at
        await until(bt.completed.is_set, "download not complete through the restarted tracker", 20)
        done = time.monotonic() - up_at
        assert file_sha256(tmp_path / "bridge" / "payload.bin") == sha256(data)
        uploaded, _ = seed.totals(seed_handle)
        assert uploaded >= info.total_length, f"the libtorrent seed uploaded only {uploaded} bytes"
        report("HTTP tracker down, then back on the same port",
               f"no error; {len(failures())} failed announces before the restart, retry gaps "
               f"{', '.join(f'{g:.2f}' for g in retry_gaps)} s (base {BACKOFF_BASE} s, x2 per round, "
               "production base 15 s); re-announced and found the libtorrent seed",
               f"re-announce {reannounced:.1f} s and download complete {done:.1f} s after the restart")
    finally:
        await session.aclose()
        await tracker.close()
        harness.close()


def fast_ws_pool() -> WsTrackerPool:
    """The engine's WebSocket tracker pool with the reconnect backoff scaled down (production: 10 s doubling
    plus up to 300 s of jitter, as WebTorrent)."""
    return WsTrackerPool(WsTrackerOptions(backoff_base=BACKOFF_BASE, backoff_jitter=0.05))


async def webrtc_session(**kw: Any) -> Session:
    session = Session(bridge_config(trackers=True, webrtc=True, **kw))
    await session.start()
    assert session.ws_pool is not None
    await session.ws_pool.aclose()
    session.ws_pool = fast_ws_pool()
    return session


async def test_websocket_tracker_down_and_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bridge joins the browser swarm through the embedded tracker's ws:// URL. The tracker stops: the
    WebSocket client reconnects with growing gaps and the torrent carries on. The tracker restarts on the
    same port: the client reconnects by itself, announces ``started`` again, and a second bridge that seeds
    over WebRTC is found through it and the download completes."""
    caplog.set_level(logging.INFO, logger="bridge.net.tracker_ws")
    data, _, info = make_data(tmp_path, 1 * MIB, 64 * 1024)
    tracker = await start_tracker(GOOD_IP, 0, interval=60)
    port, url = tracker.port, tracker.ws_url
    leech: Session | None = None
    seed: Session | None = None
    try:
        leech = await webrtc_session()
        bt = await leech.add_torrent(info, tmp_path / "bridge", trackers=[[url]])
        assert leech.ws_pool is not None
        client = leech.ws_pool.clients[url]
        await until(lambda: client.connected and tracker.stats()["peers"]["ws"] == 1,
                    "the bridge never announced on the WebSocket tracker", 15)

        down_at = time.time()  # log records carry wall-clock times
        await tracker.close()
        await until(lambda: not client.connected, "the client did not notice the tracker going away", 10)

        def refused() -> list[float]:
            return [r.created for r in caplog.records if "cannot connect" in r.getMessage() and r.created > down_at]

        await until(lambda: len(refused()) >= 4, "fewer than 4 reconnect attempts while the tracker was down", 15)
        retry_gaps = gaps(refused())
        assert all(b > 1.2 * a for a, b in zip(retry_gaps, retry_gaps[1:], strict=False)), (
            f"reconnects not backing off: gaps {[round(g, 2) for g in retry_gaps]}")
        assert bt.error is None and client.generation == 1

        up_at = time.monotonic()
        tracker = await start_tracker(GOOD_IP, port, interval=60)
        assert tracker.ws_url == url
        await until(lambda: client.connected and client.generation == 2, "no reconnect after the restart", 20)
        reconnected = time.monotonic() - up_at
        await until(lambda: tracker.stats()["peers"]["ws"] == 1, "no started announce after reconnecting", 10)

        seed = await webrtc_session()
        (tmp_path / "seed").mkdir()
        (tmp_path / "seed" / "payload.bin").write_bytes(data)
        await seed.add_torrent(info, tmp_path / "seed", seed=True, trackers=[[url]])
        await until(bt.completed.is_set, "no WebRTC download through the restarted tracker", 40)
        done = time.monotonic() - up_at
        assert bt.downloaded_by_kind["webrtc"] >= info.total_length, dict(bt.downloaded_by_kind)
        assert file_sha256(tmp_path / "bridge" / "payload.bin") == sha256(data)
        report("WebSocket tracker down, then back on the same port",
               f"no error; {len(retry_gaps) + 1} reconnect attempts before the restart, gaps "
               f"{', '.join(f'{g:.2f}' for g in retry_gaps)} s (base {BACKOFF_BASE} s, x2 per attempt; "
               "production 10 s x2 + up to 300 s jitter); reconnected, re-announced, found a WebRTC seed",
               f"reconnect {reconnected:.1f} s, WebRTC download complete {done:.1f} s after the restart")
    finally:
        for s in (seed, leech):
            if s is not None:
                await s.aclose()
        await tracker.close()
