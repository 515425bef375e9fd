"""The tracker's swarm registry, sans-IO: no asyncio, no sockets, no clock.

Time is always an argument (``now``, seconds on any monotonic scale) and the random source is injectable, so
the same calls with the same ``now`` and the same seeded ``random.Random`` give the same decisions.

Peers come in two shapes:

* **address peers** (HTTP and UDP announces), keyed by ``(ip, port)``: the IP is the request's source address,
  so one host cannot add or remove entries for another. A new ``peer_id`` on the same address replaces the
  old one (the client restarted).
* **WebSocket peers** (WebTorrent signalling), keyed by ``peer_id`` and bound to the socket that announced
  them (``socket`` is any hashable object the I/O layer picks, e.g. its connection object). Another socket
  cannot update, stop or impersonate them; a closed socket leaves every swarm it joined. WebSocket peers have
  no address and are never handed out in peer lists: they are reached by forwarding offers.

The WebSocket methods return the messages to send as ``(socket, message)`` pairs (codec objects from
:mod:`bridge.proto.wstracker`), the announcer's reply first. Requests that break a limit or refer to
something unknown raise :class:`~bridge.errors.TrackerError`, whose text is meant for ``failure reason``.

Counting rules (BEP 48 scrape fields):

* ``complete`` counts peers whose ``left`` is 0; ``incomplete`` counts every other peer, **including
  ``left: null``** (a magnet whose size is not known yet has nothing). The reference tracker counts null as
  complete because it converts it with ``Number(null) === 0``.
* ``downloaded`` counts peers seen going from incomplete to complete, once per peer entry. A peer whose first
  announce already says ``left=0`` (a seed starting, or WebTorrent's ``completed`` sent before ``started``)
  did not download anything while this tracker watched and is not counted.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ..errors import TrackerError
from ..proto.wstracker import (
    MAX_OFFERS,
    Announce,
    AnnounceReply,
    Answer,
    ForwardedOffer,
    RelayedAnswer,
    TrackerMessage,
)

__all__ = [
    "Kind",
    "Peer",
    "PeerAddress",
    "AddrReply",
    "Swarm",
    "SwarmRegistry",
    "DEFAULT_INTERVAL",
    "EXPIRY_INTERVALS",
    "MAX_PEERS_PER_SWARM",
    "MAX_PEERS_TOTAL",
    "MAX_SWARMS",
    "MAX_SWARMS_PER_SOCKET",
    "MAX_OFFERS_PER_ANNOUNCE",
    "DEFAULT_NUMWANT",
    "MAX_NUMWANT",
    "MAX_WS_CONNECTIONS",
]

# ---------------------------------------------------------------------------------------------------------
# Limits: every number a client controls is bounded here
# ---------------------------------------------------------------------------------------------------------

#: Re-announce interval told to clients, in seconds. The reference WebSocket tracker answers 120 s, and
#: WebTorrent re-announces (with fresh offers) at that rate; HTTP/UDP clients follow it too.
DEFAULT_INTERVAL = 120
#: A peer that has not announced for this many intervals is dropped (aquatic drops after 180 s, opentracker
#: after about two intervals). Three tolerates one lost or late announce with room to spare.
EXPIRY_INTERVALS = 3
#: Peers kept per swarm (all kinds together). The reference tracker keeps 1000 (an LRU); large public
#: torrents have more, so ten times that. New peers beyond it get a failure; known peers still update.
#: About 300 bytes per peer makes a full swarm ~3 MB.
MAX_PEERS_PER_SWARM = 10_000
#: Peers kept over all swarms. Bounds memory (~300 MB at most) whatever mix of swarms a client invents.
MAX_PEERS_TOTAL = 1_000_000
#: Swarms (info-hashes) tracked at once. Anyone can announce any 20 bytes, so a swarm costs a client
#: nothing; this caps how many a tracker holds (empty swarms are dropped at once).
MAX_SWARMS = 100_000
#: Swarms one WebSocket connection may join. A WebTorrent client shares one socket per tracker among all of
#: its torrents; a few hundred torrents in one tab is already a lot, so 1000 leaves room for a bridge.
MAX_SWARMS_PER_SOCKET = 1_000
#: Offers forwarded per announce. WebTorrent sends at most 5 and libtorrent 10; the codec keeps at most 10.
MAX_OFFERS_PER_ANNOUNCE = MAX_OFFERS
#: Peers returned to an HTTP/UDP announce that does not say ``numwant``: BEP 3's customary 50.
DEFAULT_NUMWANT = 50
#: Most peers returned per address family to one HTTP/UDP announce. Clients ask for 50-200; more addresses
#: from one source do not help a swarm, and the cap bounds the reply (200 * 6 bytes fits one UDP datagram).
MAX_NUMWANT = 200
#: When a sample of ``k`` peers is drawn from a large pool by rejection (skipping the announcer and, for a
#: seed, other seeds), give up after this many draws per wanted peer: a pool of mostly unsuitable peers then
#: yields fewer peers instead of costing a scan of the whole swarm on every announce.
_DRAWS_PER_PEER = 4
#: Open WebSocket connections the server takes at once (its ``max_connections`` default; kept here with
#: the other limits so the CLI can show it without importing the server). Each costs a task, buffers and a
#: file descriptor, so the process needs RLIMIT_NOFILE above it; further upgrade requests get HTTP 503.
MAX_WS_CONNECTIONS = 10_000

#: The ``socket`` of _sample's callers that have none to avoid: no peer is on it.
_NO_SOCKET: Hashable = object()
#: Builds a codec message (a NamedTuple) from a tuple of all its fields, skipping the Python-level
#: ``__new__`` of NamedTuple: half the cost, on the per-offer path of announce_ws.
_build = tuple.__new__

Kind = Literal["http", "udp", "ws"]
KINDS: tuple[Kind, ...] = ("http", "udp", "ws")

_AddrKey = tuple[str, int]
#: ``peer_id`` (bytes) for WebSocket peers, ``(ip, port)`` for address peers: the two never collide.
_Key = bytes | _AddrKey


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Peer:
    """One peer of one swarm (mutable, owned by its :class:`Swarm`)."""

    #: 20-byte peer id as last announced.
    peer_id: bytes
    #: How it announced: "http", "udp" or "ws".
    kind: Kind
    #: (ip, port) for address peers; None for WebSocket peers.
    addr: _AddrKey | None
    #: The WebSocket connection (I/O layer's key) for WebSocket peers; None for address peers.
    socket: Hashable | None
    #: Bytes left as announced; None when unknown (``left: null``, or missing in HTTP).
    left: int | None
    #: ``now`` of the last announce.
    last_seen: float
    #: Counted in the swarm's ``downloaded`` already.
    counted_download: bool = False
    #: Index in the swarm's pool of its kind (kept by _Pool).
    slot: int = -1

    @property
    def complete(self) -> bool:
        return self.left == 0


class PeerAddress(NamedTuple):
    """An address peer as handed out in HTTP/UDP replies."""

    peer_id: bytes
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class AddrReply:
    """The registry's answer to an HTTP/UDP announce."""

    #: Seeders in the swarm after this announce (all kinds).
    complete: int
    #: Leechers (including ``left`` unknown) after this announce.
    incomplete: int
    #: Re-announce interval, seconds.
    interval: int
    #: Other IPv4 address peers, randomly chosen, at most numwant.
    peers4: tuple[PeerAddress, ...]
    #: Other IPv6 address peers, randomly chosen, at most numwant.
    peers6: tuple[PeerAddress, ...]


class _Pool:
    """An indexable set of peers: O(1) add, remove (swap with last) and uniform random pick."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Peer] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, peer: Peer) -> None:
        peer.slot = len(self.items)
        self.items.append(peer)

    def remove(self, peer: Peer) -> None:
        last = self.items.pop()
        if last is not peer:
            self.items[peer.slot] = last
            last.slot = peer.slot
        peer.slot = -1


class Swarm:
    """The peers of one info-hash and its counters."""

    __slots__ = ("info_hash", "peers", "ws", "v4", "v6", "complete", "incomplete", "downloaded", "ws_reply")

    def __init__(self, info_hash: bytes) -> None:
        self.info_hash = info_hash
        #: Every peer, in order of last announce (oldest first): expiry pops from the front.
        self.peers: dict[_Key, Peer] = {}
        self.ws = _Pool()
        self.v4 = _Pool()
        self.v6 = _Pool()
        self.complete = 0
        self.incomplete = 0
        self.downloaded = 0
        #: The last AnnounceReply built for this swarm, reused while its counts and interval stay the same
        #: (see SwarmRegistry._swarm_reply).
        self.ws_reply: AnnounceReply | None = None

    def pool(self, peer: Peer) -> _Pool:
        if peer.addr is None:
            return self.ws
        return self.v6 if ":" in peer.addr[0] else self.v4

    def __len__(self) -> int:
        return len(self.peers)


Outgoing = tuple[Hashable, TrackerMessage]


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------


class SwarmRegistry:
    """All swarms of one tracker. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        *,
        interval: int = DEFAULT_INTERVAL,
        rng: random.Random | None = None,
        max_peers_per_swarm: int = MAX_PEERS_PER_SWARM,
        max_peers_total: int = MAX_PEERS_TOTAL,
        max_swarms: int = MAX_SWARMS,
        max_swarms_per_socket: int = MAX_SWARMS_PER_SOCKET,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.rng = rng if rng is not None else random.Random()
        self.max_peers_per_swarm = max_peers_per_swarm
        self.max_peers_total = max_peers_total
        self.max_swarms = max_swarms
        self.max_swarms_per_socket = max_swarms_per_socket
        self.swarms: dict[bytes, Swarm] = {}
        #: WebSocket connection -> {info_hash: peer_id} of the swarms it joined.
        self._sockets: dict[Hashable, dict[bytes, bytes]] = {}
        #: Current peers by kind.
        self.peer_counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Successful announces by kind, since start.
        self.announces: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.offers_forwarded = 0
        self.answers_relayed = 0
        self.peers_expired = 0

    # ------------------------------------------------------------------------------------- queries

    @property
    def peer_total(self) -> int:
        return sum(self.peer_counts.values())

    def scrape(self, info_hashes: Iterable[bytes]) -> list[tuple[bytes, int, int, int]]:
        """(info_hash, complete, incomplete, downloaded) for each hash; zeros for unknown swarms."""
        out = []
        for ih in info_hashes:
            swarm = self.swarms.get(ih)
            if swarm is None:
                out.append((ih, 0, 0, 0))
            else:
                out.append((ih, swarm.complete, swarm.incomplete, swarm.downloaded))
        return out

    def socket_swarms(self, socket: Hashable) -> dict[bytes, bytes]:
        """{info_hash: peer_id} of the swarms ``socket`` is in (a copy)."""
        return dict(self._sockets.get(socket, {}))

    def stats(self) -> dict[str, Any]:
        seeders = sum(s.complete for s in self.swarms.values())
        leechers = sum(s.incomplete for s in self.swarms.values())
        return {
            "swarms": len(self.swarms),
            "peers": {**self.peer_counts, "total": self.peer_total},
            "seeders": seeders,
            "leechers": leechers,
            "announces": {**self.announces, "total": sum(self.announces.values())},
            "ws_sockets_in_swarms": len(self._sockets),
            "offers_forwarded": self.offers_forwarded,
            "answers_relayed": self.answers_relayed,
            "peers_expired": self.peers_expired,
        }

    # ------------------------------------------------------------------------------------- HTTP / UDP

    def announce_addr(
        self,
        kind: Kind,
        info_hash: bytes,
        peer_id: bytes,
        ip: str,
        port: int,
        left: int | None,
        event: str | None,
        numwant: int,
        now: float,
        *,
        want4: bool = True,
        want6: bool = True,
    ) -> AddrReply:
        """An HTTP or UDP announce from ``ip`` (the request's source address) for ``port``.

        ``event`` is "started", "completed", "stopped" or None (a regular update; "paused" too).
        Returns counts and up to ``numwant`` (capped at MAX_NUMWANT) other peers of each wanted family;
        a seed is not given other seeds, a stopped peer gets no peers. Raises TrackerError when the
        swarm or the tracker is full.
        """
        if kind not in ("http", "udp"):
            raise ValueError(f"not an address peer kind: {kind!r}")
        key: _AddrKey = (ip, port)
        if event == "stopped":
            swarm = self.swarms.get(info_hash)
            if swarm is not None and key in swarm.peers:
                self._remove(swarm, key)
            self.announces[kind] += 1
            return self._addr_reply(swarm, None, 0, False, False)
        swarm = self._swarm(info_hash)
        peer = swarm.peers.get(key)
        try:
            if peer is None:
                peer = Peer(peer_id, kind, key, None, left, now)
                self._add(swarm, key, peer)
            else:
                if peer.kind != kind:
                    self.peer_counts[peer.kind] -= 1
                    self.peer_counts[kind] += 1
                    peer.kind = kind
                if peer.peer_id != peer_id:  # the client restarted on the same address
                    peer.peer_id = peer_id
                    peer.counted_download = False
                self._update(swarm, key, peer, left, now)
        finally:
            self._drop_if_empty(swarm)
        self.announces[kind] += 1
        n = max(0, min(numwant, MAX_NUMWANT))
        return self._addr_reply(swarm, peer, n, want4, want6)

    def _addr_reply(self, swarm: Swarm | None, peer: Peer | None, n: int, want4: bool, want6: bool) -> AddrReply:
        if swarm is None:
            return AddrReply(0, 0, self.interval, (), ())
        skip_seeds = peer is not None and peer.complete

        def pick(pool: _Pool) -> tuple[PeerAddress, ...]:
            out = []
            for p in self._sample(pool, n, peer, _NO_SOCKET, skip_seeds):
                assert p.addr is not None
                out.append(PeerAddress(p.peer_id, p.addr[0], p.addr[1]))
            return tuple(out)

        return AddrReply(
            swarm.complete,
            swarm.incomplete,
            self.interval,
            pick(swarm.v4) if want4 and n else (),
            pick(swarm.v6) if want6 and n else (),
        )

    # ------------------------------------------------------------------------------------- WebSocket

    def announce_ws(self, socket: Hashable, msg: Announce, now: float) -> list[Outgoing]:
        """A WebSocket announce from ``socket``: join/update/leave the swarm and forward its offers.

        Returns the reply to ``socket`` first, then one ForwardedOffer per offer, each to a different
        random WebSocket peer of the swarm other than the announcer (and not on ``socket``); with fewer
        such peers than offers, fewer offers are forwarded. At most MAX_OFFERS_PER_ANNOUNCE and at most
        ``numwant`` offers go out. A seed's offers go only to peers that are not seeds.
        """
        ih, pid = msg.info_hash, msg.peer_id
        if msg.event == "stopped":
            swarm = self.swarms.get(ih)
            if swarm is not None:
                existing = swarm.peers.get(pid)
                if existing is not None and existing.socket is socket:
                    self._remove(swarm, pid)
            self.announces["ws"] += 1
            return [(socket, self._ws_reply(ih))]

        joined = self._sockets.get(socket)
        previous_pid = joined.get(ih) if joined is not None else None
        if previous_pid is None and joined is not None and len(joined) >= self.max_swarms_per_socket:
            raise TrackerError(f"this connection is already in {self.max_swarms_per_socket} swarms")
        if previous_pid is not None and previous_pid != pid:
            # Same connection, same swarm, new peer id: the client restarted the torrent.
            old_swarm = self.swarms.get(ih)
            if old_swarm is not None and previous_pid in old_swarm.peers:
                self._remove(old_swarm, previous_pid)
        swarm = self._swarm(ih)
        peer = swarm.peers.get(pid)
        try:
            if peer is None:
                peer = Peer(pid, "ws", None, socket, msg.left, now)
                self._add(swarm, pid, peer)
            elif peer.socket is not socket:
                raise TrackerError("peer_id is in use on another connection")
            else:
                self._update(swarm, pid, peer, msg.left, now)
        except BaseException:
            # A swarm created for this announce must not stay behind empty. (On success the peer is in it.)
            self._drop_if_empty(swarm)
            raise
        self.announces["ws"] += 1
        out: list[Outgoing] = [(socket, self._swarm_reply(swarm))]
        offers = msg.offers
        k = min(len(offers), MAX_OFFERS_PER_ANNOUNCE, msg.numwant)
        if k > 0:
            targets = self._sample(swarm.ws, k, peer, socket, peer.complete)
            for offer, target in zip(offers, targets, strict=False):
                # _build: ForwardedOffer(ih, pid, offer.offer_id, offer.sdp) without NamedTuple's __new__.
                out.append((target.socket, _build(ForwardedOffer, (ih, pid, offer.offer_id, offer.sdp))))
            self.offers_forwarded += len(targets)
        return out

    def answer_ws(self, socket: Hashable, msg: Answer, now: float) -> list[Outgoing]:
        """An answer from ``socket`` to a forwarded offer: relay it to ``to_peer_id``.

        The answering peer must be in the swarm on this socket (it got the offer because it is), and the
        offering peer must be in the swarm as a WebSocket peer on some other socket. Nothing goes back to
        the answerer. Raises TrackerError otherwise.
        """
        swarm = self.swarms.get(msg.info_hash)
        if swarm is None:
            raise TrackerError("answer for an unknown info_hash")
        answerer = swarm.peers.get(msg.peer_id)
        if answerer is None or answerer.socket is not socket:
            raise TrackerError("answer from a peer that has not announced on this connection")
        target = swarm.peers.get(msg.to_peer_id)
        if target is None or target.socket is None:
            raise TrackerError("no peer to answer: to_peer_id is not in the swarm")
        if target.socket is socket:
            raise TrackerError("answer addressed to the answering connection")
        answerer.last_seen = now
        self.answers_relayed += 1
        return [(target.socket, RelayedAnswer(msg.info_hash, msg.peer_id, msg.offer_id, msg.sdp))]

    def close_socket(self, socket: Hashable) -> int:
        """``socket`` closed: it leaves every swarm it joined (``stopped`` for each). Returns peers removed."""
        joined = self._sockets.pop(socket, None)
        if not joined:
            return 0
        removed = 0
        for ih, pid in joined.items():
            swarm = self.swarms.get(ih)
            if swarm is None:
                continue
            peer = swarm.peers.get(pid)
            if peer is not None and peer.socket is socket:
                self._remove(swarm, pid, forget_socket=False)
                removed += 1
        return removed

    def _ws_reply(self, info_hash: bytes) -> AnnounceReply:
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            return AnnounceReply(info_hash, interval=self.interval, complete=0, incomplete=0)
        return self._swarm_reply(swarm)

    def _swarm_reply(self, swarm: Swarm) -> AnnounceReply:
        """The AnnounceReply for ``swarm``. Every announce gets one and it only changes with the counts (or the
        interval), so the swarm keeps the last one: building it costs more than these three comparisons, and
        the server's cache of encoded replies then finds the very same object."""
        reply = swarm.ws_reply
        if (reply is None or reply.complete != swarm.complete or reply.incomplete != swarm.incomplete
                or reply.interval != self.interval):
            reply = swarm.ws_reply = AnnounceReply(swarm.info_hash, interval=self.interval,
                                                   complete=swarm.complete, incomplete=swarm.incomplete)
        return reply

    # ------------------------------------------------------------------------------------- expiry

    def expire(self, now: float) -> int:
        """Drop peers that have not announced within EXPIRY_INTERVALS intervals. Returns how many.

        Cost: one look at each swarm plus one per expired peer (peers are kept in announce order).
        """
        deadline = now - EXPIRY_INTERVALS * self.interval
        removed = 0
        for swarm in list(self.swarms.values()):
            while swarm.peers:
                key, peer = next(iter(swarm.peers.items()))
                if peer.last_seen >= deadline:
                    break
                self._remove(swarm, key)
                removed += 1
        self.peers_expired += removed
        return removed

    # ------------------------------------------------------------------------------------- internals

    def _swarm(self, info_hash: bytes) -> Swarm:
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            if len(self.swarms) >= self.max_swarms:
                raise TrackerError("the tracker is full (too many swarms)")
            swarm = self.swarms[info_hash] = Swarm(info_hash)
        return swarm

    def _add(self, swarm: Swarm, key: _Key, peer: Peer) -> None:
        if len(swarm.peers) >= self.max_peers_per_swarm:
            raise TrackerError(f"the swarm is full ({self.max_peers_per_swarm} peers)")
        if self.peer_total >= self.max_peers_total:
            raise TrackerError("the tracker is full (too many peers)")
        swarm.peers[key] = peer
        swarm.pool(peer).add(peer)
        if peer.complete:
            swarm.complete += 1
        else:
            swarm.incomplete += 1
        self.peer_counts[peer.kind] += 1
        if peer.socket is not None:
            self._sockets.setdefault(peer.socket, {})[swarm.info_hash] = peer.peer_id

    def _update(self, swarm: Swarm, key: _Key, peer: Peer, left: int | None, now: float) -> None:
        was_complete = peer.complete
        peer.left = left
        if peer.complete != was_complete:
            if was_complete:
                swarm.complete -= 1
                swarm.incomplete += 1
            else:
                swarm.complete += 1
                swarm.incomplete -= 1
                if not peer.counted_download:
                    peer.counted_download = True
                    swarm.downloaded += 1
        peer.last_seen = now
        # Move to the end: the dict stays ordered by last announce.
        del swarm.peers[key]
        swarm.peers[key] = peer

    def _remove(self, swarm: Swarm, key: _Key, *, forget_socket: bool = True) -> None:
        peer = swarm.peers.pop(key)
        swarm.pool(peer).remove(peer)
        if peer.complete:
            swarm.complete -= 1
        else:
            swarm.incomplete -= 1
        self.peer_counts[peer.kind] -= 1
        if forget_socket and peer.socket is not None:
            joined = self._sockets.get(peer.socket)
            if joined is not None and joined.get(swarm.info_hash) == peer.peer_id:
                del joined[swarm.info_hash]
                if not joined:
                    del self._sockets[peer.socket]
        self._drop_if_empty(swarm)

    def _drop_if_empty(self, swarm: Swarm) -> None:
        if not swarm.peers and self.swarms.get(swarm.info_hash) is swarm:
            del self.swarms[swarm.info_hash]

    def _sample(self, pool: _Pool, k: int, me: Peer | None, socket: Hashable, skip_seeds: bool) -> list[Peer]:
        """Up to ``k`` distinct random peers of ``pool``, never ``me`` nor a peer on ``socket`` (``_NO_SOCKET``
        for none) and, when ``skip_seeds``, no seed.

        Small pools (at most 4k) are filtered and sampled exactly: every suitable peer is picked when there
        are no more than ``k``. Large pools are sampled by rejection with a bounded number of draws, so the
        cost does not grow with the swarm.
        """
        items = pool.items
        n = len(items)
        if k <= 0 or n == 0:
            return []
        rng = self.rng
        if n <= 4 * k:
            candidates = [p for p in items
                          if p is not me and p.socket is not socket and not (skip_seeds and p.left == 0)]
            if len(candidates) <= k:
                rng.shuffle(candidates)
                return candidates
            return rng.sample(candidates, k)
        # A slot is drawn as random.choices draws one: int(random() * n) is one C call where randrange(n) is
        # several Python ones; its bias (about n / 2**53) is nil at these sizes.
        random_ = rng.random
        chosen: dict[int, Peer] = {}
        for _ in range(_DRAWS_PER_PEER * k + 8):
            i = int(random_() * n)
            if i not in chosen:
                p = items[i]
                if p is not me and p.socket is not socket and not (skip_seeds and p.left == 0):
                    chosen[i] = p
                    if len(chosen) == k:
                        break
        return list(chosen.values())
