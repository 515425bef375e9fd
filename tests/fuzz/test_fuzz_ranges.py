"""Fuzz HTTP Range parsing (bridge/server/ranges.py): only RangeNotSatisfiable (its documented error, a 416
answer) may escape, and what it returns is sorted, merged and inside the content."""

from __future__ import annotations

import os

from fuzz_support import DEADLINE, SUPPRESS, check, mutated_text
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.server.ranges import MAX_RANGES, RangeNotSatisfiable, parse_range

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)

bound = st.one_of(st.just(""), st.integers(0, 2**70).map(str))
specs = st.lists(st.builds(lambda a, b: f"{a}-{b}", bound, bound), min_size=1, max_size=20).map(
    lambda parts: "bytes=" + ",".join(parts))
sizes = st.one_of(st.integers(0, 10), st.integers(0, 2**63))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.text("bytes=0123456789-, \t", max_size=120), mutated_text(specs)),
       sizes)
def test_fuzz_range(header: str, size: int) -> None:
    result = check(parse_range, header, size, allowed=(RangeNotSatisfiable,))
    if isinstance(result, list):
        assert 0 < len(result) <= MAX_RANGES
        for start, end in result:
            assert 0 <= start < end <= size
        for (_, end), (start, _) in zip(result, result[1:], strict=False):
            assert end < start  # sorted, and overlapping or adjacent ranges are merged
    else:
        assert result is None or isinstance(result, RangeNotSatisfiable)
