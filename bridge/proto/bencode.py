"""Strict bencoding (BEP 3), stdlib only.

Why our own codec and not bencode.py: we need the exact byte span of a value as received (the info-hash is
SHA-1 over the ``info`` bytes as they arrived, never a re-encoding), a nesting limit so hostile input cannot
exhaust the stack, and a single error type. bencode.py is used in the tests as an independent reference.

Decoded types: ``int``, ``bytes``, ``list`` and ``dict[bytes, ...]``.
"""

from __future__ import annotations

from typing import Any

from ..errors import BencodeError

#: Deepest nesting of lists and dicts accepted. Real torrents nest 4-5 levels (info/files/path); 64 leaves
#: room for extensions while keeping recursion far from Python's stack limit.
MAX_DEPTH = 64
#: Longest integer literal in digits. 2**63 has 19 digits; a few more allow for sign and slack, and a cap
#: keeps int() of a megabyte of digits (quadratic in CPython) out of reach.
MAX_INT_DIGITS = 32

Bencodable = int | bytes | str | list[Any] | tuple[Any, ...] | dict[Any, Any]


def encode(value: Any) -> bytes:
    """Encode ``value``. ``str`` is encoded as UTF-8; dict keys are sorted as raw bytes."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise BencodeError("cannot bencode a bool")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        items = []
        for k, v in value.items():
            kb = k.encode("utf-8") if isinstance(k, str) else k
            if not isinstance(kb, bytes):
                raise BencodeError(f"dict key must be bytes or str, not {type(k).__name__}")
            items.append((kb, v))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d")
        prev = None
        for kb, v in items:
            if kb == prev:
                raise BencodeError(f"duplicate dict key {kb!r}")
            prev = kb
            out.append(b"%d:" % len(kb))
            out.append(kb)
            _encode(v, out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


class _Decoder:
    __slots__ = ("data", "spans", "n")

    def __init__(self, data: bytes, want_spans: bool) -> None:
        self.data = data
        self.n = len(data)
        #: (start, end) of each value of the top-level dict, by key
        self.spans: dict[bytes, tuple[int, int]] | None = {} if want_spans else None

    def fail(self, pos: int, why: str) -> BencodeError:
        return BencodeError(f"bencode: {why} at byte {pos}")

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        if pos >= self.n:
            raise self.fail(pos, "unexpected end of data")
        c = self.data[pos]
        if c == 0x69:  # i
            return self.integer(pos)
        if 0x30 <= c <= 0x39:
            return self.string(pos)
        if depth >= MAX_DEPTH:
            raise self.fail(pos, f"nesting deeper than {MAX_DEPTH}")
        if c == 0x6C:  # l
            items: list[Any] = []
            pos += 1
            while True:
                if pos >= self.n:
                    raise self.fail(pos, "unterminated list")
                if self.data[pos] == 0x65:
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if c == 0x64:  # d
            result: dict[bytes, Any] = {}
            pos += 1
            top = depth == 0 and self.spans is not None
            while True:
                if pos >= self.n:
                    raise self.fail(pos, "unterminated dict")
                if self.data[pos] == 0x65:
                    return result, pos + 1
                if not 0x30 <= self.data[pos] <= 0x39:
                    raise self.fail(pos, "dict key is not a string")
                key, pos = self.string(pos)
                if key in result:
                    raise self.fail(pos, f"duplicate dict key {key[:40]!r}")
                start = pos
                val, pos = self.value(pos, depth + 1)
                result[key] = val
                if top:
                    assert self.spans is not None
                    self.spans[key] = (start, pos)
        raise self.fail(pos, f"unexpected byte {bytes([c])!r}")

    def integer(self, pos: int) -> tuple[int, int]:
        end = self.data.find(b"e", pos + 1, pos + 2 + MAX_INT_DIGITS)
        if end < 0:
            raise self.fail(pos, "unterminated or over-long integer")
        digits = self.data[pos + 1 : end]
        body = digits[1:] if digits[:1] == b"-" else digits
        if not body or not body.isdigit():
            raise self.fail(pos, "malformed integer")
        if (body[0] == 0x30 and len(body) > 1) or digits == b"-0":
            raise self.fail(pos, "non-canonical integer")
        return int(digits), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        colon = self.data.find(b":", pos, pos + 21)
        if colon < 0:
            raise self.fail(pos, "malformed string length")
        digits = self.data[pos:colon]
        if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):
            raise self.fail(pos, "malformed string length")
        length = int(digits)
        start = colon + 1
        end = start + length
        if end > self.n:
            raise self.fail(pos, f"string of {length} bytes runs past the end")
        return self.data[start:end], end


def decode(data: bytes) -> Any:
    """Decode exactly one value; trailing bytes are an error."""
    value, end = decode_prefix(data)
    if end != len(data):
        raise BencodeError(f"bencode: {len(data) - end} trailing bytes after the value")
    return value


def decode_prefix(data: bytes, start: int = 0) -> tuple[Any, int]:
    """Decode one value starting at ``start``; return it and the offset just past it."""
    if not isinstance(data, bytes):
        data = bytes(data)
    return _Decoder(data, False).value(start, 0)


def decode_with_spans(data: bytes) -> tuple[dict[bytes, Any], dict[bytes, tuple[int, int]]]:
    """Decode a top-level dict and also return the (start, end) byte span of each of its values."""
    if not isinstance(data, bytes):
        data = bytes(data)
    dec = _Decoder(data, True)
    value, end = dec.value(0, 0)
    if end != len(data):
        raise BencodeError(f"bencode: {len(data) - end} trailing bytes after the value")
    if not isinstance(value, dict):
        raise BencodeError("bencode: top-level value is not a dict")
    assert dec.spans is not None
    return value, dec.spans
