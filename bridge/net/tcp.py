"""TCP peers over asyncio streams."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

#: Bytes asked of the socket per read. Large reads let the wire codec decode many messages per wake-up
#: (batching per read, not per message, is what keeps a Python peer fast).
READ_SIZE = 512 * 1024
#: Send buffer high-water mark: write() waits above this (back-pressure), 4 MiB keeps loopback busy.
WRITE_HIGH_WATER = 4 * 1024 * 1024
#: StreamReader buffer limit.
READER_LIMIT = 4 * 1024 * 1024
#: Kernel socket buffers asked for; loopback rates of hundreds of MB/s need more than the defaults.
SOCKET_BUFFER = 4 * 1024 * 1024


def _tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)


class TcpTransport:
    kind = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.remote_address: tuple[str, int] = (str(peer[0]), int(peer[1]))
        _tune(writer)

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        self._writer.write(data)
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def connect_tcp(host: str, port: int, timeout: float) -> TcpTransport:
    """Dial a peer; raises OSError or TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=READER_LIMIT)
    return TcpTransport(reader, writer)


async def serve_tcp(
    host: str, port: int, on_connection: Callable[[TcpTransport], Awaitable[None]]
) -> asyncio.Server:
    """Listen; each accepted connection is handed to ``on_connection`` in its own task."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await on_connection(TcpTransport(reader, writer))

    return await asyncio.start_server(handle, host, port, limit=READER_LIMIT, reuse_address=True)
