"""A PeerTransport after an MSE handshake: RC4 on both directions (via cryptography, in C), or plaintext,
with the bytes that arrived during the handshake handed out first."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

from ..proto.mse import RC4_DROP, MseResult
from .transport import PeerTransport


def _rc4(key: bytes, skip: int) -> Any:
    """A fast RC4 stream positioned ``skip`` bytes past the MSE drop, continuing the handshake's stream."""
    ctx = Cipher(ARC4(key), mode=None).encryptor()
    ctx.update(bytes(RC4_DROP + skip))
    return ctx


class MseTransport:
    """Wraps the transport an MSE handshake ran over."""

    def __init__(self, inner: PeerTransport, result: MseResult) -> None:
        self._inner = inner
        self.kind = inner.kind
        self.remote_address = inner.remote_address
        self._pending = result.payload
        self._enc = _rc4(result.send_key, result.send_used) if result.rc4 else None
        self._dec = _rc4(result.recv_key, result.recv_used) if result.rc4 else None
        self.encrypted = result.rc4

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        data = await self._inner.read()
        if data and self._dec is not None:
            return bytes(self._dec.update(data))
        return data

    async def write(self, data: bytes) -> None:
        if self._enc is not None:
            data = self._enc.update(data)
        await self._inner.write(data)

    def close(self) -> None:
        self._inner.close()

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()
