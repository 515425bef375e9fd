"""Creating a torrent from local files: file and folder walks, piece hashes, piece-length validation."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from bridge.create import collect_files, hash_pieces, make_info
from bridge.errors import MetainfoError
from bridge.proto.metainfo import parse_info

RNG = random.Random(99)
PL = 16 * 1024


def expected_pieces(data: bytes, pl: int) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + pl]).digest() for i in range(0, len(data), pl))


def test_single_file(tmp_path: Path) -> None:
    data = RNG.randbytes(3 * PL + 17)
    f = tmp_path / "movie.bin"
    f.write_bytes(data)
    info = make_info(str(f), piece_length=PL)
    assert info.name == "movie.bin" and not info.multi_file
    assert info.total_length == len(data)
    assert info.num_pieces == 4
    assert info.pieces == expected_pieces(data, PL)
    assert info.files[0].path == ("movie.bin",)
    assert parse_info(info.raw) == info  # the bytes re-parse to the same thing


def test_folder_nested_sorted_symlinks_skipped(tmp_path: Path) -> None:
    root = tmp_path / "album"
    (root / "b" / "z").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "emptydir").mkdir()
    contents = {
        ("b", "z", "deep.bin"): RNG.randbytes(PL + 1),
        ("b", "two.bin"): RNG.randbytes(100),
        ("a", "one.bin"): RNG.randbytes(2 * PL),
        ("top.txt",): RNG.randbytes(5),
        ("B.txt",): RNG.randbytes(7),  # upper case sorts before lower case
        ("empty",): b"",
    }
    for parts, data in contents.items():
        root.joinpath(*parts).write_bytes(data)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (root / "link.bin").symlink_to(outside)
    (root / "linkdir").symlink_to(root / "a", target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nope")

    info = make_info(str(root), piece_length=PL)
    assert info.name == "album" and info.multi_file
    order = sorted(contents)
    assert [f.path for f in info.files] == [("album", *p) for p in order]
    assert [f.length for f in info.files] == [len(contents[p]) for p in order]
    data = b"".join(contents[p] for p in order)
    assert info.total_length == len(data)
    assert info.pieces == expected_pieces(data, PL)
    # the concatenation spans file boundaries inside pieces, and the hashes still agree piece by piece
    for i in range(info.num_pieces):
        assert info.piece_hash(i) == hashlib.sha1(data[i * PL : (i + 1) * PL]).digest()


def test_collect_files_reports_parts_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "x").mkdir(parents=True)
    (root / "x" / "f").write_bytes(b"abc")
    (root / "g").write_bytes(b"")
    name, files, multi = collect_files(str(root) + os.sep)
    assert name == "d" and multi
    assert [(f.parts, f.length) for f in files] == [(("g",), 0), (("x", "f"), 3)]
    assert all(os.path.isabs(f.path) for f in files)


def test_empty_folder_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MetainfoError, match="no files"):
        make_info(str(tmp_path / "empty"))


def test_folder_of_symlinks_only_refused(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"data")
    d = tmp_path / "links"
    d.mkdir()
    (d / "l").symlink_to(tmp_path / "real.bin")
    with pytest.raises(MetainfoError):
        make_info(str(d))


def test_only_empty_files_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"")
    with pytest.raises(MetainfoError, match="empty"):
        make_info(str(d))
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(MetainfoError):
        make_info(str(tmp_path / "e.bin"))


def test_missing_path_refused(tmp_path: Path) -> None:
    with pytest.raises(MetainfoError, match="no such"):
        make_info(str(tmp_path / "nope"))


@pytest.mark.parametrize("bad", [1, 1000, 16 * 1024 - 1, 16 * 1024 + 1, 8 * 1024, 3 * 16 * 1024, -16384])
def test_piece_length_validation(tmp_path: Path, bad: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    with pytest.raises(MetainfoError, match="piece-length"):
        make_info(str(f), piece_length=bad)


@pytest.mark.parametrize("good", [16 * 1024, 32 * 1024, 1 << 20])
def test_piece_length_powers_of_two(tmp_path: Path, good: int) -> None:
    data = RNG.randbytes(40_000)
    f = tmp_path / "f"
    f.write_bytes(data)
    info = make_info(str(f), piece_length=good)
    assert info.piece_length == good and info.pieces == expected_pieces(data, good)


def test_default_piece_length_used(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert make_info(str(f)).piece_length == 16 * 1024


def test_name_override_and_private(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    info = make_info(str(f), name="other", private=True, piece_length=PL)
    assert info.name == "other" and info.private


def test_progress_reports_bytes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(RNG.randbytes(PL + 3))
    (d / "b").write_bytes(RNG.randbytes(2 * PL))
    calls: list[tuple[int, int]] = []
    make_info(str(d), piece_length=PL, progress=lambda done, total: calls.append((done, total)))
    total = 3 * PL + 3
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls)


def test_hash_pieces_matches_hashlib_with_small_buffer(tmp_path: Path) -> None:
    # A piece length above the 4 MiB read buffer makes one piece take several reads.
    data = RNG.randbytes(5 * 1024 * 1024 + 11)
    f = tmp_path / "big"
    f.write_bytes(data)
    _, files, _ = collect_files(str(f))
    pl = 8 * 1024 * 1024
    assert hash_pieces(files, pl) == hashlib.sha1(data).digest()


def test_file_that_shrinks_while_hashing(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    _, files, _ = collect_files(str(f))
    f.write_bytes(b"x" * 10)
    with pytest.raises(MetainfoError, match="shrank"):
        hash_pieces(files, PL)


def test_names_a_torrent_cannot_hold_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "back\\slash").write_bytes(b"x")  # a path separator on other systems
    with pytest.raises(MetainfoError):
        make_info(str(d))


def test_non_utf8_file_name_is_a_metainfo_error(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    try:
        with open(os.path.join(os.fsencode(d), b"caf\xe9.txt"), "wb") as fh:
            fh.write(b"x")
    except OSError:
        pytest.skip("the file system refuses non-UTF-8 names")
    with pytest.raises(MetainfoError):
        make_info(str(d))
