"""A fixed-size set of piece indices, stored as the wire's bitfield (bit 7 of byte 0 is piece 0)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import RemoteProtocolError

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))


class Bitfield:
    __slots__ = ("size", "_bits", "_count")

    def __init__(self, size: int, fill: bool = False) -> None:
        self.size = size
        nbytes = (size + 7) // 8
        if fill and size:
            self._bits = bytearray(b"\xff" * nbytes)
            spare = nbytes * 8 - size
            if spare:
                self._bits[-1] &= (0xFF << spare) & 0xFF
            self._count = size
        else:
            self._bits = bytearray(nbytes)
            self._count = 0

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> Bitfield:
        """Validate a received bitfield: exact length, spare bits clear."""
        nbytes = (size + 7) // 8
        if len(data) != nbytes:
            raise RemoteProtocolError(f"bitfield of {len(data)} bytes for {size} pieces (expected {nbytes})")
        spare = nbytes * 8 - size
        if spare and data[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError("bitfield has spare bits set")
        bf = cls(size)
        bf._bits[:] = data
        bf._count = sum(_POPCOUNT[b] for b in data)
        return bf

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.size and bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def add(self, index: int) -> bool:
        """Set bit ``index``; return True if it was clear."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if byte & mask:
            return False
        self._bits[index >> 3] = byte | mask
        self._count += 1
        return True

    def discard(self, index: int) -> bool:
        """Clear bit ``index``; return True if it was set."""
        if not 0 <= index < self.size:
            return False
        mask = 0x80 >> (index & 7)
        byte = self._bits[index >> 3]
        if not byte & mask:
            return False
        self._bits[index >> 3] = byte & ~mask
        self._count -= 1
        return True

    def __len__(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.size

    def __iter__(self) -> Iterator[int]:
        bits = self._bits
        for byte_index, byte in enumerate(bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield base + bit

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        bf = Bitfield(self.size)
        bf._bits[:] = self._bits
        bf._count = self._count
        return bf
