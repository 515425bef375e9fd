"""Fuzz the bencode decoder (bridge/proto/bencode.py): only BencodeError may escape, quickly."""

from __future__ import annotations

import os

from fuzz_support import DEADLINE, SUPPRESS, check, mutated, split_points
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import BencodeError
from bridge.proto import bencode

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)

values = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=10), inner, max_size=5),
    max_leaves=30,
)
encoded = values.map(bencode.encode)
dict_encoded = st.dictionaries(st.binary(max_size=10), values, max_size=6).map(bencode.encode)
# Pathological shapes: deep nesting, long digit runs, huge declared lengths.
nasty = st.one_of(
    st.integers(1, 5000).map(lambda n: b"l" * n + b"e" * n),
    st.integers(1, 5000).map(lambda n: b"d1:a" * n + b"i0e" + b"e" * n),
    st.integers(1, 200_000).map(lambda n: b"i" + b"9" * n + b"e"),
    st.integers(1, 200_000).map(lambda n: b"9" * n + b":x"),
    st.integers(0, 2**64).map(lambda n: str(n).encode() + b":abc"),
)


def _all(data: bytes) -> None:
    check(bencode.decode, data, allowed=(BencodeError,))
    check(bencode.decode_with_spans, data, allowed=(BencodeError,))
    for piece in split_points(data, [len(data) // 2]):
        check(bencode.decode_prefix, piece, allowed=(BencodeError,))
    check(bencode.decode_prefix, data, len(data) // 3, allowed=(BencodeError,))


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_bencode_bytes(data: bytes) -> None:
    _all(data)


@FUZZ
@given(st.one_of(mutated(encoded), mutated(dict_encoded), mutated(nasty, max_ops=2)))
def test_fuzz_bencode_mutated(data: bytes) -> None:
    _all(data)


@FUZZ
@given(values)
def test_fuzz_bencode_roundtrip(value: object) -> None:
    raw = bencode.encode(value)
    assert check(bencode.decode, raw, allowed=()) == value
