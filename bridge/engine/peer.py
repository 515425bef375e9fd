"""One connected peer: decodes its messages, keeps its request pipeline full and serves its requests.

Runs over any PeerTransport (TCP now; uTP and WebRTC use the same class). A peer that misbehaves raises
RemoteProtocolError inside its own task and closes only itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import BridgeError, RemoteProtocolError
from ..net.transport import PeerTransport
from ..proto import events as ev
from ..proto.extension import (
    LT_DONTHAVE,
    METADATA_DATA,
    METADATA_PIECE_SIZE,
    METADATA_REJECT,
    METADATA_REQUEST,
    OUR_EXTENSION_IDS,
    UT_METADATA,
    UT_PEX,
    ExtendedHandshake,
    MetadataMessage,
    PexMessage,
    decode_handshake,
    decode_metadata,
    decode_pex,
    encode_handshake,
    encode_metadata,
    encode_pex,
    metadata_piece_count,
)
from ..proto.wire import BLOCK_SIZE, Wire, encode_piece_header, encode_request
from ..swarm.bitfield import Bitfield
from ..swarm.pipeline import DEFAULT_PEER_REQQ, pipeline_depth
from ..swarm.rate import RateMeter

if TYPE_CHECKING:
    from .torrent import Torrent

log = logging.getLogger(__name__)

#: Requests we queue from one peer (our BEP 10 ``reqq``); libtorrent allows 2000 per peer by default.
MAX_QUEUED_REQUESTS = 2000
#: Requests refused (queue full, choked, a piece we lack, a bad length) since we last choked or unchoked the
#: peer, before it counts as flooding and is dropped. An honest peer has at most our reqq in flight when we
#: choke it; each refusal may cost a reject-request message that waits in memory for a peer not reading.
REQUEST_FLOOD_LIMIT = MAX_QUEUED_REQUESTS
#: Bytes of piece data gathered into one write when serving (fewer, larger writes).
UPLOAD_BATCH_BYTES = 256 * 1024
#: Pieces read ahead of the one being served, and how far into the request queue to look for them.
PREFETCH_PIECES = 8
PREFETCH_SCAN = 256
#: Bytes of messages (not piece data, which is read as it is sent) queued for a peer that is not reading
#: them, before it is dropped: each reject, metadata reply or PEX message a peer provokes waits in memory
#: while its socket is full. An honest peer reads; 4 MiB is a whole metadata dictionary twice over.
MAX_QUEUED_SEND_BYTES = 4 * 1024 * 1024
#: Unrequested or unwanted blocks tolerated before the peer is dropped.
MAX_WASTED_BLOCKS = 500
#: ut_metadata requests served per connection: every piece a few times over is plenty for an honest peer.
MAX_METADATA_REQUESTS_SLACK = 16
#: PEX messages accepted per minute from one peer (BEP 11 senders send at most one a minute).
MAX_PEX_PER_MINUTE = 2


def packed_ip(host: str) -> bytes | None:
    """The 4 or 16 bytes of an IP address (BEP 10 ``yourip``), or None for a name."""
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


class Peer:
    """State and tasks of one peer connection."""

    def __init__(
        self,
        torrent: Torrent,
        transport: PeerTransport,
        wire: Wire,
        handshake: ev.Handshake,
        *,
        outgoing: bool = False,
        opened: bool = False,
    ) -> None:
        self.torrent = torrent
        self.transport = transport
        self.wire = wire
        self.address = transport.remote_address
        self.kind = transport.kind
        self.peer_id = handshake.peer_id
        self.fast = handshake.fast_extension and torrent.config.fast_extension
        self.extended = handshake.extension_protocol
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.bits = Bitfield(torrent.info.num_pieces)
        self._got_bitfield = False
        #: our requests to the peer: (index, begin) -> length, oldest first
        self.outstanding: dict[tuple[int, int], int] = {}
        #: the peer's requests to us
        self.requests_in: deque[tuple[int, int, int]] = deque()
        self.reqq = DEFAULT_PEER_REQQ
        self.client = ""
        self.upload_only = False
        self.outgoing = outgoing
        #: the opening messages (bitfield or have-none, extended handshake) were sent while fetching metadata
        self._opened = opened
        #: extension name -> the id the peer wants that message on (BEP 10 ``m``)
        self.their_ext: dict[str, int] = {}
        #: where the peer accepts connections, if known (dialled address, or its handshake's ``p``)
        self.listen_address: tuple[str, int] | None = self.address if outgoing else None
        self._metadata_served = 0
        self._pex_times: deque[float] = deque()
        #: addresses last told to this peer through PEX
        self.pex_sent: set[tuple[str, int]] = set()
        #: when we last sent this peer a PEX message
        self.pex_at = float("-inf")
        now = time.monotonic()
        self.down = RateMeter(now)
        self.up = RateMeter(now)
        self.last_received = now
        self.last_sent = now
        self.last_block = now
        #: no block came for snub_timeout while requests were out: one request at a time until one does
        self.snubbed = False
        self.wasted = 0
        self.refused_requests = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.tag = f"[{torrent.tag} {self.address[0]}:{self.address[1]}]"

    def __repr__(self) -> str:
        return f"<Peer {self.address[0]}:{self.address[1]} {self.kind}>"

    # ------------------------------------------------------------------------------------ output
    def send(self, event: ev.Event) -> None:
        self._queue(self.wire.send(event))

    def _queue(self, data: bytes) -> None:
        if self.closed:
            return  # nothing more goes out (the rest of a batch of messages is still handled)
        self._out.append(data)
        self._out_bytes += len(data)
        self._wake.set()
        if self._out_bytes > MAX_QUEUED_SEND_BYTES and not self.closed:
            log.info("%s dropped: it is not reading (over %d bytes of messages queued for it)", self.tag,
                     MAX_QUEUED_SEND_BYTES)
            self.close("not reading")

    def choke(self) -> None:
        if not self.am_choking:
            self.am_choking = True
            self.send(ev.Choke())
            if self.fast:
                for index, begin, length in self.requests_in:
                    self.send(ev.RejectRequest(index, begin, length))
            self.requests_in.clear()
            self.refused_requests = 0

    def unchoke(self) -> None:
        if self.am_choking:
            self.am_choking = False
            self.refused_requests = 0
            self.send(ev.Unchoke())

    def set_interested(self, interested: bool) -> None:
        if interested != self.am_interested:
            self.am_interested = interested
            self.send(ev.Interested() if interested else ev.NotInterested())

    def close(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            if reason:
                log.debug("%s closing: %s", self.tag, reason)
            self.transport.close()
            self._wake.set()

    # --------------------------------------------------------------------------------------- run
    async def run(self, pending: list[ev.Event]) -> None:
        """Serve the connection until it closes. Never raises for peer misbehaviour."""
        t = self.torrent
        try:
            self._send_opening()
            sender = asyncio.create_task(self._sender(), name=f"send {self.tag}")
            try:
                self._handle_all(pending)
                while not self.closed:
                    data = await self.transport.read()
                    if not data:
                        break
                    self.last_received = now = time.monotonic()
                    self._handle_all(self.wire.receive_data(data))
                    limit = t.session.download_limit
                    if not limit.unlimited and (wait := limit.take(len(data), now)) > 0:
                        await asyncio.sleep(wait)  # not reading: the peer's sending backs up
            finally:
                self.close()
                sender.cancel()
                try:
                    await sender
                except (asyncio.CancelledError, BridgeError, OSError):
                    pass
        except RemoteProtocolError as e:
            log.info("%s dropped: %s", self.tag, e)
        except (ConnectionError, OSError) as e:
            log.debug("%s connection lost: %s", self.tag, e)
        finally:
            self.close()
            t.peer_gone(self)
            await self.transport.wait_closed()

    def extended_handshake(self) -> ExtendedHandshake:
        t = self.torrent
        m = dict(OUR_EXTENSION_IDS)
        if t.info.private:
            m.pop(UT_PEX)  # BEP 27: no PEX on private torrents
        return ExtendedHandshake(
            m=m,
            v=f"webtorrent-bridge {__version__}",
            p=t.listen_port or None,
            reqq=MAX_QUEUED_REQUESTS,
            metadata_size=len(t.info.raw),
            upload_only=t.picker.complete,
            yourip=packed_ip(self.address[0]),
        )

    def _send_opening(self) -> None:
        t = self.torrent
        have = t.picker.have
        if self._opened:
            # Metadata was fetched on this connection: we already said have-none; now say what we have.
            if self.extended:
                self.send(ev.Extended(0, encode_handshake(self.extended_handshake())))
            for i in have:
                self.send(ev.Have(i))
            return
        if self.fast and have.complete:
            self.send(ev.HaveAll())
        elif self.fast and len(have) == 0:
            self.send(ev.HaveNone())
        elif len(have):
            self.send(ev.Bitfield(have.to_bytes()))
        if self.extended:
            self.send(ev.Extended(0, encode_handshake(self.extended_handshake())))

    async def _sender(self) -> None:
        """The only writer: flushes queued messages and serves requested blocks, with back-pressure."""
        try:
            await self._send_loop()
        except (BridgeError, OSError) as e:
            self.close(f"sending failed: {e}")

    def _prefetch_after(self, index: int) -> None:
        """Start loading the next pieces this peer has asked for, so disk reads overlap with sending."""
        storage = self.torrent.storage
        ahead: set[int] = set()
        for n, (i, _, _) in enumerate(self.requests_in):
            if n >= PREFETCH_SCAN or len(ahead) >= PREFETCH_PIECES:
                break
            if i != index and i not in ahead:
                ahead.add(i)
                storage.prefetch(i)

    async def _send_loop(self) -> None:
        storage = self.torrent.storage
        last_index = -1
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while (self._out or (self.requests_in and not self.am_choking)) and not self.closed:
                chunks: list[bytes | memoryview] = list(self._out)
                self._out.clear()
                self._out_bytes = 0
                budget = UPLOAD_BATCH_BYTES
                served = 0
                relayed = 0
                origin = self.torrent.piece_origin
                other_side = 1 if self.kind == "webrtc" else 2
                while self.requests_in and not self.am_choking and budget > 0:
                    index, begin, length = self.requests_in.popleft()
                    if index != last_index:
                        last_index = index
                        self._prefetch_after(index)
                    data = await storage.read_block(index, begin, length)
                    chunks.append(encode_piece_header(index, begin, length))
                    chunks.append(data)
                    budget -= length
                    served += length
                    if origin[index] == other_side:
                        relayed += length
                if not chunks:
                    continue
                limit = self.torrent.session.upload_limit
                if served and not limit.unlimited and (wait := limit.take(served, time.monotonic())) > 0:
                    await asyncio.sleep(wait)
                await self.transport.write(b"".join(chunks))
                self.last_sent = time.monotonic()
                if served:
                    self.up.add(served)
                    self.torrent.on_uploaded(self, served, relayed)

    # ---------------------------------------------------------------------------------- handling
    def _handle_all(self, events: list[ev.Event]) -> None:
        for e in events:
            if isinstance(e, ev.Piece):
                self._on_piece(e)
            else:
                self._handle(e)
        self.fill_requests()

    def _handle(self, e: ev.Event) -> None:
        t = self.torrent
        n = t.info.num_pieces
        match e:
            case ev.Request(index=index, begin=begin, length=length):
                self._on_request(index, begin, length)
            case ev.Have(index=index):
                if index >= n:
                    raise RemoteProtocolError(f"have for piece {index} of {n}")
                if self.bits.add(index):
                    t.picker.peer_has(index)
                    if not self.am_interested and t.picker.wanted(index):
                        self.set_interested(True)
                    t.on_peer_have(self)
            case ev.Bitfield(bits=bits):
                # A bitfield is meant to come once, first; aria2 sends a second one after "interested".
                # Treat a later one as the peer's new full state.
                self._set_bits(Bitfield.from_bytes(bits, n))
            case ev.HaveAll() | ev.HaveNone():
                if not self.fast:
                    raise RemoteProtocolError("have-all/have-none without the fast extension")
                if self._got_bitfield:
                    raise RemoteProtocolError("have-all/have-none after a bitfield")
                self._set_bits(Bitfield(n, fill=isinstance(e, ev.HaveAll)))
            case ev.Choke():
                self.peer_choking = True
                # BEP 6: with the fast extension a choke does not cancel our requests; the peer rejects
                # each one it will not serve (and the snub timeout covers a peer that never does).
                if not self.fast:
                    self._release_all()
            case ev.Unchoke():
                self.peer_choking = False
            case ev.Interested():
                self.peer_interested = True
                t.on_interest(self)
            case ev.NotInterested():
                self.peer_interested = False
                t.on_interest(self)
            case ev.Cancel(index=index, begin=begin, length=length):
                try:
                    self.requests_in.remove((index, begin, length))
                except ValueError:
                    pass
            case ev.RejectRequest(index=index, begin=begin):
                if not self.fast:
                    raise RemoteProtocolError("reject without the fast extension")
                if self.outstanding.pop((index, begin), None) is not None:
                    t.picker.release(index, begin)
            case ev.Extended(ext_id=0, payload=payload):
                hs = decode_handshake(payload)
                if hs.reqq:
                    self.reqq = hs.reqq
                self.client = hs.v or self.client
                self.upload_only = hs.upload_only
                self.their_ext = {k: v for k, v in hs.m.items() if v}
                if hs.p and not self.outgoing:
                    self.listen_address = (self.address[0], hs.p)
                if self.upload_only and t.is_complete:
                    self.close("both sides are seeds")
            case ev.Extended(ext_id=ext_id, payload=payload) if ext_id == OUR_EXTENSION_IDS[UT_METADATA]:
                self._on_metadata(payload)
            case ev.Extended(ext_id=ext_id, payload=payload) if ext_id == OUR_EXTENSION_IDS[UT_PEX]:
                self._on_pex(payload)
            case ev.Extended(ext_id=ext_id, payload=payload) if ext_id == OUR_EXTENSION_IDS[LT_DONTHAVE]:
                if len(payload) != 4:
                    raise RemoteProtocolError("lt_donthave payload is not 4 bytes")
                index = int.from_bytes(payload, "big")
                if index < n and self.bits.discard(index):
                    t.picker.peer_lost(index)
            case ev.KeepAlive() | ev.Extended() | ev.Port() | ev.SuggestPiece() | ev.AllowedFast():
                pass
            case ev.UnknownMessage(msg_id=msg_id):
                log.debug("%s ignored unknown message %d", self.tag, msg_id)
            case ev.Handshake():
                raise RemoteProtocolError("second handshake")

    def _on_metadata(self, payload: bytes) -> None:
        msg = decode_metadata(payload)
        their_id = self.their_ext.get(UT_METADATA)
        if msg.msg_type != METADATA_REQUEST or their_id is None:
            return  # we have the metadata already; data and rejects are of no use
        raw = self.torrent.info.raw
        pieces = metadata_piece_count(len(raw))
        self._metadata_served += 1
        if msg.piece >= pieces or self._metadata_served > 2 * pieces + MAX_METADATA_REQUESTS_SLACK:
            self.send(ev.Extended(their_id, encode_metadata(MetadataMessage(METADATA_REJECT, msg.piece))))
            return
        start = msg.piece * METADATA_PIECE_SIZE
        data = raw[start : start + METADATA_PIECE_SIZE]
        self.send(ev.Extended(their_id, encode_metadata(MetadataMessage(METADATA_DATA, msg.piece, len(raw), data))))

    def _on_pex(self, payload: bytes) -> None:
        t = self.torrent
        if t.info.private:
            return
        now = time.monotonic()
        times = self._pex_times
        while times and now - times[0] > 60:
            times.popleft()
        if len(times) >= MAX_PEX_PER_MINUTE:
            log.debug("%s ignored a PEX message: more than %d a minute", self.tag, MAX_PEX_PER_MINUTE)
            return
        times.append(now)
        msg = decode_pex(payload)
        t.add_peers([(host, port) for host, port, _flags in msg.added], source="pex")

    def send_pex(self, added: list[tuple[str, int, int]], dropped: list[tuple[str, int]]) -> None:
        their_id = self.their_ext.get(UT_PEX)
        if their_id is None or self.torrent.info.private or not (added or dropped):
            return
        self.send(ev.Extended(their_id, encode_pex(PexMessage(tuple(added), tuple(dropped)))))

    def _set_bits(self, bits: Bitfield) -> None:
        self._got_bitfield = True
        t = self.torrent
        t.picker.remove_peer(self.bits)  # haves that came before the bitfield
        self.bits = bits
        t.picker.add_peer(bits)
        if t.picker.is_interesting(bits):
            self.set_interested(True)
        t.on_peer_have(self)

    def _on_request(self, index: int, begin: int, length: int) -> None:
        t = self.torrent
        ok = (
            not self.am_choking
            and index in t.picker.have
            and 0 < length <= BLOCK_SIZE
            and begin + length <= t.info.piece_size(index)
            and len(self.requests_in) < MAX_QUEUED_REQUESTS
        )
        if ok:
            self.requests_in.append((index, begin, length))
            self._wake.set()
            return
        if index not in t.picker.have and 0 <= index < t.info.num_pieces:
            t.on_demand(self, index)
        self.refused_requests += 1
        if self.refused_requests > REQUEST_FLOOD_LIMIT:
            why = "queue full" if len(self.requests_in) >= MAX_QUEUED_REQUESTS else "choked or unservable"
            raise RemoteProtocolError(f"request flood: more than {REQUEST_FLOOD_LIMIT} requests refused ({why})")
        if self.fast:
            self.send(ev.RejectRequest(index, begin, length))

    def _on_piece(self, e: ev.Piece) -> None:
        t = self.torrent
        key = (e.index, e.begin)
        length = self.outstanding.pop(key, None)
        size = len(e.data)
        if length is None:
            # Not (or no longer) requested from this peer: keep it only if it fills a hole exactly.
            if not (
                e.index < t.info.num_pieces
                and t.picker.wants_block(e.index, e.begin)
                and size == t.picker.block_length(e.index, e.begin)
            ):
                self.wasted += 1
                if self.wasted > MAX_WASTED_BLOCKS:
                    raise RemoteProtocolError("too many unrequested blocks")
                return
        elif size != length:
            raise RemoteProtocolError(f"block {e.index}:{e.begin} has {size} bytes, requested {length}")
        else:
            self.snubbed = False
        self.down.add(size)
        self.last_block = self.last_received
        t.on_block(self, e.index, e.begin, e.data)

    def _release_all(self) -> None:
        picker = self.torrent.picker
        for index, begin in self.outstanding:
            picker.release(index, begin)
        self.outstanding.clear()

    def fill_requests(self) -> None:
        if self.peer_choking or not self.am_interested or self.closed:
            return
        depth = 1 if self.snubbed else pipeline_depth(self.down.rate, self.reqq, self.down.total)
        need = depth - len(self.outstanding)
        # Top up in batches so one read does not produce a trickle of single requests.
        if need < max(1, depth // 8):
            return
        t = self.torrent
        blocks = t.picker.pick(self.bits, need, self.outstanding, self.down.rate >= t.fast_threshold)
        if not blocks:
            if not self.outstanding and not self.torrent.picker.is_interesting(self.bits):
                self.set_interested(False)
            return
        out = self.outstanding
        for index, begin, length in blocks:
            out[(index, begin)] = length
        self._queue(b"".join([encode_request(i, b, n) for i, b, n in blocks]))
        self._wake.set()

    def cancel(self, index: int, begin: int) -> None:
        """Withdraw a request (endgame: the block came from someone else)."""
        length = self.outstanding.pop((index, begin), None)
        if length is not None:
            self.torrent.picker.release(index, begin)
            self.send(ev.Cancel(index, begin, length))

    def forget_piece(self, index: int) -> None:
        """Cancel our requests for a piece that was just verified or failed (no picker bookkeeping)."""
        stale = [key for key in self.outstanding if key[0] == index]
        for key in stale:
            length = self.outstanding.pop(key)
            if not self.closed:
                self.send(ev.Cancel(index, key[1], length))

    def release_stale(self) -> None:
        """Give back every outstanding request (the peer stopped delivering); it is snubbed: one request at
        a time until it delivers again, so it cannot take the released blocks straight back."""
        self.snubbed = True
        self._release_all()

    def detach(self) -> None:
        """Remove this peer's share from the picker (on close)."""
        self._release_all()
        self.torrent.picker.remove_peer(self.bits)
