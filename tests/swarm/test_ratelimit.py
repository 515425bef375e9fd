"""TokenBucket: pacing to the rate over time, burst, unlimited."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.swarm.ratelimit import TokenBucket


def test_unlimited_never_waits() -> None:
    b = TokenBucket(0, 0.0)
    assert b.unlimited and b.take(10**12, 0.0) == 0.0


def test_burst_then_paced() -> None:
    b = TokenBucket(100_000, 0.0, burst=50_000)
    assert b.take(50_000, 0.0) == 0.0
    assert b.take(100_000, 0.0) == pytest.approx(1.0)
    assert b.take(0, 0.5) == pytest.approx(0.5)
    assert b.take(0, 1.0) == 0.0


def test_negative_rate_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1, 0.0)


@given(rate=st.integers(1_000, 10_000_000), sizes=st.lists(st.integers(1, 1_000_000), min_size=1, max_size=50))
def test_a_caller_that_waits_as_told_never_exceeds_rate_plus_burst(rate: int, sizes: list[int]) -> None:
    b = TokenBucket(rate, 0.0)
    now = 0.0
    sent = 0
    for n in sizes:
        wait = b.take(n, now)
        sent += n
        now += wait
        assert sent <= b.burst + rate * now + 1e-6 * rate
