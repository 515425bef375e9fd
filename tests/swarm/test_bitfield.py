"""Bitfield: wire validation (length, spare bits) and set operations against a plain Python set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.swarm.bitfield import Bitfield


def test_empty_and_full() -> None:
    bf = Bitfield(10)
    assert len(bf) == 0 and not bf.complete and list(bf) == []
    assert bf.to_bytes() == b"\x00\x00"
    full = Bitfield(10, fill=True)
    assert len(full) == 10 and full.complete
    assert full.to_bytes() == b"\xff\xc0"  # spare bits stay clear
    assert list(full) == list(range(10))
    assert Bitfield(16, fill=True).to_bytes() == b"\xff\xff"
    zero = Bitfield(0, fill=True)
    assert zero.to_bytes() == b"" and zero.complete and len(zero) == 0
    assert Bitfield(0).complete


def test_bit_order_is_msb_first() -> None:
    bf = Bitfield(9)
    bf.add(0)
    bf.add(8)
    assert bf.to_bytes() == b"\x80\x80"
    assert Bitfield.from_bytes(b"\x40\x00", 9) is not None
    assert list(Bitfield.from_bytes(b"\x41\x80", 9)) == [1, 7, 8]


def test_from_bytes_valid() -> None:
    bf = Bitfield.from_bytes(b"\xa5\xc0", 10)
    assert list(bf) == [0, 2, 5, 7, 8, 9]
    assert len(bf) == 6
    assert bf.to_bytes() == b"\xa5\xc0"
    assert Bitfield.from_bytes(b"", 0).complete
    assert Bitfield.from_bytes(b"\xff", 8).complete


@pytest.mark.parametrize(
    "data,size",
    [
        (b"", 1),
        (b"\x00", 9),
        (b"\x00\x00", 8),
        (b"\x00\x00\x00", 10),
        (b"\x00", 0),
        (b"\x01", 7),  # the one spare bit set
        (b"\xff", 1),
        (b"\x00\x01", 10),
        (b"\xff\xe0", 10),
    ],
)
def test_from_bytes_refuses(data: bytes, size: int) -> None:
    with pytest.raises(RemoteProtocolError):
        Bitfield.from_bytes(data, size)


def test_add_discard_contains() -> None:
    bf = Bitfield(20)
    assert bf.add(3) is True
    assert bf.add(3) is False
    assert 3 in bf and 4 not in bf
    assert -1 not in bf and 20 not in bf and 1000 not in bf
    assert len(bf) == 1
    assert bf.discard(3) is True
    assert bf.discard(3) is False
    assert bf.discard(-1) is False and bf.discard(20) is False
    assert len(bf) == 0
    with pytest.raises(IndexError):
        bf.add(20)
    with pytest.raises(IndexError):
        bf.add(-1)


def test_copy_is_independent() -> None:
    bf = Bitfield(12)
    bf.add(1)
    c = bf.copy()
    c.add(2)
    bf.discard(1)
    assert list(c) == [1, 2] and list(bf) == []
    assert c.size == 12 and len(c) == 2


@given(st.integers(0, 80), st.lists(st.tuples(st.booleans(), st.integers(-2, 85)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_ops_match_a_set(size: int, ops: list[tuple[bool, int]]) -> None:
    bf = Bitfield(size)
    model: set[int] = set()
    for add, i in ops:
        if add:
            if 0 <= i < size:
                assert bf.add(i) == (i not in model)
                model.add(i)
            else:
                with pytest.raises(IndexError):
                    bf.add(i)
        else:
            assert bf.discard(i) == (i in model)
            model.discard(i)
        assert len(bf) == len(model)
    assert list(bf) == sorted(model)
    assert bf.complete == (len(model) == size)
    assert all((i in bf) == (i in model) for i in range(-2, size + 3))
    # the wire form round-trips and passes validation
    again = Bitfield.from_bytes(bf.to_bytes(), size)
    assert list(again) == sorted(model) and len(again) == len(model)


@given(st.integers(1, 64), st.binary(max_size=10))
@settings(max_examples=200, deadline=None)
def test_from_bytes_accepts_exactly_the_valid_ones(size: int, data: bytes) -> None:
    nbytes = (size + 7) // 8
    spare = nbytes * 8 - size
    valid = len(data) == nbytes and (spare == 0 or data[-1] & ((1 << spare) - 1) == 0)
    try:
        bf = Bitfield.from_bytes(data, size)
    except RemoteProtocolError:
        assert not valid
        return
    assert valid
    assert bf.to_bytes() == data
    assert len(bf) == sum(bin(b).count("1") for b in data)
    assert all(i < size for i in bf)


@given(st.integers(0, 70))
@settings(max_examples=50, deadline=None)
def test_fill_matches_adding_every_bit(size: int) -> None:
    a = Bitfield(size, fill=True)
    b = Bitfield(size)
    for i in range(size):
        b.add(i)
    assert a.to_bytes() == b.to_bytes() and len(a) == len(b) == size and a.complete
