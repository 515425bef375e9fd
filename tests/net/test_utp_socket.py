"""The uTP socket adapter (bridge/net/utp.py) over real UDP on 127.0.0.1: connections as byte streams,
back-pressure, closing, hostile datagrams, and the UDP tracker client sharing the socket."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import socket
import sys

import pytest

from bridge.net.tracker_udp import ConnectionIdCache, announce_udp
from bridge.net.utp import UDP_GRO, UtpSocket, UtpTransport, open_utp_socket
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


async def transfer(server: UtpSocket, client: UtpSocket, accepted: list[UtpTransport], size: int) -> bytes:
    data = os.urandom(size)
    async with asyncio.timeout(60):
        t = await client.connect(server.local_address)
        writer = asyncio.create_task(t.write(data))
        while not accepted:
            await asyncio.sleep(0.01)
        got = await read_exactly(accepted[-1], size)
        await writer
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    return got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="UDP GSO/GRO are Linux socket options")
async def test_segmentation_offload_batches_datagrams_on_linux() -> None:
    """On Linux a bulk transfer goes out in GSO batches and comes in as GRO batches: far fewer system
    calls than datagrams, and the same bytes."""
    server, client, accepted = await pair()
    calls = {"sendmsg": 0, "sendto": 0}
    sock = client._sock
    assert sock is not None
    try:
        assert server.gso and server.gro, "this Linux kernel refused UDP_GRO (needs 5.0+)"

        class Counting:
            """Counts the client socket's send calls (socket objects' methods cannot be patched)."""

            def __getattr__(self, name):
                return getattr(sock, name)

            def sendmsg(self, *a):
                calls["sendmsg"] += 1
                return sock.sendmsg(*a)

            def sendto(self, *a):
                calls["sendto"] += 1
                return sock.sendto(*a)

        client._sock = Counting()  # type: ignore[assignment]
        await transfer(server, client, accepted, 8 * 1024 * 1024)
        conn = accepted[0].conn
        assert client.gso, "the kernel refused UDP_SEGMENT on loopback"
        # 8 MiB is about 6,100 datagrams; batches of up to 46 make it a few hundred calls
        assert conn.packets_received > 6000
        assert calls["sendmsg"] > 0 and calls["sendmsg"] + calls["sendto"] < conn.packets_received / 4
    finally:
        client._sock = sock
        client.close()
        server.close()


async def test_without_offload_and_through_a_full_send_buffer() -> None:
    """Where the kernel has no GSO/GRO (or refuses them), one datagram per call; when the send buffer is
    full (EAGAIN) datagrams wait in a bounded backlog and go out when the socket is writable."""
    server, client, accepted = await pair()
    sock = client._sock
    assert sock is not None
    try:
        for s in (server, client):
            s.gso = False
            if s.gro and s._sock is not None:
                s._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 0)
                s.gro = False
        state = {"eagain": 0}

        class Stalling:
            """Every 50th send finds the kernel buffer full."""

            def __getattr__(self, name):
                return getattr(sock, name)

            def sendto(self, data, addr):
                state["eagain"] += 1
                if state["eagain"] % 50 == 0:
                    raise BlockingIOError(errno.EAGAIN, "full")
                return sock.sendto(data, addr)

        client._sock = Stalling()  # type: ignore[assignment]
        await transfer(server, client, accepted, 2 * 1024 * 1024)
        assert state["eagain"] > 1000 and not client._backlog and client._backlog_bytes == 0
        assert client.send_dropped == 0
    finally:
        client._sock = sock
        client.close()
        server.close()


async def test_a_refused_segmentation_offload_falls_back_to_single_datagrams() -> None:
    server, client, accepted = await pair()
    sock = client._sock
    assert sock is not None
    try:
        client.gso = True

        class NoGso:
            def __getattr__(self, name):
                return getattr(sock, name)

            def sendmsg(self, *a):
                raise OSError(errno.EIO, "no checksum offload on this device")

        client._sock = NoGso()  # type: ignore[assignment]
        await transfer(server, client, accepted, 1024 * 1024)
        assert not client.gso and client.send_dropped == 0
    finally:
        client._sock = sock
        client.close()
        server.close()
