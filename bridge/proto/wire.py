"""The BitTorrent peer wire codec (BEP 3, with BEP 6 and BEP 10 framing), sans-IO.

``receive_data(bytes)`` returns the events decoded so far; ``send(event)`` returns bytes to write. The codec
keeps no socket and no clock. A stream may be cut anywhere: TCP segments and WebRTC data-channel messages
never align with wire messages, so everything is buffered until a whole message is present.
"""

from __future__ import annotations

import struct

from ..errors import LocalProtocolError, RemoteProtocolError
from .events import (
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
    Message,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
    UnknownMessage,
)

PROTOCOL_NAME = b"\x13BitTorrent protocol"
HANDSHAKE_LENGTH = 68
#: Block size every client requests (BEP 3 practice). We ask for this and serve at most this.
BLOCK_SIZE = 16 * 1024
#: Largest request we parse. WebTorrent disconnects above 128 KiB, libtorrent rejects above 16 KiB; the
#: engine rejects anything above BLOCK_SIZE and this codec refuses what no client ever sends.
MAX_REQUEST_LENGTH = 128 * 1024
#: Largest message of any kind. A bitfield of the largest metadata we accept (10 MB -> 500,000 pieces) is
#: 62.5 KB and a piece message is 16 KiB + 9, so 1 MiB leaves room for extension messages while bounding
#: what a hostile length prefix can make us buffer per peer.
MAX_MESSAGE_LENGTH = 1024 * 1024

#: BEP 10 extension protocol bit, BEP 6 fast extension bit.
RESERVED_EXTENSIONS = (5, 0x10)
RESERVED_FAST = (7, 0x04)

_u32 = struct.Struct(">I")
_have = struct.Struct(">IBI")
_req = struct.Struct(">IBIII")
_piece_hdr = struct.Struct(">IBII")
_two = struct.Struct(">II")
_three = struct.Struct(">III")

_KEEPALIVE = KeepAlive()
_CHOKE = Choke()
_UNCHOKE = Unchoke()
_INTERESTED = Interested()
_NOT_INTERESTED = NotInterested()
_HAVE_ALL = HaveAll()
_HAVE_NONE = HaveNone()

_SIMPLE: dict[int, Message] = {0: _CHOKE, 1: _UNCHOKE, 2: _INTERESTED, 3: _NOT_INTERESTED, 14: _HAVE_ALL, 15: _HAVE_NONE}
_SIMPLE_IDS = {Choke: 0, Unchoke: 1, Interested: 2, NotInterested: 3, HaveAll: 14, HaveNone: 15}
_INDEX_MSGS: dict[int, type[Have] | type[SuggestPiece] | type[AllowedFast]] = {
    4: Have,
    13: SuggestPiece,
    17: AllowedFast,
}
_INDEX_IDS = {Have: 4, SuggestPiece: 13, AllowedFast: 17}
_TRIPLE_MSGS: dict[int, type[Request] | type[Cancel] | type[RejectRequest]] = {
    6: Request,
    8: Cancel,
    16: RejectRequest,
}
_TRIPLE_IDS = {Request: 6, Cancel: 8, RejectRequest: 16}


def make_reserved(extensions: bool = True, fast: bool = True) -> bytes:
    r = bytearray(8)
    if extensions:
        r[RESERVED_EXTENSIONS[0]] |= RESERVED_EXTENSIONS[1]
    if fast:
        r[RESERVED_FAST[0]] |= RESERVED_FAST[1]
    return bytes(r)


class Wire:
    """One side of one peer connection's byte stream."""

    __slots__ = ("_buf", "_handshake_done", "bytes_received", "max_message_length")

    def __init__(self, max_message_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._buf = bytearray()
        self._handshake_done = False
        self.max_message_length = max_message_length
        #: Total bytes fed in (for rate measurement by the adapter).
        self.bytes_received = 0

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial message)."""
        return len(self._buf)

    # -------------------------------------------------------------------------------------- input
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes; return every complete event. Raises RemoteProtocolError on a protocol breach.

        When ``data`` is ``bytes`` and nothing is buffered, messages are decoded straight from it and a
        Piece's ``data`` is a memoryview into it (no copy); otherwise it is a ``bytes`` copy.
        """
        self.bytes_received += len(data)
        events: list[Event] = []
        buf = self._buf
        if buf or not isinstance(data, bytes):
            buf += data
            src: bytes | bytearray = buf
            view = None
        else:
            src = data
            view = memoryview(data)
        pos = 0
        n = len(src)
        if not self._handshake_done:
            if n < 20:
                if src[:n] != PROTOCOL_NAME[:n]:
                    raise RemoteProtocolError("handshake: not the BitTorrent protocol")
                self._keep(src, 0, view)
                return events
            if src[:20] != PROTOCOL_NAME:
                raise RemoteProtocolError("handshake: not the BitTorrent protocol")
            if n < HANDSHAKE_LENGTH:
                self._keep(src, 0, view)
                return events
            events.append(Handshake(info_hash=bytes(src[28:48]), peer_id=bytes(src[48:68]), reserved=bytes(src[20:28])))
            self._handshake_done = True
            pos = HANDSHAKE_LENGTH
        maxlen = self.max_message_length
        unpack_u32 = _u32.unpack_from
        unpack_two = _two.unpack_from
        append = events.append
        decode = self._decode
        while n - pos >= 4:
            (length,) = unpack_u32(src, pos)
            if length == 0:
                append(_KEEPALIVE)
                pos += 4
                continue
            if length > maxlen:
                raise RemoteProtocolError(f"message of {length} bytes is over the limit of {maxlen}")
            end = pos + 4 + length
            if end > n:
                break
            mid = src[pos + 4]
            if mid == 7:
                if length < 9:
                    raise RemoteProtocolError("piece message shorter than its header")
                if length - 9 > MAX_REQUEST_LENGTH:
                    raise RemoteProtocolError(f"piece block of {length - 9} bytes is over the limit")
                index, begin = unpack_two(src, pos + 5)
                block = view[pos + 13 : end] if view is not None else bytes(src[pos + 13 : end])
                append(Piece(index, begin, block))
            else:
                append(decode(mid, src, pos + 5, length - 1))
            pos = end
        self._keep(src, pos, view)
        return events

    def _keep(self, src: bytes | bytearray, pos: int, view: memoryview | None) -> None:
        """Keep the undecoded tail ``src[pos:]`` for the next call."""
        if view is None:
            if pos:
                del self._buf[:pos]
        elif pos < len(src):
            self._buf = bytearray(view[pos:])

    @staticmethod
    def _decode(mid: int, buf: bytes | bytearray, at: int, size: int) -> Message:
        simple: Message | None = _SIMPLE.get(mid)
        if simple is not None:
            if size:
                raise RemoteProtocolError(f"message {mid} has {size} unexpected payload bytes")
            return simple
        cls = _INDEX_MSGS.get(mid)
        if cls is not None:
            if size != 4:
                raise RemoteProtocolError(f"message {mid} payload is {size} bytes, expected 4")
            return cls(_u32.unpack_from(buf, at)[0])
        tcls = _TRIPLE_MSGS.get(mid)
        if tcls is not None:
            if size != 12:
                raise RemoteProtocolError(f"message {mid} payload is {size} bytes, expected 12")
            index, begin, length = _three.unpack_from(buf, at)
            if length > MAX_REQUEST_LENGTH:
                raise RemoteProtocolError(f"request for {length} bytes is over the limit of {MAX_REQUEST_LENGTH}")
            return tcls(index, begin, length)
        if mid == 5:
            return Bitfield(bytes(buf[at : at + size]))
        if mid == 20:
            if size < 1:
                raise RemoteProtocolError("extended message without an id")
            return Extended(buf[at], bytes(buf[at + 1 : at + size]))
        if mid == 9:
            if size != 2:
                raise RemoteProtocolError(f"port message payload is {size} bytes, expected 2")
            return Port(int.from_bytes(buf[at : at + 2], "big"))
        return UnknownMessage(mid, size)

    # ------------------------------------------------------------------------------------- output
    def send(self, event: Event) -> bytes:
        """Encode one event. Raises LocalProtocolError for what must never be sent."""
        t = type(event)
        if t is Request:
            assert isinstance(event, Request)
            return _req.pack(13, 6, event.index, event.begin, event.length)
        if t is Piece:
            assert isinstance(event, Piece)
            return _piece_hdr.pack(9 + len(event.data), 7, event.index, event.begin) + event.data
        mid = _SIMPLE_IDS.get(t)
        if mid is not None:
            return b"\x00\x00\x00\x01" + bytes([mid])
        mid = _INDEX_IDS.get(t)
        if mid is not None:
            return _have.pack(5, mid, event.index)  # type: ignore[union-attr]
        mid = _TRIPLE_IDS.get(t)
        if mid is not None:
            return _req.pack(13, mid, event.index, event.begin, event.length)  # type: ignore[union-attr]
        if t is KeepAlive:
            return b"\x00\x00\x00\x00"
        if t is Bitfield:
            assert isinstance(event, Bitfield)
            return _u32.pack(1 + len(event.bits)) + b"\x05" + event.bits
        if t is Extended:
            assert isinstance(event, Extended)
            if not 0 <= event.ext_id <= 255:
                raise LocalProtocolError("extended message id out of range")
            return _u32.pack(2 + len(event.payload)) + b"\x14" + bytes([event.ext_id]) + event.payload
        if t is Port:
            assert isinstance(event, Port)
            return b"\x00\x00\x00\x03\x09" + event.port.to_bytes(2, "big")
        if t is Handshake:
            assert isinstance(event, Handshake)
            if len(event.info_hash) != 20 or len(event.peer_id) != 20 or len(event.reserved) != 8:
                raise LocalProtocolError("handshake fields have the wrong length")
            return PROTOCOL_NAME + event.reserved + event.info_hash + event.peer_id
        raise LocalProtocolError(f"cannot send {t.__name__}")


def encode_request(index: int, begin: int, length: int) -> bytes:
    """Fast path for the hottest outgoing message."""
    return _req.pack(13, 6, index, begin, length)


def encode_piece_header(index: int, begin: int, length: int) -> bytes:
    """The 13-byte header of a piece message carrying ``length`` bytes of data."""
    return _piece_hdr.pack(9 + length, 7, index, begin)
