"""Unit tests of the sans-IO swarm registry (bridge.tracker.state): no sockets, no clock."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from bridge.errors import TrackerError
from bridge.proto.wstracker import Announce, AnnounceReply, Answer, ForwardedOffer, Offer, RelayedAnswer
from bridge.tracker.state import (
    EXPIRY_INTERVALS,
    MAX_OFFERS_PER_ANNOUNCE,
    SwarmRegistry,
)

IH = b"I" * 20
IH2 = b"J" * 20


def pid(n: int) -> bytes:
    return b"-WW0001-" + b"%012d" % n


def oid(n: int) -> bytes:
    return b"offer-%014d" % n


class Sock:
    """A stand-in for a WebSocket connection (the registry only hashes it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Sock({self.name})"


def announce(n: int, *, offers: int = 0, left: int | None = 100, event: str | None = None, ih: bytes = IH,
             numwant: int = 50) -> Announce:
    return Announce(ih, pid(n), numwant=numwant, left=left, event=event,
                    offers=tuple(Offer(oid(n * 100 + i), f"sdp {n}/{i}") for i in range(offers)))


def join(reg: SwarmRegistry, count: int, now: float = 0.0, left: int | None = 100) -> list[Sock]:
    socks = []
    for n in range(count):
        s = Sock(f"s{n}")
        reg.announce_ws(s, announce(n, left=left), now)
        socks.append(s)
    return socks


# ------------------------------------------------------------------------------------------- offers


def test_reply_first_then_one_offer_per_peer_never_to_the_sender() -> None:
    reg = SwarmRegistry(rng=random.Random(1))
    socks = join(reg, 8)
    for trial in range(50):
        sender = socks[trial % 8]
        out = reg.announce_ws(sender, announce(trial % 8, offers=5), 1.0)
        target, reply = out[0]
        assert target is sender and isinstance(reply, AnnounceReply)
        assert reply.info_hash == IH and reply.interval == reg.interval
        forwards = out[1:]
        assert len(forwards) == 5
        targets = [t for t, _ in forwards]
        assert sender not in targets
        assert len(set(map(id, targets))) == 5  # one peer per offer
        for (_t, m), i in zip(forwards, range(5), strict=True):
            assert isinstance(m, ForwardedOffer)
            assert m.peer_id == pid(trial % 8) and m.info_hash == IH
            assert m.offer_id == oid((trial % 8) * 100 + i) and m.sdp == f"sdp {trial % 8}/{i}"


def test_fewer_peers_than_offers_fewer_forwards() -> None:
    reg = SwarmRegistry(rng=random.Random(2))
    socks = join(reg, 3)
    out = reg.announce_ws(socks[0], announce(0, offers=5), 1.0)
    assert sorted(t.name for t, _ in out[1:]) == ["s1", "s2"]  # type: ignore[attr-defined]
    # Alone in a swarm: a reply and nothing else.
    lone = Sock("lone")
    out = reg.announce_ws(lone, announce(99, offers=5, ih=IH2), 1.0)
    assert len(out) == 1 and out[0][0] is lone


def test_offers_capped_by_limit_and_numwant() -> None:
    reg = SwarmRegistry(rng=random.Random(3))
    socks = join(reg, 30)
    out = reg.announce_ws(socks[0], announce(0, offers=MAX_OFFERS_PER_ANNOUNCE), 1.0)
    assert len(out) - 1 == MAX_OFFERS_PER_ANNOUNCE
    out = reg.announce_ws(socks[0], announce(0, offers=5, numwant=2), 1.0)
    assert len(out) - 1 == 2
    assert reg.offers_forwarded == MAX_OFFERS_PER_ANNOUNCE + 2


def test_random_target_is_deterministic_with_a_seeded_rng_and_spread() -> None:
    def run(seed: int) -> list[str]:
        reg = SwarmRegistry(rng=random.Random(seed))
        socks = join(reg, 50)
        names = []
        for i in range(40):
            out = reg.announce_ws(socks[i], announce(i, offers=1), 1.0)
            names.append(out[1][0].name)  # type: ignore[attr-defined]
        return names

    assert run(7) == run(7)
    assert run(7) != run(8)
    # Large pool (rejection sampling path): many different targets, never the sender.
    reg = SwarmRegistry(rng=random.Random(9))
    socks = join(reg, 200)
    seen: set[str] = set()
    for _ in range(100):
        out = reg.announce_ws(socks[0], announce(0, offers=10), 1.0)
        assert len(out) == 11
        ts = [t for t, _ in out[1:]]
        assert socks[0] not in ts and len(set(map(id, ts))) == 10
        seen.update(t.name for t in ts)  # type: ignore[attr-defined]
    assert len(seen) > 150


def test_seed_offers_go_to_leechers_only() -> None:
    reg = SwarmRegistry(rng=random.Random(4))
    seeds = [Sock(f"seed{i}") for i in range(5)]
    for i, s in enumerate(seeds):
        reg.announce_ws(s, announce(i, left=0), 0.0)
    leech = Sock("leech")
    reg.announce_ws(leech, announce(50, left=None), 0.0)
    out = reg.announce_ws(seeds[0], announce(0, left=0, offers=5), 1.0)
    assert [t for t, _ in out[1:]] == [leech]
    # A leecher's offers go to seeds and leechers alike.
    out = reg.announce_ws(leech, announce(50, left=None, offers=5), 1.0)
    assert {t.name for t, _ in out[1:]} == {f"seed{i}" for i in range(5)}  # type: ignore[attr-defined]


def test_seed_offers_go_to_leechers_only_in_a_large_swarm() -> None:
    # Large pool: the rejection-sampling path, which must apply the same rules.
    reg = SwarmRegistry(rng=random.Random(13))
    seeds = join(reg, 150, left=0)
    leechers = [Sock(f"leech{i}") for i in range(30)]
    for i, s in enumerate(leechers):
        reg.announce_ws(s, announce(1000 + i), 0.0)
    leecher_socks = set(map(id, leechers))
    for trial in range(50):
        out = reg.announce_ws(seeds[trial], announce(trial, left=0, offers=5), 1.0)
        targets = [t for t, _ in out[1:]]
        assert targets and len(set(map(id, targets))) == len(targets)
        assert all(id(t) in leecher_socks for t in targets)
    seen_seeds = set()
    for trial in range(30):
        out = reg.announce_ws(leechers[trial], announce(1000 + trial, offers=5), 1.0)
        targets = [t for t, _ in out[1:]]
        assert len(targets) == 5 and leechers[trial] not in targets
        seen_seeds.update(id(t) for t in targets if id(t) not in leecher_socks)
    assert seen_seeds  # a leecher's offers reach seeds too


def test_reply_follows_the_counts_and_interval() -> None:
    reg = SwarmRegistry(rng=random.Random(12))
    a, b = Sock("a"), Sock("b")
    first = reg.announce_ws(a, announce(1), 0.0)[0][1]
    assert first == AnnounceReply(IH, interval=reg.interval, complete=0, incomplete=1)
    assert reg.announce_ws(a, announce(1), 1.0)[0][1] is first  # unchanged counts: the same reply
    assert reg.announce_ws(b, announce(2, left=0), 1.0)[0][1] == AnnounceReply(IH, reg.interval, None, 1, 1)
    assert reg.announce_ws(a, announce(1, left=0, event="completed"), 2.0)[0][1].complete == 2
    reg.announce_addr("http", IH, pid(3), "10.0.0.3", 1, 5, "started", 50, 2.0)
    assert reg.announce_ws(a, announce(1, left=0), 3.0)[0][1] == AnnounceReply(IH, reg.interval, None, 2, 1)
    reg.close_socket(b)
    assert reg.announce_ws(a, announce(1, left=0), 4.0)[0][1] == AnnounceReply(IH, reg.interval, None, 1, 1)
    reg.interval = 30
    assert reg.announce_ws(a, announce(1, left=0), 5.0)[0][1] == AnnounceReply(IH, 30, None, 1, 1)
    assert reg.expire(5.0 + EXPIRY_INTERVALS * 30 + 1) == 2
    assert reg.announce_ws(a, announce(1, left=0), 200.0)[0][1] == AnnounceReply(IH, 30, None, 1, 0)


def test_stopped_and_completed_carry_no_forwarding_for_stopped() -> None:
    reg = SwarmRegistry(rng=random.Random(5))
    socks = join(reg, 3)
    out = reg.announce_ws(socks[0], announce(0, offers=3, event="stopped"), 1.0)
    assert len(out) == 1
    assert isinstance(out[0][1], AnnounceReply) and out[0][1].incomplete == 2
    assert reg.socket_swarms(socks[0]) == {}


# ------------------------------------------------------------------------------------------- answers


def test_answer_relayed_to_the_offerer_only() -> None:
    reg = SwarmRegistry(rng=random.Random(6))
    a, b = join(reg, 2)
    out = reg.announce_ws(a, announce(0, offers=1), 1.0)
    (target, offer), = out[1:]
    assert target is b and isinstance(offer, ForwardedOffer)
    relayed = reg.answer_ws(b, Answer(IH, pid(1), offer.peer_id, offer.offer_id, "answer sdp"), 2.0)
    assert relayed == [(a, RelayedAnswer(IH, pid(1), offer.offer_id, "answer sdp"))]
    assert reg.answers_relayed == 1


def test_answer_refused_when_the_offerer_is_gone_or_unknown() -> None:
    reg = SwarmRegistry()
    a, b = join(reg, 2)
    with pytest.raises(TrackerError, match="no peer to answer"):
        reg.answer_ws(b, Answer(IH, pid(1), pid(77), oid(1), "x"), 1.0)
    with pytest.raises(TrackerError, match="unknown info_hash"):
        reg.answer_ws(b, Answer(IH2, pid(1), pid(0), oid(1), "x"), 1.0)
    # The answerer must have announced on this socket: no relaying for strangers or impostors.
    with pytest.raises(TrackerError, match="not announced on this connection"):
        reg.answer_ws(Sock("stranger"), Answer(IH, pid(1), pid(0), oid(1), "x"), 1.0)
    reg.close_socket(a)
    with pytest.raises(TrackerError, match="no peer to answer"):
        reg.answer_ws(b, Answer(IH, pid(1), pid(0), oid(1), "x"), 1.0)


def test_answer_to_an_address_peer_id_is_refused() -> None:
    reg = SwarmRegistry()
    reg.announce_addr("http", IH, pid(5), "10.0.0.5", 6881, 0, "started", 50, 0.0)
    (b,) = join(reg, 1)
    with pytest.raises(TrackerError, match="no peer to answer"):
        reg.answer_ws(b, Answer(IH, pid(0), pid(5), oid(1), "x"), 1.0)


# ------------------------------------------------------------------------------------------- sockets


def test_closed_socket_leaves_all_its_swarms() -> None:
    reg = SwarmRegistry()
    s, other = Sock("s"), Sock("other")
    for k in range(5):
        reg.announce_ws(s, announce(1, ih=bytes([k]) * 20), 0.0)
    reg.announce_ws(other, announce(2, ih=bytes([0]) * 20), 0.0)
    assert len(reg.swarms) == 5 and reg.peer_counts["ws"] == 6
    assert reg.close_socket(s) == 5
    assert list(reg.swarms) == [bytes([0]) * 20]
    assert reg.peer_counts["ws"] == 1 and reg.socket_swarms(s) == {}
    assert reg.close_socket(s) == 0


def test_peer_id_bound_to_its_socket() -> None:
    reg = SwarmRegistry()
    a, b = Sock("a"), Sock("b")
    reg.announce_ws(a, announce(1), 0.0)
    with pytest.raises(TrackerError, match="another connection"):
        reg.announce_ws(b, announce(1), 1.0)
    # Another socket cannot stop it either.
    reg.announce_ws(b, announce(1, event="stopped"), 1.0)
    assert reg.swarms[IH].peers[pid(1)].socket is a
    # Once a closes, the id is free.
    reg.close_socket(a)
    reg.announce_ws(b, announce(1), 2.0)
    assert reg.swarms[IH].peers[pid(1)].socket is b


def test_new_peer_id_on_the_same_socket_replaces_the_old() -> None:
    reg = SwarmRegistry()
    s = Sock("s")
    reg.announce_ws(s, announce(1), 0.0)
    reg.announce_ws(s, announce(2), 1.0)
    assert list(reg.swarms[IH].peers) == [pid(2)]
    assert reg.socket_swarms(s) == {IH: pid(2)}
    assert reg.swarms[IH].incomplete == 1


# ------------------------------------------------------------------------------------------- counts


def test_left_null_counts_as_incomplete() -> None:
    reg = SwarmRegistry()
    reg.announce_ws(Sock("magnet"), announce(1, left=None), 0.0)
    reg.announce_ws(Sock("seed"), announce(2, left=0), 0.0)
    reg.announce_addr("http", IH, pid(3), "10.0.0.3", 1, None, "started", 50, 0.0)
    assert reg.scrape([IH]) == [(IH, 1, 2, 0)]


def test_counts_and_downloaded() -> None:
    reg = SwarmRegistry()
    s = Sock("s")
    reg.announce_ws(s, announce(1, left=500, event="started"), 0.0)
    reg.announce_addr("udp", IH, pid(2), "10.0.0.2", 6881, 10, "started", 50, 0.0)
    assert reg.scrape([IH, IH2]) == [(IH, 0, 2, 0), (IH2, 0, 0, 0)]
    reg.announce_ws(s, announce(1, left=0, event="completed"), 1.0)
    assert reg.scrape([IH]) == [(IH, 1, 1, 1)]
    # Repeated completed does not count twice; neither does a seed that joins complete.
    reg.announce_ws(s, announce(1, left=0, event="completed"), 2.0)
    reg.announce_ws(Sock("t"), announce(3, left=0, event="completed"), 2.0)
    assert reg.scrape([IH]) == [(IH, 2, 1, 1)]
    # An address peer finishing through a regular update counts too.
    reg.announce_addr("udp", IH, pid(2), "10.0.0.2", 6881, 0, None, 50, 3.0)
    assert reg.scrape([IH]) == [(IH, 3, 0, 2)]
    # A seed going back to leeching (data deleted) moves between the counts.
    reg.announce_addr("udp", IH, pid(2), "10.0.0.2", 6881, 5, None, 50, 4.0)
    assert reg.scrape([IH]) == [(IH, 2, 1, 2)]
    reg.announce_addr("udp", IH, pid(2), "10.0.0.2", 6881, 5, "stopped", 50, 5.0)
    reg.announce_ws(s, announce(1, event="stopped"), 5.0)
    assert reg.scrape([IH]) == [(IH, 1, 0, 2)]
    stats = reg.stats()
    assert stats["peers"] == {"http": 0, "udp": 0, "ws": 1, "total": 1}
    assert stats["announces"]["ws"] == 5 and stats["announces"]["udp"] == 4
    assert stats["swarms"] == 1 and stats["seeders"] == 1 and stats["leechers"] == 0


# ------------------------------------------------------------------------------------------- HTTP/UDP


def test_addr_peers_exclude_self_seed_gets_no_seeds_and_families() -> None:
    reg = SwarmRegistry(rng=random.Random(11))
    for i in range(5):
        reg.announce_addr("http", IH, pid(i), f"10.0.0.{i}", 6881, 0, "started", 50, 0.0)
    for i in range(3):
        reg.announce_addr("http", IH, pid(10 + i), f"2001:db8::{i + 1}", 6881, 100, "started", 50, 0.0)
    leech = reg.announce_addr("http", IH, pid(20), "10.0.1.1", 7000, 100, "started", 50, 1.0)
    assert {p.ip for p in leech.peers4} == {f"10.0.0.{i}" for i in range(5)}
    assert {p.ip for p in leech.peers6} == {f"2001:db8::{i + 1}" for i in range(3)}
    assert (leech.complete, leech.incomplete) == (5, 4)
    seed = reg.announce_addr("http", IH, pid(0), "10.0.0.0", 6881, 0, None, 50, 1.0)
    assert [p.ip for p in seed.peers4] == ["10.0.1.1"]  # no seeds, not itself
    v4_only = reg.announce_addr("udp", IH, pid(20), "10.0.1.1", 7000, 100, None, 3, 1.0, want6=False)
    assert len(v4_only.peers4) == 3 and v4_only.peers6 == ()
    stopped = reg.announce_addr("http", IH, pid(20), "10.0.1.1", 7000, 100, "stopped", 50, 1.0)
    assert stopped.peers4 == () and stopped.incomplete == 3
    # WebSocket peers are never handed out as addresses.
    reg.announce_ws(Sock("w"), announce(30), 1.0)
    r = reg.announce_addr("http", IH, pid(21), "10.0.2.1", 7000, 100, None, 50, 1.0)
    assert len(r.peers4) == 5 and len(r.peers6) == 3


def test_same_address_new_peer_id_replaces() -> None:
    reg = SwarmRegistry()
    reg.announce_addr("http", IH, pid(1), "10.0.0.1", 6881, 10, "started", 50, 0.0)
    reg.announce_addr("http", IH, pid(2), "10.0.0.1", 6881, 10, "started", 50, 1.0)
    assert len(reg.swarms[IH]) == 1 and reg.swarms[IH].peers[("10.0.0.1", 6881)].peer_id == pid(2)


# ------------------------------------------------------------------------------------------- expiry


def test_expiry_after_three_missed_intervals() -> None:
    reg = SwarmRegistry(interval=10)
    s_old, s_new = Sock("old"), Sock("new")
    reg.announce_ws(s_old, announce(1), 0.0)
    reg.announce_addr("http", IH, pid(2), "10.0.0.2", 1, 5, "started", 50, 0.0)
    reg.announce_ws(s_new, announce(3), 0.0)
    # s_new keeps announcing, the others go silent.
    reg.announce_ws(s_new, announce(3), 25.0)
    assert reg.expire(EXPIRY_INTERVALS * 10.0) == 0  # exactly three intervals: still there
    assert reg.expire(EXPIRY_INTERVALS * 10.0 + 0.5) == 2
    assert list(reg.swarms[IH].peers) == [pid(3)]
    assert reg.socket_swarms(s_old) == {}
    assert reg.scrape([IH]) == [(IH, 0, 1, 0)]
    assert reg.expire(25.0 + EXPIRY_INTERVALS * 10.0 + 1) == 1
    assert reg.swarms == {} and reg.peer_total == 0 and reg.peers_expired == 3
    # An expired WebSocket peer can announce again on its socket.
    reg.announce_ws(s_old, announce(1), 200.0)
    assert reg.socket_swarms(s_old) == {IH: pid(1)}


# ------------------------------------------------------------------------------------------- limits


def test_limits() -> None:
    reg = SwarmRegistry(max_peers_per_swarm=3, max_swarms=2, max_swarms_per_socket=2, max_peers_total=5)
    join(reg, 3)
    with pytest.raises(TrackerError, match="swarm is full"):
        reg.announce_ws(Sock("x"), announce(9), 0.0)
    with pytest.raises(TrackerError, match="swarm is full"):
        reg.announce_addr("http", IH, pid(9), "10.0.0.9", 1, 0, "started", 50, 0.0)
    # A known peer still updates in a full swarm.
    reg.announce_addr("http", IH, pid(9), "10.0.0.9", 1, 0, "stopped", 50, 0.0)
    s = Sock("multi")
    reg.announce_ws(s, announce(20, ih=IH2), 0.0)
    with pytest.raises(TrackerError, match="too many swarms"):
        reg.announce_ws(s, announce(20, ih=b"K" * 20), 0.0)
    assert set(reg.swarms) == {IH, IH2}
    # Per-socket limit (the swarm limit is not what stops it here).
    reg2 = SwarmRegistry(max_swarms_per_socket=2)
    s2 = Sock("s2")
    reg2.announce_ws(s2, announce(1, ih=b"A" * 20), 0.0)
    reg2.announce_ws(s2, announce(1, ih=b"B" * 20), 0.0)
    reg2.announce_ws(s2, announce(1, ih=b"B" * 20), 1.0)  # re-announce is fine
    with pytest.raises(TrackerError, match="already in 2 swarms"):
        reg2.announce_ws(s2, announce(1, ih=b"C" * 20), 0.0)
    assert b"C" * 20 not in reg2.swarms
    # Total peers.
    reg3 = SwarmRegistry(max_peers_total=2)
    join(reg3, 2)
    with pytest.raises(TrackerError, match="too many peers"):
        reg3.announce_addr("udp", IH2, pid(1), "10.0.0.1", 1, 0, "started", 50, 0.0)
    assert IH2 not in reg3.swarms  # the failed announce left no empty swarm behind


def test_state_imports_without_asyncio() -> None:
    code = ("import sys; import bridge.tracker.state, bridge.tracker.codec; "
            "bad = [m for m in ('asyncio', 'aiohttp', 'socket') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
