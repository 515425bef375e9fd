"""WebRtcSide: the torrent's handler for WebSocket tracker swarms (offers, answers, expiry)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.engine import webrtc
from bridge.net import rtc
from bridge.net.rtc import RtcConfig

CONFIG = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=10.0)


class Target:
    tag = "test"
    info_hash = b"\x01" * 20

    def room(self) -> int:
        return 10

    def stats(self) -> tuple[int, int, int | None]:
        return 0, 0, 0


async def test_offers_made_before_a_make_offers_timeout_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker client bounds make_offers(); offers made before the bound never reach an announce, so
    no answer or expiry comes for them: the side must close them itself."""
    made: list[rtc.PendingOffer] = []
    real_create = rtc.create_offer

    async def create_two_then_hang(config: RtcConfig) -> rtc.PendingOffer:
        if len(made) >= 2:
            await asyncio.sleep(3600)
        pending = await real_create(config)
        made.append(pending)
        return pending

    monkeypatch.setattr(webrtc, "create_offer", create_two_then_hang)
    side = webrtc.WebRtcSide(Target(), CONFIG, b"-BR0001-" + b"x" * 12, 5.0)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await side.make_offers(5)
    assert len(made) == 2
    assert side._pending == {}
    states: list[Any] = [p._state for p in made]
    assert states == ["closed", "closed"]
    async with asyncio.timeout(30):
        await rtc.wait_closing()


async def test_offers_that_are_announced_stay_pending_until_answer_or_expiry() -> None:
    side = webrtc.WebRtcSide(Target(), CONFIG, b"-BR0001-" + b"y" * 12, 5.0)  # type: ignore[arg-type]
    async with asyncio.timeout(20):
        offers = await side.make_offers(2)
    assert len(offers) == 2 and all("a=candidate" in sdp for _, sdp in offers)
    assert set(side._pending) == {oid for oid, _ in offers}
    for oid, _ in offers:
        pending = side._pending[oid]
        side.offer_expired(oid)
        assert pending._state == "closed"
    assert side._pending == {}
    async with asyncio.timeout(30):
        await rtc.wait_closing()
