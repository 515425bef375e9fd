"""Range header parsing (bridge/server/ranges.py), checked by example and against a brute-force model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.server.ranges import MAX_RANGE_HEADER, MAX_RANGES, RangeNotSatisfiable, parse_range


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-99", 1000, [(0, 100)]),
    ("bytes=100-", 1000, [(100, 1000)]),
    ("bytes=-100", 1000, [(900, 1000)]),
    ("bytes=-5000", 1000, [(0, 1000)]),
    ("bytes=0-0", 1, [(0, 1)]),
    ("bytes=990-5000", 1000, [(990, 1000)]),
    ("bytes=0-9, 20-29", 1000, [(0, 10), (20, 30)]),
    ("bytes=20-29,0-9", 1000, [(0, 10), (20, 30)]),
    ("bytes=0-9,5-19,20-29", 1000, [(0, 30)]),  # overlapping and adjacent ranges merge
    ("bytes=0-9,,20-29,", 1000, [(0, 10), (20, 30)]),  # empty list elements are allowed
    ("BYTES=0-9", 1000, [(0, 10)]),
    ("bytes=2000-3000,0-1", 1000, [(0, 2)]),  # one unsatisfiable range among others is skipped
])
def test_examples(header: str, size: int, expected: list[tuple[int, int]]) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["items=0-9", "bytes", "bytes=abc", "bytes=9-0", "bytes=-", "bytes=0-9-9",
                                    "bytes=+1-2", "bytes=1 2-3", "bytes=٣-4", "bytes=" + "9" * 30 + "-",
                                    "x" * (MAX_RANGE_HEADER + 1)])
def test_ignored_headers(header: str) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0),
                                              ("bytes=5-9", 3)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_too_many_ranges_is_416() -> None:
    many = ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + many, 10_000)
    # Many overlapping ranges merge into one and are fine.
    assert parse_range("bytes=" + ",".join(["0-10"] * MAX_RANGES * 2), 100) == [(0, 11)]


def _model(specs: list[tuple[int | None, int | None]], size: int) -> set[int] | None:
    covered: set[int] = set()
    for first, last in specs:
        if first is None:
            assert last is not None
            covered.update(range(max(0, size - last), size))
        else:
            if last is not None and last < first:
                return None
            covered.update(range(first, min(size, (last + 1) if last is not None else size)))
    return covered


bound = st.integers(0, 3000)


@settings(max_examples=300)
@given(specs=st.lists(st.tuples(st.none() | bound, st.none() | bound).filter(lambda t: t != (None, None)),
                      min_size=1, max_size=8), size=st.integers(0, 2500))
def test_matches_a_byte_set_model(specs: list[tuple[int | None, int | None]], size: int) -> None:
    header = "bytes=" + ",".join(f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs)
    expected = _model(specs, size)
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiable:
        assert expected is not None and not expected
        return
    if expected is None:
        assert got is None
        return
    assert got is not None
    flat = set()
    for start, end in got:
        assert 0 <= start < end <= size
        flat.update(range(start, end))
    assert flat == expected
    assert all(a[1] < b[0] for a, b in zip(got, got[1:], strict=False))  # sorted, disjoint, not adjacent


@given(st.text(max_size=200), st.integers(0, 10**12))
def test_arbitrary_text_never_crashes(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert all(0 <= s < e <= size for s, e in result)
