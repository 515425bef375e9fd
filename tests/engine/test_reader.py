"""Streaming reads (engine/reader.py): deadlines drive the download, reads wait for verified pieces."""

from __future__ import annotations

import asyncio
import os

import pytest
from test_engine import PIECE, loopback, make_torrent

from bridge.engine.reader import MAX_WINDOW_PIECES, ReaderClosed, ReadTimeout, TorrentReader
from bridge.engine.session import Session
from bridge.engine.torrent import MAX_PEER_DEMAND


def payload_of(root: str) -> bytes:
    with open(os.path.join(root, "t", "a.bin"), "rb") as f:
        return f.read()


async def idle_leecher(tmp_path, pieces: int):
    """A leecher connected to a peer that has every piece but the last, and that wants only the last
    one (every other priority is 0): nothing moves until a reader asks. (Wanting nothing at all would
    make it a BEP 21 upload-only peer, which a seed disconnects.)"""
    info = make_torrent(str(tmp_path / "src"), {"a.bin": pieces * PIECE - 123})
    os.makedirs(tmp_path / "partial" / "t")
    with open(tmp_path / "partial" / "t" / "a.bin", "wb") as f:
        f.write(payload_of(str(tmp_path / "src"))[:(pieces - 1) * PIECE])
    seeder, leecher = Session(loopback()), Session(loopback())
    await seeder.start()
    await leecher.start()
    st = await seeder.add_torrent(info, tmp_path / "partial", seed=True)
    assert len(st.picker.have) == pieces - 1
    lt = await leecher.add_torrent(info, tmp_path / "dl")
    for i in range(info.num_pieces - 1):
        lt.picker.set_priority(i, 0)
    lt.add_peers([("127.0.0.1", seeder.listen_port)], sticky=True)
    async with asyncio.timeout(10):
        while not lt.peers:
            await asyncio.sleep(0.02)
    return info, seeder, leecher, lt


async def test_a_read_fetches_only_the_pieces_under_it_and_its_window(tmp_path) -> None:
    info, seeder, leecher, lt = await idle_leecher(tmp_path, 40)
    data = payload_of(str(tmp_path / "src"))
    try:
        await asyncio.sleep(0.3)
        assert len(lt.picker.have) == 0  # nothing wanted, nothing fetched
        reader = TorrentReader(lt, readahead=3 * PIECE)
        offset = 20 * PIECE + 100
        async with asyncio.timeout(20):
            got = await reader.read(offset, 2 * PIECE)
        assert got == data[offset:offset + 2 * PIECE]
        reader.close()
        await asyncio.sleep(0.3)
        have = set(lt.picker.have)
        # Pieces 20-22 were read; the window reached at most a few pieces beyond; nothing before it.
        assert {20, 21, 22} <= have
        assert min(have) == 20 and max(have) <= 20 + 2 + 3 + 1, have
        assert lt.picker.deadlines == {}
    finally:
        await leecher.aclose()
        await seeder.aclose()


async def test_stream_follows_the_position_and_a_seek_jumps_ahead(tmp_path) -> None:
    info, seeder, leecher, lt = await idle_leecher(tmp_path, 30)
    data = payload_of(str(tmp_path / "src"))
    try:
        async with TorrentReader(lt, readahead=2 * PIECE) as reader:
            chunks = []
            async with asyncio.timeout(20):
                async for chunk in reader.stream(0, 5 * PIECE):
                    chunks.append(bytes(chunk))
            assert b"".join(chunks) == data[:5 * PIECE]
            assert all(len(c) <= PIECE for c in chunks)
            # Seek near the end: the next-to-last piece comes through too.
            end = len(data) - PIECE
            async with asyncio.timeout(20):
                tail = await reader.read(end - 1000, 1000)
            assert tail == data[end - 1000:end]
        assert lt.picker.deadlines == {}
    finally:
        await leecher.aclose()
        await seeder.aclose()


async def test_two_readers_merge_their_windows_and_closing_one_keeps_the_other(tmp_path) -> None:
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 200 * PIECE})
    session = Session(loopback())
    await session.start()
    try:
        t = await session.add_torrent(info, tmp_path / "dl")  # no peers: nothing arrives
        a = TorrentReader(t, readahead=4 * PIECE)
        b = TorrentReader(t, readahead=4 * PIECE)
        a.focus(10 * PIECE)
        b.focus(100 * PIECE)
        assert set(t.picker.deadlines) == set(range(10, 14)) | set(range(100, 104))
        # Earliest deadline first: each reader's next piece before either one's read-ahead, a's first.
        assert t.picker.urgent()[:2] == [10, 100]
        a.close()
        assert set(t.picker.deadlines) == set(range(100, 104))
        b.focus(0, 1000 * PIECE)  # a huge range is capped
        assert len(t.picker.deadlines) == MAX_WINDOW_PIECES
        b.close()
        assert t.picker.deadlines == {}
    finally:
        await session.aclose()


async def test_read_timeout_and_closed_torrent(tmp_path) -> None:
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 8 * PIECE})
    session = Session(loopback())
    await session.start()
    t = await session.add_torrent(info, tmp_path / "dl")
    reader = TorrentReader(t)
    with pytest.raises(ReadTimeout):
        await reader.read(0, 10, timeout=0.2)
    with pytest.raises(ValueError):
        await reader.read(8 * PIECE - 5, 10)
    waiting = asyncio.create_task(reader.read(PIECE, 10, timeout=30))
    await asyncio.sleep(0.1)
    await session.aclose()
    with pytest.raises(ReaderClosed):
        async with asyncio.timeout(5):
            await waiting


async def test_peer_demand_is_bounded_and_expires(tmp_path) -> None:
    info = make_torrent(str(tmp_path / "src"), {"a.bin": 100 * PIECE})
    session = Session(loopback())
    await session.start()
    try:
        t = await session.add_torrent(info, tmp_path / "dl")
        for i in range(100):
            t.on_demand(None, i)  # type: ignore[arg-type]
        assert len(t.picker.deadlines) == MAX_PEER_DEMAND
        t.on_demand(None, 10_000)  # type: ignore[arg-type]  # out of range: ignored
        assert 10_000 not in t.picker.deadlines
        import time
        t._refresh_demand(time.monotonic() + 3600)
        assert t.picker.deadlines == {}
    finally:
        await session.aclose()
