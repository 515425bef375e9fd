"""The server side of RFC 6455 framing (bridge/proto/websocket.py): frames a client may send, split and
fragmented every way, and every violation answered with its close code."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from ws_frames import client_frame

from bridge.proto.websocket import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    MAX_FRAGMENTS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    ServerFrameParser,
    WebSocketError,
    accept_key,
    check_handshake,
    close_frame,
    frame,
    is_upgrade_request,
    parse_close,
    unmask_python,
)

LIMIT = 64 * 1024


def feed_all(parser: ServerFrameParser, data: bytes, cuts: list[int] | None = None) -> list[tuple[int, bytes]]:
    """Feed ``data`` in pieces cut at ``cuts`` (sorted offsets); all events in order."""
    out: list[tuple[int, bytes]] = []
    last = 0
    for cut in [*(cuts or []), len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    return out


def test_one_text_frame() -> None:
    p = ServerFrameParser(LIMIT)
    assert p.feed(client_frame(OP_TEXT, b'{"action":"announce"}')) == [(OP_TEXT, b'{"action":"announce"}')]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536])
def test_every_length_form(n: int) -> None:
    payload = os.urandom(n)
    p = ServerFrameParser(1 << 20)
    assert p.feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]


def test_non_minimal_length_forms_are_accepted() -> None:
    """RFC 6455 asks for the minimal length form, but what matters here is the length; accept both."""
    p = ServerFrameParser(LIMIT)
    data = client_frame(OP_TEXT, b"hi", length_form="16") + client_frame(OP_TEXT, b"yo", length_form="64")
    assert p.feed(data) == [(OP_TEXT, b"hi"), (OP_TEXT, b"yo")]


def test_a_frame_arriving_a_byte_at_a_time() -> None:
    payload = b"x" * 3000
    data = client_frame(OP_TEXT, payload)
    p = ServerFrameParser(LIMIT)
    out = feed_all(p, data, list(range(1, len(data))))
    assert out == [(OP_TEXT, payload)]


def test_fragments_with_a_ping_between() -> None:
    data = (client_frame(OP_TEXT, b"hel", fin=False) + client_frame(OP_PING, b"p")
            + client_frame(OP_CONTINUATION, b"l", fin=False) + client_frame(OP_CONTINUATION, b"o"))
    assert ServerFrameParser(LIMIT).feed(data) == [(OP_PING, b"p"), (OP_TEXT, b"hello")]


def test_close_ends_reading() -> None:
    p = ServerFrameParser(LIMIT)
    data = client_frame(OP_CLOSE, b"\x03\xe8bye") + client_frame(OP_TEXT, b"after")
    assert p.feed(data) == [(OP_CLOSE, b"\x03\xe8bye")]
    assert p.closed and p.feed(client_frame(OP_TEXT, b"more")) == []


def test_pong_is_passed_on() -> None:
    assert ServerFrameParser(LIMIT).feed(client_frame(OP_PONG, b"")) == [(OP_PONG, b"")]


@pytest.mark.parametrize("data, code", [
    (client_frame(OP_TEXT, b"x", masked=False), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_TEXT, b"x", rsv=4), CLOSE_PROTOCOL_ERROR),
    (client_frame(3, b"x"), CLOSE_PROTOCOL_ERROR),
    (client_frame(0xB, b"x"), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR),
    (client_frame(OP_TEXT, b"\xff\xfe"), CLOSE_INVALID_DATA),
    (client_frame(OP_TEXT, "é".encode()[:1]), CLOSE_INVALID_DATA),
    (client_frame(OP_TEXT, b"a" * (LIMIT + 1)), CLOSE_TOO_BIG),
    (client_frame(OP_TEXT, b"a" * LIMIT, fin=False) + client_frame(OP_CONTINUATION, b"a"), CLOSE_TOO_BIG),
])
def test_violations_give_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(WebSocketError) as info:
        ServerFrameParser(LIMIT).feed(data)
    assert info.value.code == code


def test_a_huge_length_is_refused_from_the_header_alone() -> None:
    """A header announcing 2**63 bytes is refused before any payload arrives (nothing is buffered)."""
    header = bytes((0x81, 0x80 | 127)) + (2**63 - 1).to_bytes(8, "big")
    with pytest.raises(WebSocketError) as info:
        ServerFrameParser(LIMIT).feed(header)
    assert info.value.code == CLOSE_TOO_BIG


def test_too_many_fragments() -> None:
    data = client_frame(OP_TEXT, b"", fin=False) + client_frame(OP_CONTINUATION, b"", fin=False) * MAX_FRAGMENTS
    with pytest.raises(WebSocketError) as info:
        ServerFrameParser(LIMIT).feed(data)
    assert info.value.code == CLOSE_TOO_BIG


def test_valid_utf8_text_passes() -> None:
    text = "WebTorrent ü 漢字 🎬".encode()
    assert ServerFrameParser(LIMIT).feed(client_frame(OP_TEXT, text)) == [(OP_TEXT, text)]


@pytest.mark.parametrize("payload, expected", [
    (b"", (1005, "")), (b"\x03\xe8", (1000, "")), (b"\x03\xe9going", (1001, "going")),
    (b"\x0f\xa0", (4000, "")),
])
def test_parse_close(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize("payload, code", [
    (b"\x03", CLOSE_PROTOCOL_ERROR), (b"\x03\xed", CLOSE_PROTOCOL_ERROR), (b"\x00\x00", CLOSE_PROTOCOL_ERROR),
    (b"\x13\x88", CLOSE_PROTOCOL_ERROR), (b"\x03\xe8\xff", CLOSE_INVALID_DATA),
])
def test_parse_close_refuses(payload: bytes, code: int) -> None:
    with pytest.raises(WebSocketError) as info:
        parse_close(payload)
    assert info.value.code == code


def test_close_frame_cuts_its_reason_on_a_character_boundary() -> None:
    f = close_frame(1001, "é" * 100)
    assert f[0] == 0x88 and f[1] <= 125
    assert parse_close(f[2:]) == (1001, "é" * 61)


def _read_with_websockets(data: bytes) -> Frame:
    """Parse a server frame with the websockets library (an independent implementation)."""
    reader = StreamReader()
    reader.feed_data(data)
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_frames_we_write_read_back_with_websockets(n: int) -> None:
    payload = b"z" * n
    f = _read_with_websockets(frame(OP_TEXT, payload))
    assert (f.opcode, f.data, f.fin) == (Opcode.TEXT, payload, True)
    c = _read_with_websockets(close_frame(1001, "bye"))
    assert c.opcode == Opcode.CLOSE and c.data == b"\x03\xe9bye"


def test_accept_key_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_check_handshake() -> None:
    good = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"k" * 16).decode()}
    assert is_upgrade_request(good)
    assert check_handshake("GET", good) == accept_key(good["Sec-WebSocket-Key"])
    for change in ({"Connection": "keep-alive"}, {"Sec-WebSocket-Version": "8"},
                   {"Sec-WebSocket-Key": "short"}, {"Sec-WebSocket-Key": "!!!!"}):
        with pytest.raises(HandshakeError):
            check_handshake("GET", {**good, **change})
    with pytest.raises(HandshakeError):
        check_handshake("POST", good)
    assert not is_upgrade_request({"Connection": "Upgrade"})


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_python_is_xor_with_the_repeated_key(payload: bytes, key: bytes) -> None:
    assert unmask_python(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


messages = st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.text(max_size=300).map(str.encode),
                              st.integers(1, 4)), max_size=6)


@settings(max_examples=300)
@given(messages, st.lists(st.integers(0, 3000), max_size=12), st.binary(min_size=4, max_size=4),
       st.booleans())
def test_any_split_and_fragmentation_gives_the_same_messages(
        msgs: list[tuple[int, bytes, int]], cuts: list[int], key: bytes, pings: bool) -> None:
    """Messages fragmented into 1-4 frames (pings between fragments), the stream cut anywhere: the same
    messages come out, in order, with the pings."""
    data = b""
    expected: list[tuple[int, bytes]] = []
    for opcode, payload, parts in msgs:
        size = -(-len(payload) // parts) if payload else 0
        pieces = [payload[i:i + size] for i in range(0, len(payload), size)] if size else [b""]
        for i, piece in enumerate(pieces):
            data += client_frame(opcode if i == 0 else OP_CONTINUATION, piece, fin=i == len(pieces) - 1, key=key)
            if pings and i < len(pieces) - 1:
                data += client_frame(OP_PING, b"%d" % i, key=key)
                expected.append((OP_PING, b"%d" % i))
        expected.append((opcode, payload))
    points = sorted({c for c in cuts if 0 < c < len(data)})
    assert feed_all(ServerFrameParser(LIMIT), data, points) == expected
