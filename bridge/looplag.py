"""Event-loop lag: how late a timer fires on this process's event loop.

A task sleeps ``interval`` seconds (100 ms) in a loop and records by how much each sleep overshot. The
overshoot is the time the loop was busy elsewhere (a long callback, a blocking call, the GIL held by a
thread, the process not being scheduled), so it bounds how late any other timer or I/O callback ran.

Kept per monitor: a cumulative histogram (Prometheus-style buckets, ``le`` in seconds) with the sum and
count, the largest lag since start, and a ring of the last ``window`` samples for recent quantiles. Nothing
grows with time. `serve` exposes it on /metrics, the embedded tracker in /stats; both also log a summary at
debug level every ``log_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BUCKETS", "LoopLagMonitor", "histogram_quantile", "quantile"]

log = logging.getLogger(__name__)

#: Seconds between two measurements.
DEFAULT_INTERVAL = 0.1
#: Samples kept for the recent quantiles: 600 at 100 ms is the last minute.
DEFAULT_WINDOW = 600
#: Upper bounds (seconds) of the histogram buckets, a 1-2-5 series; +Inf is implied. 100 ms, the usual
#: "the loop is in trouble" mark, is a bucket bound, so "p99 below 100 ms" can be read off exactly.
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Seconds between two debug log lines with the recent quantiles.
DEFAULT_LOG_EVERY = 60.0


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(le, count), ...]`` (ascending ``le``, the last one
    may be ``inf``), interpolated linearly inside the bucket it falls in, as Prometheus' histogram_quantile
    does. A quantile in the +Inf bucket is reported as the largest finite bound. None if the histogram
    is empty."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


class LoopLagMonitor:
    """Measures the lag of the running event loop while started. ``record`` is public for tests."""

    def __init__(self, *, interval: float = DEFAULT_INTERVAL, window: int = DEFAULT_WINDOW,
                 buckets: Sequence[float] = BUCKETS, log_every: float = DEFAULT_LOG_EVERY,
                 name: str = "event loop", clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0 or window <= 0:
            raise ValueError("interval and window must be positive")
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError("buckets must be ascending and not empty")
        self.interval = interval
        self.bounds: tuple[float, ...] = tuple(buckets)
        self.log_every = log_every
        self.name = name
        self._clock = clock
        #: samples per bucket (not cumulative); the last one is +Inf
        self._counts = [0] * (len(self.bounds) + 1)
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------- data
    def record(self, lag: float) -> None:
        lag = max(0.0, lag)
        i = 0
        for bound in self.bounds:
            if lag <= bound:
                break
            i += 1
        self._counts[i] += 1
        self._recent.append(lag)
        self.count += 1
        self.total += lag
        if lag > self.max:
            self.max = lag

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(le, samples <= le), ...]`` ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def recent(self) -> list[float]:
        """The last ``window`` samples, oldest first."""
        return list(self._recent)

    def recent_quantiles(self) -> dict[str, float]:
        """p50, p99 and max of the recent samples, in seconds (zeros before the first sample)."""
        values = sorted(self._recent)
        return {"p50": quantile(values, 0.5), "p99": quantile(values, 0.99), "max": values[-1] if values else 0.0}

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain JSON values (seconds): for /stats and logs."""
        recent = self.recent_quantiles()
        return {
            "interval": self.interval,
            "count": self.count,
            "sum": self.total,
            "max": self.max,
            "buckets": [["+Inf" if math.isinf(le) else le, n] for le, n in self.cumulative()],
            "recent": {**recent, "samples": len(self._recent)},
        }

    # -------------------------------------------------------------------------------------- task
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"loop lag: {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = self._clock
        interval = self.interval
        last_log = clock()
        while True:
            before = clock()
            await asyncio.sleep(interval)
            after = clock()
            self.record(after - before - interval)
            if self.log_every > 0 and after - last_log >= self.log_every:
                last_log = after
                if log.isEnabledFor(logging.DEBUG):
                    r = self.recent_quantiles()
                    log.debug("%s lag over the last %d samples: p50 %.1f ms, p99 %.1f ms, max %.1f ms "
                              "(max since start %.1f ms)", self.name, len(self._recent), r["p50"] * 1000,
                              r["p99"] * 1000, r["max"] * 1000, self.max * 1000)
