"""Which blocks to request next: pieces with deadlines (streaming) first, then rarest-first with a random
first few pieces, partial pieces first, endgame.

Pure policy: the same calls with the same random source give the same picks. The picker knows blocks and
pieces, never peers' sockets; the engine tells it what each peer has and what each peer has outstanding.
"""

from __future__ import annotations

import random
from collections.abc import Container

from ..proto.wire import BLOCK_SIZE
from .bitfield import Bitfield

#: Pieces picked at random (not rarest) until we have this many, so that we have something to trade
#: quickly (BEP 3 practice, "random first piece").
RANDOM_FIRST_PIECES = 4
#: In endgame, a block may be outstanding at this many peers at once.
ENDGAME_MAX_DUPLICATES = 2
#: The most urgent pieces (by deadline) whose stalled blocks a fast peer may request again, although
#: another peer has them outstanding: a slow peer must not hold up playback. Two pieces bound the waste.
URGENT_DUPLICATE_PIECES = 2

Block = tuple[int, int, int]


class _Partial:
    """Block bookkeeping for one piece being downloaded."""

    __slots__ = ("nblocks", "requested", "received", "n_received", "next_free", "released")

    def __init__(self, nblocks: int) -> None:
        self.nblocks = nblocks
        #: outstanding request count per block
        self.requested = bytearray(nblocks)
        #: 1 where the block has arrived
        self.received = bytearray(nblocks)
        self.n_received = 0
        #: every block below this was requested at least once
        self.next_free = 0
        #: blocks below next_free whose requests all went away without data
        self.released: list[int] = []

    @property
    def n_unrequested(self) -> int:
        return len(self.released) + self.nblocks - self.next_free


class PiecePicker:
    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        have: Bitfield,
        rng: random.Random,
    ) -> None:
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.have = have
        self.rng = rng
        #: how many connected peers have each piece
        self.availability = [0] * num_pieces
        #: download priority per piece: 0 skips the piece, higher goes first
        self.priority = bytearray(b"\x01" * num_pieces)
        ranks = list(range(num_pieces))
        rng.shuffle(ranks)
        self._rank = ranks
        self.partial: dict[int, _Partial] = {}
        self._order: list[int] = []
        self._dirty = True
        #: set once duplicate requests have been handed out (endgame or urgent pieces): they need cancels
        self.endgame_active = False
        #: piece -> deadline (any comparable float, smaller is sooner). These pieces are requested before
        #: everything else, in deadline order, even if their priority is 0 (a reader wants them).
        self.deadlines: dict[int, float] = {}
        self._urgent: list[int] = []
        self._urgent_dirty = False
        #: download pieces in index order instead of rarest-first (for streaming a whole torrent)
        self.sequential = False

    # ------------------------------------------------------------------------------- geometry
    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def blocks_in(self, index: int) -> int:
        return (self.piece_size(index) + BLOCK_SIZE - 1) // BLOCK_SIZE

    def block_length(self, index: int, begin: int) -> int:
        return min(BLOCK_SIZE, self.piece_size(index) - begin)

    # ---------------------------------------------------------------------------- availability
    def add_peer(self, bits: Bitfield) -> None:
        avail = self.availability
        for i in bits:
            avail[i] += 1
        self._dirty = True

    def remove_peer(self, bits: Bitfield) -> None:
        avail = self.availability
        for i in bits:
            avail[i] -= 1
        self._dirty = True

    def peer_has(self, index: int) -> None:
        self.availability[index] += 1
        self._dirty = True

    def peer_lost(self, index: int) -> None:
        self.availability[index] -= 1
        self._dirty = True

    # ---------------------------------------------------------------------------------- wanting
    def wanted(self, index: int) -> bool:
        return index not in self.have and (self.priority[index] > 0 or index in self.deadlines)

    def is_interesting(self, bits: Bitfield) -> bool:
        """True when the peer has a piece we still want."""
        if bits.complete:
            return not self.complete
        return any(self.wanted(i) for i in bits)

    @property
    def complete(self) -> bool:
        """True when every wanted piece is verified."""
        return len(self.have) == self.num_pieces or not any(map(self.wanted, range(self.num_pieces)))

    def set_priority(self, index: int, priority: int) -> None:
        self.priority[index] = max(0, min(255, priority))
        self._dirty = True

    def set_deadlines(self, deadlines: dict[int, float]) -> None:
        """Replace every deadline (the engine merges its readers' and peers' demands)."""
        self.deadlines = {i: d for i, d in deadlines.items() if 0 <= i < self.num_pieces and i not in self.have}
        self._urgent_dirty = True
        self._dirty = True

    def set_sequential(self, on: bool) -> None:
        self.sequential = on
        self._dirty = True

    def urgent(self) -> list[int]:
        """Pieces with a deadline that are not verified yet, soonest first."""
        if self._urgent_dirty:
            d = self.deadlines
            self._urgent = sorted(d, key=d.__getitem__)
            self._urgent_dirty = False
        urgent = self._urgent
        while urgent and urgent[0] in self.have:
            self.deadlines.pop(urgent.pop(0), None)
        return urgent

    def _rebuild(self) -> None:
        avail, rank, prio, have = self.availability, self._rank, self.priority, self.have
        order = [i for i in range(self.num_pieces) if prio[i] and i not in have and i not in self.partial]
        if self.sequential:
            order.sort(key=lambda i: (-prio[i], i))
        else:
            order.sort(key=lambda i: (-prio[i], avail[i], rank[i]))
        self._order = order
        self._dirty = False

    # ------------------------------------------------------------------------------------ picking
    def pick(self, peer_bits: Bitfield, count: int, outstanding: Container[tuple[int, int]],
             fast: bool = True) -> list[Block]:
        """Up to ``count`` blocks to request from a peer having ``peer_bits`` that already has
        ``outstanding`` (index, begin) requests with us. ``fast`` says the peer is among the quickest
        (the engine decides): only fast peers re-request stalled blocks of the most urgent pieces."""
        out: list[Block] = []
        if count <= 0:
            return out
        if self.deadlines:
            self._pick_urgent(peer_bits, count, outstanding, fast, out)
            if len(out) >= count:
                return out
        for index, p in self.partial.items():
            if p.n_unrequested and index in peer_bits:
                self._take(index, p, count - len(out), out)
                if len(out) >= count:
                    return out
        while len(out) < count:
            new = self._new_piece(peer_bits)
            if new is None:
                break
            p = _Partial(self.blocks_in(new))
            self.partial[new] = p
            self._take(new, p, count - len(out), out)
        if len(out) < count and self.in_endgame():
            self.endgame_active = True
            self._endgame(peer_bits, count, outstanding, out)
        return out

    def _pick_urgent(self, peer_bits: Bitfield, count: int, outstanding: Container[tuple[int, int]],
                     fast: bool, out: list[Block]) -> None:
        for n, index in enumerate(self.urgent()):
            if index in self.have or index not in peer_bits:
                continue
            p = self.partial.get(index)
            if p is None:
                p = self.partial[index] = _Partial(self.blocks_in(index))
            self._take(index, p, count - len(out), out)
            if len(out) >= count:
                return
            if fast and n < URGENT_DUPLICATE_PIECES and p.n_received < p.nblocks:
                self._duplicate(index, p, count, outstanding, out)
                if len(out) >= count:
                    return

    def _duplicate(self, index: int, p: _Partial, count: int, outstanding: Container[tuple[int, int]],
                   out: list[Block]) -> None:
        """Request blocks of ``index`` that are outstanding elsewhere but not with this peer."""
        taken = {(i, b) for i, b, _ in out}
        for b in range(p.nblocks):
            if p.received[b] or not p.requested[b] or p.requested[b] >= ENDGAME_MAX_DUPLICATES:
                continue
            begin = b * BLOCK_SIZE
            if (index, begin) in outstanding or (index, begin) in taken:
                continue
            p.requested[b] += 1
            self.endgame_active = True
            out.append((index, begin, self.block_length(index, begin)))
            if len(out) >= count:
                return

    def _take(self, index: int, p: _Partial, want: int, out: list[Block]) -> None:
        while want > 0 and p.released:
            b = p.released.pop()
            if p.received[b] or p.requested[b]:
                continue
            p.requested[b] += 1
            begin = b * BLOCK_SIZE
            out.append((index, begin, self.block_length(index, begin)))
            want -= 1
        while want > 0 and p.next_free < p.nblocks:
            b = p.next_free
            p.next_free += 1
            if p.received[b]:
                continue
            p.requested[b] += 1
            begin = b * BLOCK_SIZE
            out.append((index, begin, self.block_length(index, begin)))
            want -= 1

    def _new_piece(self, peer_bits: Bitfield) -> int | None:
        if self._dirty:
            self._rebuild()
        order = self._order
        # Drop entries at the front that became partial or verified since the last rebuild.
        while order and (order[0] in self.partial or order[0] in self.have):
            order.pop(0)
        if len(self.have) < RANDOM_FIRST_PIECES and not self.sequential:
            # Random among the highest priority this peer can give us (order is sorted by priority first).
            candidates = [i for i in order if i in peer_bits and i not in self.partial and i not in self.have]
            if not candidates:
                return None
            top_prio = self.priority[candidates[0]]
            return self.rng.choice([i for i in candidates if self.priority[i] == top_prio])
        for i in order:
            if i in peer_bits and i not in self.partial and i not in self.have:
                return i
        return None

    def in_endgame(self) -> bool:
        """Every wanted block is requested or received somewhere."""
        if self._dirty:
            self._rebuild()
        if any(i not in self.partial and i not in self.have for i in self._order):
            return False
        return all(p.n_unrequested == 0 for p in self.partial.values())

    def _endgame(
        self, peer_bits: Bitfield, count: int, outstanding: Container[tuple[int, int]], out: list[Block]
    ) -> None:
        # Blocks handed out earlier in this same call are not in ``outstanding`` yet: never twice to one peer.
        taken = {(index, begin) for index, begin, _ in out}
        for index, p in self.partial.items():
            if index not in peer_bits:
                continue
            for b in range(p.nblocks):
                if p.received[b] or p.requested[b] >= ENDGAME_MAX_DUPLICATES:
                    continue
                begin = b * BLOCK_SIZE
                if (index, begin) in outstanding or (index, begin) in taken:
                    continue
                p.requested[b] += 1
                out.append((index, begin, self.block_length(index, begin)))
                if len(out) >= count:
                    return

    # ------------------------------------------------------------------------------- outcomes
    def release(self, index: int, begin: int) -> None:
        """A request went away without data (choke, reject, cancel, peer gone)."""
        p = self.partial.get(index)
        if p is None:
            return
        b = begin // BLOCK_SIZE
        if 0 <= b < p.nblocks and p.requested[b]:
            p.requested[b] -= 1
            if not p.requested[b] and not p.received[b]:
                p.released.append(b)

    def received(self, index: int, begin: int) -> bool:
        """A block arrived. Returns True when it is new and the piece now has every block."""
        p = self.partial.get(index)
        if p is None:
            return False
        b = begin // BLOCK_SIZE
        if not 0 <= b < p.nblocks or begin % BLOCK_SIZE:
            return False
        if p.requested[b]:
            p.requested[b] -= 1
        if p.received[b]:
            return False
        p.received[b] = 1
        p.n_received += 1
        return p.n_received == p.nblocks

    def wants_block(self, index: int, begin: int) -> bool:
        p = self.partial.get(index)
        if p is None:
            return False
        b = begin // BLOCK_SIZE
        return 0 <= b < p.nblocks and not begin % BLOCK_SIZE and not p.received[b]

    def piece_verified(self, index: int) -> None:
        self.partial.pop(index, None)
        self.have.add(index)
        if self.deadlines.pop(index, None) is not None:
            self._urgent_dirty = True

    def piece_failed(self, index: int) -> None:
        """The hash did not match: forget every block of the piece and want it again."""
        self.partial.pop(index, None)
        self._dirty = True
