"""Transfer-rate estimate, updated from the caller's clock. Pure."""

from __future__ import annotations

#: Weight of the newest one-second sample in the moving average. 0.5 follows a loopback ramp-up in a few
#: seconds while smoothing single-second stalls.
SMOOTHING = 0.5


class RateMeter:
    __slots__ = ("total", "_pending", "_last", "rate")

    def __init__(self, now: float) -> None:
        #: bytes counted since creation
        self.total = 0
        self._pending = 0
        self._last = now
        #: bytes per second, smoothed
        self.rate = 0.0

    def add(self, n: int) -> None:
        self.total += n
        self._pending += n

    def tick(self, now: float) -> float:
        """Fold the bytes counted since the last tick into the rate; call about once a second."""
        elapsed = now - self._last
        if elapsed <= 0:
            return self.rate
        sample = self._pending / elapsed
        self.rate = sample if self.rate == 0.0 else self.rate + SMOOTHING * (sample - self.rate)
        self._pending = 0
        self._last = now
        return self.rate
