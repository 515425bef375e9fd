"""File storage: verify-then-write across file boundaries, recheck, cached reads, padding files, path safety."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import storage as storage_mod
from bridge.errors import MetainfoError, StorageError
from bridge.proto import bencode
from bridge.proto.metainfo import FileEntry, InfoDict, build_info, parse_info
from bridge.proto.wire import BLOCK_SIZE
from bridge.storage import FileStorage

PL = 2 * BLOCK_SIZE  # two blocks per piece
RNG = random.Random(1234)
# Sizes chosen so that files start and end inside pieces, one file spans several pieces and one is empty.
FILES: list[tuple[tuple[str, ...], bytes]] = [
    (("a.bin",), RNG.randbytes(10_000)),
    (("sub", "b.bin"), RNG.randbytes(3 * PL + 123)),
    (("sub", "empty"), b""),
    (("sub", "deep", "c.bin"), RNG.randbytes(5)),
    (("d.bin",), RNG.randbytes(PL - 7)),
]
DATA = b"".join(d for _, d in FILES)


def piece_hashes(data: bytes, pl: int) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + pl]).digest() for i in range(0, len(data), pl))


def make_info(
    files: list[tuple[tuple[str, ...], bytes]] = FILES, pl: int = PL, name: str = "tor"
) -> InfoDict:
    data = b"".join(d for _, d in files)
    return build_info(name, [(p, len(d)) for p, d in files], pl, piece_hashes(data, pl))


def blocks_of(data: bytes, index: int, pl: int = PL) -> list[bytes]:
    piece = data[index * pl : (index + 1) * pl]
    return [piece[i : i + BLOCK_SIZE] for i in range(0, len(piece), BLOCK_SIZE)]


def on_disk(
    root: Path, files: list[tuple[tuple[str, ...], bytes]] = FILES, name: str = "tor"
) -> list[bytes | None]:
    out: list[bytes | None] = []
    for parts, _ in files:
        p = root.joinpath(name, *parts)
        out.append(p.read_bytes() if p.exists() else None)
    return out


@pytest.fixture
def info() -> InfoDict:
    return make_info()


@pytest.fixture
def store(tmp_path: Path, info: InfoDict) -> Iterator[FileStorage]:
    s = FileStorage(info, tmp_path)
    yield s
    s.close()


async def write_all(s: FileStorage, data: bytes = DATA) -> None:
    for i in range(s.info.num_pieces):
        assert await s.verify_and_write(i, blocks_of(data, i, s.info.piece_length))


# ---------------------------------------------------------------------------------------- write/verify


async def test_write_every_piece_across_file_boundaries(
    store: FileStorage, tmp_path: Path, info: InfoDict
) -> None:
    assert info.num_pieces == (len(DATA) + PL - 1) // PL
    # out of order, as a swarm delivers them
    order = list(range(info.num_pieces))
    random.Random(3).shuffle(order)
    for i in order:
        assert await store.verify_and_write(i, blocks_of(DATA, i))
    got = on_disk(tmp_path)
    assert got[:2] == [FILES[0][1], FILES[1][1]]
    assert got[3:] == [FILES[3][1], FILES[4][1]]
    # the empty file is only made by ensure_files
    assert got[2] is None
    store.ensure_files()
    assert on_disk(tmp_path) == [d for _, d in FILES]


async def test_memoryview_and_bytearray_blocks(store: FileStorage, tmp_path: Path) -> None:
    for i in range(store.info.num_pieces):
        blocks = blocks_of(DATA, i)
        mixed = [memoryview(b) if k % 2 else bytearray(b) for k, b in enumerate(blocks)]
        assert await store.verify_and_write(i, mixed)
    store.ensure_files()
    assert on_disk(tmp_path) == [d for _, d in FILES]


async def test_wrong_data_is_not_written(store: FileStorage, tmp_path: Path) -> None:
    bad = bytearray(DATA)
    bad[PL + 5] ^= 1  # piece 1
    assert not await store.verify_and_write(1, blocks_of(bytes(bad), 1))
    assert not (tmp_path / "tor" / "a.bin").exists()
    assert not (tmp_path / "tor" / "sub").exists()
    # a missing block, a short piece and another piece's data are refused too
    assert not await store.verify_and_write(1, [blocks_of(DATA, 1)[0], None])
    assert not await store.verify_and_write(1, blocks_of(DATA, 1)[:1])
    assert not await store.verify_and_write(2, blocks_of(DATA, 1))
    assert not (tmp_path / "tor").exists() or not any((tmp_path / "tor").rglob("*.bin"))
    # good data for the same piece goes through, bad data afterwards leaves it alone
    assert await store.verify_and_write(1, blocks_of(DATA, 1))
    before = on_disk(tmp_path)
    assert not await store.verify_and_write(1, blocks_of(bytes(bad), 1))
    assert on_disk(tmp_path) == before


# ------------------------------------------------------------------------------------------- recheck


async def test_recheck_empty_dir_finds_nothing(store: FileStorage) -> None:
    calls: list[tuple[int, int]] = []
    have = await store.recheck(lambda d, t: calls.append((d, t)))
    assert len(have) == 0
    assert calls[0] == (0, 0) and calls[-1] == (0, 0)


async def test_recheck_after_complete_write(store: FileStorage, tmp_path: Path, info: InfoDict) -> None:
    await write_all(store)
    store.ensure_files()
    fresh = FileStorage(info, tmp_path)
    try:
        calls: list[tuple[int, int]] = []
        have = await fresh.recheck(lambda d, t: calls.append((d, t)))
        assert have.complete
        assert calls[-1] == (len(DATA), len(DATA))
        assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    finally:
        fresh.close()


async def test_recheck_finds_exactly_the_good_pieces(
    store: FileStorage, tmp_path: Path, info: InfoDict
) -> None:
    n = info.num_pieces
    written = [i for i in range(n) if i % 2 == 0] + [1]
    for i in written:
        assert await store.verify_and_write(i, blocks_of(DATA, i))
    store.close()
    # corrupt one byte of piece 2 on disk
    root = tmp_path / "tor"
    offset = 2 * PL + 1
    fi, in_file, _ = next(info.file_slices(offset, 1))
    path = root.joinpath(*FILES[fi][0])
    raw = bytearray(path.read_bytes())
    raw[in_file] ^= 0xFF
    path.write_bytes(bytes(raw))

    s = FileStorage(info, tmp_path)
    try:
        have = await s.recheck()
        expected = set(written) - {2}
        assert set(have) == expected
        # now remove the file that holds the last piece: every piece touching it is gone
        last_file = max(fi for fi, _, _ in info.file_slices((n - 1) * PL, info.piece_size(n - 1)))
        s.close()
        root.joinpath(*FILES[last_file][0]).unlink()
        s2 = FileStorage(info, tmp_path)
        try:
            have2 = await s2.recheck()
            touching = {
                i
                for i in range(n)
                if any(fj == last_file for fj, _, _ in info.file_slices(i * PL, info.piece_size(i)))
            }
            assert set(have2) == expected - touching
        finally:
            s2.close()
    finally:
        s.close()


async def test_recheck_truncated_file(store: FileStorage, tmp_path: Path, info: InfoDict) -> None:
    await write_all(store)
    store.close()
    b = tmp_path / "tor" / "sub" / "b.bin"
    b.write_bytes(b.read_bytes()[:100])
    s = FileStorage(info, tmp_path)
    try:
        have = await s.recheck()
        bad = {
            i
            for i in range(info.num_pieces)
            if any(fi == 1 and foff + n > 100 for fi, foff, n in info.file_slices(i * PL, info.piece_size(i)))
        }
        assert bad and set(have) == set(range(info.num_pieces)) - bad
    finally:
        s.close()


async def test_recheck_in_several_batches(
    tmp_path: Path, info: InfoDict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_mod, "RECHECK_BATCH_BYTES", PL)  # one piece per batch
    s = FileStorage(info, tmp_path)
    try:
        await write_all(s)
        calls: list[tuple[int, int]] = []
        have = await s.recheck(lambda d, t: calls.append((d, t)))
        assert have.complete
        assert len(calls) >= 3  # start, then at least every other batch (two are in flight)
        assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
        assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ reading


async def test_read_block_through_cache(store: FileStorage, info: InfoDict) -> None:
    await write_all(store)
    for i in range(info.num_pieces):
        size = info.piece_size(i)
        for begin in range(0, size, BLOCK_SIZE):
            n = min(BLOCK_SIZE, size - begin)
            assert await store.read_block(i, begin, n) == DATA[i * PL + begin : i * PL + begin + n]
    assert set(store._cache) == set(range(info.num_pieces))
    # served from the cache: changing the file underneath does not change the answer
    path = Path(store.paths[0])
    path.write_bytes(b"\x00" * len(FILES[0][1]))
    assert await store.read_block(0, 0, 100) == DATA[:100]
    with pytest.raises(StorageError):
        await store.read_block(0, PL - 10, 11)


async def test_concurrent_reads_of_one_piece_load_it_once(
    store: FileStorage, info: InfoDict, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_all(store)
    loads = 0
    real = store._read_sync

    def counting(*args: object, **kw: object) -> bytes | None:
        nonlocal loads
        loads += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_read_sync", counting)
    got = await asyncio.gather(*(store.read_block(1, k * 100, 100) for k in range(8)))
    assert got == [DATA[PL + k * 100 : PL + k * 100 + 100] for k in range(8)]
    assert loads == 1


async def test_cache_is_bounded(store: FileStorage, info: InfoDict, monkeypatch: pytest.MonkeyPatch) -> None:
    await write_all(store)
    monkeypatch.setattr(storage_mod, "READ_CACHE_BYTES", 2 * PL)
    for i in range(info.num_pieces):
        await store.read_block(i, 0, 1)
        assert store._cache_bytes <= 2 * PL
    assert list(store._cache) == [info.num_pieces - 2, info.num_pieces - 1]


async def test_read_of_missing_data_is_a_storage_error(store: FileStorage) -> None:
    with pytest.raises(StorageError):
        await store.read_block(0, 0, 10)
    # and a later read after the data arrives works (the failure is not cached)
    await write_all(store)
    assert await store.read_block(0, 0, 10) == DATA[:10]


# --------------------------------------------------------------------------------------------- padding


def padded_info() -> tuple[InfoDict, bytes, list[bytes]]:
    """a.bin (5000 bytes), a BEP 47 pad up to the piece boundary, b.bin (PL + 10 bytes)."""
    a = RNG.randbytes(5000)
    b = RNG.randbytes(PL + 10)
    pad = PL - len(a)
    data = a + bytes(pad) + b
    d = {
        b"name": b"p",
        b"piece length": PL,
        b"pieces": piece_hashes(data, PL),
        b"files": [
            {b"length": len(a), b"path": [b"a.bin"]},
            {b"length": pad, b"path": [b".pad", str(pad).encode()], b"attr": b"p"},
            {b"length": len(b), b"path": [b"b.bin"]},
        ],
    }
    info = parse_info(bencode.encode(d))
    assert [f.padding for f in info.files] == [False, True, False]
    return info, data, [a, b]


async def test_padding_files_are_not_created(tmp_path: Path) -> None:
    info, data, (a, b) = padded_info()
    s = FileStorage(info, tmp_path)
    try:
        for i in range(info.num_pieces):
            assert await s.verify_and_write(i, blocks_of(data, i))
        s.ensure_files()
        assert (tmp_path / "p" / "a.bin").read_bytes() == a
        assert (tmp_path / "p" / "b.bin").read_bytes() == b
        assert not (tmp_path / "p" / ".pad").exists()
        # the padding reads as zeros and the pieces verify on a recheck
        assert await s.read_block(0, 0, PL) == data[:PL]
        assert await s.read_block(0, 5000, PL - 5000) == bytes(PL - 5000)
        assert (await s.recheck()).complete
    finally:
        s.close()


# --------------------------------------------------------------------------------------------- ensure


async def test_ensure_files_creates_empty_files_and_sets_lengths(
    store: FileStorage, tmp_path: Path, info: InfoDict
) -> None:
    store.ensure_files()
    for (parts, d), f in zip(FILES, info.files, strict=True):
        p = tmp_path.joinpath("tor", *parts)
        assert p.is_file() and p.stat().st_size == len(d) == f.length
    # idempotent, and it shortens an over-long file
    long = tmp_path / "tor" / "a.bin"
    long.write_bytes(b"x" * 20_000)
    store.close()
    s = FileStorage(info, tmp_path)
    try:
        s.ensure_files()
        assert long.stat().st_size == len(FILES[0][1])
    finally:
        s.close()


async def test_single_file_torrent(tmp_path: Path) -> None:
    data = RNG.randbytes(3 * PL + 1)
    info = build_info("one.bin", len(data), PL, piece_hashes(data, PL))
    s = FileStorage(info, tmp_path)
    try:
        for i in range(info.num_pieces):
            assert await s.verify_and_write(i, blocks_of(data, i))
        assert (tmp_path / "one.bin").read_bytes() == data
        assert (await s.recheck()).complete
    finally:
        s.close()


# ----------------------------------------------------------------------------------------- path safety


def test_escaping_paths_cannot_be_built() -> None:
    for parts in (
        ("..",),
        ("..", "x"),
        ("a", "..", "..", "x"),
        ("/etc", "passwd"),
        ("a/../../x",),
        ("",),
        (".",),
    ):
        with pytest.raises(MetainfoError):
            build_info("t", [(tuple(parts), 5)], PL, bytes(20))
    for name in ("..", "../x", "/abs", ".", ""):
        with pytest.raises(MetainfoError):
            build_info(name, 5, PL, bytes(20))


def test_safe_path_refuses_dot_dot_anyway(store: FileStorage, tmp_path: Path) -> None:
    for parts in (("..", "x"), ("tor", ".."), ("a/b",), ("a\\b",), ("",), (".",), ("x\x00",), ("/etc",)):
        with pytest.raises(StorageError):
            store._safe_path(parts)
    assert store._safe_path(("tor", "ok")) == os.path.join(os.path.realpath(tmp_path), "tor", "ok")


def test_storage_refuses_a_forged_info_with_escaping_paths(tmp_path: Path, info: InfoDict) -> None:
    evil = dataclasses.replace(info, files=(FileEntry(("tor", "..", "..", "evil"), 5, 0), *info.files[1:]))
    with pytest.raises(StorageError):
        FileStorage(evil, tmp_path / "dl")


async def test_symlinked_folder_pointing_outside_is_refused(tmp_path: Path, info: InfoDict) -> None:
    root = tmp_path / "dl"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "tor").symlink_to(outside, target_is_directory=True)
    s = FileStorage(info, root)
    try:
        with pytest.raises(StorageError):
            await s.verify_and_write(0, blocks_of(DATA, 0))
        with pytest.raises(StorageError):
            await s.verify_and_write(1, blocks_of(DATA, 1))  # the piece in sub/b.bin
        with pytest.raises(StorageError):
            s.ensure_files()
        assert list(outside.iterdir()) == []  # nothing written (or created) outside the root
        # nothing there to read: a recheck finds nothing
        assert len(await s.recheck()) == 0
        # data outside the root is never read, even when it is exactly right
        (outside / "a.bin").write_bytes(FILES[0][1])
        with pytest.raises(StorageError):
            await s.recheck()
        with pytest.raises(StorageError):
            await s.read_block(0, 0, 10)
    finally:
        s.close()


async def test_symlinked_subfolder_pointing_outside_is_refused(tmp_path: Path, info: InfoDict) -> None:
    root = tmp_path / "dl"
    outside = tmp_path / "outside"
    (root / "tor").mkdir(parents=True)
    outside.mkdir()
    (root / "tor" / "sub").symlink_to(outside, target_is_directory=True)
    s = FileStorage(info, root)
    try:
        # sub/deep/c.bin: the folder "deep" would have to be made below the link
        deep_piece = next(
            i
            for i in range(info.num_pieces)
            if any(fi == 3 for fi, _, _ in info.file_slices(i * PL, info.piece_size(i)))
        )
        with pytest.raises(StorageError):
            await s.verify_and_write(deep_piece, blocks_of(DATA, deep_piece))
        assert list(outside.iterdir()) == []
    finally:
        s.close()


async def test_symlinked_file_pointing_outside_is_refused(tmp_path: Path, info: InfoDict) -> None:
    root = tmp_path / "dl"
    secret = tmp_path / "secret"
    secret.write_bytes(FILES[0][1])  # even with the right content
    (root / "tor").mkdir(parents=True)
    (root / "tor" / "a.bin").symlink_to(secret)
    s = FileStorage(info, root)
    try:
        with pytest.raises(StorageError):
            await s.recheck()
        with pytest.raises(StorageError):
            await s.verify_and_write(0, blocks_of(DATA, 0))
        with pytest.raises(StorageError):
            await s.read_block(0, 0, 10)
        assert secret.read_bytes() == FILES[0][1]
    finally:
        s.close()


async def test_symlink_inside_root_to_inside_is_fine_for_folders(tmp_path: Path, info: InfoDict) -> None:
    root = tmp_path / "dl"
    (root / "real").mkdir(parents=True)
    (root / "tor").symlink_to(root / "real", target_is_directory=True)
    s = FileStorage(info, root)
    try:
        await write_all(s)
        assert (root / "real" / "a.bin").read_bytes() == FILES[0][1]
    finally:
        s.close()


async def test_root_itself_may_be_a_symlink(tmp_path: Path, info: InfoDict) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    s = FileStorage(info, link)
    try:
        await write_all(s)
        assert (real / "tor" / "a.bin").read_bytes() == FILES[0][1]
        assert (await s.recheck()).complete
    finally:
        s.close()
