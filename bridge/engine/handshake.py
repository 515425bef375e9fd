"""Opening a peer connection: exchange and check the 68-byte handshakes."""

from __future__ import annotations

import asyncio

from ..errors import RemoteProtocolError
from ..net.transport import PeerTransport
from ..proto import events as ev
from ..proto.wire import Wire


async def read_handshake(transport: PeerTransport, wire: Wire, timeout: float) -> tuple[ev.Handshake, list[ev.Event]]:
    """Read until the peer's handshake arrives; return it and any messages that came with it."""
    async with asyncio.timeout(timeout):
        while True:
            data = await transport.read()
            if not data:
                raise RemoteProtocolError("connection closed during the handshake")
            events = wire.receive_data(data)
            if events:
                first = events[0]
                assert isinstance(first, ev.Handshake)
                return first, events[1:]
