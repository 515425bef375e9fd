"""Peer wire codec (BEP 3/6/10 framing): round trips, arbitrary stream cuts, zero-copy pieces, limits, fuzzing."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import BridgeError, LocalProtocolError, RemoteProtocolError
from bridge.proto.events import (
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Extended,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
    UnknownMessage,
)
from bridge.proto.wire import (
    BLOCK_SIZE,
    HANDSHAKE_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_REQUEST_LENGTH,
    PROTOCOL_NAME,
    Wire,
    encode_piece_header,
    encode_request,
    make_reserved,
)

INFO_HASH = bytes(range(20))
PEER_ID = b"-WB0001-" + bytes(range(0xF4, 0x100))
HS = Handshake(INFO_HASH, PEER_ID, make_reserved())
U32 = 2**32 - 1

ALL_MESSAGES: list[Event] = [
    KeepAlive(),
    Choke(),
    Unchoke(),
    Interested(),
    NotInterested(),
    Have(0),
    Have(U32),
    Bitfield(b""),
    Bitfield(b"\xff\x80"),
    Request(1, 2, BLOCK_SIZE),
    Request(U32, U32, MAX_REQUEST_LENGTH),
    Piece(3, 16384, b"data"),
    Piece(0, 0, b""),
    Piece(7, 0, bytes(range(256)) * 64),
    Cancel(1, 2, 3),
    Port(6881),
    Port(0),
    Port(65535),
    SuggestPiece(9),
    HaveAll(),
    HaveNone(),
    RejectRequest(4, 5, 6),
    AllowedFast(11),
    Extended(0, b"d1:md6:ut_pexi1eee"),
    Extended(255, b""),
    Extended(3, b"\x00" * 1000),
]


def norm(events: list[Event]) -> list[Event]:
    """Piece data may come back as a memoryview; compare as bytes."""
    return [Piece(e.index, e.begin, bytes(e.data)) if isinstance(e, Piece) else e for e in events]


def stream(messages: list[Event], handshake: bool = True) -> bytes:
    w = Wire()
    return (w.send(HS) if handshake else b"") + b"".join(w.send(m) for m in messages)


def feed(chunks: list[bytes], wire: Wire | None = None) -> list[Event]:
    w = wire or Wire()
    out: list[Event] = []
    for c in chunks:
        out += w.receive_data(c)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# -------------------------------------------------------------------------------------- handshake


def test_handshake_bytes_and_flags() -> None:
    data = Wire().send(HS)
    assert len(data) == HANDSHAKE_LENGTH
    assert data[:20] == PROTOCOL_NAME
    assert data[20:28] == make_reserved()
    assert data[28:48] == INFO_HASH and data[48:] == PEER_ID
    assert HS.extension_protocol and HS.fast_extension
    plain = Handshake(INFO_HASH, PEER_ID)
    assert not plain.extension_protocol and not plain.fast_extension
    assert make_reserved(False, False) == bytes(8)
    assert Handshake(INFO_HASH, PEER_ID, make_reserved(True, False)).extension_protocol
    assert not Handshake(INFO_HASH, PEER_ID, make_reserved(True, False)).fast_extension


def test_handshake_received_whole_and_byte_by_byte() -> None:
    data = Wire().send(HS)
    w = Wire()
    assert not w.handshake_done
    assert w.receive_data(data) == [HS]
    assert w.handshake_done and w.buffered == 0
    w = Wire()
    events = feed([data[i : i + 1] for i in range(len(data))], w)
    assert events == [HS]
    assert w.bytes_received == HANDSHAKE_LENGTH


@pytest.mark.parametrize(
    "data",
    [
        b"\x13BitTorrent protocoX",
        b"\x14BitTorrent protocol",
        b"GET / HTTP/1.1\r\n",
        b"\x00",
        b"\x13bit",
        b"\x13BitTorrent Protocol",
    ],
)
def test_bad_protocol_string(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="handshake"):
        Wire().receive_data(data + bytes(100))
    # noticed as soon as the first wrong byte arrives, even in a short prefix
    w = Wire()
    with pytest.raises(RemoteProtocolError, match="handshake"):
        for i in range(len(data)):
            w.receive_data(data[i : i + 1])


def test_bad_protocol_string_after_partial_good_prefix() -> None:
    w = Wire()
    assert w.receive_data(PROTOCOL_NAME[:10]) == []
    assert w.buffered == 10
    with pytest.raises(RemoteProtocolError):
        w.receive_data(b"Xrotocol" + bytes(60))


def test_send_refuses_bad_handshake_fields() -> None:
    for hs in (Handshake(b"x", PEER_ID), Handshake(INFO_HASH, b"y"), Handshake(INFO_HASH, PEER_ID, b"\x00")):
        with pytest.raises(LocalProtocolError):
            Wire().send(hs)


# -------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_each_message(msg: Event) -> None:
    data = stream([msg])
    assert norm(Wire().receive_data(data)) == [HS, msg]
    # byte by byte
    assert norm(feed([data[i : i + 1] for i in range(len(data))])) == [HS, msg]
    # as a bytearray and a memoryview (the buffered path)
    assert norm(Wire().receive_data(bytearray(data))) == [HS, msg]
    assert norm(Wire().receive_data(memoryview(data))) == [HS, msg]


def test_known_encodings() -> None:
    w = Wire()
    assert w.send(KeepAlive()) == b"\x00\x00\x00\x00"
    assert w.send(Choke()) == b"\x00\x00\x00\x01\x00"
    assert w.send(HaveNone()) == b"\x00\x00\x00\x01\x0f"
    assert w.send(Have(258)) == b"\x00\x00\x00\x05\x04\x00\x00\x01\x02"
    assert w.send(Request(1, 2, 3)) == struct.pack(">IBIII", 13, 6, 1, 2, 3) == encode_request(1, 2, 3)
    assert w.send(Cancel(1, 2, 3))[4] == 8
    assert w.send(RejectRequest(1, 2, 3))[4] == 16
    assert w.send(AllowedFast(1))[4] == 17
    assert w.send(SuggestPiece(1))[4] == 13
    assert w.send(Port(0x1AE1)) == b"\x00\x00\x00\x03\x09\x1a\xe1"
    assert w.send(Bitfield(b"\xa0")) == b"\x00\x00\x00\x02\x05\xa0"
    assert w.send(Extended(1, b"xy")) == b"\x00\x00\x00\x04\x14\x01xy"
    assert w.send(Piece(1, 2, b"abc")) == encode_piece_header(1, 2, 3) + b"abc"
    assert w.send(Piece(1, 2, memoryview(b"abc"))) == encode_piece_header(1, 2, 3) + b"abc"


def test_send_refuses_unknown_and_out_of_range() -> None:
    w = Wire()
    with pytest.raises(LocalProtocolError):
        w.send(Extended(256, b""))
    with pytest.raises(LocalProtocolError):
        w.send(Extended(-1, b""))
    with pytest.raises(LocalProtocolError):
        w.send(UnknownMessage(99, 0))  # type: ignore[arg-type]


def test_all_messages_in_one_stream_every_way() -> None:
    data = stream(ALL_MESSAGES)
    expected = [HS, *ALL_MESSAGES]
    assert norm(Wire().receive_data(data)) == expected
    assert norm(feed([data[i : i + 1] for i in range(len(data))])) == expected
    rng = random.Random(5)
    for _ in range(20):
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 30))]
        assert norm(feed(split_at(data, cuts))) == expected


message_strategy = st.one_of(
    st.just(KeepAlive()),
    st.sampled_from([Choke(), Unchoke(), Interested(), NotInterested(), HaveAll(), HaveNone()]),
    st.builds(Have, st.integers(0, U32)),
    st.builds(SuggestPiece, st.integers(0, U32)),
    st.builds(AllowedFast, st.integers(0, U32)),
    st.builds(Bitfield, st.binary(max_size=50)),
    st.builds(Request, st.integers(0, U32), st.integers(0, U32), st.integers(0, MAX_REQUEST_LENGTH)),
    st.builds(Cancel, st.integers(0, U32), st.integers(0, U32), st.integers(0, MAX_REQUEST_LENGTH)),
    st.builds(RejectRequest, st.integers(0, U32), st.integers(0, U32), st.integers(0, MAX_REQUEST_LENGTH)),
    st.builds(Piece, st.integers(0, U32), st.integers(0, U32), st.binary(max_size=300)),
    st.builds(Port, st.integers(0, 65535)),
    st.builds(Extended, st.integers(0, 255), st.binary(max_size=60)),
)


@given(st.lists(message_strategy, max_size=15), st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
@settings(max_examples=250, deadline=None)
def test_random_messages_random_splits(messages: list[Event], cuts: list[int], as_bytearray: bool) -> None:
    data = stream(messages)
    chunks = split_at(data, cuts)
    if as_bytearray:
        chunks = [bytearray(c) for c in chunks]  # type: ignore[misc]
    w = Wire()
    assert norm(feed(chunks, w)) == [HS, *messages]
    assert w.buffered == 0
    assert w.bytes_received == len(data)


@given(st.lists(message_strategy, min_size=1, max_size=8), st.data())
@settings(max_examples=150, deadline=None)
def test_trailing_partial_kept_for_next_call(messages: list[Event], data: st.DataObject) -> None:
    whole = stream(messages)
    last = Wire().send(messages[-1])
    head = whole[: len(whole) - len(last)]
    k = data.draw(st.integers(0, len(last) - 1))  # a strict prefix of the last message
    w = Wire()
    first = w.receive_data(head + last[:k])
    assert norm(first) == [HS, *messages[:-1]]
    assert w.buffered == k
    rest = w.receive_data(last[k:])
    assert norm(rest) == [messages[-1]]
    assert w.buffered == 0


def test_partial_handshake_then_messages_in_same_chunk() -> None:
    data = stream([Have(1), Unchoke()])
    w = Wire()
    assert w.receive_data(data[:30]) == []
    assert w.buffered == 30
    assert w.receive_data(data[30:70]) == [HS]
    assert w.buffered == 2
    assert w.receive_data(data[70:]) == [Have(1), Unchoke()]


# --------------------------------------------------------------------------------- piece data paths


def test_piece_zero_copy_memoryview_when_fed_bytes() -> None:
    block = bytes(random.Random(1).randbytes(BLOCK_SIZE))
    w = Wire()
    w.receive_data(Wire().send(HS))
    data = Wire().send(Piece(5, BLOCK_SIZE, block)) + Wire().send(Have(2))
    events = w.receive_data(data)
    piece = events[0]
    assert isinstance(piece, Piece)
    assert isinstance(piece.data, memoryview)
    assert piece.data.readonly
    assert piece.data.obj is data  # no copy: a view into the chunk we fed
    assert piece.data == block and bytes(piece.data) == block
    assert events[1] == Have(2)


def test_piece_buffered_path_gives_bytes() -> None:
    block = random.Random(2).randbytes(BLOCK_SIZE)
    msg = Wire().send(Piece(5, 0, block))
    w = Wire()
    w.receive_data(Wire().send(HS))
    assert w.receive_data(msg[:100]) == []
    (piece,) = w.receive_data(msg[100:])
    assert isinstance(piece, Piece) and isinstance(piece.data, bytes)
    assert piece.data == block
    # bytearray input always goes through the buffer
    (piece2,) = w.receive_data(bytearray(msg))
    assert isinstance(piece2, Piece) and isinstance(piece2.data, bytes) and piece2.data == block


@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=6))
@settings(max_examples=150, deadline=None)
def test_piece_data_same_on_both_paths(block: bytes, cuts: list[int]) -> None:
    data = stream([Piece(1, 2, block), Piece(3, 4, block[::-1])])
    whole = Wire().receive_data(data)
    pieces = [e for e in whole if isinstance(e, Piece)]
    assert [bytes(p.data) for p in pieces] == [block, block[::-1]]
    split = [e for e in feed(split_at(data, cuts)) if isinstance(e, Piece)]
    assert [bytes(p.data) for p in split] == [block, block[::-1]]
    assert [(p.index, p.begin) for p in split] == [(1, 2), (3, 4)]


def test_received_view_survives_later_calls() -> None:
    w = Wire()
    w.receive_data(Wire().send(HS))
    msg = Wire().send(Piece(0, 0, b"A" * 100))
    first = w.receive_data(msg + msg[:50])  # leaves a partial in the buffer
    second = w.receive_data(msg[50:])
    assert isinstance(first[0], Piece) and isinstance(second[0], Piece)
    assert bytes(first[0].data) == b"A" * 100 == bytes(second[0].data)


# -------------------------------------------------------------------------------------------- limits


def after_handshake() -> Wire:
    w = Wire()
    w.receive_data(Wire().send(HS))
    return w


def test_message_over_max_length_refused_from_the_prefix_alone() -> None:
    w = after_handshake()
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        w.receive_data(struct.pack(">I", MAX_MESSAGE_LENGTH + 1))
    # exactly at the limit is buffered, not refused
    w = after_handshake()
    assert w.receive_data(struct.pack(">IB", MAX_MESSAGE_LENGTH, 20) + bytes(10)) == []
    w = after_handshake()
    with pytest.raises(RemoteProtocolError):
        w.receive_data(b"\xff\xff\xff\xff")


def test_max_message_length_is_configurable() -> None:
    w = Wire(max_message_length=100)
    w.receive_data(Wire().send(HS))
    assert w.receive_data(Wire().send(Extended(1, bytes(98)))) == [Extended(1, bytes(98))]
    with pytest.raises(RemoteProtocolError):
        w.receive_data(Wire().send(Extended(1, bytes(99))))


def test_full_size_message_at_limit_decodes() -> None:
    w = after_handshake()
    payload = bytes(MAX_MESSAGE_LENGTH - 2)
    (ev,) = w.receive_data(Wire().send(Extended(7, payload)))
    assert ev == Extended(7, payload)


@pytest.mark.parametrize("cls", [Request, Cancel, RejectRequest])
def test_request_length_limit(cls: type) -> None:
    w = after_handshake()
    assert w.receive_data(Wire().send(cls(0, 0, MAX_REQUEST_LENGTH))) == [cls(0, 0, MAX_REQUEST_LENGTH)]
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        after_handshake().receive_data(Wire().send(cls(0, 0, MAX_REQUEST_LENGTH + 1)))


def test_piece_block_over_request_limit() -> None:
    w = after_handshake()
    (ev,) = w.receive_data(Wire().send(Piece(0, 0, bytes(MAX_REQUEST_LENGTH))))
    assert isinstance(ev, Piece) and len(ev.data) == MAX_REQUEST_LENGTH
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        after_handshake().receive_data(Wire().send(Piece(0, 0, bytes(MAX_REQUEST_LENGTH + 1))))


def frame(mid: int, payload: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


@pytest.mark.parametrize(
    "mid,size",
    [
        *[(m, s) for m in (0, 1, 2, 3, 14, 15) for s in (1, 4)],
        *[(m, s) for m in (4, 13, 17) for s in (0, 3, 5, 8)],
        *[(m, s) for m in (6, 8, 16) for s in (0, 8, 11, 13, 16)],
        (9, 0),
        (9, 1),
        (9, 3),
        (7, 0),
        (7, 4),
        (7, 7),
        (20, 0),
    ],
)
def test_wrong_payload_sizes(mid: int, size: int) -> None:
    msg = frame(mid, bytes(size))
    with pytest.raises(RemoteProtocolError):
        after_handshake().receive_data(msg)
    w = after_handshake()
    with pytest.raises(RemoteProtocolError):
        for i in range(len(msg)):
            w.receive_data(msg[i : i + 1])


def test_piece_header_only_is_an_empty_block() -> None:
    (ev,) = after_handshake().receive_data(frame(7, struct.pack(">II", 1, 2)))
    assert isinstance(ev, Piece) and bytes(ev.data) == b"" and (ev.index, ev.begin) == (1, 2)


def test_unknown_message_ids_are_reported_not_fatal() -> None:
    events = after_handshake().receive_data(
        frame(99, b"abc") + frame(10, b"") + frame(255, bytes(500)) + frame(2, b"")
    )
    assert events == [UnknownMessage(99, 3), UnknownMessage(10, 0), UnknownMessage(255, 500), Interested()]


def test_messages_before_handshake_are_not_messages() -> None:
    with pytest.raises(RemoteProtocolError):
        Wire().receive_data(Wire().send(Interested()) + bytes(100))


def test_keepalives_many() -> None:
    assert after_handshake().receive_data(bytes(4 * 1000)) == [KeepAlive()] * 1000


# -------------------------------------------------------------------------------------------- fuzz


def swallow(w: Wire, chunks: list[bytes]) -> None:
    try:
        for c in chunks:
            w.receive_data(c)
    except RemoteProtocolError as e:
        assert isinstance(e, BridgeError)


@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=5))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_without_handshake(data: bytes, cuts: list[int]) -> None:
    swallow(Wire(), split_at(data, cuts))
    swallow(Wire(), [PROTOCOL_NAME + data])


@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=5))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_after_handshake(data: bytes, cuts: list[int]) -> None:
    swallow(after_handshake(), split_at(data, cuts))
    swallow(after_handshake(), [bytearray(data)])


# Frames with plausible lengths reach the per-message decoders, which uniform bytes rarely do.
raw_frames = st.tuples(st.integers(0, 30), st.binary(max_size=20)).map(lambda t: frame(t[0], t[1]))


@given(st.lists(raw_frames, max_size=12), st.lists(st.integers(0, 400), max_size=5))
@settings(max_examples=300, deadline=None)
def test_arbitrary_frames_after_handshake(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    swallow(after_handshake(), split_at(data, cuts))
