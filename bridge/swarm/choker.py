"""Who we upload to: tit-for-tat with an optimistic unchoke (BEP 3 practice). Pure policy."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: Regular upload slots. libtorrent and Transmission default to a handful; 4 plus one optimistic keeps
#: each slot's share useful on a modest uplink.
UPLOAD_SLOTS = 4
#: Seconds between rechokes (BEP 3 suggests 10).
RECHOKE_INTERVAL = 10.0
#: Seconds between optimistic-unchoke rotations (BEP 3 suggests 30).
OPTIMISTIC_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class ChokeCandidate:
    """What the choker needs to know about one connected peer."""

    #: Any hashable identity of the peer.
    key: Hashable
    #: The peer is interested in our pieces.
    interested: bool
    #: Bytes/s we receive from the peer (leeching reward).
    download_rate: float
    #: Bytes/s we send to the peer (seeding: prefer whoever takes data fastest).
    upload_rate: float


class Choker:
    """Decides the unchoked set. Call ``rechoke`` every RECHOKE_INTERVAL seconds."""

    def __init__(self, rng: random.Random, slots: int = UPLOAD_SLOTS) -> None:
        self.rng = rng
        self.slots = slots
        self.optimistic: Hashable | None = None
        self._optimistic_at = float("-inf")

    def has_free_slot(self, unchoked_interested: int) -> bool:
        """A newly interested peer may be unchoked at once when a slot is free (no 10 s wait)."""
        return unchoked_interested < self.slots + 1

    def rechoke(self, peers: Sequence[ChokeCandidate], now: float, seeding: bool) -> set[Hashable]:
        """Return the keys to unchoke; every other peer is choked."""
        interested = [p for p in peers if p.interested]
        if seeding:
            ranked = sorted(interested, key=lambda p: p.upload_rate, reverse=True)
        else:
            ranked = sorted(interested, key=lambda p: p.download_rate, reverse=True)
        unchoke = {p.key for p in ranked[: self.slots]}
        keys = {p.key for p in peers}
        if self.optimistic not in keys or now - self._optimistic_at >= OPTIMISTIC_INTERVAL:
            choked = [p.key for p in interested if p.key not in unchoke]
            self.optimistic = self.rng.choice(choked) if choked else None
            self._optimistic_at = now
        if self.optimistic is not None and self.optimistic in keys:
            unchoke.add(self.optimistic)
        return unchoke
