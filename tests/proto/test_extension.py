"""BEP 10 extended handshake: round trip, lenient decoding, reqq clamp, garbage -> RemoteProtocolError only."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.proto import bencode
from bridge.proto.extension import (
    MAX_EXTENSIONS,
    MAX_HANDSHAKE_SIZE,
    MAX_REQQ,
    ExtendedHandshake,
    decode_handshake,
    encode_handshake,
)


def test_round_trip_full() -> None:
    hs = ExtendedHandshake(
        m={"ut_metadata": 3, "ut_pex": 1, "lt_donthave": 0},
        v="webtorrent-bridge 0.1",
        p=6881,
        reqq=250,
        metadata_size=12345,
        yourip=bytes([127, 0, 0, 1]),
        upload_only=True,
    )
    data = encode_handshake(hs)
    assert decode_handshake(data) == hs
    d = bencode.decode(data)
    assert d[b"m"] == {b"ut_metadata": 3, b"ut_pex": 1, b"lt_donthave": 0}
    assert d[b"upload_only"] == 1


def test_round_trip_empty() -> None:
    data = encode_handshake(ExtendedHandshake())
    assert data == b"d1:mdee"
    assert decode_handshake(data) == ExtendedHandshake()


@given(
    st.dictionaries(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
        st.integers(0, 255),
        max_size=MAX_EXTENSIONS,
    ),
    st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=100),
    st.none() | st.integers(1, 65535),
    st.none() | st.integers(1, MAX_REQQ),
    st.none() | st.integers(0, 1 << 62),
    st.none() | st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_round_trip_property(
    m: dict[str, int],
    v: str | None,
    p: int | None,
    reqq: int | None,
    size: int | None,
    ip: bytes | None,
    uo: bool,
) -> None:
    hs = ExtendedHandshake(m=m, v=v, p=p, reqq=reqq, metadata_size=size, yourip=ip, upload_only=uo)
    assert decode_handshake(encode_handshake(hs)) == hs


@pytest.mark.parametrize(
    "reqq,expected",
    [
        (1, 1),
        (250, 250),
        (MAX_REQQ, MAX_REQQ),
        (MAX_REQQ + 1, MAX_REQQ),
        (1 << 31, MAX_REQQ),
        ((1 << 31) + 1, None),
        (0, None),
        (-5, None),
        (b"250", None),
        ([250], None),
    ],
)
def test_reqq_clamp(reqq: Any, expected: int | None) -> None:
    assert decode_handshake(bencode.encode({b"reqq": reqq})).reqq == expected


def test_lenient_decoding_of_ill_typed_keys() -> None:
    d = {
        b"m": {b"ut_pex": b"1", b"ut_metadata": 2, b"neg": -1, b"big": 256, b"list": [1], b"\xff\xfe": 4},
        b"v": 5,
        b"p": 70000,
        b"metadata_size": -1,
        b"yourip": b"\x01\x02\x03",
        b"upload_only": b"1",
        b"unknown": {b"x": [1, 2]},
    }
    hs = decode_handshake(bencode.encode(d))
    assert hs.m == {"ut_metadata": 2, "\ufffd\ufffd": 4}
    assert hs.v is None and hs.p is None and hs.metadata_size is None and hs.yourip is None
    assert hs.upload_only is False
    for bad_m in (b"x", [1], 3):
        assert decode_handshake(bencode.encode({b"m": bad_m})).m == {}
    assert decode_handshake(bencode.encode({b"p": 0})).p is None
    assert decode_handshake(bencode.encode({b"upload_only": 2})).upload_only is False


def test_client_name_truncated_and_replaced() -> None:
    hs = decode_handshake(bencode.encode({b"v": b"\xff" + b"a" * 500}))
    assert hs.v is not None and len(hs.v) == 100 and hs.v[0] == "\ufffd"


def test_extension_count_capped() -> None:
    m = {b"e%03d" % i: i % 256 for i in range(MAX_EXTENSIONS + 20)}
    hs = decode_handshake(bencode.encode({b"m": m}))
    assert len(hs.m) == MAX_EXTENSIONS


@pytest.mark.parametrize(
    "data", [b"", b"le", b"i1e", b"3:abc", b"d", b"d1:m", b"de\x00", b"\xff", b"d1:ai1e1:ai2ee"]
)
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_handshake(data)


def test_over_size_refused() -> None:
    big = bencode.encode({b"v": b"x" * MAX_HANDSHAKE_SIZE})
    assert len(big) > MAX_HANDSHAKE_SIZE
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        decode_handshake(big)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_only_remote_protocol_error(data: bytes) -> None:
    try:
        decode_handshake(data)
    except RemoteProtocolError:
        pass


scalars = st.integers(-(2**70), 2**70) | st.integers(-3, 300) | st.binary(max_size=20)
bvalues: st.SearchStrategy[Any] = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.binary(max_size=8), scalars | st.lists(scalars, max_size=2), max_size=6)
)
keys = st.sampled_from([b"m", b"v", b"p", b"reqq", b"metadata_size", b"yourip", b"upload_only", b"x"])


@given(st.dictionaries(keys, bvalues, max_size=8))
@settings(max_examples=200, deadline=None)
def test_arbitrary_well_formed_dicts_never_raise(d: dict[bytes, Any]) -> None:
    hs = decode_handshake(bencode.encode(d))
    assert all(isinstance(k, str) and 0 <= v <= 255 for k, v in hs.m.items())
    assert hs.p is None or 1 <= hs.p <= 65535
    assert hs.reqq is None or 1 <= hs.reqq <= MAX_REQQ
    assert hs.yourip is None or len(hs.yourip) in (4, 16)
