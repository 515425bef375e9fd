"""BEP 9 and BEP 11 codecs: round trips and hostile input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.proto import bencode
from bridge.proto.extension import (
    MAX_PEX_PEERS,
    METADATA_PIECE_SIZE,
    MetadataMessage,
    PexMessage,
    decode_metadata,
    decode_pex,
    encode_metadata,
    encode_pex,
)


def test_metadata_round_trips():
    for msg in (MetadataMessage(0, 3), MetadataMessage(2, 0), MetadataMessage(1, 1, METADATA_PIECE_SIZE + 5, b"x" * 5)):
        assert decode_metadata(encode_metadata(msg)) == msg


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"le",
        bencode.encode({b"msg_type": 7, b"piece": 0}),
        bencode.encode({b"msg_type": 0, b"piece": -1}),
        bencode.encode({b"msg_type": 1, b"piece": 0}),  # data without total_size
        bencode.encode({b"msg_type": 1, b"piece": 0, b"total_size": 0}),
        bencode.encode({b"msg_type": 1, b"piece": 0, b"total_size": -5}) + b"x",
        bencode.encode({b"msg_type": 1, b"piece": 0, b"total_size": 1 << 40}) + b"x" * 10,
        bencode.encode({b"msg_type": 1, b"piece": 0, b"total_size": 100}) + b"x" * 99,  # short piece
        bencode.encode({b"msg_type": 1, b"piece": 0, b"total_size": 100}) + b"x" * 101,  # long piece
        bencode.encode({b"msg_type": 1, b"piece": 2, b"total_size": 100}),  # piece past the end
        b"x" * (METADATA_PIECE_SIZE + 2000),
    ],
)
def test_bad_metadata_messages(payload):
    with pytest.raises(RemoteProtocolError):
        decode_metadata(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_metadata_garbage_raises_only_protocol_errors(data):
    try:
        decode_metadata(data)
    except RemoteProtocolError:
        pass


def test_pex_round_trip_with_flags_and_v6():
    msg = PexMessage(added=(("10.0.0.1", 6881, 0x12), ("::1", 51413, 0x04)), dropped=(("10.0.0.2", 1),))
    assert decode_pex(encode_pex(msg)) == msg


def test_pex_of_ten_thousand_peers_is_capped():
    added = b"".join(ipaddress.ip_address(f"10.{i >> 8 & 255}.{i & 255}.1").packed + b"\x1a\xe1" for i in range(10_000))
    payload = bencode.encode({b"added": added, b"added.f": b"\x00" * 10_000})
    with pytest.raises(RemoteProtocolError):  # 60 KB of peers is over the message limit
        decode_pex(payload)
    # Under the size limit, a list far longer than BEP 11 allows yields at most MAX_PEX_PEERS peers.
    small = bencode.encode({b"added": added[: 6 * 5000]})
    assert len(decode_pex(small).added) == MAX_PEX_PEERS


def test_pex_truncated_compact_list_drops_only_the_tail():
    added = ipaddress.ip_address("10.0.0.1").packed + b"\x00\x50" + b"\x0a\x00"  # one full entry + 2 bytes
    msg = decode_pex(bencode.encode({b"added": added, b"dropped": b"\x01\x02\x03"}))
    assert msg.added == (("10.0.0.1", 80, 0),) and msg.dropped == ()


def test_pex_ignores_ill_typed_fields_and_port_zero():
    payload = bencode.encode({b"added": 5, b"added6": b"\x00" * 18, b"dropped": [b"x"]})
    assert decode_pex(payload) == PexMessage()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_pex_garbage_raises_only_protocol_errors(data):
    try:
        decode_pex(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6"]),
                       st.one_of(st.binary(max_size=120), st.integers(-(2**63), 2**63), st.lists(st.binary(max_size=5), max_size=3))))
def test_pex_structured_garbage(d):
    msg = decode_pex(bencode.encode(d))
    assert len(msg.added) <= MAX_PEX_PEERS and len(msg.dropped) <= 2 * MAX_PEX_PEERS
