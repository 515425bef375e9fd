"""Shared pieces of the fuzz harnesses in tests/fuzz (imported by name: pytest puts this folder on sys.path).

``check(fn, *args, allowed=...)`` calls one parser entry point with one input: an exception outside
``allowed`` propagates (the harness fails with its traceback) and a call slower than ``CALL_LIMIT`` seconds
fails too. ``mutated(base)`` turns a strategy of valid inputs into one of damaged inputs (bit flips,
inserted, deleted, duplicated and overwritten bytes, truncation) so the parsers get past their first checks.

With ``FUZZ_STATS=<file>`` set, the number of calls and the time spent in them per harness (the pytest node
id) are written to that JSON file at exit; ``scripts/fuzz`` reads them.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck
from hypothesis import strategies as st

from bridge.errors import BridgeError

#: Examples per harness; CI uses the default, scripts/fuzz a large number.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
#: Longest one parser call may take. Every parser bounds its input size, so even the largest input is
#: parsed in milliseconds; a second means something is quadratic or worse.
CALL_LIMIT = float(os.environ.get("FUZZ_CALL_LIMIT", "1.0"))
#: Hypothesis deadline per example (an example may make a few calls).
DEADLINE = timedelta(seconds=max(2.0, 2 * CALL_LIMIT))
#: Health checks that only complain about big or slow-to-generate inputs, which is the point here.
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
            HealthCheck.large_base_example]

T = TypeVar("T")

_stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])


def _harness() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def check(fn: Callable[..., T], *args: Any, allowed: tuple[type[BaseException], ...] = (BridgeError,),
          **kwargs: Any) -> T | BaseException:
    """``fn(*args, **kwargs)``: its result, or the exception if it is one of ``allowed``."""
    start = time.perf_counter()
    try:
        result: T | BaseException = fn(*args, **kwargs)
    except allowed as e:
        result = e
    finally:
        elapsed = time.perf_counter() - start
        row = _stats[_harness()]
        row[0] += 1
        row[1] += elapsed
    assert elapsed < CALL_LIMIT, f"{getattr(fn, '__qualname__', fn)} took {elapsed:.3f} s (limit {CALL_LIMIT} s)"
    return result


def _write_stats() -> None:
    path = os.environ.get("FUZZ_STATS")
    if not path or not _stats:
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    for name, (calls, seconds) in _stats.items():
        prev = old.get(name, {"calls": 0, "seconds": 0.0})
        old[name] = {"calls": prev["calls"] + int(calls), "seconds": prev["seconds"] + seconds}
    with open(path, "w") as f:
        json.dump(old, f, indent=1, sort_keys=True)


atexit.register(_write_stats)


# ------------------------------------------------------------------------------------------- mutation

#: Bytes that tend to matter to parsers: digits, bencode and JSON punctuation, separators, 0x00/0xFF.
INTERESTING = b"0123456789-:ediljn{}[]\",=&%?:/\\ \x00\x7f\x80\xff"

_op = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING)),
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
    st.tuples(st.just("dup"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def apply_ops(data: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    """Apply mutation operations; positions wrap around the current length."""
    buf = bytearray(data)
    for kind, pos, arg in ops:
        n = len(buf)
        if kind == "insert":
            at = pos % (n + 1)
            buf[at:at] = arg
            continue
        if not n:
            continue
        at = pos % n
        if kind == "flip":
            buf[at] ^= 1 << arg
        elif kind in ("set", "byte"):
            buf[at] = arg
        elif kind == "delete":
            del buf[at : at + arg]
        elif kind == "dup":
            buf[at:at] = buf[at : at + arg]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


def mutated(base: st.SearchStrategy[bytes], max_ops: int = 6) -> st.SearchStrategy[bytes]:
    """Valid inputs from ``base``, damaged by 0..max_ops mutations (0 keeps some inputs valid)."""
    return st.builds(apply_ops, base, st.lists(_op, max_size=max_ops))


def mutated_text(base: st.SearchStrategy[str], max_ops: int = 6) -> st.SearchStrategy[str]:
    """Like :func:`mutated` for text: mutate the UTF-8 bytes, decode with replacement, sometimes add
    arbitrary characters."""
    def to_text(b: bytes, extra: str, at: int) -> str:
        text = b.decode("utf-8", "replace")
        at = at % (len(text) + 1)
        return text[:at] + extra + text[at:]
    return st.builds(to_text, mutated(base.map(lambda s: s.encode("utf-8", "surrogatepass")), max_ops),
                     st.one_of(st.just(""), st.text(max_size=4)), st.integers(0, 1 << 16))


def split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut into pieces at the (wrapped, sorted) positions ``cuts``."""
    if not data:
        return [data]
    at = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(at, at[1:], strict=False)]
