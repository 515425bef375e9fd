"""HTTP Range headers (RFC 9110 section 14): parsing and validation, without I/O.

``parse_range(header, size)`` turns ``bytes=0-99,200-,-50`` into sorted, merged, satisfiable byte
ranges ``[(start, end_exclusive), ...]``. It returns None when the header should be ignored (a unit
other than bytes, or a syntax error: RFC 9110 says to serve the whole representation then) and raises
RangeNotSatisfiable when no range overlaps the content (a 416 answer).
"""

from __future__ import annotations

__all__ = ["MAX_RANGE_HEADER", "MAX_RANGES", "RangeNotSatisfiable", "parse_range"]

#: Longest Range header read. Real players send one short range; BEP 19 clients one per request.
MAX_RANGE_HEADER = 1024
#: Ranges served in one multipart answer, after merging overlapping and adjacent ones. More is a
#: denial-of-service pattern (many tiny overlapping ranges), not a player.
MAX_RANGES = 16
#: Digits in one range bound: 2**63 has 19.
_MAX_DIGITS = 19


class RangeNotSatisfiable(Exception):
    """No requested range overlaps the content, or too many ranges were asked for (answer 416)."""


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of ``header`` for content of ``size`` bytes, as (start, end) with ``end``
    exclusive, sorted and merged. None: ignore the header and send the whole content."""
    if len(header) > MAX_RANGE_HEADER:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > 4 * MAX_RANGES:
        raise RangeNotSatisfiable(f"more than {4 * MAX_RANGES} ranges")
    ranges: list[tuple[int, int]] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            continue  # RFC 9110 allows empty list elements
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or not _digits(first, allow_empty=True) or not _digits(last, allow_empty=True):
            return None
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix == 0:
                continue  # unsatisfiable on its own
            ranges.append((max(0, size - suffix), size))
            continue
        start = int(first)
        if last:
            end = int(last) + 1
            if end <= start:
                return None  # last < first: a syntax error, so the header is ignored
        else:
            end = size
        if start >= size:
            continue
        ranges.append((start, min(end, size)))
    ranges = [r for r in ranges if r[0] < r[1]]
    if not ranges:
        raise RangeNotSatisfiable("no range overlaps the content")
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    if len(merged) > MAX_RANGES:
        raise RangeNotSatisfiable(f"more than {MAX_RANGES} separate ranges")
    return merged


def _digits(text: str, allow_empty: bool) -> bool:
    if not text:
        return allow_empty
    return text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS
