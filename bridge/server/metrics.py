"""Prometheus metrics of `serve` at /metrics (prometheus-client's text format).

Everything is read from the daemon when scraped, through a collector on a registry of our own (not the
process-global one): bytes by kind of peer, bytes relayed between the classic and browser swarms, peers by
kind, torrents by state, tracker announce results, hash failures, and the event loop's lag
(bridge/looplag.py: a histogram since start, the largest lag, and p50/p99/max of the last minute).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..daemon import PEER_KINDS as KINDS
from ..engine.announcer import ANNOUNCE_RESULTS

if TYPE_CHECKING:
    from ..daemon import Daemon

__all__ = ["add_metrics_route"]


class _Collector:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.d
        down: Counter[str] = Counter(d.retired["down"])
        up: Counter[str] = Counter(d.retired["up"])
        relayed: Counter[str] = Counter(d.retired["relayed"])
        hash_failures = d.retired["hash_failures"].get("total", 0)
        peers: Counter[str] = Counter()
        states: Counter[str] = Counter()
        for entry in d.entries.values():
            states[d.state_of(entry)] += 1
            t = entry.torrent
            if t is None:
                continue
            down.update(t.downloaded_by_kind)
            up.update(t.uploaded_by_kind)
            relayed.update(t.relayed)
            hash_failures += t.pieces_failed
            peers.update(t.peers_by_kind())

        m = CounterMetricFamily("bridge_payload_downloaded_bytes", "Payload bytes received, by kind of peer",
                                labels=["kind"])
        for k in KINDS:
            m.add_metric([k], down.get(k, 0))
        yield m
        m = CounterMetricFamily("bridge_payload_uploaded_bytes", "Payload bytes sent, by kind of peer",
                                labels=["kind"])
        for k in KINDS:
            m.add_metric([k], up.get(k, 0))
        yield m
        m = CounterMetricFamily("bridge_relayed_bytes", "Bytes served to one swarm that came from the other",
                                labels=["direction"])
        for k in ("classic_to_web", "web_to_classic"):
            m.add_metric([k], relayed.get(k, 0))
        yield m
        g = GaugeMetricFamily("bridge_peers", "Connected peers by kind", labels=["kind"])
        for k in KINDS:
            g.add_metric([k], peers.get(k, 0))
        yield g
        g = GaugeMetricFamily("bridge_torrents", "Torrents by state", labels=["state"])
        for state in ("starting", "metadata", "checking", "downloading", "seeding", "paused", "error"):
            g.add_metric([state], states.get(state, 0))
        yield g
        m = CounterMetricFamily("bridge_tracker_announces", "Tracker announces by result", labels=["result"])
        for k in ("ok", "error"):
            m.add_metric([k], ANNOUNCE_RESULTS.get(k, 0))
        yield m
        yield CounterMetricFamily("bridge_hash_failures", "Pieces that failed their hash check",
                                  value=hash_failures)
        lag = d.loop_lag
        yield HistogramMetricFamily(
            "bridge_event_loop_lag_seconds",
            f"How late a {lag.interval:g} s timer fired on the event loop (the loop was busy that long)",
            buckets=[("+Inf" if le == float("inf") else repr(le), n) for le, n in lag.cumulative()],
            sum_value=lag.total)
        yield GaugeMetricFamily("bridge_event_loop_lag_max_seconds", "Largest event-loop lag since start",
                                value=lag.max)
        g = GaugeMetricFamily("bridge_event_loop_lag_recent_seconds",
                              "Event-loop lag over the last minute: p50, p99 and max (quantile 1)",
                              labels=["quantile"])
        recent = lag.recent_quantiles()
        for q, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
            g.add_metric([q], recent[key])
        yield g


def add_metrics_route(app: web.Application, daemon: Daemon) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(daemon))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
