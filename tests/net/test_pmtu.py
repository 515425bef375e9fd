"""Packet-size probes (bridge.net.pmtu, and LeanSctpTransport sending them): the pure policy on its own, then
real aiortc associations on 127.0.0.1 whose datagrams are counted, dropped or held back on the way out.
tests/browser/test_rtc_chromium.py checks the probes against Chromium's own SCTP."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import pytest
import rtc_pair
from aiortc.rtcsctptransport import SCTP_MAX_PACKET_LENGTH, USERDATA_MAX_LENGTH, HeartbeatAckChunk
from hypothesis import given
from hypothesis import strategies as st

from bridge.net import pmtu
from bridge.net.rtc import RtcConfig, RtcTransport
from bridge.net.rtc_sctp import LeanSctpTransport

pytestmark = pytest.mark.timeout(120)

LOOPBACK = rtc_pair.LOOPBACK
WAIT = 60.0
GCM = pmtu.DTLS_OVERHEAD_GCM


# -------------------------------------------------------------------------------- the policy
def test_the_base_size_is_aiortcs() -> None:
    assert pmtu.BASE_PACKET == SCTP_MAX_PACKET_LENGTH
    assert pmtu.chunk_payload(pmtu.BASE_PACKET) == USERDATA_MAX_LENGTH


def test_probe_sizes_for_common_routes() -> None:
    # loopback (MTU 65,536): capped at libwebrtc's 2,048-byte datagram, then the Ethernet sizes
    assert pmtu.probe_sizes(65536, socket.AF_INET, GCM) == [2008, 1432, 1412]
    # an Ethernet route, over IPv4 and over IPv6
    assert pmtu.probe_sizes(1500, socket.AF_INET, GCM) == [1432, 1412]
    assert pmtu.probe_sizes(1500, socket.AF_INET6, GCM) == [1412]
    # unknown route: what an Ethernet path takes
    assert pmtu.probe_sizes(None, socket.AF_INET, GCM) == [1432, 1412]
    # a route no larger than what every path takes: nothing to probe
    assert pmtu.probe_sizes(1280, socket.AF_INET, pmtu.DTLS_OVERHEAD_OTHER) == []
    # nothing at or below the size in use
    assert pmtu.probe_sizes(65536, socket.AF_INET, GCM, current=1432) == [2008]


@given(st.integers(576, 70000) | st.none(), st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       st.integers(0, 120), st.integers(pmtu.BASE_PACKET, 2100))
def test_probes_never_exceed_the_route_or_a_libwebrtc_datagram(mtu: int | None, family: int, overhead: int,
                                                               current: int) -> None:
    sizes = pmtu.probe_sizes(mtu, family, overhead, current)
    datagram_max = min((pmtu.ETHERNET_MTU if mtu is None else mtu) - pmtu.IP_UDP_OVERHEAD[family], pmtu.DATAGRAM_MAX)
    assert sizes == sorted(set(sizes), reverse=True)
    for size in sizes:
        assert size % 4 == 0 and size > current
        assert size + overhead <= datagram_max


def test_dtls_overhead_by_cipher() -> None:
    assert pmtu.dtls_overhead("ECDHE-ECDSA-AES128-GCM-SHA256") == 37
    assert pmtu.dtls_overhead("ECDHE-RSA-CHACHA20-POLY1305") == 29
    assert pmtu.dtls_overhead("ECDHE-RSA-AES256-SHA") == pmtu.DTLS_OVERHEAD_OTHER
    assert pmtu.dtls_overhead(None) == pmtu.DTLS_OVERHEAD_OTHER


def test_route_mtu_of_loopback() -> None:
    mtu = pmtu.route_mtu(("127.0.0.1", 9))  # a connected UDP socket sends nothing
    assert mtu is not None and mtu >= pmtu.ETHERNET_MTU, mtu
    assert pmtu.route_mtu(("localhost", 9)) is None  # a name is not looked up (that would block)


# -------------------------------------------------------------------------------- on the wire
def sctp_of(t: RtcTransport) -> Any:
    sctp = t._pc.sctp
    assert type(sctp) is LeanSctpTransport
    return sctp


class Wire:
    """The sizes of the SCTP packets one transport hands to DTLS, less those over ``drop_above`` (dropped)."""

    def __init__(self, sctp: Any) -> None:
        self.sizes: list[int] = []
        self.drop_above: int | None = None
        send_packets = sctp._bridge_send_packets

        def sent(packets: list[bytes]) -> None:
            kept = [p for p in packets if self.drop_above is None or len(p) <= self.drop_above]
            self.sizes += map(len, kept)
            send_packets(kept)

        sctp._bridge_send_packets = sent


async def connect(config: RtcConfig = LOOPBACK, answerer: RtcConfig | None = None) -> tuple[RtcTransport, RtcTransport]:
    return await rtc_pair.connect(config, WAIT, answerer)


async def transfer(a: RtcTransport, b: RtcTransport, size: int) -> None:
    await rtc_pair.transfer(a, b, size, WAIT)


async def settle(sctp: Any, seconds: float = 2.0) -> None:
    """Until the probe search is over (no round pending) or ``seconds`` pass."""
    async with asyncio.timeout(seconds + 5):
        deadline = asyncio.get_running_loop().time() + seconds
        while sctp._bridge_probe_timer is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


def expected_sizes(t: RtcTransport) -> list[int]:
    dtls = t._pc.sctp.transport
    return pmtu.probe_sizes(pmtu.route_mtu(("127.0.0.1", 9)), socket.AF_INET, pmtu.dtls_overhead(dtls._ssl.get_cipher_name()))


async def test_probes_raise_the_packet_size_between_two_bridges() -> None:
    a, b = await connect()
    try:
        wire = Wire(sctp_of(a))
        await settle(sctp_of(a))
        sizes = expected_sizes(a)
        assert sizes and sizes[0] + pmtu.DTLS_OVERHEAD_GCM <= pmtu.DATAGRAM_MAX
        assert sctp_of(a).bridge_packet_max == sizes[0]
        assert sctp_of(b).bridge_packet_max == sizes[0]  # the answerer probed too
        await transfer(a, b, 3 << 20)
        # the DATA went out in packets of the size found, never larger
        assert max(wire.sizes) == sizes[0] and wire.sizes.count(sizes[0]) > (3 << 20) // 2500, wire.sizes[:20]
        assert sctp_of(a)._bridge_chunk_max == pmtu.chunk_payload(sizes[0])
        assert not sctp_of(a)._bridge_probes  # every probe answered
    finally:
        await rtc_pair.close((a, b), WAIT)


async def test_aiortc_as_it_is_answers_only_what_it_reads_whole() -> None:
    """aiortc without the bridge's transport reads a record into 1,500 bytes: a larger probe goes unanswered
    and nothing breaks; the size stops at the largest one answered."""
    stock = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=10.0, sctp_fixes=False)
    a, b = await connect(LOOPBACK, stock)
    try:
        await settle(sctp_of(a), 5.0)
        assert expected_sizes(a)[0] > 1500
        assert sctp_of(a).bridge_packet_max == max(size for size in expected_sizes(a) if size <= 1500)
        await transfer(a, b, 1 << 20)
    finally:
        await rtc_pair.close((a, b), WAIT)


async def test_a_path_that_loses_large_packets_keeps_the_base_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe lost (a path that drops anything over the base size, from the start): each is sent
    PROBE_ROUNDS times, then no more, and the data goes at the base size."""
    sent: list[tuple[Any, int]] = []
    send_packets = LeanSctpTransport._bridge_send_packets

    def path(self: Any, packets: list[bytes]) -> None:
        sent.extend((self, len(p)) for p in packets)
        send_packets(self, [p for p in packets if len(p) <= pmtu.BASE_PACKET])

    monkeypatch.setattr(LeanSctpTransport, "_bridge_send_packets", path)
    a, b = await connect()
    try:
        sctp = sctp_of(a)
        await settle(sctp, 10.0)
        assert sctp._bridge_probe_timer is None and sctp._bridge_probe_rounds == pmtu.PROBE_ROUNDS
        assert sctp.bridge_packet_max == pmtu.BASE_PACKET
        probes = [size for who, size in sent if who is sctp and size > pmtu.BASE_PACKET]
        assert sorted(probes) == sorted(expected_sizes(a) * pmtu.PROBE_ROUNDS)
        sent.clear()
        await transfer(a, b, 1 << 20)
        assert max(size for _, size in sent) <= pmtu.BASE_PACKET
    finally:
        await rtc_pair.close((a, b), WAIT)


async def test_a_black_hole_falls_back_to_the_base_size_and_probes_again(caplog: pytest.LogCaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """After the size was raised, the path stops carrying large packets for a few seconds: two T3 expiries
    without a SACK bring new data back to the base size, and RAISE_INTERVAL later the probes raise it again.
    Nothing is lost."""
    monkeypatch.setattr(pmtu, "RAISE_INTERVAL", 4.0)
    a, b = await connect()
    try:
        sctp = sctp_of(a)
        await settle(sctp)
        raised = sctp.bridge_packet_max
        assert raised > pmtu.BASE_PACKET
        wire = Wire(sctp)
        wire.drop_above = pmtu.BASE_PACKET
        caplog.set_level(logging.INFO, "bridge.net.rtc_sctp")
        data = os.urandom(1 << 20)
        writing = asyncio.ensure_future(a.write(data))
        reading = asyncio.ensure_future(rtc_pair.read_exactly(b, len(data), WAIT))
        async with asyncio.timeout(WAIT):
            while sctp.bridge_packet_max != pmtu.BASE_PACKET:
                await asyncio.sleep(0.05)
        assert "back to 1189-byte packets" in caplog.text
        wire.drop_above = None  # the path carries large packets again: what was sent large gets through
        assert await reading == data
        await writing
        async with asyncio.timeout(WAIT):
            while sctp.bridge_packet_max != raised:
                await asyncio.sleep(0.1)
    finally:
        await rtc_pair.close((a, b), WAIT)


@pytest.mark.parametrize("params", [
    [(1, b"\0\0\0\1\0\0\x07\xd8")],  # a nonce never sent
    [(1, b"short")], [(1, b"")], [(2, b"\0" * 8)],  # wrong length, wrong parameter type
    [],
])
async def test_a_heartbeat_ack_that_answers_no_probe_changes_nothing(params: list[tuple[int, bytes]]) -> None:
    a, b = await connect()
    try:
        sctp = sctp_of(a)
        sctp._bridge_probes = {7: 2008}
        before = sctp.bridge_packet_max
        ack = HeartbeatAckChunk()
        ack.params = params
        await sctp._receive_chunk(ack)
        # the right nonce with another size than the probe's is no answer either
        ack.params = [(1, b"\0\0\0\7\0\0\x07\xdc")]
        await sctp._receive_chunk(ack)
        assert sctp.bridge_packet_max == before
        await transfer(a, b, 64 << 10)
    finally:
        await rtc_pair.close((a, b), WAIT)
