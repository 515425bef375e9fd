"""Announcing one torrent to its HTTP and UDP trackers, following BEP 12 (multitracker metadata).

BEP 12 in short, and as done here:

* ``tiers`` is the ``announce-list``: a list of tiers, each a list of tracker URLs.
* Each tier is shuffled once, when the Announcer is built.
* Every announce walks the tiers in order and, within a tier, the trackers in order, and stops at the first
  tracker that answers. All trackers of a tier are tried before the next tier.
* A tracker that answers is moved to the front of its tier.

Events: each tracker gets ``started`` the first time we reach it; ``completed`` (after :meth:`completed`)
goes once, to the first tracker that already had ``started``; ``stopped`` goes to every tracker that had
``started`` when :meth:`Announcer.stop` is called.

Timing: the next regular announce is ``interval`` seconds after a success; :meth:`announce_now` and
:meth:`completed` wake the loop early but never sooner than ``min interval`` after the last success
(DEFAULT_MIN_GAP if the tracker sent none). After a round in which every tracker failed, the loop backs off
exponentially with jitter (BACKOFF_BASE doubling up to BACKOFF_MAX).

A tracker failure is one WARNING log line naming the tracker; nothing escapes :meth:`Announcer.run`.
The clock, the sleep function, the random source and the announce transport are injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..errors import BridgeError, TrackerError
from ..net.tracker_http import announce_http
from ..net.tracker_udp import SharedUdp, announce_udp
from ..proto.tracker import (
    SUPPORTED_SCHEMES,
    AnnounceRequest,
    AnnounceResponse,
    parse_tracker_url,
)

__all__ = [
    "Announcer",
    "AnnounceFn",
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "DEFAULT_MIN_GAP",
]

log = logging.getLogger(__name__)

#: Announce outcomes of every announcer in the process (HTTP and UDP trackers), for metrics.
ANNOUNCE_RESULTS: Counter[str] = Counter()

#: First retry delay after a round in which every tracker failed, in seconds (doubles per failed round).
BACKOFF_BASE = 15.0
#: Longest retry delay, in seconds, unless the session says otherwise (SessionConfig.tracker_retry_max): a
#: tracker that was down is in use again within ten minutes of coming back.
BACKOFF_MAX = 600.0
#: Jitter applied to each backoff delay: a factor drawn uniformly from [1 - J, 1 + J] (then capped), so
#: many torrents failing on the same tracker do not retry in lock-step.
BACKOFF_JITTER = 0.2
#: Smallest gap between two announces of ours when the tracker gave no ``min interval``, in seconds. Stops
#: announce_now() callers from hammering a tracker.
DEFAULT_MIN_GAP = 30.0
#: Floor for the tracker's ``min interval``, in seconds: a tracker sending ``min interval 0`` does not get
#: announces in a tight loop.
MIN_GAP_FLOOR = 10.0
#: Budget of one HTTP announce, in seconds.
HTTP_TIMEOUT = 20.0
#: Budget of one UDP announce (connect + announce + retransmissions), in seconds.
UDP_TIMEOUT = 15.0
#: Waits shorter than this count as due: asyncio may wake a sleeper a clock tick early.
_EPSILON = 1e-3

#: Announce transport: (tracker url, request, tracker id) -> answer; raises TrackerError.
AnnounceFn = Callable[[str, AnnounceRequest, bytes | None], Awaitable[AnnounceResponse]]
SessionArg = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]


@dataclass(slots=True)
class _Tracker:
    """What we remember about one tracker URL."""

    #: The URL as given in the tier list.
    url: str
    #: It answered a ``started`` announce (or may have received one that we abandoned on stop()).
    started: bool = False
    #: ``tracker id`` it asked us to echo.
    tracker_id: bytes | None = None
    #: The URL as logged: without query string (private trackers put passkeys there).
    name: str = ""

    def __post_init__(self) -> None:
        self.name = _display_url(self.url)


def _display_url(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0][:200]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Announcer:
    """Keeps one torrent announced to its trackers (see the module docstring for the rules)."""

    def __init__(
        self,
        tiers: list[list[str]],
        info_hash: bytes,
        peer_id: bytes,
        port: int,
        stats: Callable[[], tuple[int, int, int]],
        on_peers: Callable[[list[tuple[str, int]]], None],
        session: SessionArg | None = None,
        *,
        numwant: int = 50,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        announce: AnnounceFn | None = None,
        udp: SharedUdp | None = None,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        """
        :param tiers: BEP 12 announce-list; copied, then each tier is shuffled with ``rng``.
        :param stats: returns (uploaded, downloaded, left) for the next announce.
        :param on_peers: called with the peers of every successful announce (not for ``stopped``).
        :param session: aiohttp session (or a zero-argument factory) for HTTP trackers; the caller owns it.
        :param clock: monotonic seconds; defaults to :func:`time.monotonic` (the asyncio loop's clock).
        :param sleep: ``await sleep(seconds)``; defaults to :func:`asyncio.sleep`. A fake must advance
            ``clock`` by (at least) the requested time.
        :param rng: random source for shuffling, the key and jitter.
        :param announce: replaces the HTTP/UDP transport (tests); default dispatches on the URL scheme.
        :param backoff_max: the longest wait before retrying after a round no tracker answered, seconds.
        """
        self._info_hash = info_hash
        self._peer_id = peer_id
        self._port = port
        self._stats = stats
        self._on_peers = on_peers
        self._session = session
        self._udp = udp
        self._numwant = numwant
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._backoff_max = backoff_max
        self._announce_fn: AnnounceFn = announce or self._default_announce
        self._key = self._rng.getrandbits(32)
        self._prefix = f"[{info_hash.hex()[:8]}]"
        self._tiers: list[list[_Tracker]] = []
        seen: set[str] = set()
        for tier in tiers:
            usable: list[_Tracker] = []
            for url in tier:
                if url in seen:
                    continue
                seen.add(url)
                try:
                    scheme = parse_tracker_url(url).scheme
                except TrackerError as exc:
                    log.warning("%s ignoring tracker %s: %s", self._prefix, _display_url(url), _one_line(exc))
                    continue
                if scheme not in SUPPORTED_SCHEMES:
                    log.debug(
                        "%s skipping %s tracker %s (not supported here)",
                        self._prefix,
                        scheme,
                        _display_url(url),
                    )
                    continue
                usable.append(_Tracker(url))
            if usable:
                self._rng.shuffle(usable)
                self._tiers.append(usable)

        self._wake = asyncio.Event()
        self._early = False
        self._next_at = float("-inf")  # next regular announce
        self._earliest = float("-inf")  # no early announce before this (min interval / backoff)
        self._failures = 0  # consecutive rounds in which every tracker failed
        self._completed_called = False
        self._completed_pending = False
        self._closed = False
        self._stop_done = False
        self._inflight: asyncio.Task[None] | None = None
        #: (tracker, event) of the announce being sent, so stop() knows about an unanswered ``started``.
        self._current: tuple[_Tracker, str] | None = None

    # -- public -------------------------------------------------------------------------------------------

    @property
    def tiers(self) -> list[list[str]]:
        """The current tier order (after shuffling and move-to-front), for inspection."""
        return [[t.url for t in tier] for tier in self._tiers]

    def announce_now(self) -> None:
        """Announce as soon as the tracker's ``min interval`` allows."""
        self._early = True
        self._wake.set()

    def completed(self) -> None:
        """The download finished: send ``completed`` soon. Only the first call has an effect."""
        if self._completed_called:
            return
        self._completed_called = True
        self._completed_pending = True
        self.announce_now()

    async def run(self) -> None:
        """Announce until :meth:`stop` (returns) or cancellation (raises CancelledError). Never raises
        anything else."""
        if not self._tiers:
            log.debug("%s no HTTP/UDP trackers to announce to", self._prefix)
        while not self._closed:
            try:
                if not self._tiers:
                    await self._wait(None)
                    continue
                now = self._clock()
                target = self._next_at
                if self._early:
                    target = min(target, max(self._earliest, now))
                if target - now > _EPSILON:
                    await self._wait(target - now)
                    continue
                self._early = False
                self._inflight = asyncio.ensure_future(self._round())
                try:
                    await self._inflight
                finally:
                    self._inflight = None
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and (task is None or not task.cancelling()):
                    return  # stop() cancelled the announce in flight
                raise
            except Exception:  # a bug of ours; keep announcing rather than die silently
                log.exception("%s announcer error", self._prefix)
                self._schedule_failure()

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 -- bounded by asyncio.timeout
        """Stop :meth:`run` and send ``stopped`` to every tracker that had ``started``, within ``timeout``
        seconds. Never raises (except CancelledError if the caller is cancelled). Idempotent."""
        if self._stop_done:
            return
        self._stop_done = True
        self._closed = True
        self._wake.set()
        targets = [t for tier in self._tiers for t in tier if t.started]
        if self._current is not None:
            tracker, event = self._current
            if event == "started" and tracker not in targets:
                targets.append(tracker)  # it may have received our started; a stray stopped is harmless
        if self._inflight is not None:
            self._inflight.cancel()
        if not targets:
            return
        req = self._request("stopped", numwant=0)
        if req is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._send_stopped(t, req) for t in targets))
        except TimeoutError:
            log.warning("%s stopped: no answer from some trackers within %g s", self._prefix, timeout)

    # -- internals ----------------------------------------------------------------------------------------

    async def _default_announce(
        self, url: str, req: AnnounceRequest, tracker_id: bytes | None
    ) -> AnnounceResponse:
        scheme = parse_tracker_url(url).scheme
        if scheme == "udp":
            return await announce_udp(url, req, timeout=UDP_TIMEOUT, endpoint=self._udp)
        if scheme in ("http", "https"):
            if self._session is None:
                raise TrackerError("no HTTP session given to the announcer")
            session = self._session if isinstance(self._session, aiohttp.ClientSession) else self._session()
            return await announce_http(session, url, req, tracker_id=tracker_id, timeout=HTTP_TIMEOUT)
        raise TrackerError(f"unsupported tracker scheme {scheme!r}")

    async def _wait(self, delay: float | None) -> None:
        """Sleep ``delay`` seconds (forever if None) or until woken; clears the wake flag."""
        if not self._wake.is_set():
            tasks: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
            if delay is not None:
                tasks.add(asyncio.ensure_future(self._sleep(delay)))
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        self._wake.clear()

    def _request(self, event: str, numwant: int | None = None) -> AnnounceRequest | None:
        try:
            uploaded, downloaded, left = self._stats()
            return AnnounceRequest(
                info_hash=self._info_hash,
                peer_id=self._peer_id,
                port=self._port,
                uploaded=uploaded,
                downloaded=downloaded,
                left=left,
                event=event,
                numwant=self._numwant if numwant is None else numwant,
                key=self._key,
            )
        except Exception as exc:  # stats() is the caller's code; TrackerError from validation lands here too
            log.warning(
                "%s cannot build an announce: %s: %s", self._prefix, type(exc).__name__, _one_line(exc)
            )
            return None

    async def _round(self) -> None:
        """One BEP 12 announce: first tracker that answers, tier by tier."""
        for tier in self._tiers:
            for index, tracker in enumerate(tier):
                if self._closed:
                    return
                if not tracker.started:
                    event = "started"
                elif self._completed_pending:
                    event = "completed"
                else:
                    event = ""
                req = self._request(event)
                if req is None:
                    self._schedule_failure()
                    return
                self._current = (tracker, event)
                try:
                    resp = await self._announce_fn(tracker.url, req, tracker.tracker_id)
                except BridgeError as exc:
                    ANNOUNCE_RESULTS["error"] += 1
                    log.warning("%s tracker %s: %s", self._prefix, tracker.name, _one_line(exc))
                    continue
                except Exception as exc:  # a transport bug must not end announcing
                    ANNOUNCE_RESULTS["error"] += 1
                    log.warning(
                        "%s tracker %s: unexpected %s: %s",
                        self._prefix,
                        tracker.name,
                        type(exc).__name__,
                        _one_line(exc),
                    )
                    continue
                finally:
                    self._current = None
                tier.insert(0, tier.pop(index))
                self._on_success(tracker, event, resp)
                return
        self._schedule_failure()

    def _on_success(self, tracker: _Tracker, event: str, resp: AnnounceResponse) -> None:
        ANNOUNCE_RESULTS["ok"] += 1
        tracker.started = True
        if resp.tracker_id is not None:
            tracker.tracker_id = resp.tracker_id
        if event == "completed":
            self._completed_pending = False
        now = self._clock()
        self._failures = 0
        self._next_at = now + resp.interval
        gap = DEFAULT_MIN_GAP if resp.min_interval is None else float(resp.min_interval)
        self._earliest = now + min(float(resp.interval), max(MIN_GAP_FLOOR, gap))
        if self._completed_pending:
            self._early = True  # started went first; send completed as soon as min interval allows
        if resp.warning:
            log.warning("%s tracker %s warns: %s", self._prefix, tracker.name, resp.warning)
        log.debug(
            "%s tracker %s: %s ok, %d peers, next in %d s",
            self._prefix,
            tracker.name,
            event or "update",
            len(resp.peers),
            resp.interval,
        )
        if resp.peers:
            try:
                self._on_peers(list(resp.peers))
            except Exception:
                log.exception("%s on_peers callback failed", self._prefix)

    def _schedule_failure(self) -> None:
        self._failures += 1
        delay = BACKOFF_BASE * 2 ** min(self._failures - 1, 20)
        delay *= self._rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        delay = min(delay, self._backoff_max)
        self._next_at = self._earliest = self._clock() + delay
        log.debug("%s no tracker answered; retrying in %.0f s", self._prefix, delay)

    async def _send_stopped(self, tracker: _Tracker, req: AnnounceRequest) -> None:
        try:
            await self._announce_fn(tracker.url, req, tracker.tracker_id)
        except Exception as exc:
            log.warning("%s tracker %s: stopped failed: %s", self._prefix, tracker.name, _one_line(exc))
        else:
            tracker.started = False
