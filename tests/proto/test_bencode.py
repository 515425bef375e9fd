"""Strict bencode codec: round trips, agreement with bencode.py, canonical forms, limits, spans, fuzzing."""

from __future__ import annotations

from typing import Any

import bencodepy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import BencodeError, RemoteProtocolError
from bridge.proto import bencode
from bridge.proto.bencode import MAX_DEPTH, MAX_INT_DIGITS, decode, decode_prefix, decode_with_spans, encode

# ------------------------------------------------------------------------------------------ strategies

ints = st.integers(min_value=-(10**30), max_value=10**30)
values: st.SearchStrategy[Any] = st.recursive(
    ints | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.binary(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
dicts = st.dictionaries(st.binary(max_size=12), values, max_size=6)
garbage = st.binary(min_size=1, max_size=20)


# ---------------------------------------------------------------------------------------- round trips


@given(values)
@settings(max_examples=150, deadline=None)
def test_round_trip_and_agreement_with_bencodepy(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    assert decode_prefix(data) == (value, len(data))
    # bytearray and memoryview inputs decode the same
    assert decode_prefix(bytearray(data)) == (value, len(data))
    assert decode(memoryview(data)) == value
    # the independent implementation writes the same bytes and reads ours back
    ref = bencodepy.encode(value)
    assert data == ref
    assert decode(ref) == value
    assert bencodepy.decode(data) == value


@given(values, garbage)
@settings(max_examples=60, deadline=None)
def test_trailing_data_rejected_by_decode_reported_by_prefix(value: Any, tail: bytes) -> None:
    data = encode(value)
    with pytest.raises(BencodeError, match="trailing"):
        decode(data + tail)
    assert decode_prefix(data + tail) == (value, len(data))


@given(st.lists(values, min_size=1, max_size=5))
@settings(max_examples=40, deadline=None)
def test_decode_prefix_walks_a_concatenation(items: list[Any]) -> None:
    data = b"".join(encode(v) for v in items)
    pos = 0
    out = []
    while pos < len(data):
        v, pos = decode_prefix(data, pos)
        out.append(v)
    assert out == items
    assert pos == len(data)


# ------------------------------------------------------------------------------ the reference: bencode.py


def test_str_keys_and_values_encode_as_utf8_like_bencodepy() -> None:
    value = {"zeta": "ünï", "alpha": ["x", 1, b"\xff"], b"mid": {"k": -5}}
    assert encode(value) == bencodepy.encode(value)
    assert decode(encode(value)) == {
        b"alpha": [b"x", 1, b"\xff"],
        b"mid": {b"k": -5},
        b"zeta": "ünï".encode(),
    }


def test_tuples_encode_as_lists() -> None:
    assert encode((1, (b"a",))) == b"li1el1:aee"


# ------------------------------------------------------------------------------------------ encoding


def test_known_encodings() -> None:
    assert encode(0) == b"i0e"
    assert encode(-42) == b"i-42e"
    assert encode(b"") == b"0:"
    assert encode(b"spam") == b"4:spam"
    assert encode([]) == b"le"
    assert encode({}) == b"de"
    assert encode({b"b": 1, b"a": 2, b"": 3}) == b"d0:i3e1:ai2e1:bi1ee"
    assert encode(bytearray(b"ab")) == b"2:ab"
    assert encode(memoryview(b"ab")) == b"2:ab"


def test_dict_keys_sorted_as_raw_bytes() -> None:
    # b"Z" (0x5a) < b"a" (0x61) < b"\xff"; a str key sorts by its UTF-8 bytes
    assert encode({b"\xff": 1, "a": 2, b"Z": 3}) == b"d1:Zi3e1:ai2e1:\xffi1ee"


@pytest.mark.parametrize("bad", [True, False, 1.5, None, object(), {1: 2}, {(b"a",): 1}, [1, {b"x": None}]])
def test_encode_refuses_unencodable(bad: Any) -> None:
    with pytest.raises(BencodeError):
        encode(bad)


def test_encode_duplicate_key_after_str_bytes_merge() -> None:
    with pytest.raises(BencodeError, match="duplicate"):
        encode({"a": 1, b"a": 2})


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    "data,value",
    [
        (b"i0e", 0),
        (b"i-1e", -1),
        (b"i123e", 123),
        (b"i" + b"9" * MAX_INT_DIGITS + b"e", int("9" * MAX_INT_DIGITS)),
        (b"i-" + b"9" * (MAX_INT_DIGITS - 1) + b"e", -int("9" * (MAX_INT_DIGITS - 1))),
        (b"0:", b""),
        (b"3:a:b", b"a:b"),
        (b"le", []),
        (b"de", {}),
        (b"d1:bi1e1:ai2ee", {b"b": 1, b"a": 2}),  # unsorted keys are accepted (the info-hash keeps its bytes)
        (b"l0:0:e", [b"", b""]),
    ],
)
def test_decode_known(data: bytes, value: Any) -> None:
    assert decode(data) == value


@pytest.mark.parametrize(
    "data",
    [
        b"i-0e",  # negative zero
        b"i00e",  # leading zero
        b"i01e",
        b"i-01e",
        b"ie",  # empty
        b"i-e",
        b"i+1e",
        b"i 1e",
        b"i1 e",
        b"i1.0e",
        b"i0x10e",
        b"i1",  # unterminated
        b"i" + b"1" * (MAX_INT_DIGITS + 1) + b"e",  # over-long
        b"i" + b"1" * 5000 + b"e",
        b"01:a",  # leading zero in a length
        b"00:",
        b"-1:a",
        b"+1:a",
        b"1a",
        b"5:abc",  # runs past the end
        b"99999999999999999999999:x",
        b"1" * 30 + b":",
        b":",
        b"",
        b"l",
        b"li1e",
        b"d",
        b"d1:a",
        b"d1:ai1e",
        b"di1ei2ee",  # non-string key
        b"dlei1ee",
        b"d1:ai1e1:ai2ee",  # duplicate key
        b"e",
        b"x",
        b"\x00",
        b"l-e",
    ],
)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(data)


def test_error_is_a_remote_protocol_error() -> None:
    assert issubclass(BencodeError, RemoteProtocolError)


def test_duplicate_keys_refused_at_any_depth() -> None:
    with pytest.raises(BencodeError, match="duplicate"):
        decode(b"d1:ad1:xi1e1:xi2eee")
    with pytest.raises(BencodeError, match="duplicate"):
        decode(b"ld1:k0:1:k0:ee")
    with pytest.raises(BencodeError, match="duplicate"):
        decode_with_spans(b"d1:ai1e1:bi2e1:ai3ee")


def test_depth_limit() -> None:
    ok_lists = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert decode_prefix(ok_lists)[1] == len(ok_lists)
    with pytest.raises(BencodeError, match="nesting"):
        decode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
    # dicts count the same as lists
    deep_dict = b"d1:a" * MAX_DEPTH + b"i0e" + b"e" * MAX_DEPTH
    assert decode(deep_dict) is not None
    with pytest.raises(BencodeError, match="nesting"):
        decode(b"d1:a" * (MAX_DEPTH + 1) + b"i0e" + b"e" * (MAX_DEPTH + 1))
    # scalars at the maximum depth are fine
    assert decode(b"l" * MAX_DEPTH + b"i1e3:abc" + b"e" * MAX_DEPTH) is not None


def test_very_deep_input_is_a_bencode_error_not_recursion_error() -> None:
    for prefix in (b"l", b"d1:a"):
        with pytest.raises(BencodeError):
            decode(prefix * 100_000)


def test_decode_prefix_from_offset() -> None:
    data = b"xxi42e4:spam"
    assert decode_prefix(data, 2) == (42, 6)
    assert decode_prefix(data, 6) == (b"spam", len(data))
    with pytest.raises(BencodeError):
        decode_prefix(data, len(data))


def test_decoded_strings_are_bytes() -> None:
    out = decode(bytearray(b"d3:keyl1:vee"))
    assert out == {b"key": [b"v"]}
    assert type(next(iter(out))) is bytes
    assert type(out[b"key"][0]) is bytes


# -------------------------------------------------------------------------------------------- spans


def test_spans_known() -> None:
    data = b"d4:infod1:xi1ee3:zzz3:abce"
    value, spans = decode_with_spans(data)
    assert value == {b"info": {b"x": 1}, b"zzz": b"abc"}
    assert spans == {b"info": (7, 15), b"zzz": (20, 25)}
    assert data[7:15] == b"d1:xi1ee"
    assert data[20:25] == b"3:abc"


def test_spans_only_for_top_level_keys() -> None:
    _, spans = decode_with_spans(b"d1:ad1:bi1eee")
    assert set(spans) == {b"a"}


def test_spans_keep_unsorted_bytes() -> None:
    raw_info = b"d6:pieces0:4:name1:x12:piece lengthi1ee"  # not sorted
    data = b"d8:announce3:url4:info" + raw_info + b"e"
    value, spans = decode_with_spans(data)
    start, end = spans[b"info"]
    assert data[start:end] == raw_info
    assert encode(value[b"info"]) != raw_info  # a re-encoding would sort the keys


@given(dicts)
@settings(max_examples=60, deadline=None)
def test_spans_property(value: dict[bytes, Any]) -> None:
    data = encode(value)
    out, spans = decode_with_spans(data)
    assert out == value
    assert set(spans) == set(value)
    prev_end = 1
    for key in sorted(value):
        start, end = spans[key]
        assert start > prev_end - 1
        assert decode(data[start:end]) == value[key]
        assert data[start:end] == encode(value[key])
        prev_end = end
    assert prev_end == len(data) - 1


@pytest.mark.parametrize("data", [b"le", b"i1e", b"3:abc", b"de1", b"d1:ai1ee\x00", b"", b"d1:ai1e"])
def test_spans_refuse_non_dict_trailing_and_truncated(data: bytes) -> None:
    with pytest.raises(BencodeError):
        decode_with_spans(data)


def test_spans_accept_memoryview() -> None:
    value, spans = decode_with_spans(memoryview(b"d1:ai1ee"))
    assert value == {b"a": 1} and spans == {b"a": (4, 7)}


# ----------------------------------------------------------------------------------------- fuzzing


def _decoders(data: bytes) -> None:
    for fn in (decode, decode_prefix, decode_with_spans):
        try:
            fn(data)
        except BencodeError:
            pass


@given(st.binary(max_size=200), garbage)
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_raise_only_bencode_error(data: bytes, tail: bytes) -> None:
    _decoders(data)
    _decoders(data + tail)


# Inputs built from bencode tokens reach much deeper into the decoder than uniform random bytes.
tokens = st.sampled_from(
    [
        b"i",
        b"e",
        b"l",
        b"d",
        b"0",
        b"1",
        b"9",
        b"-",
        b":",
        b"1:",
        b"2:ab",
        b"i0e",
        b"i-1e",
        b"x",
        b"00",
        b"\xff",
    ]
)


@given(st.lists(tokens, max_size=60).map(b"".join))
@settings(max_examples=300, deadline=None)
def test_token_soup_raises_only_bencode_error(data: bytes) -> None:
    _decoders(data)


@given(values, st.binary(max_size=10), st.data())
@settings(max_examples=120, deadline=None)
def test_mutated_valid_input_raises_only_bencode_error(value: Any, tail: bytes, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]))
    if op == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    elif op == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    elif op == "delete" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        del raw[i : i + data.draw(st.integers(1, 4))]
    elif op == "truncate":
        del raw[data.draw(st.integers(0, len(raw))) :]
    else:
        raw += tail
    _decoders(bytes(raw))
    _decoders(bytes(raw) + tail)


def test_module_constants_are_sane() -> None:
    assert bencode.MAX_DEPTH < 200  # far below the interpreter's recursion limit
    assert len(str(2**63)) <= MAX_INT_DIGITS
