"""The byte-stream transport every peer runs over: TCP today, uTP and WebRTC data channels later."""

from __future__ import annotations

from typing import Protocol


class PeerTransport(Protocol):
    """A reliable, ordered byte stream to one peer. Message boundaries mean nothing."""

    #: "tcp", "utp" or "webrtc"
    kind: str
    #: (host, port) of the remote end, for logs and bans
    remote_address: tuple[str, int]

    async def read(self) -> bytes:
        """The next bytes received; b"" at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Queue ``data`` and wait while the send buffer is over its high-water mark (back-pressure)."""
        ...

    def close(self) -> None:
        """Close now; pending reads return b""."""
        ...

    async def wait_closed(self) -> None:
        ...
