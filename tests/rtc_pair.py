"""Two aiortc peers joined by bridge.net.rtc on 127.0.0.1: the offerer's and the answerer's transport."""

from __future__ import annotations

import asyncio
import os

from bridge.net import rtc
from bridge.net.rtc import RtcConfig, RtcTransport, answer_offer, create_offer

#: Loopback only: aioice never gathers on 127.0.0.1 unless told to, and no STUN server is contacted.
LOOPBACK = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=10.0)


async def connect(config: RtcConfig, wait: float, answerer: RtcConfig | None = None) -> tuple[RtcTransport, RtcTransport]:
    """(offerer's transport, answerer's transport), within ``wait`` seconds. ``answerer``: the answering
    side's config, if not ``config``."""
    async with asyncio.timeout(wait):
        offer = await create_offer(config)
        answer_sdp, answered = await answer_offer(offer.sdp, answerer or config)
        offerer = await offer.accept_answer(answer_sdp)
        answerer = await answered
    return offerer, answerer


async def read_exactly(t: RtcTransport, n: int, wait: float) -> bytes:
    """``n`` bytes from ``t`` (fewer if the stream ends first), within ``wait`` seconds."""
    got = bytearray()
    async with asyncio.timeout(wait):
        while len(got) < n:
            chunk = await t.read()
            if not chunk:
                break
            got += chunk
    return bytes(got)


async def transfer(a: RtcTransport, b: RtcTransport, size: int, wait: float) -> None:
    """``size`` random bytes written on ``a`` arrive on ``b`` intact, within ``wait`` seconds."""
    data = os.urandom(size)
    async with asyncio.timeout(wait):
        got, _ = await asyncio.gather(read_exactly(b, size, wait), a.write(data))
    assert got == data


async def close(transports: tuple[RtcTransport, ...], wait: float) -> None:
    """Close ``transports`` and wait, within ``wait`` seconds, until they and every peer connection closing
    in the background are closed."""
    for t in transports:
        t.close()
    async with asyncio.timeout(wait):
        for t in transports:
            await t.wait_closed()
        await rtc.wait_closing()
