"""Magnet downloads in one process: metadata from bridge seeds, and from scripted lying peers."""

from __future__ import annotations

import asyncio
import os

import pytest
from test_engine import loopback, make_torrent, tree_digest

from bridge.engine.session import Session
from bridge.proto import events as ev
from bridge.proto.extension import (
    METADATA_PIECE_SIZE,
    ExtendedHandshake,
    MetadataMessage,
    decode_handshake,
    decode_metadata,
    encode_handshake,
    encode_metadata,
)
from bridge.proto.wire import Wire, make_reserved


class MetadataLiar:
    """Claims the torrent, advertises ``size`` and answers every metadata request with random bytes."""

    def __init__(self, info_hash: bytes, size: int) -> None:
        self.info_hash = info_hash
        self.size = size
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = Wire()
        writer.write(wire.send(ev.Handshake(self.info_hash, b"-XX0000-liarliarliar", make_reserved(True, False))))
        hs = ExtendedHandshake(m={"ut_metadata": 7}, metadata_size=self.size)
        writer.write(wire.send(ev.Extended(0, encode_handshake(hs))))
        their_id = None
        try:
            while data := await reader.read(65536):
                for e in wire.receive_data(data):
                    if isinstance(e, ev.Extended) and e.ext_id == 0:
                        their_id = decode_handshake(e.payload).m.get("ut_metadata")
                    elif isinstance(e, ev.Extended) and e.ext_id == 7 and their_id:
                        msg = decode_metadata(e.payload)
                        self.requests += 1
                        n = min(METADATA_PIECE_SIZE, max(self.size, 1) - msg.piece * METADATA_PIECE_SIZE)
                        reply = MetadataMessage(1, msg.piece, self.size, os.urandom(max(n, 1)))
                        writer.write(wire.send(ev.Extended(their_id, encode_metadata(reply))))
                await writer.drain()
        except (ConnectionError, Exception):
            pass
        finally:
            writer.close()


async def test_magnet_from_bridge_seed(tmp_path):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 300_000, "d/b.bin": 70_000})
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    try:
        st = await seeder.add_torrent(info, tmp_path / "src", seed=True)
        async with asyncio.timeout(30):
            lt = await leecher.add_magnet(info.info_hash, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)])
            assert lt.info.raw == info.raw
            await lt.completed.wait()
        assert tree_digest(str(tmp_path / "dl")) == tree_digest(str(tmp_path / "src"))
        assert len(st.peers) <= 1  # the metadata connection was reused, not redialled
    finally:
        await leecher.aclose()
        await seeder.aclose()


@pytest.mark.parametrize("liar_size", ["same", 0, 1 << 40, 123])
async def test_lying_metadata_peer_does_not_stop_the_download(tmp_path, liar_size):
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 200_000})
    size = len(info.raw) if liar_size == "same" else liar_size
    liar = MetadataLiar(info.info_hash, size)
    server = await asyncio.start_server(liar.handle, "127.0.0.1", 0)
    liar_port = server.sockets[0].getsockname()[1]
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    try:
        await seeder.add_torrent(info, tmp_path / "src", seed=True)
        async with asyncio.timeout(40):
            lt = await leecher.add_magnet(
                info.info_hash, tmp_path / "dl",
                peers=[("127.0.0.1", liar_port), ("127.0.0.1", seeder.listen_port)],
            )
            await lt.completed.wait()
        assert lt.info.info_hash == info.info_hash
        assert tree_digest(str(tmp_path / "dl")) == tree_digest(str(tmp_path / "src"))
    finally:
        await leecher.aclose()
        await seeder.aclose()
        server.close()


async def test_magnet_whose_metadata_cannot_be_kept_lets_go_of_its_peers(tmp_path):
    """The metadata arrives but the caller cannot save it (a full disk, say): add_magnet raises that error,
    and the connection the metadata came from is closed rather than left open with nothing behind it."""
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 200_000})
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    try:
        st = await seeder.add_torrent(info, tmp_path / "src", seed=True)

        def cannot_save(_info: object) -> None:
            raise OSError(28, "No space left on device")

        async with asyncio.timeout(30):
            with pytest.raises(OSError, match="No space left"):
                await leecher.add_magnet(info.info_hash, tmp_path / "dl", peers=[("127.0.0.1", seeder.listen_port)],
                                         on_metadata=cannot_save)
            while st.peers:  # the seeder sees the leecher's connection end
                await asyncio.sleep(0.05)
        assert info.info_hash not in leecher.torrents
        assert not [t for t in asyncio.all_tasks() if "metadata" in t.get_name()]
    finally:
        await leecher.aclose()
        await seeder.aclose()
