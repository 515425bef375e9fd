"""The browser side of a torrent: WebRTC peers found through WebSocket trackers.

Implements the WebSocket tracker client's swarm handler: it makes offers for announces, answers offers
that browsers send, and hands every data channel that opens to the torrent as one more PeerTransport.
The wire protocol, picker and choker treat these peers exactly like TCP ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BridgeError, RemoteProtocolError
from ..net.rtc import PendingOffer, RtcConfig, RtcTransport, answer_offer, create_offer
from ..proto.wire import Wire
from .handshake import read_handshake

if TYPE_CHECKING:
    from ..net.tracker_ws import WsSwarm, WsTrackerPool
    from ..net.transport import PeerTransport
    from ..proto import events as ev


class RtcTarget(Protocol):
    """Who gets the WebRTC peers: the metadata fetcher of a magnet, then the torrent."""

    tag: str
    info_hash: bytes

    def our_handshake(self) -> ev.Handshake: ...

    def room(self) -> int:
        """How many more peers are wanted now."""
        ...

    def stats(self) -> tuple[int, int, int | None]: ...

    async def adopt(self, transport: PeerTransport, wire: Wire, handshake: ev.Handshake,
                    pending: list[ev.Event]) -> None:
        """Run a connection whose handshakes are done, until it closes."""
        ...

log = logging.getLogger(__name__)

#: Offers (each a peer connection with gathered candidates) waiting for an answer per torrent. Each costs
#: sockets and memory until it expires (50 s), so keep it to a couple of announces' worth.
MAX_PENDING_OFFERS = 20


class WebRtcSide:
    """One torrent's presence in the WebTorrent swarm (all of its WebSocket trackers)."""

    def __init__(self, target: RtcTarget, config: RtcConfig, peer_id: bytes, handshake_timeout: float) -> None:
        self.target = target
        self.config = config
        self.peer_id = peer_id
        self.handshake_timeout = handshake_timeout
        self._pending: dict[bytes, PendingOffer] = {}
        self.swarms: list[WsSwarm] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---------------------------------------------------------------------- WsSwarmHandler
    def join(self, pool: WsTrackerPool, trackers: Iterable[Iterable[str]], info_hash: bytes) -> int:
        """Announce to every ws:// and wss:// tracker among ``trackers`` (BEP 12 tiers do not apply: browsers
        are only found through these, so each one is used). Returns how many were joined."""
        urls = [u for tier in trackers for u in tier if u.startswith(("ws://", "wss://"))]
        for url in dict.fromkeys(urls):
            try:
                self.swarms.append(pool.client(url).join(info_hash, self.peer_id, self))
            except (ValueError, RuntimeError) as e:
                log.warning("[%s] cannot use WebSocket tracker %s: %s", self.target.tag, url, e)
        return len(self.swarms)

    def retarget(self, target: RtcTarget) -> None:
        """Hand new peers to ``target`` from now on (the torrent, once a magnet's metadata is in)."""
        self.target = target

    def stats(self) -> tuple[int, int, int | None]:
        return self.target.stats()

    def _room(self) -> int:
        return max(0, self.target.room() - len(self._tasks))

    async def make_offers(self, n: int) -> list[tuple[bytes, str]]:
        n = min(n, self._room(), MAX_PENDING_OFFERS - len(self._pending))
        offers: list[tuple[bytes, str]] = []
        try:
            for _ in range(max(n, 0)):
                if self._closed:
                    break
                pending = await create_offer(self.config)
                offer_id = os.urandom(20)
                self._pending[offer_id] = pending
                offers.append((offer_id, pending.sdp))
        except BaseException:
            # Cancelled (the tracker client's make_offers timeout) or failed: the offers made so far are
            # never announced, so no answer or expiry will come for them. Close them here.
            for offer_id, _ in offers:
                dropped = self._pending.pop(offer_id, None)
                if dropped is not None:
                    dropped.close()
            raise
        return offers

    async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
        if self._closed or self._room() <= 0 or peer_id == self.peer_id:
            return None
        try:
            answer, opened = await answer_offer(sdp, self.config)
        except (RemoteProtocolError, ValueError) as e:
            log.info("[%s] cannot answer a WebRTC offer: %s", self.target.tag, e)
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
        task = asyncio.create_task(coro, name=f"{name} {self.target.tag}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, pending: PendingOffer, sdp: str) -> None:
        try:
            transport = await pending.accept_answer(sdp)
        except (BridgeError, TimeoutError, OSError, ValueError) as e:
            log.info("[%s] WebRTC connection (our offer) failed: %s", self.target.tag, e or type(e).__name__)
            pending.close()
            return
        await self._run(transport)

    async def _attach_when_open(self, opened: asyncio.Task[RtcTransport]) -> None:
        try:
            transport = await opened
        except (BridgeError, TimeoutError, OSError, ValueError) as e:
            log.info("[%s] WebRTC connection (their offer) failed: %s", self.target.tag, e or type(e).__name__)
            return
        await self._run(transport)

    async def _run(self, transport: RtcTransport) -> None:
        """Both sides send the BitTorrent handshake as soon as the channel opens."""
        t = self.target
        wire = Wire()
        try:
            await transport.write(wire.send(t.our_handshake()))
            handshake, pending = await read_handshake(transport, wire, self.handshake_timeout)
            if handshake.info_hash != t.info_hash:
                raise RemoteProtocolError("handshake for another torrent")
        except (BridgeError, TimeoutError, OSError) as e:
            log.info("[%s] WebRTC handshake failed: %s", t.tag, e or type(e).__name__)
            transport.close()
            return
        # The target may change while this runs (metadata done): ask it again at the end of the handshake.
        await self.target.adopt(transport, wire, handshake, pending)

    async def aclose(self) -> None:
        self._closed = True
        for swarm in self.swarms:
            try:
                await swarm.stop()
            except Exception as e:  # noqa: BLE001 -- a tracker failure on the way out is only a warning
                log.warning("[%s] stopping a WebSocket tracker: %s", self.target.tag, e)
        for pending in self._pending.values():
            pending.close()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
