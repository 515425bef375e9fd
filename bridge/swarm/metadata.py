"""Assembling the info dictionary from BEP 9 pieces fetched from several peers. Pure policy and state."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

from ..proto.extension import MAX_METADATA_SIZE, METADATA_PIECE_SIZE, metadata_piece_count

#: Requests for metadata pieces one peer may have outstanding with us (BEP 9 pieces are small).
MAX_REQUESTS_PER_PEER = 4


class MetadataAssembler:
    """Tracks which metadata pieces are wanted, requested (by whom) and received."""

    def __init__(self, info_hash: bytes) -> None:
        self.info_hash = info_hash
        self.size: int | None = None
        self._pieces: list[bytes | None] = []
        self._requested: dict[int, set[Hashable]] = {}
        #: peers whose data went into a metadata that failed the hash (or who sent a bad size)
        self.suspects: set[Hashable] = set()
        self._sources: dict[int, Hashable] = {}
        #: the size each peer announced
        self._offers: dict[Hashable, int] = {}
        self.failures = 0

    def offer_size(self, size: int, peer: Hashable) -> bool:
        """A peer says the metadata has ``size`` bytes. Returns False when the size is unusable."""
        if not 0 < size <= MAX_METADATA_SIZE:
            return False
        self._offers[peer] = size
        if self.size is None:
            self._set_size(size)
            return True
        return size == self.size

    def _set_size(self, size: int | None) -> None:
        self.size = size
        self._pieces = [None] * metadata_piece_count(size) if size else []

    @property
    def complete(self) -> bool:
        return self.size is not None and all(p is not None for p in self._pieces)

    def next_request(self, peer: Hashable) -> int | None:
        """The next piece to ask ``peer`` for: unrequested first, then (endgame) ones requested elsewhere."""
        if self.size is None or peer in self.suspects or self._offers.get(peer) != self.size:
            return None
        mine = sum(1 for who in self._requested.values() if peer in who)
        if mine >= MAX_REQUESTS_PER_PEER:
            return None
        best: int | None = None
        for i, data in enumerate(self._pieces):
            if data is not None:
                continue
            who = self._requested.setdefault(i, set())
            if peer in who:
                continue
            if not who:
                best = i
                break
            if best is None:
                best = i
        if best is not None:
            self._requested[best].add(peer)
        return best

    def on_reject(self, piece: int, peer: Hashable) -> None:
        self._requested.get(piece, set()).discard(peer)

    def peer_gone(self, peer: Hashable) -> None:
        for who in self._requested.values():
            who.discard(peer)

    def on_data(self, piece: int, total_size: int, data: bytes, peer: Hashable) -> bytes | None:
        """Store a piece. Returns the verified info bytes once every piece is in; on a hash mismatch the
        pieces are dropped, their senders become suspects, and None is returned."""
        if self.size is None or total_size != self.size or not 0 <= piece < len(self._pieces):
            return None
        expected = min(METADATA_PIECE_SIZE, self.size - piece * METADATA_PIECE_SIZE)
        if len(data) != expected:
            return None
        self._requested.get(piece, set()).discard(peer)
        if self._pieces[piece] is None:
            self._pieces[piece] = data
            self._sources[piece] = peer
        if not self.complete:
            return None
        raw = b"".join(p for p in self._pieces if p is not None)
        if hashlib.sha1(raw).digest() == self.info_hash:
            return raw
        self.failures += 1
        self.suspects.update(self._sources.values())
        # The size itself may have been the lie: take it again from a peer not yet caught.
        honest = [s for p, s in self._offers.items() if p not in self.suspects]
        self._set_size(honest[0] if honest else None)
        self._sources.clear()
        self._requested.clear()
        return None
