"""RtcTransport against a real browser: headless Chromium's own RTCPeerConnection, both directions.

The page (static/rtc.js) speaks like WebTorrent's simple-peer: non-trickle SDP without
a=end-of-candidates, one ordered reliable channel with a random 40-hex label, binary messages of at most
16 KiB sent under a bufferedAmount limit. Data is checked by SHA-256 on both sides, so megabytes never
travel through page.evaluate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
from typing import Any

import pytest
import turn_server
from chromium_rtc import RtcPage, candidates, loopback_only

from bridge.net import pmtu
from bridge.net.rtc import MAX_MESSAGE_SIZE, RtcConfig, RtcTransport, answer_offer, create_offer

pytestmark = pytest.mark.timeout(180)

LOOPBACK = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0)
WAIT = 60.0
SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of anything


def is_local_address(host: str) -> bool:
    """True if ``host`` is an address of this machine (packets to it never leave it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def assert_stays_on_this_machine(transport: RtcTransport) -> None:
    """Our only candidate is 127.0.0.1 and the browser's SDP is cut down to 127.0.0.1, but Chromium may
    still send its checks to our 127.0.0.1 from a socket bound to another of the machine's addresses
    (a peer-reflexive pair). Such packets are addressed to this machine and go through lo all the same."""
    host = transport.remote_address[0]
    assert host == "127.0.0.1" or is_local_address(host), transport.remote_address


async def read_exactly(t: RtcTransport, n: int) -> bytes:
    got = bytearray()
    async with asyncio.timeout(WAIT):
        while len(got) < n:
            chunk = await t.read()
            assert chunk, f"stream ended after {len(got)} of {n} bytes"
            got += chunk
    return bytes(got)


async def exchange(page: RtcPage, transport: RtcTransport, relayed: bool = False) -> None:
    """Bytes both ways at once, exactly; the browser sees messages of at most 16 KiB. ``relayed``: through a
    TURN server, where the packet size stays at the base."""
    ours = os.urandom(SIZE)

    async def to_browser() -> dict[str, object]:
        received = asyncio.ensure_future(page.call("receive", SIZE))
        step = 100_003
        for pos in range(0, SIZE, step):
            await transport.write(ours[pos : pos + step])
        result: dict[str, object] = await received
        return result

    async def from_browser() -> tuple[str, bytes]:
        sent = asyncio.ensure_future(page.call("send", SIZE))
        data = await read_exactly(transport, SIZE)
        return await sent, data

    async with asyncio.timeout(WAIT):
        at_browser, (browser_sha, theirs) = await asyncio.gather(to_browser(), from_browser())
    assert at_browser["sha256"] == hashlib.sha256(ours).hexdigest()
    assert at_browser["maxMessage"] == MAX_MESSAGE_SIZE
    assert at_browser["textMessages"] == 0
    assert browser_sha == hashlib.sha256(theirs).hexdigest()
    # Chromium answered the largest packet-size probe (a 2,045-byte datagram: libwebrtc takes up to 2,048)
    # and the data went in packets of that size
    sctp: Any = transport._pc.sctp
    if relayed:
        assert sctp.bridge_packet_max == pmtu.BASE_PACKET and not sctp._bridge_probes
        return
    overhead = pmtu.dtls_overhead(sctp.transport._ssl.get_cipher_name())
    largest = pmtu.probe_sizes(pmtu.route_mtu(transport.remote_address), socket.AF_INET, overhead)[0]
    assert largest + overhead > pmtu.DATAGRAM_MAX - 64
    assert sctp.bridge_packet_max == largest and sctp._bridge_chunk_max == pmtu.chunk_payload(largest)


async def test_browser_offers_python_answers(page: RtcPage) -> None:
    offer = await page.call("makeOffer")
    assert "a=end-of-candidates" not in offer  # like simple-peer: the answerer must end candidates itself
    offer = loopback_only(offer)
    assert candidates(offer), "Chromium offered no 127.0.0.1 candidate (loopback flag or permission missing?)"
    answer, answered = await answer_offer(offer, LOOPBACK)
    assert candidates(answer) and all(" 127.0.0.1 " in c for c in candidates(answer))
    async with asyncio.timeout(WAIT):
        label, transport = await asyncio.gather(page.call("acceptAnswer", answer), answered)
    try:
        assert re.fullmatch(r"[0-9a-f]{40}", label) and transport.channel.label == label
        assert_stays_on_this_machine(transport)
        await exchange(page, transport)
        # the browser closing its side ends our stream
        await page.call("closePeer")
        async with asyncio.timeout(WAIT):
            while await transport.read():
                pass
    finally:
        transport.close()
        async with asyncio.timeout(WAIT):
            await transport.wait_closed()


async def test_python_offers_browser_answers(page: RtcPage) -> None:
    offer = await create_offer(LOOPBACK)
    try:
        answer = loopback_only(await page.call("answerOffer", offer.sdp))
        assert candidates(answer), "Chromium answered with no 127.0.0.1 candidate"
        async with asyncio.timeout(WAIT):
            transport, label = await asyncio.gather(offer.accept_answer(answer), page.call("waitChannel"))
    except BaseException:
        offer.close()
        raise
    try:
        assert transport.channel.label == label
        assert_stays_on_this_machine(transport)
        await exchange(page, transport)
        # our side closing ends the browser's channel
        transport.close()
        async with asyncio.timeout(WAIT):
            while not await page.page.evaluate("() => window.rtcState().closed"):
                await asyncio.sleep(0.05)
    finally:
        transport.close()
        async with asyncio.timeout(WAIT):
            await transport.wait_closed()


async def test_chromium_and_the_bridge_meet_through_turn_only(page: RtcPage, tmp_path) -> None:
    """Both sides relay-only through a real TURN server (coturn on 127.0.0.1): Chromium's TURN client
    with its own RTCConfiguration, the bridge's from a ``turn:user:pass@host:port`` URL as --ice-server
    takes it. Every byte goes through coturn, so this proves the credentials and the relay, both ways."""
    async with turn_server.coturn(tmp_path) as port:
        browser_config = {
            "iceServers": [{"urls": f"turn:127.0.0.1:{port}", "username": turn_server.USER,
                            "credential": turn_server.PASSWORD}],
            "iceTransportPolicy": "relay",
        }
        offer = await page.call("makeOffer", browser_config)
        assert candidates(offer) and all(" typ relay" in c for c in candidates(offer)), candidates(offer)
        config = RtcConfig(host_addresses=("127.0.0.1",), ice_servers=(turn_server.turn_url(port),),
                           connect_timeout=20.0)
        with turn_server.relay_only():
            answer, answered = await answer_offer(offer, config)
        assert candidates(answer) and all(" typ relay" in c for c in candidates(answer)), candidates(answer)
        async with asyncio.timeout(WAIT):
            _, transport = await asyncio.gather(page.call("acceptAnswer", answer), answered)
        try:
            assert turn_server.selected_pair(transport) == ("relay", "relay")
            await exchange(page, transport, relayed=True)
        finally:
            transport.close()
            async with asyncio.timeout(WAIT):
                await transport.wait_closed()
