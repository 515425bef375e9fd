"""Fuzz the peer wire codec (bridge/proto/wire.py) and the BEP 9/10/11 extension messages
(bridge/proto/extension.py): only RemoteProtocolError may escape; a stream cut anywhere decodes the same."""

from __future__ import annotations

import os

from fuzz_support import DEADLINE, SUPPRESS, check, mutated, split_points
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.proto import events as ev
from bridge.proto.extension import (
    ExtendedHandshake,
    MetadataMessage,
    PexMessage,
    decode_handshake,
    decode_metadata,
    decode_pex,
    encode_handshake,
    encode_metadata,
    encode_pex,
)
from bridge.proto.wire import PROTOCOL_NAME, Wire, make_reserved

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (RemoteProtocolError,)

u32 = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.sampled_from([ev.KeepAlive(), ev.Choke(), ev.Unchoke(), ev.Interested(), ev.NotInterested(), ev.HaveAll(),
                     ev.HaveNone()]),
    st.builds(ev.Have, u32), st.builds(ev.SuggestPiece, u32), st.builds(ev.AllowedFast, u32),
    st.builds(ev.Request, u32, u32, st.integers(0, 1 << 17)), st.builds(ev.Cancel, u32, u32, st.integers(0, 1 << 17)),
    st.builds(ev.RejectRequest, u32, u32, st.integers(0, 1 << 17)),
    st.builds(ev.Piece, u32, u32, st.binary(max_size=300)),
    st.builds(ev.Bitfield, st.binary(max_size=64)),
    st.builds(ev.Extended, st.integers(0, 255), st.binary(max_size=100)),
    st.builds(ev.Port, st.integers(0, 65535)),
)
handshakes = st.builds(lambda ih, pid, ext: PROTOCOL_NAME + make_reserved(ext, ext) + ih + pid,
                       st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20), st.booleans())
streams = st.builds(lambda hs, msgs: hs + b"".join(Wire().send(m) for m in msgs), handshakes,
                    st.lists(messages, max_size=12))


def _feed(data: bytes, cuts: list[int], as_bytearray: bool = False) -> list[object] | BaseException:
    wire = Wire()
    out: list[object] = []
    for piece in split_points(data, cuts):
        got = check(wire.receive_data, bytearray(piece) if as_bytearray else piece, allowed=ERR)
        if isinstance(got, BaseException):
            return got
        out += [ev.Piece(e.index, e.begin, bytes(e.data)) if isinstance(e, ev.Piece) else e for e in got]
    return out


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=8))
def test_fuzz_wire_bytes(data: bytes, cuts: list[int]) -> None:
    _feed(data, cuts)
    _feed(PROTOCOL_NAME + bytes(48) + data, cuts)


@FUZZ
@given(mutated(streams), st.lists(st.integers(0, 1 << 16), max_size=10), st.booleans())
def test_fuzz_wire_mutated_split(data: bytes, cuts: list[int], as_bytearray: bool) -> None:
    whole = _feed(data, [])
    pieces = _feed(data, cuts, as_bytearray)
    if not isinstance(whole, BaseException):
        # the same events whatever the cuts (an error may only come earlier or equal, never differ in output)
        assert pieces == whole
    else:
        assert isinstance(pieces, BaseException)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_extension_bytes(data: bytes) -> None:
    check(decode_handshake, data, allowed=ERR)
    check(decode_metadata, data, allowed=ERR)
    check(decode_pex, data, allowed=ERR)


ext_handshakes = st.builds(
    ExtendedHandshake, st.dictionaries(st.text(max_size=12), st.integers(0, 255), max_size=5),
    st.none() | st.text(max_size=20), st.none() | st.integers(0, 70000), st.none() | st.integers(0, 2**32),
    st.none() | st.integers(0, 2**63), st.none() | st.binary(min_size=4, max_size=16), st.booleans(),
).map(encode_handshake)
metadata_msgs = st.builds(
    lambda t, piece, data: encode_metadata(MetadataMessage(t, piece, len(data) + piece * 16384 if t == 1 else None,
                                                           data if t == 1 else b"")),
    st.integers(0, 2), st.integers(0, 3), st.binary(max_size=200),
)
hosts = st.sampled_from(["1.2.3.4", "10.0.0.1", "::1", "2001:db8::7", "::ffff:1.2.3.4"])
pex_msgs = st.builds(
    lambda a, d: encode_pex(PexMessage(tuple(a), tuple(d))),
    st.lists(st.tuples(hosts, st.integers(1, 65535), st.integers(0, 255)), max_size=6),
    st.lists(st.tuples(hosts, st.integers(1, 65535)), max_size=6),
)


@FUZZ
@given(st.one_of(mutated(ext_handshakes), mutated(metadata_msgs), mutated(pex_msgs)))
def test_fuzz_extension_mutated(data: bytes) -> None:
    check(decode_handshake, data, allowed=ERR)
    check(decode_metadata, data, allowed=ERR)
    check(decode_pex, data, allowed=ERR)
