"""WebSocket tracker client (WebTorrent signalling) over ``websockets``: a thin adapter around
:mod:`bridge.proto.wstracker`.

* :class:`WsTrackerPool` keeps ONE :class:`WsTrackerClient` (one WebSocket) per tracker URL, shared by every
  torrent announcing to that tracker, as WebTorrent does.
* :class:`WsTrackerClient` owns the connection: it connects while at least one swarm is joined (the joined
  swarms are its reference count), reads and routes tracker messages by info-hash and offer_id, and
  reconnects with exponential backoff plus jitter, re-announcing ``started`` for every swarm on each new
  connection. It closes the socket when the last swarm leaves and reopens it on the next join.
* :class:`WsSwarm` is one torrent's registration: the announce schedule (``started``, regular updates at the
  tracker's interval, ``completed``, ``stopped``), its pending offers, and the answers to forwarded offers.
* :class:`WsSwarmHandler` is what the torrent provides. The client only carries SDP strings: the torrent
  creates the WebRTC offers and answers and owns the peer connections.

Every offer the torrent makes ends in exactly one ``on_answer`` or ``offer_expired`` call, unless its swarm
is stopped first (then the torrent closes its pending connections itself).

A tracker failure (refused connection, closed socket, ``failure reason``, malformed or over-limit message)
is a logged WARNING, never an exception out of the client's tasks. A malformed message is dropped and the
socket stays up. A message over :data:`~bridge.proto.wstracker.MAX_MESSAGE_SIZE` bytes is refused by the
``websockets`` frame reader itself (``max_size``), which must close the connection with 1009 because it
cannot skip a message it will not buffer; the client then reconnects as after any other drop.

Time comes from an injectable :class:`Clock` (announce intervals, offer expiry, reconnect backoff) and
randomness from an injectable :class:`random.Random` (backoff jitter), so tests can run fast and
deterministically. Bounds on our own work (connect, send, stop, the torrent's callbacks) are real seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.uri import parse_uri

from ..errors import TrackerError
from ..proto.wstracker import (
    MAX_COUNTER,
    MAX_MESSAGE_SIZE,
    MAX_OFFERS,
    MAX_SDP_LENGTH,
    Announce,
    AnnounceReply,
    Answer,
    ClientMessage,
    Failure,
    ForwardedOffer,
    Offer,
    RelayedAnswer,
    ScrapeReply,
    encode_client_message,
    parse_tracker_message,
)

__all__ = [
    "ID_LENGTH",
    "Clock",
    "MonotonicClock",
    "WsSwarm",
    "WsSwarmHandler",
    "WsTrackerClient",
    "WsTrackerOptions",
    "WsTrackerPool",
    "reconnect_delay",
    "redact_url",
]

log = logging.getLogger(__name__)

#: Length of info-hashes, peer ids and offer ids.
ID_LENGTH = 20


# ------------------------------------------------------------------------------------- public types


class WsSwarmHandler(Protocol):
    """What a torrent provides to announce on a WebSocket tracker. Called from the client's tasks.

    An exception raised by a callback is logged and contained: it never stops the client.
    """

    def stats(self) -> tuple[int, int, int | None]:
        """(uploaded, downloaded, left) in bytes; left is None while a magnet's size is unknown."""
        ...

    async def make_offers(self, n: int) -> list[tuple[bytes, str]]:
        """Create up to ``n`` WebRTC offers: (20-byte offer_id, complete SDP). May return fewer, or none."""
        ...

    async def on_offer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> str | None:
        """Another peer's offer, forwarded by the tracker: return the answer SDP, or None to ignore it."""
        ...

    def on_answer(self, peer_id: bytes, offer_id: bytes, sdp: str) -> None:
        """``peer_id`` answered our offer ``offer_id``: complete that pending peer connection."""
        ...

    def offer_expired(self, offer_id: bytes) -> None:
        """Offer ``offer_id`` was never sent or got no answer in time: close that pending connection."""
        ...


class Clock(Protocol):
    """Where the client's scheduled waits come from. ``now`` is monotonic seconds."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class WsTrackerOptions:
    """Knobs of the WebSocket tracker client. Durations in seconds.

    ``offer_timeout``, the ``*_interval`` values and the ``backoff_*`` values are measured on the injected
    :class:`Clock`; the ``*_timeout`` bounds on I/O and on the torrent's callbacks are real time.
    """

    #: ``numwant`` sent with ``started`` and regular announces. WebTorrent sends min(numwant, 5).
    numwant: int = 5
    #: Offers requested from the torrent for each ``started`` and regular announce (WebTorrent 5,
    #: libtorrent 10; at most MAX_OFFERS, the most a tracker takes from one announce).
    offers: int = 5
    #: An offer without an answer after this long is expired (WebTorrent drops it after 50 s).
    offer_timeout: float = 50.0
    #: Announce interval until the tracker names one (the reference tracker answers 120 s).
    default_interval: float = 120.0
    #: Floor under the tracker's interval, so that a tracker answering ``interval: 0`` cannot make every
    #: swarm announce (and create offers) in a tight loop.
    interval_floor: float = 10.0
    #: Ceiling on the tracker's interval. Trackers forget a peer after a few minutes without an announce
    #: (aquatic: 180 s); an interval of years would silently drop us from the swarm.
    interval_ceiling: float = 3600.0
    #: Reconnect delay: min(2**failures * base, cap) + uniform(0, jitter), WebTorrent's formula. Its browsers
    #: wait up to 1 hour plus up to 5 minutes of jitter, which spreads thousands of them after a tracker
    #: restarts; the bridge is one client per process (one socket per tracker) and the browsers it serves
    #: are back within that time, so it comes back sooner: 10-20 s after the first failure, at most 10 min.
    backoff_base: float = 10.0
    backoff_cap: float = 600.0
    backoff_jitter: float = 10.0
    #: TCP + TLS + WebSocket handshake.
    open_timeout: float = 10.0
    #: Waiting for the tracker's close frame when we close.
    close_timeout: float = 3.0
    #: One send, back-pressure included. A tracker that stops reading this long loses the connection.
    send_timeout: float = 10.0
    #: The ``stopped`` announce on stop(), on top of which closing the idle socket takes up to close_timeout.
    stop_timeout: float = 5.0
    #: The torrent's make_offers() (ICE gathering) per announce.
    make_offers_timeout: float = 30.0
    #: The torrent's on_offer() per forwarded offer. The offerer gives up after 50 s, so a later answer is
    #: useless.
    answer_timeout: float = 40.0
    #: Forwarded offers being answered at once per swarm; more are dropped, so that a tracker flooding
    #: offers cannot make the torrent create unbounded peer connections.
    max_concurrent_answers: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.offers <= MAX_OFFERS:
            raise ValueError(f"offers must be in 0..{MAX_OFFERS}")
        if not 0 <= self.numwant <= MAX_OFFERS:
            raise ValueError(f"numwant must be in 0..{MAX_OFFERS}")
        if self.max_concurrent_answers < 0:
            raise ValueError("max_concurrent_answers must not be negative")
        for name in ("offer_timeout", "default_interval", "interval_floor", "interval_ceiling", "open_timeout",
                     "close_timeout", "send_timeout", "stop_timeout", "make_offers_timeout", "answer_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.backoff_jitter < 0:
            raise ValueError("backoff values must not be negative")
        if self.interval_floor > self.interval_ceiling:
            raise ValueError("interval_floor is above interval_ceiling")


def reconnect_delay(failures: int, rng: random.Random, *, base: float = 10.0, cap: float = 600.0,
                    jitter: float = 10.0) -> float:
    """Seconds to wait before reconnect attempt number ``failures + 1``: min(2**failures * base, cap)
    plus uniform jitter in [0, jitter]."""
    return min(base * 2.0 ** min(failures, 64), cap) + rng.uniform(0.0, jitter)


def redact_url(url: str) -> str:
    """The tracker URL for logs: no user info, query (often a passkey) or fragment."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ------------------------------------------------------------------------------------------ helpers


class _Tasks:
    """A tracked set of tasks: failures are logged, never lost; cancel_all() cancels and awaits them."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._label} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed", self._label, task.get_name(), exc_info=exc)

    async def cancel_all(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _counter(value: int) -> int:
    return max(0, min(int(value), MAX_COUNTER))


def _encoded_size(data: str) -> int:
    return len(data.encode("utf-8"))


# -------------------------------------------------------------------------------------------- swarm


class WsSwarm:
    """One torrent joined to one WebSocket tracker. Made by :meth:`WsTrackerClient.join`."""

    def __init__(self, client: WsTrackerClient, info_hash: bytes, peer_id: bytes,
                 handler: WsSwarmHandler) -> None:
        self.client = client
        self.info_hash = info_hash
        self.peer_id = peer_id
        self.handler = handler
        self.label = f"{client.label} {info_hash.hex()[:8]}"
        #: Seconds between regular announces now in force (the tracker's interval, floored and capped).
        self.interval: float = client.options.default_interval
        #: Seeders and leechers in the tracker's last announce reply (None before the first reply).
        self.complete: int | None = None
        self.incomplete: int | None = None
        self._opts = client.options
        self._clock = client.clock
        self._tasks = _Tasks(self.label)
        self._wake = asyncio.Event()
        self._active = True
        #: Generation of the connection on which ``started`` was last sent (0: none yet).
        self._started_on = 0
        self._completed_due = False
        self._last_announce: float | None = None
        self._next_announce = 0.0
        self._answering = 0

    @property
    def active(self) -> bool:
        """False once stop() began."""
        return self._active

    def completed(self) -> None:
        """The torrent finished downloading: announce ``completed`` (no offers) as soon as connected."""
        if self._active:
            self._completed_due = True
            self._wake.set()

    async def stop(self) -> None:
        """Announce ``stopped`` (no offers) if connected, leave the client, and cancel this swarm's tasks.

        Bounded by ``stop_timeout`` plus, when this was the client's last swarm, ``close_timeout``. Offers
        still pending are forgotten without callbacks. Idempotent.
        """
        if not self._active:
            return
        self._active = False
        client = self.client
        try:
            async with asyncio.timeout(self._opts.stop_timeout):
                await self._tasks.cancel_all()
                client._forget_offers(self)
                if client.connected:
                    uploaded, downloaded, left = self._stats() or (0, 0, None)
                    msg = Announce(self.info_hash, self.peer_id, numwant=0, uploaded=uploaded,
                                   downloaded=downloaded, left=left, event="stopped")
                    sent = await client._send(msg, self.label)
                    if sent:
                        log.debug("%s: announced stopped", self.label)
                    else:
                        log.warning("%s: could not announce stopped", self.label)
        except TimeoutError:
            log.warning("%s: stop took over %g s; leaving without a stopped announce", self.label,
                        self._opts.stop_timeout)
        finally:
            client._forget_offers(self)
            await client._leave(self)

    # ------------------------------------------------------------------------- client -> swarm

    def _start(self) -> None:
        self._tasks.spawn(self._announce_loop(), "announce")

    def _wake_up(self) -> None:
        self._wake.set()

    def _on_reply(self, msg: AnnounceReply) -> None:
        if msg.warning:
            log.warning("%s: tracker warning: %s", self.label, msg.warning)
        self.complete = msg.complete if msg.complete is not None else self.complete
        self.incomplete = msg.incomplete if msg.incomplete is not None else self.incomplete
        if msg.interval is None and msg.min_interval is None:
            return
        interval = float(msg.interval) if msg.interval is not None else self.interval
        interval = max(interval, float(msg.min_interval or 0), self._opts.interval_floor)
        interval = min(interval, self._opts.interval_ceiling)
        if interval != self.interval:
            log.debug("%s: announce interval %g s", self.label, interval)
            self.interval = interval
            if self._last_announce is not None:
                self._next_announce = self._last_announce + interval
                self._wake.set()

    def _on_offer(self, msg: ForwardedOffer) -> None:
        if self._answering >= self._opts.max_concurrent_answers:
            log.debug("%s: %d offers being answered already; dropping offer from %s", self.label,
                      self._answering, msg.peer_id.hex())
            return
        self._answering += 1
        self._tasks.spawn(self._answer(msg), "answer")

    def _on_answer(self, msg: RelayedAnswer) -> None:
        log.debug("%s: answer from %s to offer %s", self.label, msg.peer_id.hex(), msg.offer_id.hex()[:8])
        try:
            self.handler.on_answer(msg.peer_id, msg.offer_id, msg.sdp)
        except Exception:
            log.exception("%s: on_answer failed", self.label)

    def _expire(self, offer_ids: Iterable[bytes]) -> None:
        for offer_id in offer_ids:
            try:
                self.handler.offer_expired(offer_id)
            except Exception:
                log.exception("%s: offer_expired failed", self.label)

    # -------------------------------------------------------------------------------- tasks

    async def _wait(self, delay: float | None) -> None:
        """Until woken, or ``delay`` seconds of the clock have passed (None: only when woken)."""
        if not self._wake.is_set():
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._clock.sleep(delay)) if delay is not None else None
            try:
                await asyncio.wait([waiter] if sleeper is None else [waiter, sleeper],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                if sleeper is not None:
                    sleeper.cancel()
        self._wake.clear()

    async def _announce_loop(self) -> None:
        client = self.client
        while True:
            generation = client.generation
            if not client.connected:
                await self._wait(None)
                continue
            if self._started_on != generation:
                event: str | None = "started"
            elif self._completed_due:
                event = "completed"
            else:
                delay = self._next_announce - self._clock.now()
                if delay > 0:
                    await self._wait(delay)
                    continue
                event = None
            try:
                await self._announce(event, generation)
            except Exception:  # a bug, not a tracker failure: keep announcing
                log.exception("%s: announce failed", self.label)
                self._last_announce = self._clock.now()
                self._next_announce = self._last_announce + self.interval

    async def _announce(self, event: str | None, generation: int) -> None:
        stats = self._stats()
        if stats is None:
            self._next_announce = self._clock.now() + self.interval
            return
        uploaded, downloaded, left = stats
        # A seeder's offers can only lead to leechers. When the tracker's last reply counted none, offers
        # would only expire (each one a peer connection gathering ICE for 50 s, per torrent, every
        # interval); a leecher that comes later announces offers of its own, and those reach us.
        nobody_to_offer_to = left == 0 and self.incomplete == 0
        with_offers = event in (None, "started") and not nobody_to_offer_to
        offers = await self._make_offers() if with_offers else []
        client = self.client
        msg, dropped = client._fit_announce(Announce(
            self.info_hash, self.peer_id, numwant=self._opts.numwant if with_offers else 0,
            uploaded=uploaded, downloaded=downloaded, left=left, event=event, offers=tuple(offers)))
        if dropped:
            log.warning("%s: %d offers do not fit in one message; dropped", self.label, len(dropped))
            self._expire(dropped)
        offer_ids = [o.offer_id for o in msg.offers]
        # Registered before sending: the answer may come back before send() returns.
        client._register_offers(self, offer_ids)
        sent = await client._send(msg, self.label, generation)
        self._last_announce = self._clock.now()
        self._next_announce = self._last_announce + self.interval
        if not sent:
            log.debug("%s: announce %s not sent", self.label, event or "update")
            self._expire(client._take_offers(self, offer_ids))
            return
        log.debug("%s: announced %s with %d offers", self.label, event or "update", len(offer_ids))
        if event == "started":
            self._started_on = generation
            self._completed_due = False
        elif event == "completed":
            self._completed_due = False
        if offer_ids:
            self._tasks.spawn(self._expire_later(offer_ids), "expire offers")

    async def _expire_later(self, offer_ids: list[bytes]) -> None:
        await self._clock.sleep(self._opts.offer_timeout)
        expired = self.client._take_offers(self, offer_ids)
        if expired:
            log.debug("%s: %d offers expired unanswered", self.label, len(expired))
            self._expire(expired)

    async def _answer(self, msg: ForwardedOffer) -> None:
        try:
            try:
                async with asyncio.timeout(self._opts.answer_timeout):
                    sdp = await self.handler.on_offer(msg.peer_id, msg.offer_id, msg.sdp)
            except TimeoutError:
                log.warning("%s: no answer to the offer from %s within %g s", self.label, msg.peer_id.hex(),
                            self._opts.answer_timeout)
                return
            except Exception:
                log.exception("%s: on_offer failed", self.label)
                return
            if sdp is None or not self._active:
                return
            if not isinstance(sdp, str) or len(sdp) > MAX_SDP_LENGTH:
                log.error("%s: on_offer returned an invalid answer (not a string of at most %d characters)",
                          self.label, MAX_SDP_LENGTH)
                return
            answer = Answer(self.info_hash, self.peer_id, to_peer_id=msg.peer_id, offer_id=msg.offer_id,
                            sdp=sdp)
            if await self.client._send(answer, self.label):
                log.debug("%s: answered offer %s from %s", self.label, msg.offer_id.hex()[:8],
                          msg.peer_id.hex())
        finally:
            self._answering -= 1

    # ------------------------------------------------------------------------------ torrent calls

    def _stats(self) -> tuple[int, int, int | None] | None:
        try:
            uploaded, downloaded, left = self.handler.stats()
            return _counter(uploaded), _counter(downloaded), None if left is None else _counter(left)
        except Exception:
            log.exception("%s: stats() failed", self.label)
            return None

    async def _make_offers(self) -> list[Offer]:
        n = self._opts.offers
        if n == 0:
            return []
        try:
            async with asyncio.timeout(self._opts.make_offers_timeout):
                made = await self.handler.make_offers(n)
        except TimeoutError:
            log.warning("%s: make_offers(%d) took over %g s; announcing without offers", self.label, n,
                        self._opts.make_offers_timeout)
            return []
        except Exception:
            log.exception("%s: make_offers failed", self.label)
            return []
        offers: list[Offer] = []
        rejected: list[bytes] = []
        seen: set[bytes] = set()
        for item in made:
            offer_id, sdp = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
            valid = (isinstance(offer_id, bytes) and len(offer_id) == ID_LENGTH and isinstance(sdp, str)
                     and len(sdp) <= MAX_SDP_LENGTH and offer_id not in seen
                     and not self.client._has_offer(offer_id) and len(offers) < n)
            if valid:
                seen.add(offer_id)
                offers.append(Offer(offer_id, sdp))
            else:
                log.error("%s: make_offers returned an invalid, duplicate or extra offer; dropped", self.label)
                if isinstance(offer_id, bytes) and offer_id not in seen:
                    rejected.append(offer_id)
        self._expire(rejected)
        return offers


# ------------------------------------------------------------------------------------------- client


class WsTrackerClient:
    """One WebSocket to one tracker, shared by every swarm joined on it. Get it from a WsTrackerPool."""

    def __init__(self, url: str, options: WsTrackerOptions | None = None, *, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        try:
            parse_uri(url)
        except websockets.exceptions.InvalidURI as exc:
            raise ValueError(f"not a WebSocket tracker URL: {redact_url(url)!r}: {exc}") from None
        self.url = url
        self.label = redact_url(url)
        self.options = options or WsTrackerOptions()
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        #: Connections opened so far; a swarm re-announces ``started`` on each new one.
        self.generation = 0
        self._swarms: dict[bytes, WsSwarm] = {}
        #: offer_id -> the swarm that made the offer, while it waits for an answer.
        self._offers: dict[bytes, WsSwarm] = {}
        self._ws: ClientConnection | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._failures = 0
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def swarms(self) -> dict[bytes, WsSwarm]:
        """The joined swarms by info-hash (a copy)."""
        return dict(self._swarms)

    def join(self, info_hash: bytes, peer_id: bytes, handler: WsSwarmHandler) -> WsSwarm:
        """Announce ``info_hash`` on this tracker; connects if this is the first swarm. Call in the loop.

        Raises ValueError for ids that are not 20 bytes or an info-hash already joined here, and
        RuntimeError once the client is closed.
        """
        if self._closed:
            raise RuntimeError(f"{self.label}: client is closed")
        if len(info_hash) != ID_LENGTH or len(peer_id) != ID_LENGTH:
            raise ValueError("info_hash and peer_id must be 20 bytes")
        if info_hash in self._swarms:
            raise ValueError(f"{self.label}: {info_hash.hex()} is already joined")
        swarm = WsSwarm(self, bytes(info_hash), bytes(peer_id), handler)
        self._swarms[swarm.info_hash] = swarm
        swarm._start()
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.label} connection")
        return swarm

    async def aclose(self) -> None:
        """Stop every swarm (``stopped`` announces, bounded) and close the socket. Idempotent."""
        self._closed = True
        swarms = list(self._swarms.values())
        if swarms:
            await asyncio.gather(*(s.stop() for s in swarms), return_exceptions=True)
        await self._stop_connection()

    # ------------------------------------------------------------------------------ connection

    async def _run(self) -> None:
        while self._swarms:
            try:
                ws = await self._connect()
                if ws is not None:
                    try:
                        await self._serve(ws)
                    finally:
                        self._ws = None
                        await ws.close()
            except Exception:  # a bug: log it and carry on reconnecting
                log.exception("%s: connection task failed", self.label)
            if self._swarms:
                delay = reconnect_delay(self._failures, self.rng, base=self.options.backoff_base,
                                        cap=self.options.backoff_cap, jitter=self.options.backoff_jitter)
                self._failures += 1
                log.info("%s: reconnecting in %.1f s", self.label, delay)
                await self.clock.sleep(delay)

    async def _connect(self) -> ClientConnection | None:
        try:
            return await connect(
                self.url,
                max_size=MAX_MESSAGE_SIZE,
                # Trackers do not compress (bittorrent-tracker and aquatic turn it off); no inflate cost.
                compression=None,
                open_timeout=self.options.open_timeout,
                close_timeout=self.options.close_timeout,
            )
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            log.warning("%s: cannot connect: %s", self.label, exc or type(exc).__name__)
            return None

    async def _serve(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.generation += 1
        log.info("%s: connected", self.label)
        for swarm in list(self._swarms.values()):
            swarm._wake_up()
        try:
            async for raw in ws:
                self._on_message(raw)
        except websockets.exceptions.ConnectionClosed as exc:
            log.warning("%s: connection lost: %s", self.label, exc)
        else:
            log.warning("%s: tracker closed the connection (code %s)", self.label, ws.close_code)

    async def _stop_connection(self) -> None:
        task, self._run_task = self._run_task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _leave(self, swarm: WsSwarm) -> None:
        if self._swarms.get(swarm.info_hash) is swarm:
            del self._swarms[swarm.info_hash]
        if not self._swarms:
            await self._stop_connection()

    async def _send(self, msg: ClientMessage, label: str, generation: int | None = None) -> bool:
        """Send on the current connection (on connection ``generation`` only, if given). False if not sent."""
        ws = self._ws
        if ws is None or (generation is not None and generation != self.generation):
            return False
        data = encode_client_message(msg)
        if _encoded_size(data) > MAX_MESSAGE_SIZE:
            log.error("%s: refusing to send a %d-byte message", label, _encoded_size(data))
            return False
        try:
            async with asyncio.timeout(self.options.send_timeout):
                async with self._send_lock:
                    await ws.send(data)
        except TimeoutError:
            log.warning("%s: tracker not reading for %g s; dropping the connection", label,
                        self.options.send_timeout)
            ws.transport.abort()
            self._lost(ws)
            return False
        except websockets.exceptions.ConnectionClosed:
            self._lost(ws)
            return False
        return True

    def _lost(self, ws: ClientConnection) -> None:
        # Seen by a sender before the read loop notices: no swarm should announce on it meanwhile.
        if self._ws is ws:
            self._ws = None

    # ------------------------------------------------------------------------------- messages

    def _on_message(self, raw: str | bytes) -> None:
        try:
            msg = parse_tracker_message(raw)
        except TrackerError as exc:
            log.warning("%s: dropping a malformed message (%s)", self.label, exc)
            return
        self._failures = 0  # the tracker speaks the protocol: the next drop starts the backoff afresh
        if isinstance(msg, Failure):
            swarm = self._swarms.get(msg.info_hash) if msg.info_hash is not None else None
            log.warning("%s: tracker failure: %s", swarm.label if swarm else self.label, msg.reason)
            return
        if isinstance(msg, ScrapeReply):
            log.debug("%s: ignoring an unrequested scrape reply", self.label)
            return
        swarm = self._swarms.get(msg.info_hash)
        if swarm is None or not swarm.active:
            log.debug("%s: ignoring a message for %s, not joined", self.label, msg.info_hash.hex())
            return
        if isinstance(msg, AnnounceReply):
            swarm._on_reply(msg)
        elif msg.peer_id == swarm.peer_id:
            log.debug("%s: ignoring a message carrying our own peer_id", swarm.label)
        elif isinstance(msg, ForwardedOffer):
            swarm._on_offer(msg)
        else:
            if self._offers.get(msg.offer_id) is not swarm:
                log.debug("%s: ignoring an answer to unknown or expired offer %s", swarm.label,
                          msg.offer_id.hex()[:8])
                return
            del self._offers[msg.offer_id]
            swarm._on_answer(msg)

    # --------------------------------------------------------------------------------- offers

    def _has_offer(self, offer_id: bytes) -> bool:
        return offer_id in self._offers

    def _register_offers(self, swarm: WsSwarm, offer_ids: Iterable[bytes]) -> None:
        for offer_id in offer_ids:
            self._offers[offer_id] = swarm

    def _take_offers(self, swarm: WsSwarm, offer_ids: Iterable[bytes]) -> list[bytes]:
        """Unregister those of ``offer_ids`` still pending for ``swarm``; return them."""
        taken = [oid for oid in offer_ids if self._offers.get(oid) is swarm]
        for offer_id in taken:
            del self._offers[offer_id]
        return taken

    def _forget_offers(self, swarm: WsSwarm) -> None:
        self._take_offers(swarm, [oid for oid, s in self._offers.items() if s is swarm])

    @staticmethod
    def _fit_announce(msg: Announce) -> tuple[Announce, list[bytes]]:
        """Drop offers from the end until the announce fits in MAX_MESSAGE_SIZE; return it and the dropped ids."""
        offers = list(msg.offers)
        dropped: list[bytes] = []
        while offers and _encoded_size(encode_client_message(msg._replace(offers=tuple(offers)))) > MAX_MESSAGE_SIZE:
            dropped.append(offers.pop().offer_id)
        return msg._replace(offers=tuple(offers)), dropped


# --------------------------------------------------------------------------------------------- pool


class WsTrackerPool:
    """One WsTrackerClient, hence one WebSocket, per tracker URL for all torrents of a session."""

    def __init__(self, options: WsTrackerOptions | None = None, *, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self.options = options or WsTrackerOptions()
        self._clock = clock
        self._rng = rng
        self._clients: dict[str, WsTrackerClient] = {}
        self._closed = False

    def client(self, url: str) -> WsTrackerClient:
        """The shared client for ``url`` (exact string). Raises ValueError for a non-ws(s) URL."""
        if self._closed:
            raise RuntimeError("WsTrackerPool is closed")
        client = self._clients.get(url)
        if client is None:
            client = WsTrackerClient(url, self.options, clock=self._clock, rng=self._rng)
            self._clients[url] = client
        return client

    @property
    def clients(self) -> dict[str, WsTrackerClient]:
        return dict(self._clients)

    async def aclose(self) -> None:
        """Stop every swarm on every tracker and close all sockets (bounded). Idempotent."""
        self._closed = True
        clients = list(self._clients.values())
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> WsTrackerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
