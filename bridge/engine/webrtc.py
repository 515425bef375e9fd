"""The browser side of a torrent: WebRTC peers found through WebSocket trackers.

Implements the WebSocket tracker client's swarm handler: it makes offers for announces, answers offers
that browsers send, and hands every data channel that opens to the torrent as one more PeerTransport.
The wire protocol, picker and choker treat these peers exactly like TCP ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..errors import BridgeError, RemoteProtocolError
from ..net.rtc import PendingOffer, RtcConfig, RtcTransport, answer_offer, create_offer
from ..proto.wire import Wire
from .handshake import read_handshake

if TYPE_CHECKING:
    from ..net.tracker_ws import WsSwarm
    from .torrent import Torrent

log = logging.getLogger(__name__)

#: Offers (each a peer connection with gathered candidates) waiting for an answer per torrent. Each costs
#: sockets and memory until it expires (50 s), so keep it to a couple of announces' worth.
MAX_PENDING_OFFERS = 20


class WebRtcSide:
    """One torrent's presence in the WebTorrent swarm (all of its WebSocket trackers)."""

    def __init__(self, torrent: Torrent, config: RtcConfig) -> None:
        self.torrent = torrent
        self.config = config
        self._pending: dict[bytes, PendingOffer] = {}
        self.swarms: list[WsSwarm] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---------------------------------------------------------------------- WsSwarmHandler
    def stats(self) -> tuple[int, int, int | None]:
        return self.torrent.stats()

    def _room(self) -> int:
        t = self.torrent
        return max(0, t.config.max_peers - len(t.peers) - len(self._tasks))

    async def make_offers(self, n: int) -> list[tuple[bytes, str]]:
        n = min(n, self._room(), MAX_PENDING_OFFERS - len(self._pending))
        offers = []
        for _ in range(max(n, 0)):
            if self._closed:
                break
            pending = await create_offer(self.config)
            offer_id = os.urandom(20)
            self._pending[offer_id] = pending
            offers.append((offer_id, pending.sdp))
        return offers

    async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
        if self._closed or self._room() <= 0 or peer_id == self.torrent.session.peer_id:
            return None
        try:
            answer, opened = await answer_offer(sdp, self.config)
        except (RemoteProtocolError, ValueError) as e:
            log.info("[%s] cannot answer a WebRTC offer: %s", self.torrent.tag, e)
            return None
        self._spawn(self._attach_when_open(opened), "webrtc answer")
        return answer

    def on_answer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> None:
        pending = self._pending.pop(offer_id, None)
        if pending is None or self._closed:
            return
        self._spawn(self._accept(pending, sdp), "webrtc offer")

    def offer_expired(self, offer_id: bytes) -> None:
        pending = self._pending.pop(offer_id, None)
        if pending is not None:
            pending.close()

    # ------------------------------------------------------------------------------ internals
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name} {self.torrent.tag}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, pending: PendingOffer, sdp: str) -> None:
        try:
            transport = await pending.accept_answer(sdp)
        except (BridgeError, TimeoutError, OSError, ValueError) as e:
            log.info("[%s] WebRTC connection (our offer) failed: %s", self.torrent.tag, e or type(e).__name__)
            pending.close()
            return
        await self._run(transport)

    async def _attach_when_open(self, opened: asyncio.Task[RtcTransport]) -> None:
        try:
            transport = await opened
        except (BridgeError, TimeoutError, OSError, ValueError) as e:
            log.info("[%s] WebRTC connection (their offer) failed: %s", self.torrent.tag, e or type(e).__name__)
            return
        await self._run(transport)

    async def _run(self, transport: RtcTransport) -> None:
        """Both sides send the BitTorrent handshake as soon as the channel opens."""
        t = self.torrent
        wire = Wire()
        try:
            await transport.write(wire.send(t.our_handshake()))
            handshake, pending = await read_handshake(transport, wire, t.config.handshake_timeout)
            if handshake.info_hash != t.info_hash:
                raise RemoteProtocolError("handshake for another torrent")
        except (BridgeError, TimeoutError, OSError) as e:
            log.info("[%s] WebRTC handshake failed: %s", t.tag, e or type(e).__name__)
            transport.close()
            return
        await t.run_peer(transport, wire, handshake, pending)

    async def aclose(self) -> None:
        self._closed = True
        for swarm in self.swarms:
            try:
                await swarm.stop()
            except Exception as e:  # noqa: BLE001 -- a tracker failure on the way out is only a warning
                log.warning("[%s] stopping a WebSocket tracker: %s", self.torrent.tag, e)
        for pending in self._pending.values():
            pending.close()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
