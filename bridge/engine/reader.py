"""Streaming reads of a torrent that is still downloading.

A :class:`TorrentReader` reads any byte range of a torrent's payload (all files concatenated, in torrent
order). Where it reads, it gives the pieces under the read position deadlines, so the picker fetches them
before anything else, from whichever peers are fastest (TCP, uTP or WebRTC alike), and the pieces after
them in order (the read-ahead window). Closing the reader (or leaving its ``async with``) gives those
priorities back. Several readers of one torrent merge their demands (earliest deadline wins).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import BridgeError

if TYPE_CHECKING:
    from .torrent import Torrent

#: Bytes after the read position that get deadlines: the video a player will ask for in the next seconds.
#: 8 MiB is about 10 s of 6 Mbit/s video; longer windows spread the fastest peers over less urgent pieces.
READAHEAD_BYTES = 8 * 1024 * 1024
#: Pieces in one reader's window whatever the piece size (small pieces would make huge windows).
MAX_WINDOW_PIECES = 64
#: At least this many pieces in the window (large pieces: still fetch the next ones in parallel).
MIN_WINDOW_PIECES = 2
#: Seconds between successive deadlines in the window. Only the order matters to the picker; spacing
#: them in real time makes a reader that started earlier win ties against a later one.
DEADLINE_STEP = 0.5
#: Seconds one read waits for a missing piece before giving up (the HTTP server's default).
DEFAULT_READ_TIMEOUT = 60.0


class ReadTimeout(BridgeError):
    """The bytes were not downloaded in time."""


class ReaderClosed(BridgeError):
    """The reader was closed, or the torrent stopped or failed, while waiting."""


class TorrentReader:
    """Byte-range reader over a torrent's payload; raises the priority of what it reads."""

    def __init__(self, torrent: Torrent, readahead: int = READAHEAD_BYTES) -> None:
        self.torrent = torrent
        self.readahead = max(0, readahead)
        #: piece -> deadline (time.monotonic() based) that this reader asks for
        self.deadlines: dict[int, float] = {}
        self.closed = False
        torrent.add_reader(self)

    @property
    def size(self) -> int:
        return self.torrent.info.total_length

    def focus(self, offset: int, end: int | None = None) -> None:
        """Say where reading goes next: deadlines for the pieces from ``offset`` on, up to the read-ahead
        window (and at least up to ``end``, exclusive, when given, within MAX_WINDOW_PIECES)."""
        if self.closed:
            return
        info = self.torrent.info
        if not 0 <= offset < info.total_length:
            self.deadlines = {}
            self.torrent.update_deadlines()
            return
        first = offset // info.piece_length
        stop = min(info.total_length, offset + self.readahead)
        if end is not None:
            stop = max(stop, min(end, info.total_length))
        last = (stop - 1) // info.piece_length
        last = max(last, first + MIN_WINDOW_PIECES - 1)
        last = min(last, first + MAX_WINDOW_PIECES - 1, info.num_pieces - 1)
        have = self.torrent.picker.have
        now = time.monotonic()
        self.deadlines = {i: now + k * DEADLINE_STEP for k, i in enumerate(range(first, last + 1))
                          if i not in have}
        self.torrent.update_deadlines()

    async def read(self, offset: int, length: int, timeout: float = DEFAULT_READ_TIMEOUT) -> bytes:
        """Exactly ``length`` bytes from ``offset`` (both within the payload), waiting for each missing
        piece up to ``timeout`` seconds. Raises ReadTimeout or ReaderClosed."""
        return b"".join([bytes(chunk) async for chunk in self.stream(offset, length, timeout)])

    async def stream(self, offset: int, length: int, timeout: float = DEFAULT_READ_TIMEOUT
                     ) -> AsyncIterator[memoryview]:
        """The bytes of ``[offset, offset + length)`` in order, one piece's part at a time, as soon as
        each piece is verified. The window follows the position. ``timeout`` bounds each wait."""
        info = self.torrent.info
        if offset < 0 or length < 0 or offset + length > info.total_length:
            raise ValueError(f"range {offset}+{length} is outside the payload of {info.total_length} bytes")
        end = offset + length
        pos = offset
        while pos < end:
            if self.closed:
                raise ReaderClosed("the reader is closed")
            index = pos // info.piece_length
            piece_start = index * info.piece_length
            chunk_end = min(end, piece_start + info.piece_size(index))
            if index not in self.torrent.picker.have:
                self.focus(pos, end)
                await self.torrent.wait_piece(index, timeout)
                if self.closed:
                    raise ReaderClosed("the reader is closed")
            elif index + 1 < info.num_pieces and (index + 1) not in self.torrent.picker.have:
                self.focus(chunk_end, end)  # keep the window moving while reading what we have
            yield await self.torrent.storage.read_block(index, pos - piece_start, chunk_end - pos)
            pos = chunk_end

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadlines = {}
            self.torrent.remove_reader(self)

    async def __aenter__(self) -> TorrentReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
