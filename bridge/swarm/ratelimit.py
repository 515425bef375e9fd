"""Token buckets for upload and download rate limits. Pure: the caller passes the time.

A bucket refills at ``rate`` bytes per second up to ``burst`` bytes. Taking bytes may drive it negative:
the answer is how long the caller must wait before it may take more, so a large write is never refused,
only paced. Rate 0 means unlimited.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(self, rate: int, now: float, burst: int | None = None) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        #: Default burst: a quarter second of traffic, at least 64 KiB (a few blocks), so pacing is smooth
        #: but one batch of blocks can always go.
        self.burst = burst if burst is not None else max(64 * 1024, rate // 4)
        self._tokens = float(self.burst)
        self._at = now

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def take(self, n: int, now: float) -> float:
        """Take ``n`` bytes; returns the seconds to wait before the next take (0 when within the rate)."""
        if self.rate == 0:
            return 0.0
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
