"""WebRTC through a real TURN server: coturn (Debian's turnserver) on 127.0.0.1.

The bridge takes TURN servers as URLs with the credentials in them (``--ice-server
turn:user:pass@host:port``). These tests make the bridge's peer connections relay-only, so that nothing
can pass except through coturn, and check the relay carries data both ways; and that wrong credentials,
which aioice drops silently, give one clear warning. Chromium's TURN client against the bridge's is in
tests/browser/test_rtc_chromium.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import rtc_pair
import turn_server

from bridge.net import rtc
from bridge.net.rtc import RtcConfig, create_offer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

WAIT = 30.0


@pytest.fixture
async def turn_port(tmp_path: Path) -> AsyncIterator[int]:
    async with turn_server.coturn(tmp_path) as port:
        yield port


async def test_two_bridge_peers_exchange_data_through_turn_only(turn_port: int) -> None:
    config = RtcConfig(host_addresses=("127.0.0.1",), ice_servers=(turn_server.turn_url(turn_port),),
                       connect_timeout=20.0)
    with turn_server.relay_only():
        pair = await rtc_pair.connect(config, WAIT)
    try:
        assert [turn_server.selected_pair(t) for t in pair] == [("relay", "relay")] * 2
        there, back = os.urandom(2 * 1024 * 1024 + 7), os.urandom(100_003)
        await pair[0].write(there)
        await pair[1].write(back)
        got_there, got_back = await asyncio.gather(rtc_pair.read_exactly(pair[1], len(there), WAIT),
                                                   rtc_pair.read_exactly(pair[0], len(back), WAIT))
        assert got_there == there and got_back == back
    finally:
        await rtc_pair.close(pair, WAIT)


async def test_wrong_turn_credentials_are_reported_once(turn_port: int, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice drops coturn's refusal silently. The bridge warns once, without the credentials, and leaves
    the server out of the next offers (rtc.ICE_SERVER_RETRY); the right password, a different URL, works."""
    monkeypatch.setattr(rtc, "ICE_SERVERS", rtc.IceServers())
    caplog.set_level(logging.WARNING, logger=rtc.__name__)
    wrong = RtcConfig(host_addresses=("127.0.0.1",), ice_servers=(turn_server.turn_url(turn_port, "wrong"),))
    try:
        for _ in range(2):
            offer = await create_offer(wrong)
            offer.close()
            # no relay, but the host candidate still lets nearby peers connect
            assert " typ relay" not in offer.sdp and " typ host" in offer.sdp
        warnings = [r.getMessage() for r in caplog.records if "gave no relay candidate" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert f"turn:127.0.0.1:{turn_port}" in warnings[0]
        assert "wrong" not in warnings[0] and turn_server.USER not in warnings[0]  # no credentials in logs
        assert rtc.ICE_SERVERS.usable(wrong.ice_servers) == []
        right = await create_offer(dataclasses.replace(wrong, ice_servers=(turn_server.turn_url(turn_port),)))
        right.close()
        assert " typ relay" in right.sdp
    finally:
        async with asyncio.timeout(WAIT):
            await rtc.wait_closing()


async def test_a_stun_server_that_answers_stays_in_use(turn_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """coturn answers STUN too: the offer gets a server-reflexive candidate, and the server is kept (only one
    that gives nothing is left out)."""
    monkeypatch.setattr(rtc, "ICE_SERVERS", rtc.IceServers())
    config = RtcConfig(host_addresses=("127.0.0.1",), ice_servers=(f"stun:127.0.0.1:{turn_port}",))
    try:
        for _ in range(2):
            offer = await create_offer(config)
            offer.close()
            assert " typ srflx" in offer.sdp
            assert rtc.ICE_SERVERS.usable(config.ice_servers) == list(config.ice_servers)
    finally:
        async with asyncio.timeout(WAIT):
            await rtc.wait_closing()
