"""The engine end to end in one process: sessions on loopback, plus scripted misbehaving peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import pytest

from bridge.config import PeerConfig, SessionConfig
from bridge.engine.session import Session
from bridge.proto import events as ev
from bridge.proto.metainfo import InfoDict, build_info
from bridge.proto.wire import Wire, make_reserved

PIECE = 32 * 1024


def make_torrent(root: str, sizes: dict[str, int], seed: int = 1) -> InfoDict:
    rng = random.Random(seed)
    blob = b""
    files = []
    for rel, size in sizes.items():
        data = rng.randbytes(size)
        path = os.path.join(root, "t", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        blob += data
        files.append((rel.split("/"), size))
    pieces = b"".join(hashlib.sha1(blob[i : i + PIECE]).digest() for i in range(0, len(blob), PIECE))
    return build_info("t", files, PIECE, pieces)


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            p = os.path.join(dirpath, fn)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def loopback(**peer: object) -> SessionConfig:
    return SessionConfig(host="127.0.0.1", port=0, peer=PeerConfig(**peer))  # type: ignore[arg-type]


SIZES = {"a.bin": 700_001, "sub/b.bin": 65_536, "sub/deeper/c.bin": 1_234_567, "empty.txt": 0}


async def test_seed_to_leech_multifile(tmp_path):
    info = make_torrent(str(tmp_path / "src"), SIZES)
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    try:
        st = await seeder.add_torrent(info, tmp_path / "src", seed=True)
        assert st.is_complete
        lt = await leecher.add_torrent(info, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)])
        assert lt.left + lt.verified_bytes == info.total_length and st.left == 0
        async with asyncio.timeout(30):
            await lt.completed.wait()
        assert lt.left == 0 and lt.verified_bytes == info.total_length
        assert tree_digest(str(tmp_path / "dl")) == tree_digest(str(tmp_path / "src"))
        assert lt.downloaded >= info.total_length
        assert st.uploaded >= info.total_length
    finally:
        await leecher.aclose()
        await seeder.aclose()


async def test_resume_fetches_only_missing_pieces(tmp_path):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 20 * PIECE + 5})
    # Pre-populate the download with the first half of the data and a corrupt piece 3.
    os.makedirs(tmp_path / "dl" / "t")
    with open(tmp_path / "src" / "t" / "a.bin", "rb") as f:
        data = bytearray(f.read())
    partial = data[: 10 * PIECE]
    partial[3 * PIECE] ^= 0xFF
    with open(tmp_path / "dl" / "t" / "a.bin", "wb") as f:
        f.write(partial)
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    try:
        await seeder.add_torrent(info, tmp_path / "src", seed=True)
        lt = await leecher.add_torrent(info, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)])
        assert len(lt.picker.have) == 9  # pieces 0-9 minus the corrupt one
        async with asyncio.timeout(30):
            await lt.completed.wait()
        assert lt.downloaded == info.total_length - 9 * PIECE
        with open(tmp_path / "dl" / "t" / "a.bin", "rb") as f:
            assert f.read() == bytes(data)
    finally:
        await leecher.aclose()
        await seeder.aclose()


class ScriptedSeed:
    """A peer written against the wire codec that claims every piece and serves garbage."""

    def __init__(self, info: InfoDict) -> None:
        self.info = info
        self.connections = 0
        self.blocks_sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        wire = Wire()
        writer.write(wire.send(ev.Handshake(self.info.info_hash, b"-XX0000-" + os.urandom(6).hex().encode()[:12],
                                            make_reserved(False, False))))
        n = self.info.num_pieces
        bits = bytearray((n + 7) // 8)
        for i in range(n):
            bits[i >> 3] |= 0x80 >> (i & 7)
        writer.write(wire.send(ev.Bitfield(bytes(bits))) + wire.send(ev.Unchoke()))
        try:
            while data := await reader.read(65536):
                for e in wire.receive_data(data):
                    if isinstance(e, ev.Request):
                        writer.write(wire.send(ev.Piece(e.index, e.begin, b"\xAA" * e.length)))
                        self.blocks_sent += 1
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_corrupt_peer_is_banned_and_nothing_written(tmp_path):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 8 * PIECE})
    bad = ScriptedSeed(info)
    server = await asyncio.start_server(bad.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    leecher = Session(loopback())
    await leecher.start()
    try:
        lt = await leecher.add_torrent(info, tmp_path / "dl", peers=[("127.0.0.1", port)])
        async with asyncio.timeout(20):
            while "127.0.0.1" not in lt.banned:
                await asyncio.sleep(0.05)
        assert lt.hash_failures["127.0.0.1"] >= 2
        assert len(lt.picker.have) == 0
        await asyncio.sleep(0.3)
        assert not lt.peers  # the banned peer was closed
        # Only verified data is ever written: no file with garbage exists.
        path = tmp_path / "dl" / "t" / "a.bin"
        assert not path.exists() or b"\xAA" * PIECE not in path.read_bytes()
    finally:
        await leecher.aclose()
        server.close()


@pytest.mark.parametrize("flood", [5000])
async def test_request_flood_drops_peer(tmp_path, flood):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 4 * PIECE})
    seeder = Session(loopback())
    await seeder.start()
    try:
        st = await seeder.add_torrent(info, tmp_path / "src", seed=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", seeder.listen_port)
        wire = Wire()
        writer.write(wire.send(ev.Handshake(info.info_hash, b"-XX0000-abcdefabcdef", make_reserved(False, False))))
        writer.write(wire.send(ev.Interested()))
        # Wait for the unchoke, then flood requests far beyond our queue limit without reading.
        async with asyncio.timeout(10):
            got: list[ev.Event] = []
            while not any(isinstance(e, ev.Unchoke) for e in got):
                got += wire.receive_data(await reader.read(65536))
        req = wire.send(ev.Request(0, 0, 16384))
        writer.write(req * flood)
        await writer.drain()
        async with asyncio.timeout(10):
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
        assert not st.peers
    finally:
        await seeder.aclose()


@pytest.mark.parametrize("leech_enc", ["require", "prefer"])
async def test_encrypted_transfer_between_bridges(tmp_path, leech_enc):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 400_000})
    seeder, leecher = Session(loopback(encryption="require")), Session(loopback(encryption=leech_enc))
    await seeder.start()
    await leecher.start()
    try:
        await seeder.add_torrent(info, tmp_path / "src", seed=True)
        lt = await leecher.add_torrent(info, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)])
        async with asyncio.timeout(30):
            await lt.completed.wait()
        assert tree_digest(str(tmp_path / "dl")) == tree_digest(str(tmp_path / "src"))
    finally:
        await leecher.aclose()
        await seeder.aclose()


async def test_upload_and_download_limits_pace_a_transfer(tmp_path):
    """A 2 MiB transfer with a 1 MB/s upload limit at the seed (then a download limit at the leecher)
    cannot finish in under about (2 MiB - burst) / 1 MB/s."""
    import time

    from bridge.swarm.ratelimit import TokenBucket

    info = make_torrent(str(tmp_path / "src"), {"a.bin": 2 * 1024 * 1024})
    for side in ("upload", "download"):
        seeder, leecher = Session(loopback()), Session(loopback())
        await seeder.start()
        await leecher.start()
        try:
            if side == "upload":
                seeder.upload_limit = TokenBucket(1_000_000, time.monotonic())
            else:
                leecher.download_limit = TokenBucket(1_000_000, time.monotonic())
            await seeder.add_torrent(info, tmp_path / "src", seed=True)
            started = time.monotonic()
            lt = await leecher.add_torrent(info, tmp_path / f"dl-{side}",
                                           peers=[("127.0.0.1", seeder.listen_port)])
            async with asyncio.timeout(30):
                await lt.completed.wait()
            took = time.monotonic() - started
            assert took >= 1.2, f"{side} limit not applied: 2 MiB in {took:.2f} s"
        finally:
            await leecher.aclose()
            await seeder.aclose()


async def test_one_peer_over_tcp_and_utp_at_once_keeps_one_connection(tmp_path):
    """The same peer reached twice, over TCP and over uTP: detected by peer id, one connection dropped."""
    import time

    from bridge.engine.handshake import dial
    from bridge.swarm.ratelimit import TokenBucket

    info = make_torrent(str(tmp_path / "src"), {"a.bin": 64 * PIECE})
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    seeder.upload_limit = TokenBucket(1_000_000, time.monotonic())  # keep the first connection busy ~2 s
    try:
        st = await seeder.add_torrent(info, tmp_path / "src", seed=True)
        lt = await leecher.add_torrent(info, tmp_path / "dl")
        host, port = "127.0.0.1", seeder.listen_port
        assert leecher.utp is not None
        utp = leecher.utp

        async def open_utp(h: str, p: int, timeout: float):
            return await utp.connect((h, p), timeout)

        async with asyncio.timeout(15):
            over_tcp = await dial(host, port, lt.our_handshake(), lt.config)
            over_utp = await dial(host, port, lt.our_handshake(), lt.config, open_utp)
            assert over_tcp.transport.kind == "tcp" and over_utp.transport.kind == "utp"
            first = asyncio.create_task(lt.run_peer(over_tcp.transport, over_tcp.wire, over_tcp.handshake,
                                                    over_tcp.pending, address=(host, port)))
            while not lt.peers:
                await asyncio.sleep(0.01)
            await lt.run_peer(over_utp.transport, over_utp.wire, over_utp.handshake, over_utp.pending,
                              address=(host, port))  # refused at once: same peer id
            assert [p.kind for p in lt.peers] == ["tcp"]
            await lt.completed.wait()
            while len(st.peers) > 1:  # the seeder sees the uTP one close
                await asyncio.sleep(0.01)
        first.cancel()
    finally:
        await leecher.aclose()
        await seeder.aclose()


async def test_tracker_retry_max_reaches_the_announcer_and_the_websocket_trackers(tmp_path):
    """SessionConfig.tracker_retry_max caps the HTTP/UDP announcer's backoff and the WebSocket trackers'
    reconnect delay. The tracker is a closed port on 127.0.0.1: nothing leaves the machine."""
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 40_000})
    session = Session(SessionConfig(host="127.0.0.1", port=0, tracker_retry_max=45.0, webrtc_hosts=("127.0.0.1",)))
    await session.start()
    try:
        assert session.ws_pool is not None and session.ws_pool.options.backoff_cap == 45.0
        t = await session.add_torrent(info, tmp_path / "src", seed=True, trackers=[["http://127.0.0.1:9/announce"]])
        assert t._announcer is not None and t._announcer._backoff_max == 45.0
    finally:
        await session.aclose()
