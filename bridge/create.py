"""Creating a .torrent from local files: walk, hash in a worker thread, build with proto.metainfo."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import MetainfoError
from .proto.metainfo import MAX_FILES, InfoDict, build_info, default_piece_length

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SourceFile:
    #: absolute path on disk
    path: str
    #: path parts inside the torrent (below the torrent name)
    parts: tuple[str, ...]
    length: int


def collect_files(path: str) -> tuple[str, list[SourceFile], bool]:
    """Return (name, files, multi_file) for a file or a folder. Symlinks and special files are skipped."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise MetainfoError(f"{path}: no such file or folder")
    name = os.path.basename(path.rstrip(os.sep)) or "torrent"
    if os.path.isfile(path):
        return name, [SourceFile(path, (), os.path.getsize(path))], False
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, path).split(os.sep)
            files.append(SourceFile(full, tuple(rel), os.path.getsize(full)))
            if len(files) > MAX_FILES:
                raise MetainfoError(f"{path}: more than {MAX_FILES} files")
    files.sort(key=lambda f: f.parts)
    if not files:
        raise MetainfoError(f"{path}: the folder has no files")
    return name, files, True


def hash_pieces(files: Sequence[SourceFile], piece_length: int, progress: ProgressFn | None = None) -> bytes:
    """SHA-1 of each piece of the files' concatenation. Blocking: run it in a thread."""
    total = sum(f.length for f in files)
    hashes = bytearray()
    piece = hashlib.sha1()
    filled = 0
    done = 0
    buf = bytearray(min(piece_length, 4 * 1024 * 1024) if piece_length else 1)
    for f in files:
        with open(f.path, "rb", buffering=0) as fh:
            remaining = f.length
            while remaining:
                want = min(len(buf), piece_length - filled, remaining)
                view = memoryview(buf)[:want]
                got = fh.readinto(view)
                if not got:
                    raise MetainfoError(f"{f.path}: file shrank while it was being hashed")
                piece.update(view[:got])
                filled += got
                remaining -= got
                done += got
                if filled == piece_length:
                    hashes += piece.digest()
                    piece = hashlib.sha1()
                    filled = 0
                    if progress:
                        progress(done, total)
    if filled:
        hashes += piece.digest()
    if progress:
        progress(done, total)
    return bytes(hashes)


def make_info(
    path: str,
    piece_length: int | None = None,
    name: str | None = None,
    private: bool = False,
    progress: ProgressFn | None = None,
) -> InfoDict:
    auto_name, files, multi = collect_files(path)
    total = sum(f.length for f in files)
    if total == 0:
        raise MetainfoError(f"{path}: nothing to share (every file is empty)")
    plen = piece_length or default_piece_length(total)
    if plen <= 0 or plen & (plen - 1) or plen < 16 * 1024:
        raise MetainfoError(f"--piece-length {plen}: must be a power of two of at least 16384")
    pieces = hash_pieces(files, plen, progress)
    name = name or auto_name
    if multi:
        return build_info(name, [(f.parts, f.length) for f in files], plen, pieces, private)
    return build_info(name, total, plen, pieces, private)
