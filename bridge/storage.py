"""Piece storage on disk: map pieces to files, verify with SHA-1 and do file I/O off the event loop.

Only verified pieces are ever written, so what is on disk is always data whose hash matched. Every path
is checked to stay inside the download directory, symlinks included.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import StorageError
from .proto.metainfo import InfoDict
from .swarm.bitfield import Bitfield

log = logging.getLogger(__name__)

#: Bytes of whole pieces kept in memory for serving requests. A peer usually asks for every block of a
#: piece in a row, so one read per piece instead of one per 16 KiB block; 64 MiB holds 64 pieces of 1 MiB.
READ_CACHE_BYTES = 64 * 1024 * 1024
#: Bytes hashed per executor call during a re-check: large enough to amortise the hop to the thread,
#: small enough to report progress several times a second.
RECHECK_BATCH_BYTES = 32 * 1024 * 1024

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")

#: errno values that mean "no room left" (the disk, or the user's quota).
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(StorageError):
    """A write failed because the disk (or quota) is full. Nothing unverified was recorded: free some
    space and resume; pieces already written still verify."""


def _io_error(action: str, path: str, e: OSError) -> StorageError:
    reason = e.strerror or str(e)
    if e.errno in _NO_SPACE:
        return DiskFullError(f"disk full: cannot {action} {path}: {reason}")
    return StorageError(f"cannot {action} {path}: {reason}")


def default_executor() -> ThreadPoolExecutor:
    """Disk and hashing threads. hashlib and file I/O release the GIL, so two threads use the second core."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="bridge-disk")


class FileStorage:
    """The files of one torrent under ``root``; the torrent's paths start with its name for multi-file."""

    def __init__(self, info: InfoDict, root: str | os.PathLike[str], executor: Executor | None = None) -> None:
        self.info = info
        self.root = os.path.realpath(os.fspath(root))
        self._own_executor = executor is None
        self.executor: Executor = executor or default_executor()
        self._fds: dict[int, int] = {}
        self._fd_lock = threading.Lock()
        #: executor jobs submitted and not finished: close() leaves the files open until they are done, so
        #: a write still running in a thread can never land in a file that reused a closed descriptor
        self._inflight = 0
        self._close_pending = False
        self._idle = threading.Condition(self._fd_lock)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._loading: dict[int, asyncio.Future[bytes]] = {}
        self.paths = [self._safe_path(f.path) for f in info.files]

    # ---------------------------------------------------------------------------------- paths
    def _safe_path(self, parts: tuple[str, ...]) -> str:
        for part in parts:
            if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
                raise StorageError(f"unsafe path part {part!r}")
        path = os.path.join(self.root, *parts)
        if os.path.commonpath([self.root, os.path.abspath(path)]) != self.root:
            raise StorageError(f"path {'/'.join(parts)!r} leaves the download directory")
        return path

    def _check_real(self, path: str) -> None:
        """Refuse a path whose existing parts resolve (through symlinks) outside the root."""
        real = os.path.realpath(path)
        if os.path.commonpath([self.root, real]) != self.root:
            raise StorageError(f"{path!r} resolves outside the download directory (symlink?)")

    def _fd(self, file_index: int, create: bool) -> int | None:
        fd = self._fds.get(file_index)
        if fd is not None:
            return fd
        with self._fd_lock:
            fd = self._fds.get(file_index)
            if fd is not None:
                return fd
            path = self.paths[file_index]
            try:
                if create:
                    # Check first too: makedirs would otherwise create folders below a symlink that leads out.
                    self._check_real(os.path.dirname(path))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                self._check_real(os.path.dirname(path))
                flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
                if create:
                    flags |= os.O_CREAT
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                if create:
                    raise StorageError(f"cannot create {path}") from None
                return None
            except OSError as e:
                raise _io_error("open", path, e) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device placed in the data directory
                os.close(fd)
                raise StorageError(f"{path} is not a regular file")
            self._fds[file_index] = fd
            return fd

    # ------------------------------------------------------------------------------- blocking I/O
    def _read_sync(self, offset: int, length: int, *, missing_ok: bool) -> bytes | None:
        out = bytearray(length)
        view = memoryview(out)
        pos = 0
        for fi, foff, n in self.info.file_slices(offset, length):
            if self.info.files[fi].padding:
                pos += n
                continue
            fd = self._fd(fi, create=False)
            if fd is None:
                if missing_ok:
                    return None
                raise StorageError(f"{self.paths[fi]} is missing")
            got = os.preadv(fd, [view[pos : pos + n]], foff)
            if got != n:
                if missing_ok:
                    return None
                raise StorageError(f"{self.paths[fi]} is shorter than the torrent says")
            pos += n
        return bytes(out)

    def _write_sync(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        for fi, foff, n in self.info.file_slices(offset, len(view)):
            if not self.info.files[fi].padding:
                fd = self._fd(fi, create=True)
                assert fd is not None
                chunk = view[pos : pos + n]
                done = 0
                while done < n:
                    try:
                        done += os.pwrite(fd, chunk[done:], foff + done)
                    except OSError as e:
                        raise _io_error("write", self.paths[fi], e) from None
            pos += n

    def _verify_write_sync(self, index: int, blocks: Sequence[bytes | memoryview | None]) -> bool:
        h = hashlib.sha1()
        for block in blocks:
            if block is None:
                return False
            h.update(block)  # releases the GIL for buffers over 2 KiB
        if h.digest() != self.info.piece_hash(index):
            return False
        offset = index * self.info.piece_length
        for block in blocks:
            assert block is not None
            self._write_sync(offset, block)
            offset += len(block)
        return True

    def _check_batch_sync(self, indices: list[int]) -> list[int]:
        good = []
        for i in indices:
            data = self._read_sync(i * self.info.piece_length, self.info.piece_size(i), missing_ok=True)
            if data is not None and hashlib.sha1(data).digest() == self.info.piece_hash(i):
                good.append(i)
        return good

    # ------------------------------------------------------------------------------------- async
    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` in the disk threads, counted in _inflight until it has finished (or was cancelled
        before it started)."""
        with self._fd_lock:
            self._inflight += 1
        try:
            job: Future[T] = self.executor.submit(fn, *args)
        except BaseException:
            self._job_done()
            raise
        job.add_done_callback(self._job_done)
        return asyncio.wrap_future(job)

    def _job_done(self, _job: object = None) -> None:
        with self._fd_lock:
            self._inflight -= 1
            if self._inflight == 0:
                if self._close_pending:
                    self._close_pending = False
                    self._close_fds()
                self._idle.notify_all()

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no read or write runs in a thread (after close(), before the files' mtimes are
        recorded). False if that took more than ``timeout`` seconds."""
        def wait() -> bool:
            with self._idle:
                return self._idle.wait_for(lambda: self._inflight == 0, timeout)
        with self._fd_lock:
            if self._inflight == 0:
                return True
        return await asyncio.to_thread(wait)

    async def verify_and_write(self, index: int, blocks: Sequence[bytes | memoryview | None]) -> bool:
        """Hash the concatenated ``blocks`` as piece ``index``; write them only if it matches."""
        return await self._submit(self._verify_write_sync, index, blocks)

    def _recheck_candidates(self) -> list[int]:
        """Pieces whose files all exist (stat calls: run in a thread)."""
        info = self.info
        for p in self.paths:
            if os.path.lexists(p):
                self._check_real(p)
        present = [os.path.exists(p) or f.padding or f.length == 0 for p, f in zip(self.paths, info.files, strict=True)]
        return [
            i
            for i in range(info.num_pieces)
            if all(present[fi] for fi, _, _ in info.file_slices(i * info.piece_length, info.piece_size(i)))
        ]

    async def recheck(self, progress: ProgressFn | None = None) -> Bitfield:
        """Hash whatever data exists and return the pieces that verify (resume after a restart).

        ``progress(done, total)`` counts bytes of the pieces whose files exist."""
        info = self.info
        have = Bitfield(info.num_pieces)
        candidates = await self._submit(self._recheck_candidates)
        total = sum(info.piece_size(i) for i in candidates)
        per_batch = max(1, RECHECK_BATCH_BYTES // info.piece_length)
        batches = [candidates[k : k + per_batch] for k in range(0, len(candidates), per_batch)]
        done = 0
        if progress:
            progress(0, total)
        # Two batches in flight: hashing releases the GIL, so both cores work.
        pending: dict[asyncio.Future[list[int]], int] = {}  # future -> bytes it checks
        it = iter(batches)
        while True:
            while len(pending) < 2:
                batch = next(it, None)
                if batch is None:
                    break
                fut = self._submit(self._check_batch_sync, batch)
                pending[fut] = sum(info.piece_size(i) for i in batch)
            if not pending:
                break
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                for i in fut.result():
                    have.add(i)
                done += pending.pop(fut)
            if progress:
                progress(done, total)
        return have

    async def read_block(self, index: int, begin: int, length: int) -> memoryview:
        """Bytes of a verified piece (a view, no copy), through a whole-piece cache."""
        piece = self._cache.get(index)
        if piece is None:
            piece = await asyncio.shield(self._start_load(index))
        else:
            self._cache.move_to_end(index)
        if begin + length > len(piece):
            raise StorageError(f"block {index}:{begin}+{length} is beyond the piece")
        return memoryview(piece)[begin : begin + length]

    def prefetch(self, index: int) -> None:
        """Start reading a piece into the cache (a peer has asked for it and will want it soon)."""
        if index not in self._cache:
            self._start_load(index)

    def _start_load(self, index: int) -> asyncio.Future[bytes]:
        fut = self._loading.get(index)
        if fut is None:
            fut = self._submit(self._read_piece_sync, index)
            self._loading[index] = fut
            fut.add_done_callback(lambda f: self._loaded(index, f))
        return fut

    def _read_piece_sync(self, index: int) -> bytes:
        data = self._read_sync(index * self.info.piece_length, self.info.piece_size(index), missing_ok=False)
        assert data is not None
        return data

    def _loaded(self, index: int, fut: asyncio.Future[bytes]) -> None:
        self._loading.pop(index, None)
        if fut.cancelled() or fut.exception() is not None:  # exception(): retrieved; the reader re-raises it
            return
        data = fut.result()
        self._cache[index] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > READ_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    def ensure_files(self) -> None:
        """Create empty files and give every file its full length (after a complete download)."""
        for fi, f in enumerate(self.info.files):
            if f.padding:
                continue
            fd = self._fd(fi, create=True)
            assert fd is not None
            if os.fstat(fd).st_size != f.length:
                os.ftruncate(fd, f.length)

    def sync(self) -> None:
        """fsync every file of the torrent that exists (blocking: call it in a thread), open or closed.
        Run before recording resume data, so that the pieces it lists are on the disk itself, not only in
        the page cache, should the machine go down. Raises StorageError when the data may not be there
        (then the resume data must not be saved)."""
        for fi, path in enumerate(self.paths):
            if self.info.files[fi].padding or not os.path.lexists(path):
                continue
            try:
                self._check_real(os.path.dirname(path))
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _io_error("sync", path, e) from None

    def _close_fds(self) -> None:
        """Close the open files (with _fd_lock held); they are opened again when needed."""
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def close(self) -> None:
        """Close the files now, or as soon as the reads and writes running in threads are done."""
        with self._fd_lock:
            if self._inflight:
                self._close_pending = True
            else:
                self._close_fds()
        if self._own_executor:
            self.executor.shutdown(wait=False)
