from __future__ import annotations

import hashlib
import os

import pytest

from bridge.proto.extension import MAX_METADATA_SIZE, METADATA_PIECE_SIZE
from bridge.swarm.metadata import MAX_REQUESTS_PER_PEER, MetadataAssembler


def fetch_all(asm: MetadataAssembler, raw: bytes, peer: str) -> bytes | None:
    result = None
    while (piece := asm.next_request(peer)) is not None:
        chunk = raw[piece * METADATA_PIECE_SIZE : (piece + 1) * METADATA_PIECE_SIZE]
        result = asm.on_data(piece, len(raw), chunk, peer) or result
    return result


@pytest.mark.parametrize("size", [0, -1, MAX_METADATA_SIZE + 1, 1 << 40])
def test_unusable_sizes_are_refused(size):
    asm = MetadataAssembler(b"\x00" * 20)
    assert not asm.offer_size(size, "p")
    assert asm.next_request("p") is None


def test_assembles_from_two_peers_and_verifies():
    raw = os.urandom(3 * METADATA_PIECE_SIZE + 100)
    asm = MetadataAssembler(hashlib.sha1(raw).digest())
    assert asm.offer_size(len(raw), "a") and asm.offer_size(len(raw), "b")
    a = asm.next_request("a")
    b = asm.next_request("b")
    assert a != b  # different pieces go to different peers first
    assert asm.on_data(a, len(raw), raw[a * METADATA_PIECE_SIZE : (a + 1) * METADATA_PIECE_SIZE], "a") is None
    assert asm.on_data(b, len(raw), raw[b * METADATA_PIECE_SIZE : (b + 1) * METADATA_PIECE_SIZE], "b") is None
    assert fetch_all(asm, raw, "b") == raw


def test_mismatching_size_from_second_peer_is_refused():
    asm = MetadataAssembler(b"\x00" * 20)
    assert asm.offer_size(1000, "a")
    assert not asm.offer_size(2000, "b")


def test_wrong_piece_lengths_are_ignored():
    raw = os.urandom(METADATA_PIECE_SIZE + 10)
    asm = MetadataAssembler(hashlib.sha1(raw).digest())
    asm.offer_size(len(raw), "a")
    assert asm.on_data(0, len(raw), raw[:100], "a") is None
    assert asm.on_data(1, len(raw), raw[METADATA_PIECE_SIZE:] + b"x", "a") is None
    assert asm.on_data(5, len(raw), b"", "a") is None
    assert asm.on_data(0, len(raw) + 1, raw[:METADATA_PIECE_SIZE], "a") is None
    assert not asm.complete


def test_hash_failure_resets_and_marks_suspects():
    good = os.urandom(2 * METADATA_PIECE_SIZE)
    bad = os.urandom(len(good))
    asm = MetadataAssembler(hashlib.sha1(good).digest())
    asm.offer_size(len(good), "liar")
    assert fetch_all(asm, bad, "liar") is None
    assert asm.failures == 1 and "liar" in asm.suspects
    assert asm.size is None  # a new offer decides the size again
    assert asm.next_request("liar") is None
    assert asm.offer_size(len(good), "honest")
    assert fetch_all(asm, good, "honest") == good


def test_requests_per_peer_are_bounded_and_reject_frees_them():
    raw = os.urandom(10 * METADATA_PIECE_SIZE)
    asm = MetadataAssembler(hashlib.sha1(raw).digest())
    asm.offer_size(len(raw), "a")
    got = [asm.next_request("a") for _ in range(MAX_REQUESTS_PER_PEER)]
    assert None not in got and asm.next_request("a") is None
    asm.on_reject(got[0], "a")
    assert asm.next_request("a") is not None
    asm.peer_gone("a")
    assert asm.next_request("b") is None  # b never said it has the metadata
    asm.offer_size(len(raw), "b")
    assert asm.next_request("b") is not None


def test_size_is_retaken_from_an_honest_offer_after_a_failure():
    good = os.urandom(METADATA_PIECE_SIZE // 2)
    asm = MetadataAssembler(hashlib.sha1(good).digest())
    asm.offer_size(len(good), "liar")
    asm.offer_size(len(good), "honest")
    assert asm.next_request("liar") == 0
    assert asm.next_request("honest") == 0  # a duplicate request in the endgame
    assert asm.on_data(0, len(good), os.urandom(len(good)), "liar") is None
    assert asm.size == len(good)
    assert asm.next_request("liar") is None
    assert fetch_all(asm, good, "honest") == good
