"""The byte-stream transport every peer runs over: TCP today, uTP and WebRTC data channels later."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
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


class Inbox:
    """The read side every PeerTransport shares: chunks received and not yet read, the end of the stream,
    and the one reader waiting for either."""

    __slots__ = ("chunks", "eof", "_waiter")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        #: no more chunks will come (readers get b"" once ``chunks`` is empty)
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.wake()

    def end(self) -> None:
        self.eof = True
        self.wake()

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, check: Callable[[], None] | None = None) -> bool:
        """Until a chunk is queued (True) or the stream has ended with none queued (False). ``check`` runs
        before each wait and may raise (an error to report instead of waiting)."""
        while not self.chunks:
            if check is not None:
                check()
            if self.eof:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True
