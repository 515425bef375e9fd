"""RFC 6455 WebSocket, server side, after the opening handshake. Sans-IO: bytes in, messages out.

The embedded tracker reads every WebTorrent client through :class:`ServerFrameParser` and writes with
:func:`frame`. Under load the tracker handles tens of thousands of messages per second, so the parser has a
fast path for the common case (one whole masked frame per read) and hands back complete messages as
``(opcode, payload)`` tuples, without an object per message.

Everything a client sends is untrusted. A protocol violation raises :class:`WebSocketError` with the close
code to send (1002 protocol error, 1007 bad UTF-8 in a text message, 1009 message too big); the caller
sends that close frame and drops the connection. A message's size is checked against the limit from the
frame header, before its payload is buffered.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable, Mapping

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

#: Largest payload of a control frame (ping, pong, close), fixed by RFC 6455 5.5.
MAX_CONTROL_PAYLOAD = 125
#: Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask key.
MAX_HEADER = 14
#: Frames one message may be split into. Each fragment costs a list entry; a client that sends a message
#: a byte per frame is refused long before it costs much.
MAX_FRAGMENTS = 1024

#: Sec-WebSocket-Accept's fixed suffix (RFC 6455 1.3).
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")
_FRAME16 = struct.Struct("!BBH")
_FRAME64 = struct.Struct("!BBQ")

#: Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry; 3000-4999 are for applications).
_VALID_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

Unmask = Callable[[bytes, bytes], bytes]
"""``unmask(payload, mask_key)``: the payload XORed with the 4-byte key repeated. The pure-Python default
below is correct but slow (7 us for 3.5 KB); the tracker passes a C implementation."""

_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def unmask_python(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeating 4-byte key: each of the four interleaved byte columns is one translate."""
    out = bytearray(len(payload))
    for i in range(4):
        out[i::4] = payload[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(out)


class WebSocketError(Exception):
    """The client broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """An upgrade request that is not a valid WebSocket handshake (answer 400 with this text)."""


# ------------------------------------------------------------------------------------------ handshake


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a request's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest()).decode("ascii")


def is_upgrade_request(headers: Mapping[str, str]) -> bool:
    """Whether a request asks for a WebSocket (``Upgrade: websocket``); its other headers are not checked."""
    return "websocket" in (headers.get("Upgrade") or "").lower()


def check_handshake(method: str, headers: Mapping[str, str]) -> str:
    """The Sec-WebSocket-Accept value for a valid client handshake (RFC 6455 4.2.1); HandshakeError if not.

    ``headers`` must be case-insensitive, as aiohttp's CIMultiDictProxy is.
    """
    get = headers.get
    if method != "GET":
        raise HandshakeError("a WebSocket handshake must be a GET")
    if not is_upgrade_request(headers):
        raise HandshakeError("Upgrade: websocket is missing")
    if "upgrade" not in [t.strip() for t in (get("Connection") or "").lower().split(",")]:
        raise HandshakeError("Connection: upgrade is missing")
    if (get("Sec-WebSocket-Version") or "").strip() != "13":
        raise HandshakeError("only WebSocket version 13 is supported")
    key = (get("Sec-WebSocket-Key") or "").strip()
    try:
        ok = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        ok = False
    if not ok:
        raise HandshakeError("Sec-WebSocket-Key is not 16 bytes in base64")
    return accept_key(key)


# ------------------------------------------------------------------------------------------ writing


def frame_header(opcode: int, n: int) -> bytes:
    """Header of an unmasked, final frame with an ``n``-byte payload (server to client)."""
    if n < 126:
        return bytes((0x80 | opcode, n))
    if n < 0x10000:
        return _FRAME16.pack(0x80 | opcode, 126, n)
    return _FRAME64.pack(0x80 | opcode, 127, n)


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One whole unmasked frame (server to client)."""
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason cut to fit a control frame."""
    # The cut may split the last character; decoding with "ignore" drops that part (all else is valid).
    raw = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return frame(OP_CLOSE, _LEN16.pack(code) + raw)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; 1005 (no code) for an empty one. WebSocketError if bad."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _LEN16.unpack_from(payload)[0]
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


# ------------------------------------------------------------------------------------------ reading


class ServerFrameParser:
    """Client-to-server frames in, complete messages out.

    :meth:`feed` returns a list of ``(opcode, payload)``: OP_TEXT or OP_BINARY with the whole message
    (fragments joined; a text message is valid UTF-8, still as bytes), OP_PING, OP_PONG, and OP_CLOSE with
    the raw close payload (check it with :func:`parse_close`). After a close frame nothing more is read.
    """

    __slots__ = ("max_message_size", "unmask", "_parts", "_buffered", "_need", "_frag_opcode", "_frags",
                 "_frag_size", "closed")

    def __init__(self, max_message_size: int, unmask: Unmask = unmask_python) -> None:
        self.max_message_size = max_message_size
        self.unmask = unmask
        # An unfinished frame is kept as the chunks it came in, joined once ``_need`` bytes are there, so a
        # frame that trickles in a byte at a time costs linear time, not quadratic.
        self._parts: list[bytes] = []
        self._buffered = 0
        self._need = 0
        self._frag_opcode = 0  # opcode of the message being reassembled, 0 when none
        self._frags: list[bytes] = []
        self._frag_size = 0
        self.closed = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.closed:
            return []
        if self._parts:
            self._parts.append(data)
            self._buffered += len(data)
            if self._buffered < self._need:
                return []
            data = b"".join(self._parts)
            self._parts = []
            self._buffered = 0
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        need = 2
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if not b1 & 0x80:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "a client frame must be masked")
            if b0 & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
            n = b1 & 0x7F
            head = 6
            if n == 126:
                if end - pos < 4:
                    need = 4
                    break
                n = _LEN16.unpack_from(data, pos + 2)[0]
                head = 8
            elif n == 127:
                if end - pos < 10:
                    need = 10
                    break
                n = _LEN64.unpack_from(data, pos + 2)[0]
                head = 14
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                if n > MAX_CONTROL_PAYLOAD or not b0 & 0x80:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
            elif n + self._frag_size > self.max_message_size:
                raise WebSocketError(CLOSE_TOO_BIG, f"message over the limit of {self.max_message_size} bytes")
            if end - pos < head + n:
                need = head + n
                break
            key = data[pos + head - 4:pos + head]
            start = pos + head
            pos = start + n
            payload = self.unmask(data[start:pos], key) if n else b""
            if opcode >= 0x8:
                if opcode == OP_CLOSE:
                    self.closed = True
                    out.append((OP_CLOSE, payload))
                    return out
                if opcode not in (OP_PING, OP_PONG):
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
                out.append((opcode, payload))
                continue
            fin = b0 & 0x80
            if opcode == OP_CONTINUATION:
                if not self._frag_opcode:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation frame with no message to continue")
                self._frags.append(payload)
                self._frag_size += n
                if not fin:
                    if len(self._frags) > MAX_FRAGMENTS:
                        raise WebSocketError(CLOSE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} frames")
                    continue
                opcode = self._frag_opcode
                payload = b"".join(self._frags)
                self._frag_opcode = 0
                self._frags = []
                self._frag_size = 0
            elif opcode > OP_BINARY:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
            elif self._frag_opcode:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message before the last one was finished")
            elif not fin:
                self._frag_opcode = opcode
                self._frags = [payload]
                self._frag_size = n
                continue
            if opcode == OP_TEXT and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise WebSocketError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
            out.append((opcode, payload))
        if pos < end:
            rest = data[pos:]
            self._parts = [rest]
            self._buffered = len(rest)
            self._need = need
        return out
