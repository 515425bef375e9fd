"""UDP tracker announce (BEP 15) over an asyncio datagram endpoint: a thin adapter around
:mod:`bridge.proto.tracker`.

One short-lived connected UDP socket per announce. Requests are retransmitted a few times on a short,
doubling schedule that fits inside the caller's timeout (BEP 15's 15 * 2**n seconds is meant for a client
that can wait an hour; a bridge cannot). Connection ids are cached for CONNECTION_ID_LIFETIME seconds per
tracker address, timed with the event loop's clock. Every failure is a :class:`~bridge.errors.TrackerError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import TrackerError
from ..proto.tracker import (
    MAX_UDP_DATAGRAM,
    AnnounceRequest,
    AnnounceResponse,
    parse_tracker_url,
    parse_udp_announce_response,
    parse_udp_connect_response,
    udp_announce_request,
    udp_connect_request,
    udp_response_transaction_id,
)

__all__ = ["announce_udp", "ConnectionIdCache", "CONNECTION_ID_LIFETIME", "SharedUdp"]


class SharedUdp(Protocol):
    """A UDP socket owned by someone else (the listen port's, shared with uTP) that the tracker client
    may send from: replies from ``addr`` are handed to the subscribed callback."""

    family: int

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None: ...

    def subscribe(self, addr: tuple[str, int], callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Route datagrams from ``addr`` to ``callback`` until the returned function is called."""
        ...


class _SharedSender:
    """The one method of a DatagramTransport that _exchange uses, over a shared socket."""

    def __init__(self, endpoint: SharedUdp, addr: tuple[str, int]) -> None:
        self._endpoint = endpoint
        self._addr = addr

    def sendto(self, data: bytes) -> None:
        self._endpoint.sendto(data, self._addr)

log = logging.getLogger(__name__)

#: Seconds a connection id is reused. BEP 15: a client may use one for up to a minute after receiving it
#: (trackers accept it for two).
CONNECTION_ID_LIFETIME = 60.0
#: Tracker addresses whose connection id is remembered. A session announces to a few dozen trackers at
#: most; the bound only keeps a long-running process with churning tracker lists from growing without end.
MAX_CACHED_CONNECTIONS = 1024
#: Datagrams queued while waiting for the right transaction id. A tracker answers once per request; more
#: than a handful queued means stray or hostile traffic, so the oldest are dropped.
MAX_QUEUED_DATAGRAMS = 16
#: First wait for an answer before retransmitting, in seconds (also at most timeout / 8). Doubles after
#: every send up to RETRANSMIT_MAX_WAIT. A tracker that is up answers within a second even across
#: continents, so one second catches a lost datagram quickly.
RETRANSMIT_FIRST_WAIT = 1.0
#: Longest single wait between retransmissions, in seconds. With the default 15 s timeout this gives
#: sends at about 0, 1, 3, 7 and 11 s.
RETRANSMIT_MAX_WAIT = 4.0

#: Floor of the retransmission wait, so a tiny timeout cannot turn the send loop into a busy loop.
_MIN_WAIT = 0.05

_Key = tuple[str, int]


class ConnectionIdCache:
    """BEP 15 connection ids by tracker address (resolved IP, port), each valid for a fixed lifetime."""

    def __init__(
        self, lifetime: float = CONNECTION_ID_LIFETIME, max_entries: int = MAX_CACHED_CONNECTIONS
    ) -> None:
        self._lifetime = lifetime
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[_Key, tuple[int, float]] = collections.OrderedDict()

    def get(self, key: _Key, now: float) -> int | None:
        """The cached connection id for ``key`` if it is still fresh at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        connection_id, expires = entry
        if now >= expires:
            del self._entries[key]
            return None
        return connection_id

    def put(self, key: _Key, connection_id: int, now: float) -> None:
        """Remember ``connection_id`` for ``key``, received at ``now``."""
        self._entries.pop(key, None)
        self._entries[key] = (connection_id, now + self._lifetime)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: _Key) -> None:
        """Forget ``key`` (after an error the tracker may no longer accept the id)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_DEFAULT_CACHE = ConnectionIdCache()


class _ClientProtocol(asyncio.DatagramProtocol):
    """Queues received datagrams for :meth:`receive`; remembers a socket error (e.g. ICMP unreachable)."""

    def __init__(self) -> None:
        self._queue: collections.deque[bytes] = collections.deque(maxlen=MAX_QUEUED_DATAGRAMS)
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > MAX_UDP_DATAGRAM:
            return
        self._queue.append(data)
        self._wake()

    def error_received(self, exc: Exception) -> None:
        self._error = exc
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = exc or ConnectionError("socket closed")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self, wait: float) -> bytes | None:
        """The next datagram, or None after ``wait`` seconds. Raises TrackerError on a socket error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._queue:
            if self._error is not None:
                exc, self._error = self._error, None
                raise TrackerError(f"UDP socket error: {type(exc).__name__}: {exc}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            # A plain future and a timer rather than asyncio.wait_for: on 3.11, wait_for can swallow the
            # caller's cancellation (the announce deadline) when the future completes at the same moment.
            self._waiter = loop.create_future()
            timer = loop.call_later(remaining, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._queue.popleft()


async def announce_udp(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109 -- the public API takes a budget; asyncio.timeout applies it
    cache: ConnectionIdCache | None = None,
    endpoint: SharedUdp | None = None,
) -> AnnounceResponse:
    """Announce ``req`` to the ``udp://host:port`` tracker at ``url`` and return its parsed answer.

    ``timeout`` bounds everything (resolution, connect, announce, retransmissions). ``cache`` defaults to
    a process-wide connection-id cache. ``endpoint``: send from this shared socket (the listen port's)
    when its address family fits, instead of a socket of our own. Raises TrackerError on any failure.
    """
    parsed = parse_tracker_url(url)
    if parsed.scheme != "udp":
        raise TrackerError(f"not a UDP tracker URL: {url[:100]!r}")
    if cache is None:
        cache = _DEFAULT_CACHE
    loop = asyncio.get_running_loop()
    first_wait = max(_MIN_WAIT, min(RETRANSMIT_FIRST_WAIT, timeout / 8))
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_DGRAM)
            if not infos:
                raise TrackerError(f"cannot resolve {parsed.host!r}")
            family, _, _, _, sockaddr = infos[0]
            key = (str(sockaddr[0]), int(sockaddr[1]))
            if endpoint is not None and endpoint.family == family:
                shared = _ClientProtocol()
                unsubscribe = endpoint.subscribe(key, lambda data: shared.datagram_received(data, key))
                try:
                    return await _announce(_SharedSender(endpoint, key), shared, key, req,  # type: ignore[arg-type]
                                           cache, first_wait, ipv6=family == socket.AF_INET6)
                finally:
                    unsubscribe()
            transport, protocol = await loop.create_datagram_endpoint(
                _ClientProtocol, remote_addr=key, family=family
            )
            try:
                return await _announce(
                    transport, protocol, key, req, cache, first_wait, ipv6=family == socket.AF_INET6
                )
            finally:
                transport.close()
    except TrackerError:
        raise
    except TimeoutError:
        raise TrackerError(f"no answer within {timeout:g} s") from None
    except (OSError, ValueError, UnicodeError) as exc:  # resolution and socket errors
        raise TrackerError(f"UDP tracker unreachable: {type(exc).__name__}: {exc}") from None


async def _announce(
    transport: asyncio.DatagramTransport,
    protocol: _ClientProtocol,
    key: _Key,
    req: AnnounceRequest,
    cache: ConnectionIdCache,
    first_wait: float,
    *,
    ipv6: bool,
) -> AnnounceResponse:
    loop = asyncio.get_running_loop()
    connection_id = cache.get(key, loop.time())
    if connection_id is None:
        tid = secrets.randbits(32)
        data = await _exchange(transport, protocol, udp_connect_request(tid), tid, first_wait)
        connection_id = parse_udp_connect_response(data, tid)
        cache.put(key, connection_id, loop.time())
    succeeded = False
    try:
        tid = secrets.randbits(32)
        request = udp_announce_request(connection_id, tid, req)
        data = await _exchange(transport, protocol, request, tid, first_wait)
        response = parse_udp_announce_response(data, tid, ipv6=ipv6)
        succeeded = True
        return response
    finally:
        if not succeeded:
            # Error, garbage or silence (the deadline cancels us): the tracker may have restarted or
            # expired the id early, so the next announce connects afresh.
            cache.discard(key)


async def _exchange(
    transport: asyncio.DatagramTransport,
    protocol: _ClientProtocol,
    request: bytes,
    tid: int,
    first_wait: float,
) -> bytes:
    """Send ``request`` until a datagram with transaction id ``tid`` arrives; runs until cancelled by the
    caller's deadline. The same transaction id is kept across retransmissions so a late answer counts."""
    wait = first_wait
    while True:
        transport.sendto(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (remaining := deadline - loop.time()) > 0:
            data = await protocol.receive(remaining)
            if data is None:
                break
            if udp_response_transaction_id(data) == tid:
                return data
            log.debug("ignoring UDP tracker datagram with another transaction id (%d bytes)", len(data))
        wait = min(wait * 2, RETRANSMIT_MAX_WAIT)
