"""TCP peers over an asyncio Protocol (not streams).

Streams copy every byte through a StreamReader buffer whose front is deleted on each read; when a fast
sender fills that buffer, every read moves megabytes. Here received chunks are queued as they arrive and
handed over joined, once, and reading is paused when too much waits (flow control).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from .transport import Inbox

#: Bytes queued from the socket before we stop reading from it (flow control towards the sender).
READ_QUEUE_LIMIT = 4 * 1024 * 1024
#: Send buffer high-water mark: write() waits above this (back-pressure); 4 MiB keeps loopback busy.
WRITE_HIGH_WATER = 4 * 1024 * 1024
#: Kernel socket buffers asked for; loopback rates of hundreds of MB/s need more than the defaults.
SOCKET_BUFFER = 4 * 1024 * 1024


class TcpTransport(asyncio.Protocol):
    """A PeerTransport over one TCP connection."""

    kind = "tcp"

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._inbox = Inbox()
        self._queued = 0
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.remote_address: tuple[str, int] = ("?", 0)

    # ------------------------------------------------------------------------- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.remote_address = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    pass
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._queued += len(data)
        if self._queued > READ_QUEUE_LIMIT and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._inbox.put(data)

    def eof_received(self) -> bool:
        self._inbox.end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.end()
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("connection lost"))
                w.exception()
        self._drain_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # ------------------------------------------------------------------------------ PeerTransport
    async def read(self) -> bytes:
        """The oldest received chunk (not a join of all: each chunk is decoded without copying)."""
        if not await self._inbox.wait():
            return b""
        data = self._inbox.chunks.popleft()
        self._queued -= len(data)
        if self._read_paused and self._queued <= READ_QUEUE_LIMIT // 2 and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing():
            raise ConnectionResetError("connection closed")
        t.write(data)
        if self._write_paused:
            w = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(w)
            await w

    def close(self) -> None:
        t = self._transport
        if t is not None:
            if t.get_write_buffer_size():
                # Nothing we still had to say matters, and asyncio would keep the socket (and the buffer)
                # until a peer that does not read took it all: never, for a hostile one.
                t.abort()
            else:
                t.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def connect_tcp(host: str, port: int, timeout: float) -> TcpTransport:
    """Dial a peer; raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, protocol = await loop.create_connection(TcpTransport, host, port)
    return protocol


async def serve_tcp(host: str, port: int, on_connection: Callable[[TcpTransport], Coroutine[Any, Any, None]]) -> asyncio.Server:
    """Listen; each accepted connection is handed to ``on_connection`` in its own task."""
    loop = asyncio.get_running_loop()

    def factory() -> TcpTransport:
        protocol = TcpTransport()
        loop.call_soon(lambda: loop.create_task(on_connection(protocol)))
        return protocol

    return await loop.create_server(factory, host, port, reuse_address=True)
