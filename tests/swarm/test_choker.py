"""Choker: upload slots, leeching vs seeding ranking, optimistic unchoke rotation, has_free_slot."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.swarm.choker import OPTIMISTIC_INTERVAL, RECHOKE_INTERVAL, UPLOAD_SLOTS, ChokeCandidate, Choker


def cand(key: str, interested: bool = True, down: float = 0.0, up: float = 0.0) -> ChokeCandidate:
    return ChokeCandidate(key=key, interested=interested, download_rate=down, upload_rate=up)


def swarm(n: int) -> list[ChokeCandidate]:
    # download rate rises with i, upload rate falls with i
    return [cand(f"p{i}", down=float(i), up=float(100 - i)) for i in range(n)]


def test_defaults() -> None:
    assert UPLOAD_SLOTS == 4 and RECHOKE_INTERVAL == 10.0 and OPTIMISTIC_INTERVAL == 30.0


def test_leeching_ranks_by_download_rate_plus_one_optimistic() -> None:
    peers = swarm(10)
    ch = Choker(random.Random(1))
    unchoked = ch.rechoke(peers, now=0.0, seeding=False)
    top = {"p9", "p8", "p7", "p6"}
    assert top <= unchoked
    assert len(unchoked) == UPLOAD_SLOTS + 1
    assert ch.optimistic in unchoked and ch.optimistic not in top


def test_seeding_ranks_by_upload_rate() -> None:
    peers = swarm(10)
    ch = Choker(random.Random(1))
    unchoked = ch.rechoke(peers, now=0.0, seeding=True)
    top = {"p0", "p1", "p2", "p3"}
    assert top <= unchoked and len(unchoked) == 5
    assert ch.optimistic not in top


def test_slots_configurable() -> None:
    peers = swarm(10)
    ch = Choker(random.Random(1), slots=2)
    unchoked = ch.rechoke(peers, now=0.0, seeding=False)
    assert {"p9", "p8"} <= unchoked and len(unchoked) == 3
    only = Choker(random.Random(0), slots=0)
    assert only.rechoke(peers, 0.0, False) == {only.optimistic}


def test_uninterested_peers_stay_choked() -> None:
    peers = [cand("fast", interested=False, down=1e9, up=1e9), *swarm(3)]
    for seeding in (False, True):
        ch = Choker(random.Random(0))
        unchoked = ch.rechoke(peers, 0.0, seeding)
        assert unchoked == {"p0", "p1", "p2"}
        assert ch.optimistic is None  # nobody interested is left choked


def test_nobody_interested() -> None:
    ch = Choker(random.Random(0))
    assert ch.rechoke([cand("a", interested=False), cand("b", interested=False)], 0.0, False) == set()
    assert ch.rechoke([], 10.0, True) == set()
    assert ch.optimistic is None


def test_optimistic_rotates_every_30_seconds_only() -> None:
    peers = swarm(12)
    ch = Choker(random.Random(7))
    last_rotation = 0.0
    current = None
    changes = 0
    for step in range(0, 60):
        now = step * RECHOKE_INTERVAL
        unchoked = ch.rechoke(peers, now, seeding=False)
        assert ch.optimistic in unchoked
        if ch.optimistic != current:
            if current is not None:
                assert now - last_rotation >= OPTIMISTIC_INTERVAL
                changes += 1
            current = ch.optimistic
        if now - last_rotation >= OPTIMISTIC_INTERVAL:
            last_rotation = now
    assert changes >= 5  # eight choked candidates: rotation does change the peer


def test_optimistic_kept_between_rotations_even_with_odd_rechoke_times() -> None:
    peers = swarm(12)
    ch = Choker(random.Random(3))
    ch.rechoke(peers, 100.0, False)
    first = ch.optimistic
    for now in (100.5, 110.0, 125.0, 129.999):
        ch.rechoke(peers, now, False)
        assert ch.optimistic == first


def test_optimistic_only_among_choked_interested() -> None:
    peers = [*swarm(6), cand("lazy", interested=False), cand("idle", interested=False)]
    for seed in range(40):
        ch = Choker(random.Random(seed))
        for k in range(5):
            ch.rechoke(peers, k * OPTIMISTIC_INTERVAL, seeding=bool(seed % 2))
            # leeching: p2..p5 download fastest; seeding: p0..p3 take data fastest
            assert ch.optimistic in ({"p4", "p5"} if seed % 2 else {"p0", "p1"})


def test_optimistic_replaced_at_once_when_it_disconnects() -> None:
    peers = swarm(8)
    ch = Choker(random.Random(5))
    ch.rechoke(peers, 0.0, False)
    gone = ch.optimistic
    rest = [p for p in peers if p.key != gone]
    unchoked = ch.rechoke(rest, 1.0, False)
    assert ch.optimistic is not None and ch.optimistic != gone
    assert gone not in unchoked and ch.optimistic in unchoked


def test_deterministic_for_a_seed() -> None:
    peers = swarm(20)

    def run(seed: int) -> list[frozenset[object]]:
        ch = Choker(random.Random(seed))
        return [frozenset(ch.rechoke(peers, t * 10.0, False)) for t in range(12)]

    assert run(11) == run(11)


def test_has_free_slot() -> None:
    ch = Choker(random.Random(0))
    assert ch.has_free_slot(0)
    assert ch.has_free_slot(UPLOAD_SLOTS)  # the optimistic slot
    assert not ch.has_free_slot(UPLOAD_SLOTS + 1)
    assert not ch.has_free_slot(100)
    assert Choker(random.Random(0), slots=1).has_free_slot(1)
    assert not Choker(random.Random(0), slots=1).has_free_slot(2)


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1e9), st.floats(0, 1e9)), max_size=20),
    st.booleans(),
    st.integers(0, 6),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_rechoke_invariants(
    spec: list[tuple[bool, float, float]], seeding: bool, slots: int, seed: int
) -> None:
    peers = [cand(f"k{i}", interested=i_, down=d, up=u) for i, (i_, d, u) in enumerate(spec)]
    ch = Choker(random.Random(seed), slots=slots)
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        unchoked = ch.rechoke(peers, now, seeding)
        interested = {p.key for p in peers if p.interested}
        assert unchoked <= interested
        assert len(unchoked) <= slots + 1
        assert len(unchoked) == min(len(interested), slots + (1 if len(interested) > slots else 0))
        rate = (lambda p: p.upload_rate) if seeding else (lambda p: p.download_rate)
        regular = unchoked - {ch.optimistic}
        if regular and interested - unchoked:
            # nobody left choked is strictly better than every regular unchoked peer
            worst = min(rate(p) for p in peers if p.key in regular)
            assert all(rate(p) <= worst or p.key in regular for p in peers if p.key in interested - unchoked)
