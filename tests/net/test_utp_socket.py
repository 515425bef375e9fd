"""The uTP socket adapter (bridge/net/utp.py) over real UDP on 127.0.0.1: connections as byte streams,
back-pressure, closing, hostile datagrams, and the UDP tracker client sharing the socket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import pytest

from bridge.net.tracker_udp import ConnectionIdCache, announce_udp
from bridge.net.utp import UtpSocket, UtpTransport, open_utp_socket
from bridge.proto.tracker import AnnounceRequest
from bridge.tracker import start_tracker


async def pair() -> tuple[UtpSocket, UtpSocket, list[UtpTransport]]:
    accepted: list[UtpTransport] = []
    ready = asyncio.Event()

    async def on_incoming(t: UtpTransport) -> None:
        accepted.append(t)
        ready.set()
        await t.wait_closed()

    server = await open_utp_socket("127.0.0.1", 0, on_incoming=on_incoming, rng=random.Random(1))
    client = await open_utp_socket("127.0.0.1", 0, accept=False, rng=random.Random(2))
    return server, client, accepted


async def read_exactly(t: UtpTransport, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await t.read()
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def test_a_connection_carries_bytes_both_ways_and_closes() -> None:
    server, client, accepted = await pair()
    try:
        async with asyncio.timeout(30):
            t = await client.connect(server.local_address)
            up = os.urandom(3 * 1024 * 1024 + 11)
            down = os.urandom(700_001)
            writer = asyncio.create_task(t.write(up))
            while not accepted:
                await asyncio.sleep(0.01)
            s = accepted[0]
            assert s.kind == "utp" and s.remote_address == client.local_address
            got_up = asyncio.create_task(read_exactly(s, len(up)))
            await s.write(down)
            assert hashlib.sha256(await read_exactly(t, len(down))).digest() == hashlib.sha256(down).digest()
            await writer
            assert hashlib.sha256(await got_up).digest() == hashlib.sha256(up).digest()
            t.close()
            assert await s.read() == b""  # the FIN reaches the other side
            await s.wait_closed()
    finally:
        client.close()
        server.close()


async def test_connect_to_nobody_times_out_and_garbage_is_dropped() -> None:
    server, client, accepted = await pair()
    silent = await open_utp_socket("127.0.0.1", 0, accept=False)  # never answers SYNs
    try:
        with pytest.raises((TimeoutError, ConnectionError)):
            await client.connect(silent.local_address, timeout=1.0)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           remote_addr=server.local_address)
        rng = random.Random(7)
        for _ in range(500):
            first = rng.choice([0x01, 0x11, 0x21, 0x31, 0x41, 0x00, 0x64, 0xFF])
            transport.sendto(bytes([first]) + rng.randbytes(rng.randrange(0, 60)))
        transport.close()
        await asyncio.sleep(0.2)
        assert server.dropped > 0 and not accepted
        # The socket still works.
        async with asyncio.timeout(10):
            t = await client.connect(server.local_address)
            await t.write(b"still here")
            while not accepted:
                await asyncio.sleep(0.01)
            assert await read_exactly(accepted[0], 10) == b"still here"
    finally:
        client.close()
        server.close()
        silent.close()


async def test_udp_tracker_announces_share_the_utp_socket() -> None:
    tracker = await start_tracker("127.0.0.1", 0)
    sock = await open_utp_socket("127.0.0.1", 0, accept=False)
    try:
        url = tracker.udp_announce_url
        reqs = [AnnounceRequest(bytes([i]) * 20, b"-WB0100-" + bytes([65 + i]) * 12, sock.local_address[1],
                                0, 0, 100, "started", numwant=10, key=i) for i in range(3)]
        cache = ConnectionIdCache()
        async with asyncio.timeout(20):
            replies = await asyncio.gather(*(announce_udp(url, r, timeout=10, cache=cache, endpoint=sock)
                                             for r in reqs))
        assert all(r.interval > 0 for r in replies)
        assert tracker.stats()["announces"]["udp"] == 3
        assert sock._subscribers == {}  # every announce unsubscribed
    finally:
        sock.close()
        await tracker.close()
