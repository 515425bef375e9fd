"""Fuzz the SCTP association under every data channel (aiortc's, with bridge.net.rtc_sctp's fixes): packets
a hostile WebRTC peer could send once DTLS is up, with a valid checksum and verification tag so they get
past the first checks, fed to an open association on 127.0.0.1.

Each packet is handled within fuzz_support's CALL_LIMIT. A packet may end the association (an ABORT, or one that
rtc_sctp refuses as malformed), but only with ConnectionError. What the association keeps for received
data stays within its limits."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
import rtc_pair
from fuzz_support import DEADLINE, SUPPRESS, check
from google_crc32c import value as crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.net.rtc import RtcTransport
from bridge.net.rtc_sctp import MAX_RECEIVE_AHEAD, LeanSctpTransport

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
LOOPBACK = rtc_pair.LOOPBACK
WAIT = 30.0
#: The window aiortc advertises: out-of-order data kept may exceed it by one chunk.
WINDOW = 1024 * 1024
MAX_CHUNK = 1300


def chunk(kind: int, flags: int, body: bytes) -> bytes:
    data = struct.pack("!BBH", kind, flags, 4 + len(body)) + body
    return data + b"\0" * (-len(data) % 4)


def tsn_near(base_field: str) -> st.SearchStrategy[tuple[str, int]]:
    """An offset from one of the association's sequence numbers (resolved when the packet is built)."""
    return st.tuples(st.just(base_field), st.one_of(st.integers(-5, 5), st.integers(-3000, 3000),
                                                    st.integers(0, (1 << 32) - 1)))


data_chunks = st.tuples(st.just(0), st.integers(0, 15), tsn_near("_last_received_tsn"), st.integers(0, 6),
                        st.integers(0, 6), st.sampled_from([50, 51, 53, 56, 57, 0, 7]),
                        st.binary(max_size=MAX_CHUNK))
sack_chunks = st.tuples(st.just(3), tsn_near("_last_sacked_tsn"), st.integers(0, 1 << 21),
                        st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=40),
                        st.lists(st.integers(0, (1 << 32) - 1), max_size=10))
forward_chunks = st.tuples(st.just(192), tsn_near("_last_received_tsn"),
                           st.lists(st.tuples(st.integers(0, 6), st.integers(0, 0xFFFF)), max_size=10))
other_chunks = st.tuples(st.just(-1), st.sampled_from([4, 5, 6, 7, 8, 9, 10, 11, 14, 130, 193, 63, 127, 255]),
                         st.integers(0, 255), st.binary(max_size=64))
packets = st.lists(st.lists(st.one_of(data_chunks, data_chunks, sack_chunks, forward_chunks, other_chunks),
                            min_size=1, max_size=6), min_size=1, max_size=8)


def resolve(sctp: Any, ref: tuple[str, int]) -> int:
    base = getattr(sctp, ref[0]) or 0
    return (base + ref[1]) % (1 << 32)


def build(sctp: Any, spec: list[tuple[Any, ...]]) -> bytes:
    body = b""
    for item in spec:
        kind = item[0]
        if kind == 0:
            _, flags, ref, stream, seq, ppid, payload = item
            body += chunk(0, flags, struct.pack("!LHHL", resolve(sctp, ref), stream, seq, ppid) + payload)
        elif kind == 3:
            _, ref, rwnd, gaps, dups = item
            b = struct.pack("!LLHH", resolve(sctp, ref), rwnd, len(gaps), len(dups))
            b += b"".join(struct.pack("!HH", s, e) for s, e in gaps) + b"".join(struct.pack("!L", d) for d in dups)
            body += chunk(3, 0, b)
        elif kind == 192:
            _, ref, streams = item
            body += chunk(192, 0, struct.pack("!L", resolve(sctp, ref)) +
                          b"".join(struct.pack("!HH", s, q) for s, q in streams))
        else:
            _, t, flags, raw = item
            body += chunk(t, flags, raw)
    header = struct.pack("!HHL", sctp._remote_port or 5000, sctp._local_port, sctp._local_verification_tag)
    return header + struct.pack("<L", crc32c(header + b"\0\0\0\0" + body)) + body


class Association:
    """One open aiortc pair, reused across examples and made again once a packet has ended it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pair: tuple[RtcTransport, RtcTransport] | None = None

    def sctp(self) -> Any:
        if self.pair is not None:
            sctp = self.pair[1]._pc.sctp
            if sctp is not None and sctp._association_state == sctp.State.ESTABLISHED:
                return sctp
            self.close_pair()
        self.pair = self.loop.run_until_complete(rtc_pair.connect(LOOPBACK, WAIT))
        sctp = self.pair[1]._pc.sctp
        assert type(sctp) is LeanSctpTransport
        return sctp

    def close_pair(self) -> None:
        if self.pair is not None:
            self.loop.run_until_complete(rtc_pair.close(self.pair, WAIT))
            self.pair = None

    def close(self) -> None:
        self.close_pair()
        self.loop.close()


@pytest.fixture(scope="module")
def association() -> Any:
    a = Association()
    yield a
    a.close()


@FUZZ
@given(packets)
def test_hostile_packets_are_handled_quickly_and_bounded(association: Association,
                                                        spec: list[list[tuple[Any, ...]]]) -> None:
    sctp = association.sctp()
    for packet_spec in spec:
        packet = build(sctp, packet_spec)
        result = check(association.loop.run_until_complete, asyncio.wait_for(sctp._handle_data(packet), WAIT),
                       allowed=(ConnectionError,))
        if isinstance(result, ConnectionError) or sctp._association_state != sctp.State.ESTABLISHED:
            return
        assert len(sctp._sack_misordered) <= MAX_RECEIVE_AHEAD
        kept = sum(len(c.user_data) for s in sctp._inbound_streams.values() for c in s.reassembly)
        assert kept <= WINDOW + MAX_CHUNK
