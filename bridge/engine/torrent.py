"""One torrent: wires storage, picker, choker and peers together. Policy lives in swarm/, I/O in net/."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ..config import PeerConfig
from ..errors import BridgeError, RemoteProtocolError, StorageError
from ..net.transport import PeerTransport
from ..proto import events as ev
from ..proto.extension import MAX_PEX_PEERS, PEX_REACHABLE, PEX_SEED, UT_PEX
from ..proto.metainfo import InfoDict
from ..proto.wire import BLOCK_SIZE, Wire
from ..storage import FileStorage
from ..swarm.bitfield import Bitfield
from ..swarm.choker import RECHOKE_INTERVAL, ChokeCandidate, Choker
from ..swarm.picker import PiecePicker
from ..swarm.rate import RateMeter
from .handshake import our_handshake
from .peer import Peer
from .webrtc import WebRtcSide

if TYPE_CHECKING:
    from .announcer import Announcer
    from .metadata import OpenConnection
    from .reader import TorrentReader
    from .session import Session
    from .webseed import WebSeed

log = logging.getLogger(__name__)

#: Addresses remembered per torrent (from trackers, --peer, incoming). Bounds memory against a tracker
#: or peer that hands out endless lists.
MAX_KNOWN_ADDRESSES = 2000
#: Seconds before redialling an address that failed or closed, doubled per failure up to RETRY_MAX.
RETRY_BASE = 15.0
RETRY_MAX = 300.0
#: Seconds an idle torrent's timers sleep (no peers, readers or addresses to dial).
IDLE_TICK = 10.0
#: Seconds between two PEX messages to one peer (BEP 11: at most one a minute).
PEX_INTERVAL = 60.0
#: A peer is "fast" (may re-request stalled blocks of the most urgent streaming pieces) when its download
#: rate is at least this fraction of the best peer's.
FAST_FRACTION = 0.5
#: Pieces that peers asked us for (or that a browser peer streaming in order will ask for next) while we
#: lack them: at most this many are made urgent at once, each for PEER_DEMAND_TTL seconds. Bounded so a
#: peer cannot steer the whole download.
MAX_PEER_DEMAND = 32
PEER_DEMAND_TTL = 30.0
#: Deadline offset of a peer's demand: after every local reader's window (readers are waiting right now).
PEER_DEMAND_DELAY = 60.0
#: Pieces of a browser peer's next missing ones (its download front) that are made urgent for us.
BROWSER_FRONT_PIECES = 2
#: How far past a browser's first missing piece its front is looked for.
BROWSER_FRONT_SCAN = 64
#: Blame for a piece that failed its hash with blocks from several addresses (the hash cannot say whose
#: block was bad). Each sender loses SHARED_FAILURE_COST trust and gains 1 per verified piece it sent blocks
#: of (up to TRUST_MAX); at -SHARED_FAILURE_BAN it is banned (libtorrent's trust points: an honest peer that
#: keeps delivering is not banned for sharing pieces with a corrupt one). A piece failing with one sender
#: counts towards that sender's PeerConfig.max_hash_failures, as before.
SHARED_FAILURE_COST = 2
SHARED_FAILURE_BAN = 7
TRUST_MAX = 8
#: Smart ban: the SHA-1 of every block of a piece that failed with several senders is kept (at most
#: SUSPECT_ATTEMPTS attempts' worth per piece, for at most MAX_SUSPECT_PIECES pieces); once the piece
#: verifies, a sender whose block differs from the good data is banned at once.
SUSPECT_ATTEMPTS = 4
MAX_SUSPECT_PIECES = 256

Address = tuple[str, int]


class Torrent:
    def __init__(
        self,
        session: Session,
        info: InfoDict,
        storage: FileStorage,
        have: Bitfield,
        *,
        config: PeerConfig,
        trackers: Iterable[Iterable[str]] = (),
        seed: bool = False,
        web_seeds: Iterable[str] = (),
    ) -> None:
        self.session = session
        self.info = info
        self.info_hash = info.info_hash
        self.storage = storage
        self.config = config
        self.seed_after_complete = seed
        self.tag = info.name[:24]
        self.rng = random.Random()
        self.picker = PiecePicker(info.num_pieces, info.piece_length, info.total_length, have, self.rng)
        self.choker = Choker(self.rng, config.upload_slots)
        self.peers: set[Peer] = set()
        self.trackers = [list(t) for t in trackers]
        #: BEP 19 web seed URLs (url-list, or ws= of a magnet), and their clients once started
        self.web_seed_urls = list(web_seeds)
        self.web_seeds: list[WebSeed] = []
        self._known: dict[Address, float] = {}  # address -> earliest next dial time
        self._failures: Counter[Address] = Counter()
        self._sticky: set[Address] = set()  # --peer addresses: always retried
        self._connecting: set[Address] = set()
        self._seeds: set[Address] = set()  # addresses last seen as seeds: not dialled once we are complete
        self._wake = asyncio.Event()
        #: set when a peer or a reader arrives: wakes an idle ticker
        self._active = asyncio.Event()
        self.banned: set[str] = set()
        #: per address, the failed pieces it sent blocks of (a piece with three senders counts for each)
        self.hash_failures: Counter[str] = Counter()
        #: pieces that failed their hash check, each counted once
        self.pieces_failed = 0
        #: received blocks of pieces being downloaded, by block number (bytes or views into received chunks)
        self._blocks: dict[int, list[bytes | memoryview | None]] = {}
        #: per piece being downloaded, the address that sent each block (hash-failure blame)
        self._senders: dict[int, list[str | None]] = {}
        #: smart ban: piece -> (block, address) -> SHA-1 of the block that address sent in a failed attempt
        self._suspect_blocks: dict[int, dict[tuple[int, str], bytes]] = {}
        #: trust points per address (see SHARED_FAILURE_COST), and failed pieces it alone had sent
        self._trust: Counter[str] = Counter()
        self._sole_failures: Counter[str] = Counter()
        self._verifying: set[int] = set()
        self.uploaded = 0
        self.downloaded = 0
        #: payload bytes by kind of peer: "tcp", "utp", "webrtc", "webseed"
        self.downloaded_by_kind: Counter[str] = Counter()
        self.uploaded_by_kind: Counter[str] = Counter()
        #: where each verified piece came from: 0 we had it, 1 the classic swarm (TCP, uTP, web seed),
        #: 2 the browser swarm (WebRTC). Serving a piece to the other side counts as relayed.
        self.piece_origin = bytearray(info.num_pieces)
        self.relayed = {"classic_to_web": 0, "web_to_classic": 0}
        self._piece_kind: dict[int, str] = {}
        now = time.monotonic()
        self.down = RateMeter(now)
        self.up = RateMeter(now)
        self.completed = asyncio.Event()
        self._left = 0
        self._left_at = -1  # len(have) when _left was computed; -1: not yet
        self.error: str | None = None
        self.failed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._announcer: Announcer | None = None
        self._webrtc: WebRtcSide | None = None
        self._stopping = False
        #: streaming readers (engine/reader.py) and the deadlines they ask for
        self._readers: set[TorrentReader] = set()
        #: piece -> (deadline, expiry) for pieces peers want from us that we lack
        self._peer_demand: dict[int, tuple[float, float]] = {}
        #: per browser peer: the index below which it has every piece (its download front)
        self._fronts: dict[Peer, int] = {}
        #: futures of readers waiting for a piece, resolved when it is verified (or the torrent stops)
        self._piece_waiters: dict[int, asyncio.Future[None]] = {}
        #: download rate a peer needs to count as fast (FAST_FRACTION of the best peer's), per tick
        self.fast_threshold = 0.0
        if self.picker.complete:
            self.completed.set()
        self.on_complete: Callable[[], None] | None = None

    # -------------------------------------------------------------------------------- properties
    @property
    def listen_port(self) -> int:
        return self.session.listen_port

    @property
    def left(self) -> int:
        """Bytes of pieces not verified yet (kept as a running count: announces, progress and the API
        read it often)."""
        have = self.picker.have
        if self._left_at != len(have):  # pieces were added to ``have`` other than by _verify
            self._left = sum(self.info.piece_size(i) for i in range(self.info.num_pieces) if i not in have)
            self._left_at = len(have)
        return self._left

    def peers_by_kind(self) -> Counter[str]:
        """Connected peers by kind: "tcp", "utp", "webrtc", and "webseed" for web seeds fetching now."""
        kinds: Counter[str] = Counter(p.kind for p in self.peers)
        kinds["webseed"] = sum(1 for w in self.web_seeds if w.state == "fetching")
        return kinds

    @property
    def verified_bytes(self) -> int:
        return self.info.total_length - self.left

    @property
    def is_complete(self) -> bool:
        return self.completed.is_set()

    # -------------------------------------------------------------------------------- lifecycle
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("[%s] task %s failed: %r", self.tag, task.get_name(), exc, exc_info=exc)

    async def start(self, announcer: Announcer | None = None, connections: Iterable[OpenConnection] = (),
                    webrtc: WebRtcSide | None = None) -> None:
        """Start the timers, the dialler and the trackers. A magnet download passes the announcer and the
        connections that fetched the metadata, so nothing is announced or dialled twice."""
        connections = list(connections)
        # Mark them as being connected before the dialler runs, so it does not dial them a second time
        # (peer ids cannot tell: libtorrent uses a new one per connection).
        self._connecting.update(c.address for c in connections if c.dialled)  # type: ignore[misc]
        self._spawn(self._ticker(), f"tick {self.tag}")
        self._spawn(self._connector(), f"connect {self.tag}")
        for conn in connections:
            dialled = conn.address if conn.dialled else None
            self._spawn(
                self.run_peer(conn.transport, conn.wire, conn.handshake, conn.pending, address=dialled,  # type: ignore[arg-type]
                              opened=True),
                f"peer {conn.address}",
            )
        self._join_webtorrent(webrtc)
        if self.web_seed_urls and not self.is_complete and self.session.http is not None:
            from .webseed import start_web_seeds

            self.web_seeds = start_web_seeds(self, self.web_seed_urls, self.session.http)
        if announcer is not None:
            self._announcer = announcer
        elif self.trackers and self.session.config.trackers_enabled:
            from .announcer import Announcer

            announcer = Announcer(
                tiers=self.trackers,
                info_hash=self.info_hash,
                peer_id=self.session.peer_id,
                port=self.listen_port,
                stats=self.stats,
                on_peers=lambda peers: self.add_peers(peers),
                session=self.session.http,
                udp=self.session.utp,
                backoff_max=self.session.config.tracker_retry_max,
            )
            self._announcer = announcer  # a seed from the start announces started with left=0, never completed
            self._spawn(announcer.run(), f"announce {self.tag}")

    def room(self) -> int:
        """Peers still wanted (for WebRTC offers and answers)."""
        if self._stopping or self.error is not None or (self.is_complete and not self.seed_after_complete):
            return 0
        return max(0, self.config.max_peers - len(self.peers))

    async def adopt(self, transport: PeerTransport, wire: Wire, handshake: ev.Handshake,
                    pending: list[ev.Event]) -> None:
        """A WebRTC peer whose handshakes are done (not dialable: no listen address for PEX)."""
        await self.run_peer(transport, wire, handshake, pending)

    def _join_webtorrent(self, side: WebRtcSide | None) -> None:
        """Join the browser swarm through the ws:// trackers, or take over the magnet's WebRTC side."""
        if side is not None:
            side.retarget(self)
            self._webrtc = side
            return
        cfg = self.session.config
        pool = self.session.ws_pool
        if not (cfg.webrtc and cfg.trackers_enabled and pool is not None):
            return
        side = WebRtcSide(self, self.session.rtc_config, self.session.peer_id, self.config.handshake_timeout)
        if side.join(pool, self.trackers, self.info_hash):
            self._webrtc = side

    def adopt_task(self, task: asyncio.Task[None]) -> None:
        """Own a task started before the torrent existed (the magnet's announcer); cancelled on stop."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def stats(self) -> tuple[int, int, int]:
        """(uploaded, downloaded, left) for tracker announces."""
        return self.uploaded, self.downloaded, self.left

    async def stop(self) -> None:
        self._stopping = True
        if self._webrtc is not None:
            await self._webrtc.aclose()
        if self._announcer is not None:
            with contextlib.suppress(Exception):
                await self._announcer.stop()
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self.peers):
            peer.close("shutting down")
        self._wake_waiters()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.storage.close()

    def fail(self, message: str) -> None:
        """A fatal local error (disk full, unwritable directory): stop transferring and report."""
        if self.error is None:
            self.error = message
            # torrent_failed: the CLI reports it as its own last line instead (bridge/cli.py)
            log.error("[%s] %s", self.tag, message, extra={"torrent_failed": True})
            self.failed.set()
            for peer in list(self.peers):
                peer.close(message)
            self._wake_waiters()

    # ------------------------------------------------------------------------------- streaming
    def add_reader(self, reader: TorrentReader) -> None:
        self._readers.add(reader)
        self._active.set()

    def remove_reader(self, reader: TorrentReader) -> None:
        self._readers.discard(reader)
        self.update_deadlines()

    def set_file_priorities(self, priorities: list[int]) -> None:
        """Per-file priorities (0 skips the file, 1 normal, up to 7). A piece shared by several files
        takes the highest of theirs. Missing entries are 1."""
        info = self.info
        if not priorities:
            return
        prio = [max(0, min(7, int(priorities[i]) if i < len(priorities) else 1)) for i in range(len(info.files))]
        piece_prio = [0] * info.num_pieces
        for fi, f in enumerate(info.files):
            if f.length == 0:
                continue
            first = f.offset // info.piece_length
            last = (f.offset + f.length - 1) // info.piece_length
            for i in range(first, last + 1):
                piece_prio[i] = max(piece_prio[i], prio[fi])
        for i, pr in enumerate(piece_prio):
            self.picker.set_priority(i, pr)
        self._wants_changed()

    def set_sequential(self, on: bool) -> None:
        """Download pieces in order (after any reader's deadlines) instead of rarest-first."""
        self.picker.set_sequential(on)

    def update_deadlines(self) -> None:
        """Merge the readers' and peers' deadlines into the picker, then let peers request accordingly."""
        merged = {i: d for i, (d, _) in self._peer_demand.items()}
        for reader in self._readers:
            for i, d in reader.deadlines.items():
                if d < merged.get(i, d + 1):
                    merged[i] = d
        if merged == self.picker.deadlines:
            return
        self.picker.set_deadlines(merged)
        if self._stopping or self.error is not None:
            return
        self._wants_changed()

    def _wants_changed(self) -> None:
        """What we want changed (priorities, deadlines): tell peers we now want something from, and let
        every peer request accordingly."""
        for p in self.peers:
            if not p.am_interested and self.picker.is_interesting(p.bits):
                p.set_interested(True)
            p.fill_requests()

    def on_demand(self, peer: Peer, index: int) -> None:
        """``peer`` wants piece ``index``, which we lack: fetch it soon (the relay is driven by demand)."""
        if index in self.picker.have or not 0 <= index < self.info.num_pieces or index in self._peer_demand:
            return
        if len(self._peer_demand) >= MAX_PEER_DEMAND:
            return
        now = time.monotonic()
        self._peer_demand[index] = (now + PEER_DEMAND_DELAY, now + PEER_DEMAND_TTL)
        self.update_deadlines()

    def _refresh_demand(self, now: float) -> None:
        """Expire old peer demands, and add the download fronts of browser peers that are interested in
        us: WebTorrent fetches in order by default, so the first pieces it lacks are what it asks for next."""
        demand = self._peer_demand
        for i in [i for i, (_, expiry) in demand.items() if expiry < now or i in self.picker.have]:
            del demand[i]
        if not self.is_complete:
            have = self.picker.have
            n = self.info.num_pieces
            for p in self.peers:
                if p.kind != "webrtc" or not p.peer_interested or p.bits.complete:
                    continue
                front = self._fronts.get(p, 0)
                while front < n and front in p.bits:
                    front += 1
                self._fronts[p] = front
                found = 0
                for i in range(front, min(n, front + BROWSER_FRONT_SCAN)):
                    if len(demand) >= MAX_PEER_DEMAND or found >= BROWSER_FRONT_PIECES:
                        break
                    if i in p.bits:
                        continue
                    found += 1
                    if i not in have and i not in demand:
                        demand[i] = (now + PEER_DEMAND_DELAY, now + PEER_DEMAND_TTL)
        self.update_deadlines()

    async def wait_piece(self, index: int, timeout: float) -> None:
        """Return once piece ``index`` is verified. Raises ReadTimeout after ``timeout`` seconds, and
        ReaderClosed if the torrent stops or fails first."""
        from .reader import ReaderClosed, ReadTimeout

        while index not in self.picker.have:
            if self._stopping or self.error is not None:
                raise ReaderClosed(self.error or "the torrent stopped")
            fut = self._piece_waiters.get(index)
            if fut is None or fut.done():
                fut = self._piece_waiters[index] = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                raise ReadTimeout(f"piece {index} was not downloaded within {timeout:g} s") from None

    def _wake_waiters(self) -> None:
        waiters, self._piece_waiters = self._piece_waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------------------- addresses
    def add_peers(self, addresses: Iterable[Address], sticky: bool = False, source: str = "") -> None:
        """Remember addresses to dial. ``sticky`` ones (given by the user) are always retried."""
        now = time.monotonic()
        for addr in addresses:
            if addr[0] in self.banned or addr[1] <= 0:
                continue
            if sticky:
                self._sticky.add(addr)
            if addr not in self._known:
                if len(self._known) >= MAX_KNOWN_ADDRESSES:
                    continue
                self._known[addr] = now
            elif sticky:
                self._known[addr] = min(self._known[addr], now)
        self._wake.set()

    def _connected_addresses(self) -> set[Address]:
        return {p.address for p in self.peers}

    async def _connector(self) -> None:
        cfg = self.config
        while not self._stopping:
            self._wake.clear()
            next_due: float | None = None
            if self.error is None and (not self.is_complete or self.seed_after_complete):
                now = time.monotonic()
                connected = self._connected_addresses()
                for addr, when in sorted(self._known.items(), key=lambda kv: kv[1]):
                    if len(self.peers) + len(self._connecting) >= cfg.max_peers:
                        break  # a peer leaving sets _wake
                    if len(self._connecting) >= cfg.max_half_open:
                        break  # a dial ending sets _wake
                    if addr in connected or addr in self._connecting:
                        continue
                    if addr[0] in self.banned or (self.is_complete and addr in self._seeds):
                        continue  # banned, or a seed while we are one too
                    if when > now:
                        next_due = when if next_due is None else min(next_due, when)
                        continue
                    self._connecting.add(addr)
                    self._known[addr] = now + self._retry_delay(addr)
                    self._spawn(self._dial(addr), f"dial {addr[0]}:{addr[1]}")
            # Sleep until the next address is due (or until told: new addresses, a peer or dial gone),
            # at most IDLE_TICK seconds: not every second when there is nothing to dial.
            wait = IDLE_TICK if next_due is None else max(0.05, min(IDLE_TICK, next_due - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _retry_delay(self, addr: Address) -> float:
        n = self._failures[addr]
        return float(min(RETRY_MAX, RETRY_BASE * (2 ** min(n, 10))))

    async def _dial(self, addr: Address) -> None:
        cfg = self.config
        try:
            try:
                opened = await self.session.dial(addr[0], addr[1], self.our_handshake(), cfg)
            except (RemoteProtocolError, OSError, TimeoutError) as e:
                self._failures[addr] += 1
                log.debug("[%s] cannot open %s:%d: %s", self.tag, addr[0], addr[1], e or type(e).__name__)
                return
            self._connecting.discard(addr)
            await self.run_peer(opened.transport, opened.wire, opened.handshake, opened.pending, address=addr)
        finally:
            self._connecting.discard(addr)
            self._wake.set()

    def our_handshake(self) -> ev.Handshake:
        return our_handshake(self.info_hash, self.session.peer_id, self.config)

    async def run_peer(
        self,
        transport: PeerTransport,
        wire: Wire,
        handshake: ev.Handshake,
        pending: list[ev.Event],
        address: Address | None = None,
        opened: bool = False,
    ) -> None:
        """Run an opened connection (handshakes already exchanged) until it closes. ``address`` is the
        dialled address of an outgoing connection; ``opened`` says the opening messages went out already
        (the connection was used to fetch the metadata)."""
        if opened and address is not None:
            self._connecting.discard(address)
        reason = None
        if handshake.peer_id == self.session.peer_id:
            reason = "connected to ourselves"
        elif any(p.peer_id == handshake.peer_id for p in self.peers):
            reason = "already connected to this peer"
        elif transport.remote_address[0] in self.banned:
            reason = "banned"
        elif len(self.peers) >= self.config.max_peers:
            reason = "too many peers"
        elif self.error is not None or self._stopping:
            reason = "torrent stopped"
        if reason:
            log.debug("[%s] refusing %s: %s", self.tag, transport.remote_address, reason)
            transport.close()
            return
        peer = Peer(self, transport, wire, handshake, outgoing=address is not None, opened=opened)
        if address is not None:
            peer.address = peer.listen_address = address
        self.peers.add(peer)
        self._active.set()
        self._failures.pop(peer.address, None)
        log.info("%s connected (%s, %s)", peer.tag, peer.kind, "outgoing" if address else "incoming")
        await peer.run(pending)

    def peer_gone(self, peer: Peer) -> None:
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self._fronts.pop(peer, None)
        peer.detach()
        log.info("%s disconnected", peer.tag)
        addr = peer.address
        if peer.bits.complete or peer.upload_only:
            self._seeds.add(addr)
        if addr in self._known or addr in self._sticky:
            self._known[addr] = time.monotonic() + (5.0 if addr in self._sticky else self._retry_delay(addr))
        for other in self.peers:
            other.fill_requests()
        self._wake.set()

    # ----------------------------------------------------------------------------------- events
    def on_block(self, peer: Peer | WebSeed, index: int, begin: int, data: bytes | memoryview) -> None:
        if index in self._verifying:
            return
        blocks = self._blocks.get(index)
        if blocks is None:
            blocks = self._blocks[index] = [None] * self.picker.blocks_in(index)
        blocks[begin // BLOCK_SIZE] = data
        n = len(data)
        self.downloaded += n
        self.downloaded_by_kind[peer.kind] += n
        self._piece_kind.setdefault(index, peer.kind)
        self.down.add(n)
        senders = self._senders.get(index)
        if senders is None:
            senders = self._senders[index] = [None] * len(blocks)
        senders[begin // BLOCK_SIZE] = peer.address[0]
        complete = self.picker.received(index, begin)
        if self.picker.endgame_active:
            for other in self.peers:
                if other is not peer and (index, begin) in other.outstanding:
                    other.cancel(index, begin)
        if complete:
            self._verifying.add(index)
            self._spawn(self._verify(index), f"verify {index}")

    async def _verify(self, index: int) -> None:
        blocks = self._blocks.pop(index)
        try:
            ok = await self.storage.verify_and_write(index, blocks)
        except StorageError as e:
            self.picker.piece_failed(index)
            self.fail(str(e))
            return
        finally:
            self._verifying.discard(index)
        senders = self._senders.pop(index, [])
        contributors = sorted({ip for ip in senders if ip is not None})
        # Withdraw every request still out for this piece (endgame duplicates), before it can be picked
        # again: a late release would otherwise count against the next attempt's blocks.
        if self.picker.endgame_active or not ok:
            for p in self.peers:
                p.forget_piece(index)
        kind = self._piece_kind.pop(index, None)
        if ok:
            self.piece_origin[index] = 2 if kind == "webrtc" else 1
            if index not in self.picker.have and self._left_at == len(self.picker.have):
                self._left -= self.info.piece_size(index)
                self._left_at += 1
            self.picker.piece_verified(index)
            self._credit(index, blocks, contributors)
            waiter = self._piece_waiters.pop(index, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            have = ev.Have(index)
            for p in self.peers:
                p.send(have)
            if self.picker.complete and not self.is_complete:
                self._on_complete()
            return
        self.picker.piece_failed(index)
        self.pieces_failed += 1
        log.warning("[%s] piece %d failed its hash check (from %s)", self.tag, index, ", ".join(contributors))
        for ip in contributors:
            self.hash_failures[ip] += 1
        if len(contributors) == 1:
            ip = contributors[0]
            self._sole_failures[ip] += 1
            if self._sole_failures[ip] >= self.config.max_hash_failures:
                self._ban(ip, f"after {self._sole_failures[ip]} hash failures")
        else:
            self._suspect(index, senders, blocks)
            for ip in contributors:
                self._trust[ip] -= SHARED_FAILURE_COST
                if self._trust[ip] <= -SHARED_FAILURE_BAN:
                    self._ban(ip, "for sharing too many pieces that failed their hash check")
        for p in self.peers:
            p.fill_requests()

    def _suspect(self, index: int, senders: list[str | None], blocks: list[bytes | memoryview | None]) -> None:
        """A piece with several senders failed: remember what each one sent (smart ban)."""
        suspects = self._suspect_blocks.get(index)
        if suspects is None:
            if len(self._suspect_blocks) >= MAX_SUSPECT_PIECES:
                return
            suspects = self._suspect_blocks[index] = {}
        for b, (ip, block) in enumerate(zip(senders, blocks, strict=False)):
            if ip is not None and block is not None and len(suspects) < SUSPECT_ATTEMPTS * len(blocks):
                suspects[(b, ip)] = hashlib.sha1(block).digest()

    def _credit(self, index: int, blocks: list[bytes | memoryview | None], contributors: list[str]) -> None:
        """A piece verified: its senders gain trust, and any sender whose block in an earlier failed attempt
        differs from the good data is banned (smart ban)."""
        for ip in contributors:
            if self._trust[ip] < TRUST_MAX:
                self._trust[ip] += 1
        suspects = self._suspect_blocks.pop(index, None)
        if not suspects:
            return
        good: dict[int, bytes] = {}
        for (b, ip), digest in suspects.items():
            block = blocks[b]
            if block is None:
                continue
            if b not in good:
                good[b] = hashlib.sha1(block).digest()
            if good[b] != digest:
                self._ban(ip, f"for sending a bad block of piece {index}")

    def _ban(self, ip: str, why: str) -> None:
        if ip in self.banned:
            return
        self.banned.add(ip)
        log.warning("[%s] banned %s %s", self.tag, ip, why)
        for p in list(self.peers):
            if p.address[0] == ip:
                p.close("banned")

    def _on_complete(self) -> None:
        try:
            self.storage.ensure_files()
        except (StorageError, OSError) as e:
            self.fail(f"cannot finish files: {e}")
            return
        log.info("[%s] download complete", self.tag)
        self.completed.set()
        if self._announcer is not None:
            self._announcer.completed()
        if self._webrtc is not None:
            for swarm in self._webrtc.swarms:
                swarm.completed()
        for p in list(self.peers):
            p.set_interested(False)
            if p.bits.complete or p.upload_only:
                p.close("both sides are seeds")
        if self.on_complete:
            self.on_complete()

    def on_uploaded(self, peer: Peer, n: int, relayed: int = 0) -> None:
        """``n`` payload bytes went to ``peer``; ``relayed`` of them came from the other swarm."""
        self.uploaded += n
        self.up.add(n)
        self.uploaded_by_kind[peer.kind] += n
        if relayed:
            self.relayed["classic_to_web" if peer.kind == "webrtc" else "web_to_classic"] += relayed

    def on_interest(self, peer: Peer) -> None:
        if peer.peer_interested and peer.am_choking:
            unchoked = sum(1 for p in self.peers if not p.am_choking and p.peer_interested)
            if self.choker.has_free_slot(unchoked):
                peer.unchoke()

    def on_peer_have(self, peer: Peer) -> None:
        if self.is_complete and (peer.bits.complete) and not self.seed_after_complete:
            peer.close("both sides are seeds")

    # ------------------------------------------------------------------------------------ timer
    async def _ticker(self) -> None:
        last_rechoke = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            if not self.peers and not self._readers and not self._peer_demand:
                # Idle (a seed nobody is connected to): sleep until a peer or a reader comes, so a
                # thousand idle torrents do not wake a thousand times a second.
                self.down.tick(time.monotonic())
                self.up.tick(time.monotonic())
                self._active.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_TICK):
                        await self._active.wait()
            now = time.monotonic()
            self.down.tick(now)
            self.up.tick(now)
            cfg = self.config
            for p in list(self.peers):
                p.down.tick(now)
                p.up.tick(now)
                if now - p.last_received > cfg.inactivity_timeout:
                    p.close("silent for too long")
                    continue
                if now - p.last_sent > cfg.keepalive_interval:
                    p.send(ev.KeepAlive())
                    p.last_sent = now
                if p.outstanding and now - p.last_block > cfg.snub_timeout:
                    log.debug("%s snubbed us; re-requesting its %d blocks", p.tag, len(p.outstanding))
                    p.release_stale()
                    p.last_block = now
                    continue  # not refilled now: the released blocks go to the other peers first
                p.fill_requests()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s down %.0f up %.0f B/s, %d requested, %d queued for it, choked %s/%s",
                              p.tag, p.down.rate, p.up.rate, len(p.outstanding), len(p.requests_in),
                              p.peer_choking, p.am_choking)
            self.fast_threshold = FAST_FRACTION * max((p.down.rate for p in self.peers), default=0.0)
            if self._peer_demand or self._readers or not self.is_complete:
                self._refresh_demand(now)
            self._send_pex(now)
            if now - last_rechoke >= RECHOKE_INTERVAL:
                last_rechoke = now
                self.rechoke(now)

    def _send_pex(self, now: float) -> None:
        """BEP 11: tell each peer which listen addresses joined or left since its last message."""
        if self.info.private:
            return
        current: dict[Address, int] = {}
        for p in self.peers:
            if p.listen_address is not None:
                current[p.listen_address] = (PEX_REACHABLE if p.outgoing else 0) | (PEX_SEED if p.bits.complete else 0)
        for p in self.peers:
            if UT_PEX not in p.their_ext or now - p.pex_at < PEX_INTERVAL:
                continue
            added = [(a[0], a[1], f) for a, f in current.items() if a not in p.pex_sent and a != p.listen_address]
            dropped = [a for a in p.pex_sent if a not in current]
            added, dropped = added[:MAX_PEX_PEERS], dropped[:MAX_PEX_PEERS]
            if added or dropped:
                p.send_pex(added, dropped)
                p.pex_at = now
                p.pex_sent.difference_update(dropped)
                p.pex_sent.update((h, port) for h, port, _ in added)

    def rechoke(self, now: float) -> None:
        peers = list(self.peers)
        candidates = [ChokeCandidate(p, p.peer_interested, p.down.rate, p.up.rate) for p in peers]
        unchoke = self.choker.rechoke(candidates, now, seeding=self.is_complete)
        for p in peers:
            if p in unchoke:
                p.unchoke()
            else:
                p.choke()


__all__ = ["Torrent", "BridgeError"]
