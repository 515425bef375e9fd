"""Fetching the info dictionary of a magnet link from peers (BEP 9), several peers at once.

Connections opened here are handed to the torrent once the metadata verifies, with every message the
peer sent meanwhile (bitfield, haves), so no peer is dialled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import __version__
from ..config import PeerConfig
from ..errors import RemoteProtocolError
from ..net.transport import PeerTransport
from ..proto import events as ev
from ..proto.extension import (
    METADATA_DATA,
    METADATA_REJECT,
    METADATA_REQUEST,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    ExtendedHandshake,
    MetadataMessage,
    decode_handshake,
    decode_metadata,
    encode_handshake,
    encode_metadata,
)
from ..proto.wire import Wire
from ..swarm.metadata import MetadataAssembler
from .handshake import our_handshake
from .peer import packed_ip

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: Seconds before redialling an address during the metadata phase.
REDIAL_DELAY = 10.0
#: Requests we accept from a peer while we have no metadata ourselves: we reject them, then drop a peer
#: that keeps asking.
MAX_REQUESTS_WITHOUT_METADATA = 64


@dataclass
class OpenConnection:
    """A live connection ready for the torrent: handshakes done, our opening messages sent."""

    transport: PeerTransport
    wire: Wire
    handshake: ev.Handshake
    #: the dialled address, or another unique key for a WebRTC peer
    address: Hashable
    #: we dialled ``address`` (so it can be redialled and shared through PEX)
    dialled: bool = True
    #: messages received that the torrent must still see (bitfield, haves, ...)
    pending: list[ev.Event] = field(default_factory=list)


class MetadataFetcher:
    def __init__(self, session: Session, info_hash: bytes, config: PeerConfig, tag: str = "") -> None:
        self.session = session
        self.info_hash = info_hash
        self.config = config
        self.tag = tag or info_hash.hex()[:8]
        self.assembler = MetadataAssembler(info_hash)
        self._known: dict[Address, float] = {}
        self._busy: set[Hashable] = set()
        self._open: dict[Hashable, OpenConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.done = asyncio.Event()
        self.raw: bytes | None = None
        #: (connected peers, peers that support ut_metadata) for progress reports
        self.connected = 0

    def add_peers(self, addresses: Iterable[Address], sticky: bool = False, source: str = "") -> None:
        now = time.monotonic()
        for addr in addresses:
            self._known.setdefault(addr, now)
        self._wake.set()

    async def run(self) -> tuple[bytes, list[OpenConnection]]:
        """Dial known peers until the metadata verifies; return it and the live connections."""
        try:
            while not self.done.is_set():
                self._wake.clear()
                now = time.monotonic()
                for addr, when in list(self._known.items()):
                    if len(self._busy) >= self.config.max_half_open + 8:
                        break
                    if when <= now and addr not in self._busy:
                        self._busy.add(addr)
                        self._known[addr] = now + REDIAL_DELAY
                        task = asyncio.create_task(self._connection(addr), name=f"metadata {addr}")
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self.done.wait())]
                try:
                    await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            # Let every connection loop notice completion and park its connection.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        except BaseException:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for conn in self._open.values():
                conn.transport.close()
            raise
        assert self.raw is not None
        suspects = self.assembler.suspects
        keep = []
        for key, conn in self._open.items():
            if key in suspects:
                conn.transport.close()
            else:
                keep.append(conn)
        return self.raw, keep

    # -------------------------------------------------------------- RtcTarget (WebRTC peers)
    def our_handshake(self) -> ev.Handshake:
        return our_handshake(self.info_hash, self.session.peer_id, self.config)

    def room(self) -> int:
        return 0 if self.done.is_set() else max(0, self.config.max_peers - len(self._busy))

    def stats(self) -> tuple[int, int, int | None]:
        return 0, 0, None  # size unknown until the metadata is in

    async def adopt(self, transport: PeerTransport, wire: Wire, handshake: ev.Handshake,
                    pending: list[ev.Event]) -> None:
        """A WebRTC peer (a browser) found through a WebSocket tracker: fetch metadata from it too."""
        key = ("webrtc", id(transport))
        self._busy.add(key)
        await self._serve(OpenConnection(transport, wire, handshake, key, dialled=False), pending)

    # ------------------------------------------------------------------------------------- TCP
    async def _connection(self, addr: Address) -> None:
        try:
            opened = await self.session.dial(addr[0], addr[1], self.our_handshake(), self.config)
        except (OSError, TimeoutError, RemoteProtocolError) as e:
            log.debug("[%s] metadata from %s:%d: %s", self.tag, addr[0], addr[1], e or type(e).__name__)
            self._busy.discard(addr)
            self._wake.set()
            return
        conn = OpenConnection(opened.transport, opened.wire, opened.handshake, addr)
        await self._serve(conn, opened.pending)

    async def _serve(self, conn: OpenConnection, events: list[ev.Event]) -> None:
        """Send our opening messages and trade metadata; keep the connection for the torrent if it is good."""
        cfg = self.config
        addr = conn.address
        hs = conn.handshake
        keep_open = False
        try:
            if hs.peer_id == self.session.peer_id:
                return
            if not hs.extension_protocol:
                log.debug("[%s] %s has no extension protocol; cannot fetch metadata", self.tag, addr)
                return
            opening = b""
            if hs.fast_extension and cfg.fast_extension:
                opening += conn.wire.send(ev.HaveNone())
            ours = ExtendedHandshake(
                m=dict(OUR_EXTENSION_IDS),
                v=f"webtorrent-bridge {__version__}",
                p=self.session.listen_port or None,
                yourip=packed_ip(conn.transport.remote_address[0]),
            )
            opening += conn.wire.send(ev.Extended(0, encode_handshake(ours)))
            await conn.transport.write(opening)
            self.connected += 1
            keep_open = await self._exchange(conn, events)
            if keep_open:
                self._open[addr] = conn
        except (OSError, TimeoutError, RemoteProtocolError) as e:
            log.debug("[%s] metadata from %s: %s", self.tag, addr, e or type(e).__name__)
        finally:
            self._busy.discard(addr)
            self.assembler.peer_gone(addr)
            if not keep_open:
                conn.transport.close()
            self._wake.set()

    async def _exchange(self, conn: OpenConnection, events: list[ev.Event]) -> bool:
        """Trade messages until the metadata is complete (True: keep the connection) or the peer fails."""
        their_id: int | None = None
        requests_seen = 0
        addr = conn.address
        done_wait = asyncio.ensure_future(self.done.wait())
        try:
            while True:
                out = b""
                for e in events:
                    if isinstance(e, ev.Extended) and e.ext_id == 0:
                        theirs = decode_handshake(e.payload)
                        their_id = theirs.m.get(UT_METADATA) or None
                        if their_id is None or theirs.metadata_size is None:
                            log.debug("[%s] %s cannot serve metadata", self.tag, addr)
                            return False
                        if not self.assembler.offer_size(theirs.metadata_size, addr):
                            log.info("[%s] %s gave an unusable metadata size %d", self.tag, addr,
                                     theirs.metadata_size)
                            return False
                        conn.pending.append(e)  # the torrent's peer learns reqq, m, p from it too
                    elif isinstance(e, ev.Extended) and e.ext_id == OUR_EXTENSION_IDS[UT_METADATA]:
                        msg = decode_metadata(e.payload)
                        if msg.msg_type == METADATA_DATA and msg.total_size is not None:
                            raw = self.assembler.on_data(msg.piece, msg.total_size, msg.data, addr)
                            if raw is not None and self.raw is None:
                                self.raw = raw
                                self.done.set()
                        elif msg.msg_type == METADATA_REJECT:
                            self.assembler.on_reject(msg.piece, addr)
                        elif msg.msg_type == METADATA_REQUEST and their_id is not None:
                            requests_seen += 1
                            if requests_seen > MAX_REQUESTS_WITHOUT_METADATA:
                                raise RemoteProtocolError("too many metadata requests")
                            out += conn.wire.send(
                                ev.Extended(their_id, encode_metadata(MetadataMessage(METADATA_REJECT, msg.piece)))
                            )
                    else:
                        conn.pending.append(e)
                if addr in self.assembler.suspects:
                    log.info("[%s] %s sent metadata that failed the info-hash", self.tag, addr)
                    return False
                if self.done.is_set():
                    if out:
                        await conn.transport.write(out)
                    return addr not in self.assembler.suspects
                if their_id is not None:
                    while (piece := self.assembler.next_request(addr)) is not None:
                        req = MetadataMessage(METADATA_REQUEST, piece)
                        out += conn.wire.send(ev.Extended(their_id, encode_metadata(req)))
                if out:
                    await conn.transport.write(out)
                read = asyncio.ensure_future(conn.transport.read())
                await asyncio.wait([read, done_wait], return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    # Completed elsewhere; nothing was consumed from this connection.
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                    return True
                data = read.result()
                if not data:
                    return False
                events = conn.wire.receive_data(data)
        finally:
            done_wait.cancel()
