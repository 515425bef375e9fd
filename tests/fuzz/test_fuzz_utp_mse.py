"""Fuzz uTP datagram parsing (bridge/proto/utp.py) and the MSE handshake (bridge/proto/mse.py).

``parse_header`` and ``UtpConnection.receive_datagram`` never raise on what a peer sends (documented);
``UtpConnection.accept`` raises only RemoteProtocolError; MSE raises only RemoteProtocolError."""

from __future__ import annotations

import os
import random
import struct

from fuzz_support import DEADLINE, SUPPRESS, apply_ops, check, mutated, split_points
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.proto import utp
from bridge.proto.mse import MseInitiator, MseResponder, req2_key
from bridge.proto.utp import UtpConnection, parse_extensions, parse_header

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (RemoteProtocolError,)
_HDR = struct.Struct(">BBHIIIHH")


# ------------------------------------------------------------------------------------------------ uTP

def _connected(seed: int) -> tuple[UtpConnection, UtpConnection]:
    """An initiator and an acceptor after the handshake and one exchange of data."""
    rng = random.Random(seed)
    a = UtpConnection.connect(0.0, rng)
    (syn,) = a.datagrams_to_send(0.0)
    b = UtpConnection.accept(syn, 0.0, rng)
    for now, (src, dst) in ((0.01, (b, a)), (0.02, (a, b)), (0.03, (b, a))):
        if src is a:
            a.send(b"hello")
        for d in src.datagrams_to_send(now):
            dst.receive_datagram(d, now)
    assert a.connected
    return a, b


@st.composite
def datagram_specs(draw: st.DrawFn) -> tuple[int, int, int, bytes, bytes, int, int]:
    """(type, seq offset, ack offset, extension chain, payload, wnd, first extension) relative to a peer."""
    ext_chain = b""
    first = 0
    for kind, body in reversed(draw(st.lists(st.tuples(st.sampled_from([1, 2, 0, 7]), st.binary(max_size=10)),
                                             max_size=3))):
        ext_chain = bytes([first, len(body)]) + body + ext_chain
        first = kind
    return (draw(st.integers(0, 5)), draw(st.integers(-3, 5)), draw(st.integers(-3, 3)), ext_chain,
            draw(st.binary(max_size=200)), draw(st.integers(0, 2**32 - 1)), first)


def _pack(conn: UtpConnection, spec: tuple[int, int, int, bytes, bytes, int, int]) -> bytes:
    t, dseq, dack, ext_chain, payload, wnd, first = spec
    return _HDR.pack((t << 4) | utp.VERSION, first, conn.recv_id, 12345, 0, wnd, (conn.ack_nr + dseq) & 0xFFFF,
                     (conn.seq_nr + dack) & 0xFFFF) + ext_chain + payload


def _drive(conn: UtpConnection, datagrams: list[bytes], now: float) -> None:
    for d in datagrams:
        now += 0.05
        check(conn.receive_datagram, d, now, allowed=())
        while conn.next_event() is not None:
            pass
        timer = conn.get_timer()
        if timer is not None and timer <= now + 0.05:
            check(conn.handle_timer, now + 0.05, allowed=())
        check(conn.datagrams_to_send, now, allowed=())
    # and a long silence: timers must end or continue without raising
    for step in (1.0, 10.0, 100.0, 1000.0):
        check(conn.handle_timer, now + step, allowed=())
        check(conn.datagrams_to_send, now + step, allowed=())


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_utp_parse(data: bytes) -> None:
    h = check(parse_header, data, allowed=())
    if h is not None:
        check(parse_extensions, data, h.extension, allowed=())
    check(UtpConnection.accept, data, 0.0, random.Random(0), allowed=ERR)


@FUZZ
@given(mutated(st.builds(lambda cid, seq, ext, payload: _HDR.pack((utp.ST_SYN << 4) | 1, ext, cid, 1, 0, 0, seq, 0)
                         + payload, st.integers(0, 65535), st.integers(0, 65535), st.sampled_from([0, 1, 2]),
                         st.binary(max_size=20))))
def test_fuzz_utp_accept_mutated(data: bytes) -> None:
    conn = check(UtpConnection.accept, data, 0.0, random.Random(0), allowed=ERR)
    if isinstance(conn, UtpConnection):
        _drive(conn, [], 0.0)


@FUZZ
@given(st.integers(0, 2**32), st.booleans(),
       st.lists(st.one_of(st.binary(max_size=100), st.tuples(datagram_specs(), st.lists(
           st.tuples(st.sampled_from(["flip", "byte", "truncate", "insert"]), st.integers(0, 400),
                     st.integers(0, 7)), max_size=3))), max_size=12))
def test_fuzz_utp_live_connection(seed: int, acceptor: bool, items: list[object]) -> None:
    a, b = _connected(seed)
    conn = b if acceptor else a
    datagrams = []
    for item in items:
        if isinstance(item, bytes):
            datagrams.append(item)
        else:
            spec, ops = item  # type: ignore[misc]
            datagrams.append(apply_ops(_pack(conn, spec), [(k, p, bytes([x]) if k == "insert" else x)
                                                           for k, p, x in ops]))
    _drive(conn, datagrams, 0.1)


# ------------------------------------------------------------------------------------------------ MSE

INFO_HASH = bytes(range(20))


def _responder(seed: int) -> MseResponder:
    keys = {req2_key(INFO_HASH): INFO_HASH}
    return MseResponder(keys.get, random.Random(seed).randbytes, prefer_plaintext=bool(seed & 1))


def _initiator(seed: int) -> MseInitiator:
    return MseInitiator(INFO_HASH, b"\x13BitTorrent protocol" + bytes(48), random.Random(seed).randbytes,
                        allow_plaintext=bool(seed & 2))


def _feed(side: MseInitiator | MseResponder, data: bytes, cuts: list[int]) -> None:
    for piece in split_points(data, cuts):
        if side.result is not None:
            return
        if isinstance(check(side.receive_data, piece, allowed=ERR), BaseException):
            return


@FUZZ
@given(st.integers(0, 2**16), st.binary(max_size=2500), st.lists(st.integers(0, 4000), max_size=5))
def test_fuzz_mse_garbage(seed: int, data: bytes, cuts: list[int]) -> None:
    _feed(_responder(seed), data, cuts)
    _feed(_initiator(seed), data, cuts)


def _initiator_stream(seed: int, extra: bytes) -> bytes:
    """What an honest initiator sends to a responder, plus ``extra`` payload bytes."""
    ini, resp = _initiator(seed), _responder(seed + 1)
    first = ini.data_to_send()
    resp.receive_data(first)
    ini.receive_data(resp.data_to_send())
    return first + ini.data_to_send() + extra


def _responder_stream(seed: int, extra: bytes) -> tuple[bytes, int]:
    """What an honest responder sends to initiator ``seed`` (so the same initiator can be rebuilt)."""
    ini, resp = _initiator(seed), _responder(seed + 1)
    resp.receive_data(ini.data_to_send())
    out = resp.data_to_send()
    ini.receive_data(out)
    resp.receive_data(ini.data_to_send())
    return out + resp.data_to_send() + extra, seed


@FUZZ
@given(st.integers(0, 2**16), st.binary(max_size=100), st.data())
def test_fuzz_mse_mutated(seed: int, extra: bytes, data: st.DataObject) -> None:
    stream = data.draw(mutated(st.just(_initiator_stream(seed, extra)), max_ops=4))
    _feed(_responder(seed + 1), stream, data.draw(st.lists(st.integers(0, 2000), max_size=4)))
    back, _ = _responder_stream(seed, extra)
    back = data.draw(mutated(st.just(back), max_ops=4))
    ini = _initiator(seed)
    ini.data_to_send()
    _feed(ini, back, data.draw(st.lists(st.integers(0, 2000), max_size=4)))
