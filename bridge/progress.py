"""Progress display for the CLI: a bar on a terminal, one line per second otherwise (both on stderr)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_time(seconds: float) -> str:
    if seconds == float("inf") or seconds != seconds:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Renders (done, total, rate, peers). Rate-limits itself to a few updates per second."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 1.0)
        self._last = 0.0
        self._shown = False

    def update(self, done: int, total: int, rate: float | None = None, peers: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        parts = [f"{pct:5.1f}%", f"{human_bytes(done)}/{human_bytes(total)}"]
        if rate is not None:
            parts.append(f"{human_bytes(rate)}/s")
            eta = (total - done) / rate if rate > 0 else float("inf")
            parts.append(f"ETA {human_time(eta)}")
        if peers is not None:
            parts.append(f"{peers} peer{'s' if peers != 1 else ''}")
        if self.tty:
            width = 24
            filled = int(width * done / total) if total else width
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] " + "  ".join(parts) + "\x1b[K")
            self._shown = True
        else:
            self.stream.write(f"{self.label}: " + "  ".join(parts) + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


async def wait_any(*events: asyncio.Event, interval: float, tick: Callable[[], None]) -> None:
    """Call ``tick`` every ``interval`` seconds until one of ``events`` is set."""
    while not any(e.is_set() for e in events):
        tick()
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
