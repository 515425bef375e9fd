"""BEP 19 web seeds: an HTTP server holding the torrent's files, used as a peer that has every piece.

One :class:`WebSeed` per URL per torrent. It takes blocks from the torrent's picker like a peer does,
turns runs of consecutive blocks into byte ranges of the files (:mod:`bridge.net.webseed_http` does the
HTTP), and hands each 16 KiB block to :meth:`Torrent.on_block`, so the torrent's hash checks, Have
messages, byte counters and hash-failure bans apply unchanged. A web seed whose data fails hash checks
is banned by host name like a peer by address, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from ..net.webseed_http import MAX_RANGE_BYTES, WebSeedError, file_url, stream_range
from ..proto.wire import BLOCK_SIZE
from ..swarm.bitfield import Bitfield

if TYPE_CHECKING:
    from .torrent import Torrent

__all__ = ["WebSeed", "WebSeedStats", "start_web_seeds", "FETCHES_IN_FLIGHT"]

log = logging.getLogger(__name__)

#: Range fetches in flight per web seed (each over its own HTTP connection).
FETCHES_IN_FLIGHT = 2
#: Bytes taken from the picker per fetch (at least one whole piece): long enough to keep one connection
#: busy for a while, short enough not to hoard blocks that peers could deliver.
FETCH_TARGET_BYTES = 1024 * 1024
#: Backoff after a failed fetch: BACKOFF_BASE seconds, doubled per consecutive failure up to BACKOFF_MAX,
#: times a random factor in 1 +- BACKOFF_JITTER.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
BACKOFF_JITTER = 0.2
#: Seconds between looks at the picker when it has nothing for us (every block is requested elsewhere).
IDLE_POLL = 1.0
#: Distinct error kinds remembered for "log each problem once".
MAX_LOGGED_ERRORS = 64

Block = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class WebSeedStats:
    url: str
    #: see WebSeed.state
    state: str
    #: Bytes handed to the torrent as blocks (hash failures included; what the torrent's downloaded counts).
    downloaded: int
    #: Failed fetches (HTTP, network, format); consecutive ones set the backoff.
    errors: int
    last_error: str | None
    #: Seconds until the next attempt while backing off.
    retry_in: float


class _Stop(Exception):
    """Abort the current fetch: the seed was banned or closed, or the torrent finished."""


class WebSeed:
    """A web seed of one torrent. ``address`` is (host name, port) so the torrent bans it like a peer."""

    kind = "webseed"

    def __init__(
        self,
        torrent: Torrent,
        url: str,
        http: aiohttp.ClientSession,
        *,
        fetches: int = FETCHES_IN_FLIGHT,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        rng: random.Random | None = None,
    ) -> None:
        split = urlsplit(url)
        try:
            port = split.port
        except ValueError:
            raise ValueError(f"web seed URL {url[:100]!r} has a bad port") from None
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"web seed URL {url[:100]!r} is not http(s)://host/...")
        info = torrent.info
        # Fail now, not per request, on a URL yarl cannot take.
        try:
            file_url(url, info, 0)
        except WebSeedError as e:
            raise ValueError(str(e)) from None
        self.torrent = torrent
        self.url = url
        self.http = http
        self.address: tuple[str, int] = (split.hostname, port or (443 if split.scheme == "https" else 80))
        self.tag = f"[{torrent.tag} web {split.hostname}]"
        #: (index, begin) of blocks taken from the picker and not yet delivered or released
        self.outstanding: set[tuple[int, int]] = set()
        self.bits = Bitfield(info.num_pieces, fill=True)
        self.fetches = max(1, fetches)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.downloaded = 0
        self.errors = 0
        self.last_error: str | None = None
        self._active = 0  # fetches in flight
        self._stopped = False
        self._failures = 0  # consecutive
        self._retry_at = 0.0
        self._logged: set[str] = set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._file_urls: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"<WebSeed {self.url}>"

    # ------------------------------------------------------------------------------------ lifecycle
    @property
    def banned(self) -> bool:
        return self.address[0] in self.torrent.banned

    def _finished(self) -> bool:
        t = self.torrent
        return self._closed or self.banned or t.is_complete or t.error is not None

    def start(self) -> asyncio.Task[None]:
        """Run in a task owned by the torrent (cancelled by Torrent.stop)."""
        if self._task is None:
            self._task = self.torrent._spawn(self.run(), f"webseed {self.url[:80]}")
        return self._task

    async def run(self) -> None:
        """Fetch blocks until the torrent is complete, failed or stopped, or this seed is banned or closed."""
        try:
            async with asyncio.TaskGroup() as tg:
                for n in range(self.fetches):
                    tg.create_task(self._worker(), name=f"webseed {n} {self.url[:80]}")
        finally:
            self._release_all()
            self._stopped = True
            if self.banned:
                log.info("%s stopped: host banned after %d hash failures", self.tag,
                         self.torrent.hash_failures[self.address[0]])

    async def close(self) -> None:
        """Stop fetching and give every outstanding block back to the picker."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._release_all()
        self._stopped = True

    @property
    def state(self) -> str:
        """"fetching", "backoff", "idle" (nothing to fetch right now), or once finished "banned", "done",
        "failed" (the torrent hit a local error) or "stopped"."""
        if self.banned:
            return "banned"
        if self.torrent.is_complete:
            return "done"
        if self.torrent.error is not None:
            return "failed"
        if self._closed or self._stopped:
            return "stopped"
        if self._active:
            return "fetching"
        if self._retry_at > time.monotonic():
            return "backoff"
        return "idle"

    def stats(self) -> WebSeedStats:
        return WebSeedStats(
            url=self.url,
            state=self.state,
            downloaded=self.downloaded,
            errors=self.errors,
            last_error=self.last_error,
            retry_in=max(0.0, self._retry_at - time.monotonic()) if self.state == "backoff" else 0.0,
        )

    # --------------------------------------------------------------------------------------- work
    async def _worker(self) -> None:
        while not self._finished():
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                await self._sleep(wait)
                continue
            blocks = self._pick()
            if not blocks:
                await self._sleep(IDLE_POLL)
                continue
            self._active += 1
            try:
                await self._fetch(blocks)
            except _Stop:
                return
            except WebSeedError as e:
                self._failed(e)
            finally:
                self._active -= 1
                self._release(blocks)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the torrent completes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.torrent.completed.wait()

    def _pick(self) -> list[Block]:
        picker = self.torrent.picker
        per_piece = picker.blocks_in(0)
        count = max(per_piece, FETCH_TARGET_BYTES // BLOCK_SIZE)
        blocks = picker.pick(self.bits, count, self.outstanding)
        self.outstanding.update((index, begin) for index, begin, _ in blocks)
        return blocks

    def _failed(self, e: WebSeedError) -> None:
        self.errors += 1
        self._failures += 1
        self.last_error = str(e)
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(self._failures - 1, 16))
        delay = min(self.backoff_max, delay * (1 + self.rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
        self._retry_at = max(self._retry_at, time.monotonic() + delay)
        if e.kind not in self._logged and len(self._logged) < MAX_LOGGED_ERRORS:
            self._logged.add(e.kind)
            log.warning("%s %s (retrying in %.0f s)", self.tag, e, delay)
        else:
            log.debug("%s %s (retrying in %.0f s)", self.tag, e, delay)

    def _release(self, blocks: Iterable[Block]) -> None:
        picker = self.torrent.picker
        for index, begin, _ in blocks:
            if (index, begin) in self.outstanding:
                self.outstanding.discard((index, begin))
                picker.release(index, begin)

    def _release_all(self) -> None:
        picker = self.torrent.picker
        for index, begin in self.outstanding:
            picker.release(index, begin)
        self.outstanding.clear()

    def _file_url(self, index: int) -> str:
        url = self._file_urls.get(index)
        if url is None:
            url = self._file_urls[index] = file_url(self.url, self.torrent.info, index)
        return url

    async def _fetch(self, blocks: list[Block]) -> None:
        """Fetch ``blocks``: each run of consecutive ones (in torrent byte order) as one range of the
        torrent's payload, split into file slices and requests of at most MAX_RANGE_BYTES."""
        info = self.torrent.info
        plen = info.piece_length
        runs: list[list[Block]] = []
        run_end = -1
        for block in sorted(blocks):
            offset = block[0] * plen + block[1]
            if runs and offset == run_end:
                runs[-1].append(block)
            else:
                runs.append([block])
            run_end = offset + block[2]
        files = info.files
        for run in runs:
            if self._finished():
                raise _Stop
            start = run[0][0] * plen + run[0][1]
            length = sum(b[2] for b in run)
            assembler = _Assembler(self, run)
            for file_index, file_offset, count in info.file_slices(start, length):
                if files[file_index].padding:
                    assembler.zeros(count)
                    continue
                url = self._file_url(file_index)
                for off in range(0, count, MAX_RANGE_BYTES):
                    n = min(MAX_RANGE_BYTES, count - off)
                    await stream_range(self.http, url, file_offset + off, n, assembler.feed)
            assembler.finish()
            self._failures = 0

    def deliver(self, index: int, begin: int, data: bytes) -> None:
        """One whole block arrived (called by the assembler)."""
        if self._finished():
            raise _Stop
        key = (index, begin)
        t = self.torrent
        if key not in self.outstanding:
            return  # released already (cannot happen while fetching; kept for safety)
        self.outstanding.discard(key)
        if not t.picker.wants_block(index, begin):
            # Arrived from someone else meanwhile (endgame), or the piece was verified or failed: feeding it
            # to the torrent would start a new piece buffer nobody completes.
            t.picker.release(index, begin)
            return
        self.downloaded += len(data)
        # on_block reads only ``address`` (for hash-failure bans) from its peer argument.
        t.on_block(self, index, begin, data)


class _Assembler:
    """Cuts the byte stream of one run of consecutive blocks into blocks as the bytes arrive."""

    __slots__ = ("seed", "blocks", "next", "buf")

    def __init__(self, seed: WebSeed, blocks: list[Block]) -> None:
        self.seed = seed
        self.blocks = blocks
        self.next = 0
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        blocks, buf = self.blocks, self.buf
        while self.next < len(blocks) and len(buf) >= blocks[self.next][2]:
            index, begin, n = blocks[self.next]
            data = bytes(buf[:n])
            del buf[:n]
            self.next += 1
            self.seed.deliver(index, begin, data)

    def zeros(self, count: int) -> None:
        """A BEP 47 padding file: zeros, never fetched."""
        while count:
            n = min(count, BLOCK_SIZE)
            self.feed(bytes(n))
            count -= n

    def finish(self) -> None:
        if self.next != len(self.blocks) or self.buf:
            raise WebSeedError("internal: range and blocks disagree", "internal")


def start_web_seeds(torrent: Torrent, urls: Iterable[str], http: aiohttp.ClientSession,
                    **options: Any) -> list[WebSeed]:
    """Create and start a WebSeed per distinct usable URL (bad URLs are logged and skipped). Their tasks
    belong to the torrent, so Torrent.stop cancels them."""
    seeds: list[WebSeed] = []
    for url in dict.fromkeys(urls):
        try:
            seed = WebSeed(torrent, url, http, **options)
        except ValueError as e:
            log.warning("[%s] ignoring web seed: %s", torrent.tag, e)
            continue
        seed.start()
        seeds.append(seed)
    return seeds
