"""Piece picker: random first pieces, rarest-first, partial pieces first, release, endgame, priorities, and a
simulated whole download with several fake peers."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.proto.wire import BLOCK_SIZE
from bridge.swarm.bitfield import Bitfield
from bridge.swarm.picker import ENDGAME_MAX_DUPLICATES, RANDOM_FIRST_PIECES, Block, PiecePicker

NOTHING: frozenset[tuple[int, int]] = frozenset()


def make(
    num: int, blocks_per_piece: int = 2, last: int | None = None, have: list[int] | None = None, seed: int = 0
) -> PiecePicker:
    pl = blocks_per_piece * BLOCK_SIZE
    total = (num - 1) * pl + (pl if last is None else last)
    bits = Bitfield(num)
    for i in have or []:
        bits.add(i)
    return PiecePicker(num, pl, total, bits, random.Random(seed))


def bits_of(num: int, pieces: list[int] | range) -> Bitfield:
    bf = Bitfield(num)
    for i in pieces:
        bf.add(i)
    return bf


def full(num: int) -> Bitfield:
    return Bitfield(num, fill=True)


# -------------------------------------------------------------------------------------------- geometry


def test_geometry_and_short_last_block() -> None:
    p = make(3, blocks_per_piece=3, last=BLOCK_SIZE + 100)
    assert p.piece_size(0) == 3 * BLOCK_SIZE and p.piece_size(2) == BLOCK_SIZE + 100
    assert p.blocks_in(0) == 3 and p.blocks_in(2) == 2
    assert p.block_length(2, 0) == BLOCK_SIZE
    assert p.block_length(2, BLOCK_SIZE) == 100
    picked = p.pick(full(3), 100, NOTHING)
    assert len(picked) == 3 + 3 + 2
    assert (2, BLOCK_SIZE, 100) in picked
    assert all(n == BLOCK_SIZE for i, b, n in picked if (i, b) != (2, BLOCK_SIZE))


def test_tiny_torrent_single_short_block() -> None:
    p = PiecePicker(1, 2 * BLOCK_SIZE, 5, Bitfield(1), random.Random(0))
    assert p.pick(full(1), 10, NOTHING) == [(0, 0, 5)]


def test_piece_length_not_a_multiple_of_the_block_size() -> None:
    p = PiecePicker(2, 20000, 30000, Bitfield(2), random.Random(0))
    assert p.blocks_in(0) == 2 and p.blocks_in(1) == 1
    picked = sorted(p.pick(full(2), 10, NOTHING))
    assert picked == [(0, 0, BLOCK_SIZE), (0, BLOCK_SIZE, 20000 - BLOCK_SIZE), (1, 0, 10000)]


# --------------------------------------------------------------------------------------- availability


def test_availability_bookkeeping() -> None:
    p = make(5)
    p.add_peer(bits_of(5, [0, 1]))
    p.add_peer(bits_of(5, [1, 4]))
    p.peer_has(3)
    assert p.availability == [1, 2, 0, 1, 1]
    p.remove_peer(bits_of(5, [0, 1]))
    p.peer_lost(3)
    assert p.availability == [0, 1, 0, 0, 1]


def test_is_interesting_and_complete() -> None:
    p = make(4, have=[0, 1])
    assert p.is_interesting(full(4))
    assert not p.is_interesting(bits_of(4, [0, 1]))
    assert p.is_interesting(bits_of(4, [3]))
    assert not p.complete
    p.set_priority(2, 0)
    p.set_priority(3, 0)
    assert p.complete  # nothing wanted is missing
    assert not p.is_interesting(bits_of(4, [2, 3]))
    p.set_priority(3, 1)
    assert not p.complete
    p.piece_verified(3)
    assert p.complete and not p.is_interesting(full(4))


# ------------------------------------------------------------------------------------------- picking


def test_pick_count_zero_or_negative() -> None:
    p = make(3)
    assert p.pick(full(3), 0, NOTHING) == [] and p.pick(full(3), -1, NOTHING) == []
    assert p.partial == {}


def test_never_picks_what_the_peer_lacks_or_we_have() -> None:
    p = make(6, have=[0, 1, 2, 3])
    peer = bits_of(6, [0, 1, 2, 3, 5])
    picked = p.pick(peer, 100, NOTHING)
    assert {i for i, _, _ in picked} == {5}
    assert p.pick(bits_of(6, [0, 1]), 10, NOTHING) == []


def test_random_first_pieces_are_random_and_deterministic() -> None:
    def first_piece(seed: int) -> int:
        p = make(20, seed=seed)
        for k in range(20):
            p.add_peer(bits_of(20, range(k, 20)))  # piece 0 rarest ... piece 19 most common
        (block,) = p.pick(full(20), 1, NOTHING)
        return block[0]

    firsts = [first_piece(s) for s in range(30)]
    assert firsts == [first_piece(s) for s in range(30)]  # same seed, same choice
    assert len(set(firsts)) > 3  # not rarest-first (that would always be piece 0)


def test_rarest_first_after_the_random_first_pieces() -> None:
    n = 10
    p = make(n, blocks_per_piece=1, have=list(range(RANDOM_FIRST_PIECES)), seed=3)
    # availability of piece i (4..9) is 10 - i: piece 9 is rarest
    for i in range(RANDOM_FIRST_PIECES, n):
        for _ in range(n - i):
            p.peer_has(i)
    order = [blk[0] for blk in p.pick(full(n), 100, NOTHING)]
    assert order == [9, 8, 7, 6, 5, 4]


def test_rarity_changes_are_taken_into_account() -> None:
    p = make(8, blocks_per_piece=1, have=[0, 1, 2, 3])
    p.add_peer(full(8))
    p.add_peer(full(8))
    p.peer_lost(6)
    assert p.pick(full(8), 1, NOTHING) == [(6, 0, BLOCK_SIZE)]
    p.peer_lost(4)
    p.peer_lost(4)
    assert p.pick(full(8), 1, NOTHING) == [(4, 0, BLOCK_SIZE)]


def test_ties_broken_by_seeded_random_rank() -> None:
    def order(seed: int) -> list[int]:
        p = make(12, blocks_per_piece=1, have=[0, 1, 2, 3], seed=seed)
        return [b[0] for b in p.pick(full(12), 100, NOTHING)]

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(4, 12))
    assert len({tuple(order(s)) for s in range(10)}) > 1


def test_priority_beats_rarity() -> None:
    p = make(8, blocks_per_piece=1, have=[0, 1, 2, 3])
    p.add_peer(full(8))
    p.peer_lost(5)  # 5 is the rarest
    p.set_priority(7, 3)
    p.set_priority(6, 2)
    assert [b[0] for b in p.pick(full(8), 4, NOTHING)] == [7, 6, 5, 4]


def test_random_first_prefers_top_priority() -> None:
    for seed in range(10):
        p = make(8, blocks_per_piece=1, seed=seed)
        p.set_priority(5, 7)
        assert p.pick(full(8), 1, NOTHING) == [(5, 0, BLOCK_SIZE)]


def test_random_first_with_priorities_still_serves_a_peer_lacking_the_top_ones() -> None:
    # Piece 0 has the highest priority but this peer only has piece 1, which we also want.
    p = make(4, blocks_per_piece=1)
    p.set_priority(0, 5)
    assert p.pick(bits_of(4, [1]), 1, NOTHING) == [(1, 0, BLOCK_SIZE)]


def test_priority_zero_skips_pieces() -> None:
    p = make(6, blocks_per_piece=1)
    for i in (1, 3, 4):
        p.set_priority(i, 0)
    picked = p.pick(full(6), 100, NOTHING)
    assert sorted(b[0] for b in picked) == [0, 2, 5]
    assert p.pick(bits_of(6, [1, 3, 4]), 10, NOTHING) == []
    # clamping
    p.set_priority(0, -7)
    assert p.priority[0] == 0
    p.set_priority(0, 1000)
    assert p.priority[0] == 255


def test_partial_pieces_are_finished_before_new_ones() -> None:
    p = make(10, blocks_per_piece=4, have=[0, 1, 2, 3])
    a = p.pick(full(10), 1, NOTHING)
    (piece,) = {i for i, _, _ in a}
    b = p.pick(full(10), 3, NOTHING)
    assert [blk[0] for blk in b] == [piece] * 3
    assert sorted(x[1] for x in a + b) == [0, BLOCK_SIZE, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE]
    c = p.pick(full(10), 2, NOTHING)
    assert all(blk[0] != piece for blk in c)
    new = c[0][0]
    # a peer without the partial piece starts another one
    others = [i for i in range(4, 10) if i not in (piece, new)]
    d = p.pick(bits_of(10, others), 1, NOTHING)
    assert d[0][0] in others
    # and the partial one is continued first by a peer that has it
    e = p.pick(full(10), 2, NOTHING)
    assert {blk[0] for blk in e} <= {new, d[0][0]}


def test_blocks_never_handed_out_twice_outside_endgame() -> None:
    p = make(6, blocks_per_piece=3, have=[0])
    seen: set[tuple[int, int]] = set()
    peers = [full(6), bits_of(6, [1, 2, 3]), bits_of(6, [3, 4, 5])]
    for _ in range(20):
        for peer in peers:
            for i, b, _n in p.pick(peer, 1, NOTHING):
                assert not p.endgame_active
                assert (i, b) not in seen
                seen.add((i, b))
            if p.in_endgame():
                break
        if p.in_endgame():
            break
    assert len(seen) == 5 * 3
    assert not p.endgame_active
    # the next pick is a duplicate, and only now is endgame on
    assert p.pick(peers[0], 1, NOTHING)[0][:2] in seen
    assert p.endgame_active


def test_release_makes_a_block_requestable_again() -> None:
    p = make(4, blocks_per_piece=2, have=[0, 1, 2])
    picked = p.pick(full(4), 2, NOTHING)
    assert picked == [(3, 0, BLOCK_SIZE), (3, BLOCK_SIZE, BLOCK_SIZE)]
    assert not p.endgame_active
    p.release(3, BLOCK_SIZE)
    assert p.pick(full(4), 10, {(3, 0)}) == [(3, BLOCK_SIZE, BLOCK_SIZE)]
    # a release of something never requested, or of another piece, changes nothing
    p.release(3, BLOCK_SIZE * 7)
    p.release(3, -BLOCK_SIZE)
    p.release(2, 0)
    p.release(99, 0)
    assert p.partial[3].requested == bytearray([1, 1])
    assert p.partial[3].n_unrequested == 0


def test_release_after_receipt_does_not_rerequest() -> None:
    p = make(1, blocks_per_piece=2)
    p.pick(full(1), 2, NOTHING)
    assert p.received(0, 0) is False
    p.release(0, 0)  # late release of a block that arrived
    p.release(0, BLOCK_SIZE)
    assert p.pick(bits_of(1, [0]), 5, NOTHING) == [(0, BLOCK_SIZE, BLOCK_SIZE)]


def test_double_release_hands_out_once() -> None:
    p = make(1, blocks_per_piece=2)
    p.pick(full(1), 2, NOTHING)
    p.release(0, 0)
    p.release(0, 0)
    assert p.pick(full(1), 1, NOTHING) == [(0, 0, BLOCK_SIZE)]
    # not handed out again: the next call is endgame (a duplicate) only for a peer without it outstanding
    assert p.pick(full(1), 5, {(0, 0), (0, BLOCK_SIZE)}) == []


def test_received_and_wants_block() -> None:
    p = make(2, blocks_per_piece=2)
    assert p.received(0, 0) is False  # not being downloaded
    assert not p.wants_block(0, 0)
    p.pick(bits_of(2, [0]), 2, NOTHING)
    assert p.wants_block(0, 0) and p.wants_block(0, BLOCK_SIZE)
    assert (
        not p.wants_block(0, 1) and not p.wants_block(0, 2 * BLOCK_SIZE) and not p.wants_block(0, -BLOCK_SIZE)
    )
    assert p.received(0, 1) is False  # misaligned
    assert p.received(0, 2 * BLOCK_SIZE) is False
    assert p.received(0, 0) is False
    assert not p.wants_block(0, 0)
    assert p.received(0, 0) is False  # duplicate
    assert p.received(0, BLOCK_SIZE) is True  # completes the piece
    assert p.received(0, BLOCK_SIZE) is False
    p.piece_verified(0)
    assert 0 in p.have and 0 not in p.partial
    assert not p.wants_block(0, 0)


# -------------------------------------------------------------------------------------------- endgame


def test_endgame_only_once_everything_is_requested() -> None:
    p = make(2, blocks_per_piece=2)
    a_out = p.pick(full(2), 3, NOTHING)
    assert len(a_out) == 3 and not p.endgame_active
    b_out = p.pick(full(2), 10, NOTHING)
    # the one unrequested block first, then duplicates of the others in endgame
    assert b_out[0] not in a_out
    assert p.endgame_active
    assert set(b_out[1:]) == set(a_out)
    assert len(b_out) == 4


def test_endgame_duplicates_capped_and_skip_own_outstanding() -> None:
    p = make(2, blocks_per_piece=2, have=[])
    out: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for name in "abcd":
        for i, b, _ in p.pick(full(2), 10, out[name]):
            assert (i, b) not in out[name]
            out[name].add((i, b))
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for s in out.values():
        for k in s:
            counts[k] += 1
    assert set(counts.values()) == {ENDGAME_MAX_DUPLICATES}
    assert out["c"] == set() and out["d"] == set()
    # the same peer gets no duplicate of its own requests
    assert p.pick(full(2), 10, out["a"]) == []
    # a release frees a duplicate slot
    p.release(0, 0)
    out["a"].discard((0, 0))
    assert p.pick(full(2), 10, out["c"]) == [(0, 0, BLOCK_SIZE)]


def test_endgame_skips_received_blocks_and_respects_peer_bits() -> None:
    p = make(2, blocks_per_piece=2)
    p.pick(full(2), 4, NOTHING)
    p.received(0, 0)
    dup = p.pick(bits_of(2, [0]), 10, NOTHING)
    assert dup == [(0, BLOCK_SIZE, BLOCK_SIZE)]
    assert p.endgame_active


def test_no_endgame_while_a_wanted_piece_is_unrequested() -> None:
    p = make(3, blocks_per_piece=1)
    p.pick(bits_of(3, [0, 1]), 10, NOTHING)  # piece 2 is nowhere yet
    assert not p.in_endgame()
    assert p.pick(bits_of(3, [0, 1]), 10, NOTHING) == []
    assert not p.endgame_active
    # a skipped piece does not hold endgame back
    p.set_priority(2, 0)
    assert p.in_endgame()
    assert len(p.pick(bits_of(3, [0, 1]), 10, NOTHING)) == 2 and p.endgame_active


# ---------------------------------------------------------------------------------------- hash failure


def test_piece_failed_makes_the_piece_wanted_again() -> None:
    p = make(2, blocks_per_piece=2, have=[1])
    first = p.pick(full(2), 10, NOTHING)
    assert [b[:2] for b in first] == [(0, 0), (0, BLOCK_SIZE)]
    assert p.pick(full(2), 10, {(0, 0), (0, BLOCK_SIZE)}) == []
    p.received(0, 0)
    assert p.received(0, BLOCK_SIZE)
    p.endgame_active = True
    p.piece_failed(0)
    # Endgame duplicates of other pieces may still be out, so cancelling must stay on.
    assert p.endgame_active
    assert 0 not in p.have and 0 not in p.partial
    assert p.wanted(0) and not p.complete
    assert p.pick(full(2), 10, NOTHING) == first
    assert p.received(0, 0) is False and p.received(0, BLOCK_SIZE) is True
    p.piece_verified(0)
    assert p.complete


# ------------------------------------------------------------------------------- simulated download


@given(
    seed=st.integers(0, 2**32 - 1),
    num=st.integers(1, 12),
    bpp=st.integers(1, 4),
    npeers=st.integers(1, 5),
    skip=st.booleans(),
)
@settings(max_examples=120, deadline=None)
def test_simulated_download(seed: int, num: int, bpp: int, npeers: int, skip: bool) -> None:
    rnd = random.Random(seed)
    pl = bpp * BLOCK_SIZE
    total = (num - 1) * pl + rnd.randint(1, pl)
    picker = PiecePicker(num, pl, total, Bitfield(num), random.Random(seed ^ 0x5A5A))
    if skip and num > 1:
        for i in rnd.sample(range(num), rnd.randint(0, num - 1)):
            picker.set_priority(i, 0)
        for i in rnd.sample(range(num), rnd.randint(0, num)):
            picker.set_priority(i, rnd.randint(1, 5))
    wanted = {i for i in range(num) if picker.priority[i]}

    peers = [Bitfield(num) for _ in range(npeers)]
    for bf in peers:
        for i in range(num):
            if rnd.random() < 0.5:
                bf.add(i)
    for i in range(num):  # every piece exists somewhere, perhaps only after a later "have"
        if not any(i in bf for bf in peers) and rnd.random() < 0.7:
            rnd.choice(peers).add(i)
    missing = [i for i in range(num) if not any(i in bf for bf in peers)]
    for bf in peers:
        picker.add_peer(bf)

    outstanding: list[dict[tuple[int, int], int]] = [{} for _ in peers]
    got: dict[int, set[int]] = defaultdict(set)  # blocks received for the current attempt at a piece
    failures: set[int] = set()

    def holders(key: tuple[int, int]) -> int:
        return sum(key in o for o in outstanding)

    def do_pick(k: int) -> None:
        blocks: list[Block] = picker.pick(peers[k], rnd.randint(1, 6), outstanding[k])
        for i, begin, length in blocks:
            key = (i, begin)
            assert i in peers[k], "picked a piece the peer lacks"
            assert i in wanted and i not in picker.have
            assert key not in outstanding[k], "same block twice at one peer"
            assert begin % BLOCK_SIZE == 0 and begin // BLOCK_SIZE not in got[i]
            assert length == min(BLOCK_SIZE, picker.piece_size(i) - begin) > 0
            if holders(key):
                assert picker.endgame_active, "duplicate request outside endgame"
            outstanding[k][key] = length
            assert holders(key) <= ENDGAME_MAX_DUPLICATES

    def cancel_everywhere(i: int, except_peer: int | None = None, begin: int | None = None) -> None:
        for j, o in enumerate(outstanding):
            if j == except_peer:
                continue
            for key in [key for key in o if key[0] == i and (begin is None or key[1] == begin)]:
                del o[key]
                picker.release(*key)

    def deliver(k: int) -> None:
        key = rnd.choice(list(outstanding[k]))
        del outstanding[k][key]
        i, begin = key
        new = picker.wants_block(i, begin)
        assert new != (begin // BLOCK_SIZE in got[i])
        complete = picker.received(i, begin)
        got[i].add(begin // BLOCK_SIZE)
        if picker.endgame_active:
            cancel_everywhere(i, except_peer=k, begin=begin)
        if complete:
            assert got[i] == set(range(picker.blocks_in(i))), "piece reported complete with holes"
            cancel_everywhere(i)  # the engine withdraws whatever is left for this piece
            del got[i]
            if i not in failures and rnd.random() < 0.15:
                failures.add(i)
                picker.piece_failed(i)
            else:
                picker.piece_verified(i)
        else:
            assert not new or len(got[i]) < picker.blocks_in(i)

    for _step in range(20_000):
        if picker.complete:
            break
        r = rnd.random()
        k = rnd.randrange(npeers)
        if r < 0.35:
            do_pick(k)
        elif r < 0.85 and outstanding[k]:
            deliver(k)
        elif r < 0.90 and outstanding[k]:
            key = rnd.choice(list(outstanding[k]))  # reject / cancel of one request
            del outstanding[k][key]
            picker.release(*key)
        elif r < 0.93:
            for key in list(outstanding[k]):  # choke: everything comes back
                del outstanding[k][key]
                picker.release(*key)
        elif r < 0.97 and missing:
            i = missing.pop()  # a late "have" brings a piece nobody had
            peers[k].add(i)
            picker.peer_has(i)
        elif not any(outstanding):
            # nothing in flight: every peer asks; if nobody gets anything and nothing is missing, we are stuck
            for j in range(npeers):
                do_pick(j)
            assert any(outstanding) or missing, "stuck with nothing requestable"
    else:
        raise AssertionError("simulated download did not finish")
    assert {i for i in range(num) if i in picker.have} >= wanted
    assert picker.partial == {} or all(i not in wanted for i in picker.partial)


# --------------------------------------------------------------------------------- streaming deadlines


def test_deadlines_come_first_in_deadline_order_whatever_the_rarity() -> None:
    p = make(10, blocks_per_piece=1, have=[0, 1, 2, 3])
    for i in range(4, 10):
        p.peer_has(i)
    p.peer_has(9)  # 9 is the least rare; 4..8 are rarer
    p.set_deadlines({9: 1.0, 7: 2.0})
    picked = [b[0] for b in p.pick(full(10), 3, NOTHING)]
    assert picked[:2] == [9, 7] and picked[2] in (4, 5, 6, 8)


def test_a_deadline_overrides_priority_zero_and_makes_the_piece_wanted() -> None:
    p = make(4, blocks_per_piece=1, have=[0, 1, 2, 3][:0])
    for i in range(4):
        p.set_priority(i, 0)
    assert p.complete and not p.is_interesting(full(4))
    p.set_deadlines({2: 5.0})
    assert not p.complete and p.is_interesting(bits_of(4, [2])) and not p.is_interesting(bits_of(4, [1]))
    assert p.pick(full(4), 5, NOTHING) == [(2, 0, BLOCK_SIZE)]


def test_deadline_pieces_the_peer_lacks_are_skipped() -> None:
    p = make(6, blocks_per_piece=1, have=[0, 1, 2, 3])
    p.set_deadlines({4: 1.0, 5: 2.0})
    assert p.pick(bits_of(6, [5]), 4, NOTHING) == [(5, 0, BLOCK_SIZE)]


def test_a_verified_piece_loses_its_deadline() -> None:
    p = make(6, blocks_per_piece=1, have=[0, 1, 2, 3])
    p.set_deadlines({4: 1.0, 5: 2.0})
    p.pick(bits_of(6, [4]), 1, NOTHING)
    assert p.received(4, 0)
    p.piece_verified(4)
    assert 4 not in p.deadlines and p.urgent() == [5]
    p.set_deadlines({4: 0.5, 5: 2.0})  # a deadline for a piece we have is ignored
    assert p.urgent() == [5]


def test_only_fast_peers_duplicate_stalled_blocks_of_the_most_urgent_pieces() -> None:
    p = make(20, blocks_per_piece=2, have=[0, 1, 2, 3])
    p.set_deadlines({4: 1.0, 5: 2.0, 6: 3.0})
    slow = p.pick(full(20), 6, NOTHING)  # a slow peer takes every block of 4, 5 and 6
    assert [(i, b) for i, b, _ in slow] == [(4, 0), (4, BLOCK_SIZE), (5, 0), (5, BLOCK_SIZE), (6, 0),
                                            (6, BLOCK_SIZE)]
    # Another slow peer gets new pieces, never the stalled urgent blocks.
    other = p.pick(full(20), 4, NOTHING, fast=False)
    assert all(i not in (4, 5, 6) for i, _, _ in other) and len(other) == 4
    assert not p.endgame_active
    dup = p.pick(full(20), 4, NOTHING, fast=True)
    # A fast peer requests pieces 4 and 5 (the two most urgent) again; 6 is left to its peer.
    assert [(i, b) for i, b, _ in dup] == [(4, 0), (4, BLOCK_SIZE), (5, 0), (5, BLOCK_SIZE)]
    assert p.endgame_active
    # Capped at ENDGAME_MAX_DUPLICATES outstanding copies.
    assert ENDGAME_MAX_DUPLICATES == 2
    assert all(i not in (4, 5) for i, _, _ in p.pick(full(20), 4, NOTHING, fast=True))
    p2 = make(6, blocks_per_piece=1, have=[0, 1, 2, 3])
    p2.set_deadlines({4: 1.0})
    first = p2.pick(full(6), 1, NOTHING)
    assert p2.pick(full(6), 1, {(4, 0)}, fast=True) == [(5, 0, BLOCK_SIZE)]
    assert first == [(4, 0, BLOCK_SIZE)]


def test_sequential_mode_downloads_in_index_order() -> None:
    p = make(12, blocks_per_piece=1)
    for i in range(12):
        for _ in range(12 - i):
            p.peer_has(i)  # higher index is rarer: rarest-first would go backwards
    p.set_sequential(True)
    assert [b[0] for b in p.pick(full(12), 12, NOTHING)] == list(range(12))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), num=st.integers(1, 40), moves=st.integers(1, 8))
def test_simulated_stream_gets_each_focus_piece_before_others(seed: int, num: int, moves: int) -> None:
    """A reader jumps around (seeks); each time, the next pick is the piece at its position."""
    rng = random.Random(seed)
    p = make(num, blocks_per_piece=1, seed=seed)
    for i in range(num):
        p.peer_has(i)
    for _ in range(moves):
        missing = [i for i in range(num) if i not in p.have]
        if not missing:
            break
        pos = rng.choice(missing)
        window = [i for i in range(pos, min(num, pos + 4)) if i not in p.have]
        p.set_deadlines({i: float(k) for k, i in enumerate(window)})
        picked = p.pick(full(num), 1, NOTHING)
        assert picked and picked[0][0] == pos
        assert p.received(pos, 0)
        p.piece_verified(pos)
