"""bridge.net.rtc_sctp: aiortc's SCTP sender without spurious retransmissions and with bounded gap reports.

The pure helpers are tested on their own; the fixes are tested on real aiortc associations on 127.0.0.1
(offerer -> answerer), with DATA packets dropped on the way out to make the sender retransmit."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import time
from collections import deque
from typing import Any

import pytest
import rtc_pair
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    SCTP_MAX_PACKET_LENGTH,
    USERDATA_MAX_LENGTH,
    DataChunk,
    RTCSctpTransport,
    SackChunk,
    encode_params,
    serialize_packet,
)
from aiortc.rtcsctptransport import decode_params as aiortc_decode_params
from google_crc32c import value as crc32c
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from bridge.net import pmtu, rtc
from bridge.net.rtc import RtcConfig, RtcTransport
from bridge.net.rtc_sctp import (
    MAX_DATA_CHANNELS,
    MAX_RECEIVE_AHEAD,
    MAX_SACK_DUPLICATES,
    MAX_SACK_GAPS,
    SACK_DELAY,
    BridgeSctpTransport,
    LeanSctpTransport,
    data_packet,
    decode_params,
    valid_gaps,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def aiortcs_packet_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count chunks and packets at aiortc's packet size, so no packet-size probe raises it
    (tests/net/test_pmtu.py tests the probes)."""
    monkeypatch.setattr(pmtu, "probe_sizes", lambda *args, **kwargs: [])

LOOPBACK = rtc_pair.LOOPBACK
WAIT = 60.0


async def connect(config: RtcConfig) -> tuple[RtcTransport, RtcTransport]:
    return await rtc_pair.connect(config, WAIT)


async def close(*transports: RtcTransport) -> None:
    await rtc_pair.close(transports, WAIT)


async def transfer(a: RtcTransport, b: RtcTransport, size: int) -> None:
    await rtc_pair.transfer(a, b, size, WAIT)


async def open_channel(t: RtcTransport, label: str, **options: Any) -> Any:
    """Another data channel on ``t``'s peer connection, once it is open."""
    channel = t._pc.createDataChannel(label, **options)
    opened = asyncio.get_running_loop().create_future()
    channel.on("open", lambda: opened.done() or opened.set_result(None))
    async with asyncio.timeout(WAIT):
        await opened
    return channel


def sctp_of(t: RtcTransport) -> RTCSctpTransport:
    sctp = t._pc.sctp
    assert sctp is not None
    return sctp


# ------------------------------------------------------------------------------------- pure helpers


def test_valid_gaps_accepts_what_a_receiver_can_report() -> None:
    assert valid_gaps([], 0)
    assert valid_gaps([(2, 3)], 3)
    assert valid_gaps([(2, 3), (5, 9), (10, 10)], 10)


@pytest.mark.parametrize(
    "gaps, reach",
    [
        ([(2, 3)], 2),  # past the last TSN sent
        ([(0, 3)], 10),  # the cumulative TSN itself
        ([(4, 3)], 10),  # start after end
        ([(5, 6), (2, 3)], 10),  # out of order
        ([(2, 5), (4, 6)], 10),  # overlapping
        ([(1, 65535)] * 3000, 200),  # a hostile SACK
    ],
)
def test_valid_gaps_refuses_what_no_receiver_can_report(gaps: list[tuple[int, int]], reach: int) -> None:
    assert not valid_gaps(gaps, reach)


@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=50), st.integers(0, 70000))
def test_valid_gaps_means_ordered_and_within_reach(gaps: list[tuple[int, int]], reach: int) -> None:
    if valid_gaps(gaps, reach):
        offsets = [x for start, end in gaps for x in (start, end)]
        assert offsets == sorted(offsets)
        assert all(0 < start <= end <= reach for start, end in gaps)
        assert all(a[1] < b[0] for a, b in zip(gaps, gaps[1:], strict=False))


# ------------------------------------------------------------------------------------- real associations


def data_offset(packet: bytes) -> int | None:
    """Where the DATA chunk of one of our SCTP packets starts: first, or after a SACK bundled before it;
    None for a packet without DATA."""
    pos = 12
    if len(packet) > 16 and packet[12] == 3:
        pos += (struct.unpack_from("!H", packet, 14)[0] + 3) & ~3
    return pos if len(packet) > pos + 8 and packet[pos] == 0 else None


class Lossy:
    """Drops the first transmission of every ``every``-th DATA chunk among TSNs ``skip`` .. ``skip + span``
    (counted from the first DATA chunk) sent by the offerer, before it is encrypted, and counts what is
    resent. On the lean path it filters the packets LeanSctpTransport hands to DTLS; otherwise it stands in
    for the DTLS connection (pyOpenSSL), and whatever path sends the packet then finds nothing to send."""

    def __init__(self, sctp: RTCSctpTransport, every: int, skip: int, span: int) -> None:
        self.dtls = sctp.transport
        self.ssl = self.dtls._ssl
        self.every, self.skip, self.span = every, skip, span
        self.first: int | None = None
        self.sent: set[int] = set()
        self.dropped = 0
        self.resent = 0
        self.swallowed = False
        if isinstance(sctp, LeanSctpTransport):
            send_packets = sctp._bridge_send_packets

            def filtered(packets: list[bytes]) -> None:
                send_packets([p for p in packets if not self.drop(p)])

            sctp._bridge_send_packets = filtered  # type: ignore[method-assign]
        else:
            self.dtls._ssl = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ssl, name)

    def drop(self, data: bytes) -> bool:
        pos = data_offset(data)
        if pos is not None:
            tsn = struct.unpack_from("!L", data, pos + 4)[0]
            if self.first is None:
                self.first = tsn
            if tsn in self.sent:
                self.resent += 1
            else:
                self.sent.add(tsn)
                n = (tsn - self.first) % (1 << 32)
                if self.skip <= n < self.skip + self.span and n % self.every == 0:
                    self.dropped += 1
                    return True
        return False

    def send(self, data: bytes) -> int:
        if self.drop(data):
            self.swallowed = True
            return len(data)
        return self.ssl.send(data)

    def bio_read(self, size: int) -> bytes:
        if self.swallowed:
            self.swallowed = False
            raise SSL.WantReadError()
        return self.ssl.bio_read(size)


async def send_through_loss(config: RtcConfig, size: int, kind: type = RTCSctpTransport) -> Lossy:
    a, b = await connect(config)
    try:
        assert type(sctp_of(a)) is kind
        lossy = Lossy(sctp_of(a), every=40, skip=200, span=3000)
        await transfer(a, b, size)
        return lossy
    finally:
        await close(a, b)


async def test_fixes_are_installed_on_both_roles_unless_turned_off() -> None:
    a, b = await connect(LOOPBACK)
    try:
        assert type(sctp_of(a)) is LeanSctpTransport
        assert type(sctp_of(b)) is LeanSctpTransport
    finally:
        await close(a, b)
    a, b = await connect(RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=10.0, sctp_fixes=False))
    try:
        assert type(sctp_of(a)) is RTCSctpTransport
    finally:
        await close(a, b)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "fixes-only"])
async def test_each_lost_chunk_is_resent_once(lean: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropped chunks are recovered by fast retransmit, each with one extra transmission, on the lean path
    and on the fixes alone (aiortc's sender; the same SACK walk). (aiortc as it is resends many of them two
    or three times: see the next test.)"""
    if not lean:
        monkeypatch.setattr("bridge.net.rtc_sctp._lib", None)
    lossy = await send_through_loss(LOOPBACK, 6 * 1024 * 1024, LeanSctpTransport if lean else BridgeSctpTransport)
    assert lossy.dropped >= 50
    assert lossy.resent == lossy.dropped, f"{lossy.dropped} chunks dropped, {lossy.resent} resent"


async def test_aiortc_as_it_is_resends_more_than_it_lost() -> None:
    """The measurement the first test depends on: without the fixes, the same loss makes aiortc resend
    more chunks than were dropped. If a future aiortc stops doing that, this test says so."""
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=10.0, sctp_fixes=False)
    lossy = await send_through_loss(config, 6 * 1024 * 1024)
    assert lossy.dropped >= 50
    assert lossy.resent > lossy.dropped, f"{lossy.dropped} chunks dropped, {lossy.resent} resent"


async def test_hostile_gap_blocks_are_ignored_quickly_and_the_channel_goes_on() -> None:
    a, b = await connect(LOOPBACK)
    try:
        sctp = sctp_of(a)
        sack = SackChunk()
        sack.cumulative_tsn = sctp._last_sacked_tsn
        sack.advertised_rwnd = 1 << 20
        sack.gaps = [(1, 65535)] * 3000  # aiortc alone would expand this to 196 million TSNs
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await sctp._receive_sack_chunk(sack)
        assert time.monotonic() - started < 1.0
        assert sack.gaps == []
        await transfer(a, b, 300_000)
    finally:
        await close(a, b)


def data_chunk(tsn: int, size: int) -> DataChunk:
    c = DataChunk(flags=SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG)
    c.tsn = tsn % (1 << 32)
    c.stream_id = 1
    c.stream_seq = 7  # never the next message of the stream: aiortc holds it for ordering
    c.protocol = 53  # binary
    c.user_data = b"x" * size
    return c


async def test_out_of_order_data_is_bounded() -> None:
    """A peer that sends 20,000 chunks ahead of a gap it never fills: aiortc alone keeps them all (20 MB)
    and re-sorts every out-of-order TSN on each chunk (minutes of CPU). Here at most MAX_RECEIVE_AHEAD
    TSNs are kept, within the advertised window, and the flood takes well under a second."""
    a, b = await connect(LOOPBACK)
    try:
        sctp = sctp_of(b)
        start = sctp._last_received_tsn
        t0 = time.monotonic()
        async with asyncio.timeout(WAIT):
            for k in range(20_000):
                await sctp._receive_data_chunk(data_chunk(start + 2 + k, 1000))
        elapsed = time.monotonic() - t0
        kept = len(sctp._sack_misordered)
        buffered = sum(len(c.user_data) for s in sctp._inbound_streams.values() for c in s.reassembly)
        assert kept <= MAX_RECEIVE_AHEAD
        assert buffered <= 1024 * 1024 + 1000  # aiortc's window, overshot by one chunk at most
        assert sctp.bridge_dropped_chunks >= 20_000 - MAX_RECEIVE_AHEAD
        assert sctp._last_received_tsn == start  # the gap is still open
        assert elapsed < 5.0, f"{elapsed:.1f} s for the flood"
        # the next TSN is still taken (the window must be able to open again)
        await sctp._receive_data_chunk(data_chunk(start + 1, 10))
        assert sctp._last_received_tsn != start
    finally:
        await close(a, b)


@pytest.mark.parametrize("body", [
    struct.pack("!BBH", 7, 0, 5) + b"Z\0\0\0",  # SHUTDOWN: too short for its cumulative TSN
    struct.pack("!BBHLLHH", 3, 0, 16, 0, 1 << 20, 1000, 0),  # a lone SACK (the lean path) claiming 1,000 gaps
], ids=["shutdown", "lone-sack"])
async def test_a_malformed_packet_ends_the_association_with_one_log_line(caplog: pytest.LogCaptureFixture,
                                                                         body: bytes) -> None:
    """A chunk whose body is too short for what it claims, sent through the real DTLS transport:
    aiortc's parser raises struct.error, which alone would end its DTLS task with a logged traceback. The
    association ends cleanly instead, and the reader sees the end of the stream."""
    a, b = await connect(LOOPBACK)
    try:
        receiver = sctp_of(b)
        header = struct.pack("!HHL", receiver._remote_port, receiver._local_port, receiver._local_verification_tag)
        packet = header + struct.pack("<L", crc32c(header + b"\0\0\0\0" + body)) + body
        caplog.set_level(logging.INFO)
        await sctp_of(a).transport._send_data(packet)
        async with asyncio.timeout(WAIT):
            while await b.read():
                pass
        assert any("malformed packet" in r.getMessage() for r in caplog.records if r.name == "bridge.net.rtc_sctp")
        assert not any("Traceback" in r.getMessage() for r in caplog.records)
    finally:
        await close(a, b)


async def test_a_peer_opening_many_data_channels_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """aiortc would keep an object for each of up to 65,535 channels a peer opens. The answerer (with the
    fixes) ends the association once more than MAX_DATA_CHANNELS would be open, and its reader sees the end
    of the stream."""
    a, b = await connect(LOOPBACK)
    try:
        caplog.set_level(logging.INFO)
        for n in range(3 * MAX_DATA_CHANNELS):
            a._pc.createDataChannel(f"extra {n}")
        async with asyncio.timeout(WAIT):
            while await b.read():
                pass
        assert len(sctp_of(b)._data_channels) <= MAX_DATA_CHANNELS
        assert any("more than" in r.getMessage() for r in caplog.records if r.name == "bridge.net.rtc_sctp")
    finally:
        await close(a, b)


async def test_a_few_extra_data_channels_are_allowed() -> None:
    a, b = await connect(LOOPBACK)
    try:
        await open_channel(a, "second")
        await transfer(a, b, 100_000)
    finally:
        await close(a, b)


# ------------------------------------------------------------------------------------- the lean path


@given(size=st.integers(0, 1200), flags=st.sampled_from([0, SCTP_DATA_FIRST_FRAG, SCTP_DATA_LAST_FRAG,
                                                         SCTP_DATA_FIRST_FRAG | SCTP_DATA_LAST_FRAG | SCTP_DATA_UNORDERED]),
       tsn=st.integers(0, (1 << 32) - 1), tag=st.integers(0, (1 << 32) - 1))
def test_lean_data_packets_are_aiortcs_byte_for_byte(size: int, flags: int, tsn: int, tag: int) -> None:
    chunk = data_chunk(tsn, size)
    chunk.flags = flags
    header = struct.pack("!HHL", 5000, 5001, tag)
    assert data_packet(header, crc32c(header + bytes(4)), chunk) == serialize_packet(5000, 5001, tag, chunk)


async def test_lean_path_is_left_out_when_pyopenssl_internals_are_missing(monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A pyOpenSSL without the internals the lean path uses: the fixes alone, said in the log, and data flows."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr("bridge.net.rtc_sctp._lib", None)
    a, b = await connect(LOOPBACK)
    try:
        assert type(sctp_of(a)) is BridgeSctpTransport
        assert any("lean SCTP send path not installed" in r.getMessage() for r in caplog.records)
        await transfer(a, b, 200_000)
    finally:
        await close(a, b)


async def test_lost_tail_is_resent_when_the_retransmission_timer_fires() -> None:
    """The last chunks of a transfer are lost: no later SACK can report them missing, so only the T3 timer
    (restarted on the lean path by moving its deadline) can recover them. Each is resent once."""
    a, b = await connect(LOOPBACK)
    try:
        messages = 10  # of 16 KiB
        last = messages * math.ceil(16384 / USERDATA_MAX_LENGTH)
        lossy = Lossy(sctp_of(a), every=1, skip=last - 3, span=3)
        started = time.monotonic()
        await transfer(a, b, messages * 16384)
        took = time.monotonic() - started
        assert len(lossy.sent) == last and lossy.dropped == 3 and lossy.resent == 3, (lossy.sent, lossy.dropped,
                                                                                       lossy.resent)
        # The RTO is at least 1 s (SCTP_RTO_MIN): sooner would mean something other than the timer resent the
        # tail; a timer that was not re-armed would leave it unsent for good.
        assert 0.9 < took < 10, took
    finally:
        await close(a, b)


def _bare(cls: type, tsn: int, stream_seq: int) -> Any:
    """An SCTP transport object with only what _send touches (no association)."""
    t = object.__new__(cls)
    t._outbound_stream_seq = {3: stream_seq}
    t._local_tsn = tsn
    t._outbound_queue = deque()

    async def no_transmit() -> None:
        pass

    t._transmit = no_transmit
    return t


@given(size=st.integers(1, 40_000), ordered=st.booleans(), tsn=st.integers((1 << 32) - 40, (1 << 32) - 1),
       stream_seq=st.sampled_from([0, 65535]), expiry=st.none() | st.floats(0, 1e9),
       max_retransmits=st.none() | st.integers(0, 10))
def test_lean_send_makes_aiortcs_chunks(size: int, ordered: bool, tsn: int, stream_seq: int, expiry: float | None,
                                        max_retransmits: int | None) -> None:
    message = os.urandom(size)
    queues = []
    for cls in (RTCSctpTransport, LeanSctpTransport):
        t = _bare(cls, tsn, stream_seq)
        asyncio.run(cls._send(t, 3, 53, message, expiry=expiry, max_retransmits=max_retransmits, ordered=ordered))
        queues.append(([c.__dict__ for c in t._outbound_queue], t._local_tsn, t._outbound_stream_seq))
    assert queues[0] == queues[1]


def _receiver(cls: type, tsn: int) -> tuple[Any, list[tuple[int, int, bytes]]]:
    """An SCTP transport object with only what receiving DATA touches (no association, no SACKs sent), and
    the list its messages are delivered to."""
    t = object.__new__(cls)
    t._local_verification_tag = 0x1234
    t._last_received_tsn = tsn
    t._sack_misordered, t._sack_duplicates, t._inbound_streams = set(), [], {}
    t._reconfig_deferred, t._advertised_rwnd, t._sack_needed = None, 1 << 20, False
    t._data_channels, t.bridge_dropped_chunks, t._bridge_rx_ready = {}, 0, True
    t._RTCSctpTransport__log_debug = lambda *args: None
    got: list[tuple[int, int, bytes]] = []

    async def deliver(stream_id: int, pp_id: int, data: bytes) -> None:
        got.append((stream_id, pp_id, data))

    async def no_sack() -> None:
        t._sack_needed = False

    t._data_channel_receive, t._send_sack = deliver, no_sack
    return t, got


def _receive_state(t: Any) -> Any:
    streams = {i: (s.sequence_number, [(c.tsn, c.flags, c.user_data) for c in s.reassembly])
               for i, s in t._inbound_streams.items()}
    return (t._last_received_tsn, sorted(t._sack_misordered), sorted(t._sack_duplicates), t._advertised_rwnd,
            streams)


@given(messages=st.lists(st.tuples(st.sampled_from([1, 3]), st.booleans(), st.integers(1, 3000)), min_size=1,
                         max_size=8),
       order=st.lists(st.integers(0, 60), max_size=80), bundle=st.booleans(),
       tsn=st.integers((1 << 32) - 8, (1 << 32) - 1), skewed=st.sets(st.integers(0, 30), max_size=3))
def test_lean_receive_keeps_aiortcs_state(messages: list[tuple[int, bool, int]], order: list[int], bundle: bool,
                                          tsn: int, skewed: set[int]) -> None:
    """The lean receive path (in-order DATA taken without aiortc's parser and reassembly) delivers the same
    messages and leaves the same state as aiortc's own, chunk for chunk, whatever order the chunks come in
    (shuffled, repeated, some never), across the 2**32 TSN wrap, bundled two to a packet or not, and with
    a few chunks carrying a stream sequence number out of turn (a broken peer)."""
    chunks: list[DataChunk] = []
    seqs = {1: 0, 3: 0}
    next_tsn = tsn + 1
    for stream_id, ordered, size in messages:
        data = os.urandom(size)
        pieces = [data[i : i + 1000] for i in range(0, size, 1000)]
        for n, piece in enumerate(pieces):
            c = DataChunk(flags=(0 if ordered else SCTP_DATA_UNORDERED) | (SCTP_DATA_FIRST_FRAG if n == 0 else 0)
                          | (SCTP_DATA_LAST_FRAG if n == len(pieces) - 1 else 0))
            c.tsn, c.stream_id, c.stream_seq, c.protocol = next_tsn % (1 << 32), stream_id, seqs[stream_id], 53
            c.user_data = piece
            if len(chunks) in skewed:
                c.stream_seq = (c.stream_seq + 1) % 65536
            chunks.append(c)
            next_tsn += 1
        if ordered:
            seqs[stream_id] += 1
    # mostly in order (what the lean path takes), with the drawn indices as losses, repeats and reorderings
    sequence = list(range(len(chunks)))
    for k, i in enumerate(order):
        if i < len(chunks):
            sequence.insert(min(k * 2, len(sequence)), i)
    step = 2 if bundle else 1
    packets = [b"".join(bytes(chunks[i]) for i in sequence[p : p + step]) for p in range(0, len(sequence), step)]
    lean, lean_got = _receiver(LeanSctpTransport, tsn)
    plain, plain_got = _receiver(BridgeSctpTransport, tsn)

    async def run() -> None:
        for body in packets:
            header = struct.pack("!HHL", 5000, 5000, 0x1234)
            packet = header + struct.pack("<L", crc32c(header + b"\0\0\0\0" + body)) + body
            await LeanSctpTransport._handle_data(lean, packet)
            await RTCSctpTransport._handle_data(plain, packet)
            assert _receive_state(lean) == _receive_state(plain)
            assert lean_got == plain_got

    asyncio.run(run())


async def test_partial_reliability_on_the_lean_path(caplog: pytest.LogCaptureFixture) -> None:
    """An unordered channel with maxRetransmits=0 beside the main one, with chunks dropped: the lean SACK
    walk hands the lost chunks to aiortc's abandonment, FORWARD TSN skips them (through aiortc's own
    transmit), the peer gets the rest, and the main channel still carries its data intact."""
    caplog.set_level(logging.WARNING)
    a, b = await connect(LOOPBACK)
    try:
        received: list[bytes] = []
        b._pc.on("datachannel", lambda channel: channel.on("message", received.append))
        extra = await open_channel(a, "lossy", ordered=False, maxRetransmits=0)
        lossy = Lossy(sctp_of(a), every=10, skip=0, span=300)
        for n in range(300):
            extra.send(n.to_bytes(2, "big") * 500)
        sender = sctp_of(a)
        async with asyncio.timeout(WAIT):
            while sender._data_channel_queue or sender._sent_queue or sender._outbound_queue:
                await asyncio.sleep(0.01)
        assert lossy.dropped >= 25 and lossy.resent == 0, (lossy.dropped, lossy.resent)
        assert 0 < len(received) <= 300 - lossy.dropped
        await transfer(a, b, 300_000)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Traceback" in r.getMessage()]
    finally:
        await close(a, b)


async def test_the_lean_sender_keeps_within_the_peers_receive_window() -> None:
    """aiortc sends whatever its congestion window allows, whatever the receiver advertises. The lean path
    keeps new data within the window of the peer's last SACK: with the receiver advertising 40 KB, no more
    than that is ever in flight (a 2 MB transfer on loopback would otherwise open the window far wider)."""
    window = 40_000
    a, b = await connect(LOOPBACK)
    try:
        sender, receiver = sctp_of(a), sctp_of(b)
        receiver._advertised_rwnd -= receiver._advertised_rwnd - window  # aiortc keeps it relative from here
        most = 0
        send_packets = sender._bridge_send_packets  # type: ignore[attr-defined]

        def watched(packets: list[bytes]) -> None:
            nonlocal most
            most = max(most, sender._flight_size)
            send_packets(packets)

        sender._bridge_send_packets = watched  # type: ignore[attr-defined]
        await transfer(a, b, 2 * 1024 * 1024)
        assert USERDATA_MAX_LENGTH < most <= window + USERDATA_MAX_LENGTH, most
    finally:
        await close(a, b)


async def test_a_sack_fits_in_one_packet_whatever_is_missing() -> None:
    """Every other TSN missing over MAX_RECEIVE_AHEAD TSNs, and duplicates: aiortc would report 512 gap
    blocks (a 2 KB SACK, past one packet). The SACK holds the MAX_SACK_GAPS blocks nearest the cumulative
    TSN and fits in one packet, and a SACK across the 2**32 wrap lists its blocks in order."""
    a, b = await connect(LOOPBACK)
    try:
        sctp = sctp_of(b)
        start = sctp._last_received_tsn
        for k in range(2, MAX_RECEIVE_AHEAD, 2):
            await sctp._receive_data_chunk(data_chunk(start + k, 10))
        sctp._sack_duplicates.extend(range(100))
        sack = sctp._bridge_sack_chunk()  # what the SACK sent next holds
        assert sack.gaps[:3] == [(2, 2), (4, 4), (6, 6)]
        assert len(sack.gaps) == MAX_SACK_GAPS and len(sack.duplicates) == MAX_SACK_DUPLICATES
        assert 12 + len(bytes(sack)) <= SCTP_MAX_PACKET_LENGTH
        # wrap-around: the cumulative TSN just below 2**32, the out-of-order ones just past 0
        sctp._sack_misordered = {(1 << 32) - 1, 1, 2}
        sctp._last_received_tsn = (1 << 32) - 3
        assert sctp._bridge_sack_chunk().gaps == [(2, 2), (4, 5)]
    finally:
        await close(a, b)


def count_packets(sctp: Any) -> dict[str, int]:
    """Counts, by first chunk type, the SCTP packets ``sctp`` (a LeanSctpTransport) hands to DTLS."""
    counts = {"data": 0, "sack": 0, "sack+data": 0, "other": 0}
    send_packets = sctp._bridge_send_packets

    def counted(packets: list[bytes]) -> None:
        for p in packets:
            if p[12] == 3:
                counts["sack+data" if data_offset(p) is not None else "sack"] += 1
            else:
                counts["data" if p[12] == 0 else "other"] += 1
        send_packets(packets)

    sctp._bridge_send_packets = counted
    return counts


async def test_a_receiver_acknowledges_every_second_packet() -> None:
    """Receiving a stream of DATA, the lean path sends one SACK for two packets (RFC 9260 section 6.2), where
    aiortc sends one per packet; the transfer arrives whole and nothing is resent."""
    a, b = await connect(LOOPBACK)
    try:
        sender, receiver = sctp_of(a), sctp_of(b)
        sent, acks = count_packets(sender), count_packets(receiver)
        await transfer(a, b, 4 << 20)
        await asyncio.sleep(SACK_DELAY * 5)  # the last packet's SACK, if it was odd
        packets = sent["data"] + sent["sack+data"]
        assert packets >= (4 << 20) // USERDATA_MAX_LENGTH
        # at least one SACK for two packets; more only where a packet left a gap (loopback drops some, and
        # then every packet is acknowledged at once until the gap is filled). aiortc: one per packet.
        assert packets / 2 - 1 <= acks["sack"] <= packets * 0.75, (packets, acks)
        assert acks["data"] == 0 and acks["sack+data"] == 0  # b sent no data
        assert not sender._sent_queue and receiver.bridge_sacks_alone == acks["sack"]
    finally:
        await close(a, b)


async def test_the_sack_for_a_request_rides_in_the_answer() -> None:
    """The WebTorrent pattern: small requests one way, each answered by a 16 KiB message. The SACK owed for
    each request goes in a DATA packet of the answer (the last fragment has room), not in a packet of its
    own; a request that gets no answer is still acknowledged, SACK_DELAY later, before the peer's T3 timer
    would resend it."""
    a, b = await connect(LOOPBACK)
    try:
        seeder, leecher = sctp_of(a), sctp_of(b)
        acks = count_packets(seeder)
        rounds = 40
        for n in range(rounds):
            await b.write(n.to_bytes(4, "big") * 4)
            async with asyncio.timeout(WAIT):
                request = await rtc_pair.read_exactly(a, 16, WAIT)
            answer = request * 1024
            await a.write(answer)
            assert await rtc_pair.read_exactly(b, len(answer), WAIT) == answer
        # (a SACK goes alone if the answer takes longer than SACK_DELAY, which a loaded machine may do)
        assert acks["sack+data"] >= rounds * 0.75, acks
        assert seeder.bridge_sacks_bundled == acks["sack+data"]
        # the last request gets no answer: its SACK goes alone once the delay is over
        alone = acks["sack"]
        started = time.monotonic()
        await b.write(b"unanswered")
        async with asyncio.timeout(WAIT):
            await rtc_pair.read_exactly(a, 10, WAIT)
            while leecher._sent_queue:
                await asyncio.sleep(0.002)
        assert acks["sack"] == alone + 1
        assert SACK_DELAY * 0.5 < time.monotonic() - started < 0.9  # aiortc's T3 timer fires at 1 s at the soonest
    finally:
        await close(a, b)


async def test_a_sack_owed_again_waits_its_own_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SACK timer is not cancelled when a SACK goes out: a packet owed after that waits for its own
    deadline (the timer set for the earlier one re-arms itself), neither sooner nor never."""
    delay = 0.2
    monkeypatch.setattr("bridge.net.rtc_sctp.SACK_DELAY", delay)
    t = object.__new__(LeanSctpTransport)
    t._sack_needed = t._bridge_sack_now = False
    t._sack_misordered, t._sack_duplicates = set(), []
    t._bridge_sack_owed, t._bridge_sack_timer, t._bridge_sack_deadline = 0, None, 0.0
    t._association_state = RTCSctpTransport.State.ESTABLISHED
    sent: list[float] = []
    loop = asyncio.get_running_loop()

    def alone() -> None:
        LeanSctpTransport._bridge_sack_taken(t)
        sent.append(loop.time())

    t._bridge_sack_alone = alone
    start = loop.time()
    await t._send_sack()  # one packet: a timer for start + delay
    await t._send_sack()  # the second: acknowledged at once, the timer stays
    assert len(sent) == 1
    await asyncio.sleep(delay / 2)
    await t._send_sack()  # owed again: due at start + 1.5 delay
    await asyncio.sleep(delay * 0.75)  # past the first timer, which must not send
    assert len(sent) == 1
    async with asyncio.timeout(5):
        while len(sent) < 2:
            await asyncio.sleep(0.01)
    assert sent[1] - start >= delay * 1.5 - 0.005


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=8))
def test_params_decode_as_aiortc_decodes_them(params: list[tuple[int, bytes]]) -> None:
    assert aiortc_decode_params is not decode_params  # aiortc's own, bound before any guard went in
    body = encode_params(params)
    assert decode_params(body) == aiortc_decode_params(body) == params


async def test_a_zero_length_parameter_is_dropped_not_looped_on() -> None:
    """A HEARTBEAT whose parameter says it is 0 bytes long, sent through the real DTLS transport: aiortc's
    parser would append parameters until the process ran out of memory. The packet is dropped, and the
    association goes on."""
    with pytest.raises(ValueError, match="length 0"):
        decode_params(struct.pack("!HH", 1, 0) + bytes(8))
    a, b = await connect(LOOPBACK)
    try:
        receiver = sctp_of(b)
        header = struct.pack("!HHL", receiver._remote_port, receiver._local_port, receiver._local_verification_tag)
        body = struct.pack("!BBHHH", 4, 0, 8, 1, 0)  # HEARTBEAT holding one parameter of length 0
        packet = header + struct.pack("<L", crc32c(header + b"\0\0\0\0" + body)) + body
        await sctp_of(a).transport._send_data(packet)
        await transfer(a, b, 100_000)
        assert receiver._association_state == receiver.State.ESTABLISHED
    finally:
        await close(a, b)


# ------------------------------------------------------------------------- records taken in the callback


def count_queued(t: RtcTransport) -> dict[str, int]:
    """Counts the datagrams ``t``'s ICE connection queues for aiortc's DTLS task (the rest were taken in
    the socket's callback)."""
    connection = rtc._ice_connection(t._pc)
    counts = {"queued": 0}
    queue = connection.data_received

    def counted(data: bytes, component: int) -> None:
        counts["queued"] += 1
        queue(data, component)

    connection.data_received = counted
    return counts


def received_packets(t: RtcTransport) -> int:
    return sctp_of(t).transport._RTCDtlsTransport__rx_packets  # type: ignore[no-any-return]


async def test_records_are_taken_in_the_socket_callback() -> None:
    """Once the channel is open, a datagram is decrypted and handled where the socket delivers it, not
    queued for aiortc's DTLS task: almost none are queued, and the stream arrives whole both ways."""
    a, b = await connect(LOOPBACK)
    try:
        queued_a, queued_b = count_queued(a), count_queued(b)
        before = received_packets(b)
        await transfer(a, b, 4 << 20)
        await transfer(b, a, 1 << 20)
        got = received_packets(b) - before
        assert got > 3000
        # (one is queued where one arrives while a record taken in the callback waits to go on in a task:
        # none on this path)
        assert queued_b["queued"] <= got // 100 and queued_a["queued"] <= got // 100, (queued_a, queued_b, got)
    finally:
        await close(a, b)


async def test_a_record_that_suspends_goes_on_in_order() -> None:
    """aiortc's own code, which the lean path falls back on, may suspend in the middle of a record. The
    record then goes on in a task, the datagrams behind it wait in aiortc's queue, and the stream keeps
    its order: here every fifth SCTP packet the receiver handles yields to the event loop first."""
    a, b = await connect(LOOPBACK)
    try:
        receiver = sctp_of(b)
        handle = receiver._handle_data
        counts = {"packets": 0, "yielded": 0}
        handled: list[int] = []  # each packet's arrival number, in the order they are handled

        async def slow_now_and_then(data: bytes) -> None:
            counts["packets"] += 1
            n = counts["packets"]
            if n % 5 == 0:
                counts["yielded"] += 1
                await asyncio.sleep(0)
            handled.append(n)
            await handle(data)

        receiver._handle_data = slow_now_and_then  # type: ignore[method-assign]
        queued = count_queued(b)
        await transfer(a, b, 2 << 20)
        await transfer(b, a, 256 << 10)
        assert counts["yielded"] > 200 and queued["queued"] > 0, (counts, queued)
        # (SCTP would put reordered packets right, so the stream alone would not show it)
        assert handled == sorted(handled)
    finally:
        await close(a, b)


@pytest.mark.parametrize("suspend", [False, True], ids=["at-once", "in-a-task"])
async def test_an_error_in_a_record_taken_in_the_callback_ends_the_connection(suspend: bool) -> None:
    """An error in a record taken in the socket's callback reaches aiortc's DTLS task, which ends the
    connection as it would have had it run the record: the reader sees the end of the stream. Nothing is
    left for the event loop to report (no unretrieved exception)."""
    a, b = await connect(LOOPBACK)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        receiver = sctp_of(b)

        async def broken(data: bytes) -> None:
            if suspend:
                await asyncio.sleep(0)
            raise ConnectionError("broken on purpose")

        receiver._handle_data = broken  # type: ignore[method-assign]
        await a.write(b"x" * 100)
        async with asyncio.timeout(WAIT):
            assert await b.read() == b""
        assert sctp_of(b).transport.state == "closed"
    finally:
        await close(a, b)
        loop.set_exception_handler(None)
    assert not reported
