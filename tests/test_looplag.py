"""bridge/looplag.py: the event-loop lag monitor, its quantiles, and where `serve` (/metrics) and the
embedded tracker (/stats) expose it."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import SessionConfig
from bridge.daemon import Daemon, ServeOptions
from bridge.looplag import BUCKETS, LoopLagMonitor, histogram_quantile, quantile
from bridge.tracker import start_tracker

pytestmark = pytest.mark.timeout(60)


def test_record_fills_buckets_sum_max_and_the_recent_ring() -> None:
    m = LoopLagMonitor(window=3, buckets=(0.01, 0.1))
    for lag in (0.005, 0.05, 0.5, -0.001):  # a timer firing a hair early counts as no lag
        m.record(lag)
    assert m.cumulative() == [(0.01, 2), (0.1, 3), (math.inf, 4)]
    assert m.count == 4 and m.total == pytest.approx(0.555) and m.max == 0.5
    assert m.recent() == [0.05, 0.5, 0.0]  # the ring keeps the last three
    assert m.recent_quantiles() == {"p50": 0.05, "p99": 0.5, "max": 0.5}
    snap = m.snapshot()
    assert snap["buckets"] == [[0.01, 2], [0.1, 3], ["+Inf", 4]]
    assert snap["recent"]["samples"] == 3 and snap["count"] == 4


def test_a_lag_on_a_bucket_bound_counts_in_that_bucket() -> None:
    m = LoopLagMonitor()
    m.record(0.1)
    assert dict(m.cumulative())[0.1] == 1 and dict(m.cumulative())[0.05] == 0
    assert 0.1 in BUCKETS


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(interval=0)
    with pytest.raises(ValueError):
        LoopLagMonitor(buckets=(0.1, 0.01))


def test_quantile_by_nearest_rank() -> None:
    assert quantile([], 0.5) == 0.0
    values = [float(i) for i in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile(values, 1.0) == 100.0
    assert quantile([3.0, 1.0, 2.0], 0.0) == 1.0


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    assert histogram_quantile([], 0.5) is None
    assert histogram_quantile([(0.1, 0), (math.inf, 0)], 0.5) is None
    # 100 samples: 50 at or below 10 ms, 40 more at or below 100 ms, 10 above 100 ms.
    h = [(0.01, 50), (0.1, 90), (1.0, 100), (math.inf, 100)]
    assert histogram_quantile(h, 0.5) == pytest.approx(0.01)
    assert histogram_quantile(h, 0.25) == pytest.approx(0.005)
    assert histogram_quantile(h, 0.7) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert histogram_quantile(h, 0.99) == pytest.approx(0.1 + 0.9 * 9 / 10)
    # a quantile in the +Inf bucket is reported as the largest finite bound
    assert histogram_quantile([(0.1, 1), (math.inf, 10)], 0.99) == 0.1


async def test_the_running_monitor_sees_a_blocked_loop_and_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.looplag")
    m = LoopLagMonitor(interval=0.02, log_every=0.05, name="test loop")
    m.start()
    m.start()  # idempotent
    assert m.running
    await asyncio.sleep(0.1)
    time.sleep(0.15)  # the loop is blocked: the timer that was due fires ~150 ms late
    await asyncio.sleep(0.1)
    await m.stop()
    assert not m.running
    assert m.count >= 3
    assert 0.1 <= m.max < 1.0
    assert dict(m.cumulative())[0.1] < m.count  # the blocked sample is above the 100 ms bucket
    assert any("test loop lag over the last" in r.getMessage() for r in caplog.records)
    count = m.count
    await asyncio.sleep(0.05)
    assert m.count == count  # stopped: no more samples
    await m.stop()  # idempotent


async def test_the_tracker_reports_loop_lag_in_stats() -> None:
    tracker = await start_tracker("127.0.0.1", 0, interval=60)
    try:
        assert tracker.loop_lag.running
        await asyncio.sleep(0.35)
        async with aiohttp.ClientSession() as http, http.get(tracker.stats_url) as resp:
            stats = await resp.json()
        lag = stats["loop_lag"]
        assert lag["interval"] == 0.1 and lag["count"] >= 2
        assert lag["buckets"][-1] == ["+Inf", lag["count"]]
        assert set(lag["recent"]) == {"p50", "p99", "max", "samples"}
    finally:
        await tracker.close()
    assert not tracker.loop_lag.running


async def test_serve_exposes_loop_lag_on_metrics(tmp_path: Path) -> None:
    options = ServeOptions(host="127.0.0.1", http_port=0, data_dir=str(tmp_path / "data"),
                           state_dir=str(tmp_path / "state"))
    daemon = Daemon(options, SessionConfig(host="127.0.0.1", port=0, webrtc=False, utp=False))
    await daemon.start()
    try:
        assert daemon.http is not None
        await asyncio.sleep(0.35)
        async with aiohttp.ClientSession() as http, http.get(daemon.http.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    finally:
        await daemon.close()
    assert not daemon.loop_lag.running
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    count = samples[("bridge_event_loop_lag_seconds_count", ())]
    assert count >= 2
    assert samples[("bridge_event_loop_lag_seconds_bucket", (("le", "+Inf"),))] == count
    assert samples[("bridge_event_loop_lag_seconds_bucket", (("le", "0.1"),))] <= count
    assert ("bridge_event_loop_lag_seconds_sum", ()) in samples
    assert ("bridge_event_loop_lag_max_seconds", ()) in samples
    for q in ("0.5", "0.99", "1"):
        assert ("bridge_event_loop_lag_recent_seconds", (("quantile", q),)) in samples
