"""Request pipeline depth: rate-based, bounded by the peer's reqq and MAX_OUTSTANDING, never below 1."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.proto.wire import BLOCK_SIZE
from bridge.swarm.pipeline import (
    DEFAULT_PEER_REQQ,
    MAX_OUTSTANDING,
    MIN_OUTSTANDING,
    REQUEST_QUEUE_TIME,
    pipeline_depth,
)


def test_no_rate_gives_the_minimum() -> None:
    assert pipeline_depth(0.0) == MIN_OUTSTANDING
    assert pipeline_depth(-1000.0) == MIN_OUTSTANDING


def test_grows_with_rate() -> None:
    ten_blocks = 10 * BLOCK_SIZE / REQUEST_QUEUE_TIME
    assert pipeline_depth(ten_blocks) == MIN_OUTSTANDING + 10
    assert pipeline_depth(1.0) == MIN_OUTSTANDING + 1  # rounds up
    assert pipeline_depth(10 * 1024 * 1024) == min(
        MAX_OUTSTANDING,
        DEFAULT_PEER_REQQ,
        MIN_OUTSTANDING + math.ceil(10 * 1024 * 1024 * REQUEST_QUEUE_TIME / BLOCK_SIZE),
    )


def test_capped_by_reqq_and_max_outstanding() -> None:
    fast = 1e12
    assert pipeline_depth(fast) == min(MAX_OUTSTANDING, DEFAULT_PEER_REQQ)
    assert pipeline_depth(fast, peer_reqq=10_000) == MAX_OUTSTANDING
    assert pipeline_depth(fast, peer_reqq=7) == 7
    assert pipeline_depth(0.0, peer_reqq=5) == 5  # below even the minimum when the peer says so
    assert pipeline_depth(0.0, peer_reqq=1) == 1
    assert pipeline_depth(fast, peer_reqq=0) == 1
    assert pipeline_depth(fast, peer_reqq=-3) == 1


@given(st.floats(min_value=-1e6, max_value=1e13, allow_nan=False), st.integers(-10, 100_000))
@settings(max_examples=300, deadline=None)
def test_bounds(rate: float, reqq: int) -> None:
    d = pipeline_depth(rate, reqq)
    assert isinstance(d, int)
    assert 1 <= d <= MAX_OUTSTANDING
    assert d <= max(reqq, 1)
    assert d >= min(MIN_OUTSTANDING, max(reqq, 1))


@given(st.floats(0, 1e10), st.floats(0, 1e10), st.integers(1, 1000))
@settings(max_examples=200, deadline=None)
def test_monotonic_in_rate(a: float, b: float, reqq: int) -> None:
    lo, hi = sorted((a, b))
    assert pipeline_depth(lo, reqq) <= pipeline_depth(hi, reqq)


def test_before_the_first_rate_sample_the_depth_grows_with_each_block_received() -> None:
    assert pipeline_depth(0.0, received=0) == MIN_OUTSTANDING
    assert pipeline_depth(0.0, received=BLOCK_SIZE - 1) == MIN_OUTSTANDING
    assert pipeline_depth(0.0, received=MIN_OUTSTANDING * BLOCK_SIZE) == 2 * MIN_OUTSTANDING  # one round trip
    assert pipeline_depth(0.0, received=10**9) == min(MAX_OUTSTANDING, DEFAULT_PEER_REQQ)
    assert pipeline_depth(0.0, peer_reqq=20, received=10**9) == 20
    # once a rate is measured, it alone decides
    assert pipeline_depth(1.0, received=10**9) == MIN_OUTSTANDING + 1
