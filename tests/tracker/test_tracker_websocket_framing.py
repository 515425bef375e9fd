"""The embedded tracker's own WebSocket handling (bridge/tracker/server.py over bridge/proto/websocket.py),
seen from clients on loopback: the handshake, ping/pong, the close handshake, fragmented messages, protocol
violations closed with their codes, the heartbeat, and other clients unaffected throughout.

Two independent clients drive it: websockets (Python) and raw sockets written here frame by frame."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from ws_frames import client_frame

from bridge.tracker import TrackerServer, start_tracker
from bridge.tracker import server as tracker_server

pytestmark = pytest.mark.timeout(60)

IH = b"framing-test-swarm-1"


def announce(peer: bytes) -> bytes:
    return json.dumps({"action": "announce", "info_hash": IH.decode("latin-1"), "peer_id": peer.decode("latin-1"),
                       "numwant": 5, "uploaded": 0, "downloaded": 0, "left": 10}).encode()


def masked(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame with a fresh random mask key."""
    return client_frame(opcode, payload, fin=fin, key=os.urandom(4), masked=mask)


class RawClient:
    """A WebSocket client made of a socket and the frames above."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, tracker: TrackerServer) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", tracker.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (never masked, never fragmented by this server)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server frame must not be masked"
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            assert b0 & 0x80
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def closed_by_server(self, timeout: float = 5) -> bool:
        """True when the server closed the TCP connection (after whatever frames it sent)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    def close(self) -> None:
        self.writer.close()


async def bystander_works(tracker: TrackerServer, tag: bytes) -> None:
    """Another client announces and gets its reply: the tracker still serves."""
    async with connect(tracker.ws_url, proxy=None, compression=None, open_timeout=5) as ws:
        await ws.send(announce((b"-BY0001-" + tag + b"0" * 20)[:20]).decode())
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["action"] == "announce" and "interval" in reply


async def test_announce_over_raw_frames_then_clean_close(tracker: TrackerServer) -> None:
    c = await RawClient.open(tracker)
    c.writer.write(masked(0x1, announce(b"-RW0001-aaaaaaaaaaaa")))
    opcode, payload = await c.frame()
    assert opcode == 0x1 and json.loads(payload)["incomplete"] == 1
    c.writer.write(masked(0x8, (1000).to_bytes(2, "big") + b"done"))
    opcode, payload = await c.frame()
    assert opcode == 0x8 and payload[:2] == (1000).to_bytes(2, "big")  # the close is echoed
    assert await c.closed_by_server()
    async with asyncio.timeout(5):
        while tracker.stats()["ws_connections"] or tracker.stats()["peers"]["total"]:
            await asyncio.sleep(0.02)


async def test_ping_gets_pong_with_the_same_payload(tracker: TrackerServer) -> None:
    c = await RawClient.open(tracker)
    c.writer.write(masked(0x9, b"are you there"))
    assert await c.frame() == (0xA, b"are you there")
    c.close()


async def test_fragmented_announce_with_a_ping_in_between(tracker: TrackerServer) -> None:
    c = await RawClient.open(tracker)
    msg = announce(b"-RW0001-bbbbbbbbbbbb")
    c.writer.write(masked(0x1, msg[:10], fin=False) + masked(0x9, b"p") + masked(0x0, msg[10:30], fin=False))
    await asyncio.sleep(0.05)
    c.writer.write(masked(0x0, msg[30:]))
    assert await c.frame() == (0xA, b"p")
    opcode, payload = await c.frame()
    assert opcode == 0x1 and json.loads(payload)["action"] == "announce"
    c.close()


@pytest.mark.parametrize("data, code", [
    (masked(0x1, b"{}", mask=False), 1002),  # clients must mask
    (bytes((0xC1, 0x80, 0, 0, 0, 0)), 1002),  # RSV1 without an extension
    (masked(0x3, b"x"), 1002),  # reserved opcode
    (masked(0x0, b"x"), 1002),  # continuation of nothing
    (masked(0x1, b'{"a":"\xff"}'), 1007),  # not UTF-8
    (bytes((0x81, 0xFF)) + (2**40).to_bytes(8, "big"), 1009),  # a terabyte announced in the header
    (masked(0x8, b"\x03"), 1002),  # a 1-byte close payload
])
async def test_violations_close_with_their_code_and_others_are_served(
        tracker: TrackerServer, data: bytes, code: int) -> None:
    c = await RawClient.open(tracker)
    c.writer.write(data)
    opcode, payload = await c.frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == code, payload
    assert await c.closed_by_server()
    await bystander_works(tracker, b"%d" % code)


async def test_bad_handshakes_get_400_and_a_plain_get_gets_text(tracker: TrackerServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{tracker.port}/") as r:
            assert r.status == 200 and "WebSocket" in await r.text()
        headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "not-sixteen-bytes"}
        async with http.get(f"http://127.0.0.1:{tracker.port}/", headers=headers) as r:
            assert r.status == 400 and "Sec-WebSocket-Key" in await r.text()
        headers.update({"Sec-WebSocket-Key": base64.b64encode(b"k" * 16).decode(), "Sec-WebSocket-Version": "8"})
        async with http.get(f"http://127.0.0.1:{tracker.port}/", headers=headers) as r:
            assert r.status == 400
    await bystander_works(tracker, b"hs")


async def test_silent_connection_is_pinged_then_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends nothing gets a ping after one sweep and is closed (1001) after the next; one
    that answers pings stays."""
    monkeypatch.setattr(tracker_server, "WS_HEARTBEAT", 0.4)
    t = await start_tracker("127.0.0.1", 0, interval=60)
    try:
        silent = await RawClient.open(t)
        silent.writer.write(masked(0x1, announce(b"-RW0001-cccccccccccc")))
        assert (await silent.frame())[0] == 0x1
        async with connect(t.ws_url, proxy=None, compression=None, open_timeout=5, ping_interval=None) as alive:
            # websockets answers pings by itself: this client stays although it sends nothing either.
            assert await silent.frame(timeout=3) == (0x9, b"")
            opcode, payload = await silent.frame(timeout=3)
            assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1001
            assert await silent.closed_by_server()
            async with asyncio.timeout(5):
                while t.stats()["peers"]["total"]:
                    await asyncio.sleep(0.02)  # the silent client's peer left the swarm with its socket
            await asyncio.sleep(1.0)  # more sweeps: the answering client stays
            assert t.stats()["ws_connections"] == 1
            await alive.ping()
    finally:
        await asyncio.wait_for(t.close(), 10)


async def test_tracker_close_sends_going_away(tracker: TrackerServer) -> None:
    c = await RawClient.open(tracker)
    async with connect(tracker.ws_url, proxy=None, compression=None, open_timeout=5) as ws:
        await tracker.close()
        opcode, payload = await c.frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1001
        assert await c.closed_by_server()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_pings_from_a_client_that_never_reads_are_bounded(tracker: TrackerServer) -> None:
    """Pongs count towards the outbox: a client that floods pings and reads nothing stops being read once its
    outbox is full, so the tracker holds a bounded amount for it (outbox plus the transport's high-water
    mark), and others are served."""
    c = await RawClient.open(tracker)
    c.writer.transport.set_write_buffer_limits(high=1 << 30)
    ping = masked(0x9, b"p" * 125)
    for _ in range(200):
        c.writer.write(ping * 1000)  # 26 MB of pings in all, each asking for a 127-byte pong
        await asyncio.sleep(0.005)
    await asyncio.sleep(1.0)
    (conn,) = tracker._conns
    held = conn.transport.get_write_buffer_size() + sum(len(f) for f in conn.frames)
    assert held <= tracker_server.MAX_OUTBOX_BYTES + 2 * tracker_server.WRITE_HIGH_WATER, held
    assert tracker.stats()["ws_queued_bytes"] <= tracker_server.MAX_OUTBOX_BYTES
    await bystander_works(tracker, b"pf")
    c.close()
