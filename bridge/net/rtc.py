"""WebRTC peers (aiortc): one data channel presented as the byte-stream PeerTransport that TCP peers use.

The BitTorrent wire runs unchanged over it: a data channel delivers messages, but the wire codec is a
byte-stream parser, so message boundaries never matter (WebTorrent sends a piece's 13-byte header and its
16 KiB block as two messages).

Signalling is non-trickle on both sides, as WebTorrent's (simple-peer's) is: every SDP we produce already
carries all of our candidates, and a remote SDP is taken to carry all of the remote's, so end-of-candidates
is signalled for it at once (simple-peer never sends ``a=end-of-candidates``). Without that, aioice never
reports an ICE failure at all; with it, a remote whose candidates cannot pair with ours fails at once and
a DTLS failure (wrong fingerprint) right after ICE. Candidates that simply never answer still take aioice
about 31 s of retransmitted checks, longer than ``connect_timeout``, which bounds every attempt.

* Offerer: :func:`create_offer` -> :class:`PendingOffer` (``.sdp``, ``await accept_answer(sdp)``,
  ``close()``).
* Answerer: :func:`answer_offer` -> ``(answer_sdp, task)``; the task's result is the transport.

This module (with :mod:`bridge.net.rtc_sctp`, fixes to aiortc's SCTP sender) is the only place that knows
aiortc (and its W3C camelCase). It is kept thin on purpose: a
faster data-channel library, or WebRTC peers spread over worker processes, can replace it behind the same
three entry points. SDP from the network is untrusted: it is size-limited and checked here, and whatever
goes wrong with it surfaces as :class:`~bridge.errors.RemoteProtocolError`, never as an aiortc exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import secrets
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aioice.stun
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InvalidStateError

from ..errors import LocalProtocolError, RemoteProtocolError
from . import rtc_sctp
from .transport import Inbox

log = logging.getLogger(__name__)

#: Largest SDP we accept from the network. A data-channel-only SDP with a dozen candidates is about 1-2 KB;
#: aquatic (a WebSocket tracker) caps a whole signalling message at 64 KiB, so nothing honest is larger.
MAX_SDP_LENGTH = 64 * 1024
#: Largest number of ICE candidates we accept in one remote SDP. Each one costs connectivity checks (and
#: an mDNS lookup for a ``.local`` name); a browser on a busy multi-homed host offers a few dozen at most.
MAX_REMOTE_CANDIDATES = 64
#: Largest data-channel message we send. 16 KiB is what every WebRTC stack accepts (the interoperable
#: minimum; Chromium and aiortc advertise 256 KiB) and is one BitTorrent block.
MAX_MESSAGE_SIZE = 16 * 1024
#: Received bytes waiting for read() before the peer is dropped. aiortc cannot stop reading from the SCTP
#: association (no receive-side flow control), so this is a cap, not a pause: our request pipeline keeps
#: at most 500 blocks (8 MiB) outstanding at one peer, so an honest peer never gets near twice that.
READ_QUEUE_LIMIT = 16 * 1024 * 1024
#: Bytes handed over by one read() at most: queued messages are joined (one copy) so the wire codec sees a
#: piece's header and block together and decodes per batch rather than per 16 KiB message.
READ_BATCH_LIMIT = 256 * 1024


#: The receive buffer asked for on each ICE socket (RtcConfig.receive_buffer), and the most it may be set to.
ICE_RECEIVE_BUFFER = 4 * 1024 * 1024
ICE_RECEIVE_BUFFER_MAX = 64 * 1024 * 1024


@dataclass(frozen=True)
class RtcConfig:
    """How WebRTC peer connections are made. The defaults work on a normal host with a public address;
    behind a NAT add a STUN server (WebTorrent uses ``stun:stun.l.google.com:19302``)."""

    #: STUN/TURN server URLs (``stun:host[:port]``, ``turn:host[:port][?transport=udp|tcp]``, ``turns:...``).
    #: TURN credentials go in the URL's user part, percent-encoded where needed:
    #: ``turn:user:pass@host:3478``. Empty (the default) means host candidates only: no public STUN server
    #: is contacted unless configured. aiortc uses the first STUN and the first TURN URL only.
    ice_servers: tuple[str, ...] = ()
    #: Local IP addresses ICE gathers host candidates on. Empty (the default) means aioice's choice: every
    #: interface address except 127.0.0.1 and ::1 -- so a loopback-only host (a test machine, a network
    #: namespace) must name ``("127.0.0.1",)`` here or no candidate is gathered and nothing connects.
    host_addresses: tuple[str, ...] = ()
    #: Seconds from receiving the remote SDP until the data channel is open (WebTorrent allows 25 s).
    connect_timeout: float = 25.0
    #: write() waits while more than this many bytes are queued in the data channel (back-pressure). aiortc
    #: moves one message at a time into SCTP, so this is nearly all of our send buffer; 1 MiB is about
    #: 30-50 ms of what aiortc sends on loopback, enough to keep it busy without hoarding memory per peer.
    buffered_amount_high: int = 1024 * 1024
    #: ...and resumes when the queue has drained to this (the channel's bufferedAmountLowThreshold), so a
    #: writer wakes once per 768 KiB sent instead of once per message.
    buffered_amount_low: int = 256 * 1024
    #: Apply :mod:`bridge.net.rtc_sctp`'s fixes to aiortc's SCTP (no spurious retransmissions, a receive window,
    #: bounded gap reports) and its lean send path. Off only to measure aiortc as it is (bench/rtc_raw.py).
    sctp_fixes: bool = True
    #: SO_RCVBUF asked for on each ICE host socket (0: leave aioice's 256 KiB). A browser sends its
    #: congestion window in bursts, and whatever arrives while the event loop is busy elsewhere (a piece to
    #: write, a hash to check) waits in this buffer: with 256 KiB, a 64 MiB download from WebTorrent in
    #: Chromium lost 2-5% of its datagrams to a full buffer (bench/rtc_throughput.py --download), each a
    #: retransmission and a halved window at the sender; with 4 MiB, none. Linux grants at most
    #: net.core.rmem_max (often 208 KiB: raise it with sysctl to get the benefit).
    receive_buffer: int = ICE_RECEIVE_BUFFER

    def __post_init__(self) -> None:
        for url in self.ice_servers:
            _ice_server(url)  # raises ValueError with the reason
        for address in self.host_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"host address {address!r} is not an IP address") from None
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not 0 <= self.buffered_amount_low < self.buffered_amount_high:
            raise ValueError("need 0 <= buffered_amount_low < buffered_amount_high")
        if not 0 <= self.receive_buffer <= ICE_RECEIVE_BUFFER_MAX:
            raise ValueError(f"receive_buffer must be 0 to {ICE_RECEIVE_BUFFER_MAX} bytes")


def _ice_server(url: str) -> RTCIceServer:
    """An aiortc RTCIceServer from one configured URL, credentials taken out of a TURN URL's user part."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(f"ICE server {url!r} is not a stun:, stuns:, turn: or turns: URL")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return RTCIceServer(urls=url)
    if not scheme.startswith("turn"):
        raise ValueError(f"ICE server {url!r}: only TURN URLs carry credentials")
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError(f"ICE server {url!r}: credentials must be user:password")
    return RTCIceServer(
        urls=f"{scheme}:{hostpart}",
        username=urllib.parse.unquote(user),
        credential=urllib.parse.unquote(password),
    )


# ----------------------------------------------------------------------------- host candidate addresses
#
# aioice picks the addresses to gather host candidates on by calling its module-level function
# ``aioice.ice.get_host_addresses`` (every interface address, never 127.0.0.1 or ::1), with no setting to
# change it. We replace that function once with a wrapper that returns the addresses set in a context
# variable, and otherwise calls the original. Only gathering started inside our own ``_gathering_on(...)``
# block (aiortc gathers inside setLocalDescription, in tasks that inherit the context) sees our addresses;
# everything else in the process behaves exactly as before.

_gather_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "bridge_rtc_gather_addresses", default=None
)


def _install_host_address_hook() -> None:
    original = getattr(aioice.ice, "get_host_addresses", None)
    if original is None or getattr(original, "_bridge_hook", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _gather_addresses.get()
        if chosen is None:
            return list(original(use_ipv4, use_ipv6))
        return [a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    get_host_addresses._bridge_hook = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


def _install_stun_parse_guard() -> None:
    """aioice parses every datagram on an ICE socket as STUN first and takes a ValueError to mean "not
    STUN, pass it on". But an attribute too short for its type raises struct.error, which escapes its
    datagram_received, and the event loop logs it with a traceback: anyone who can reach the port could
    fill the log. The guard turns that into the ValueError aioice handles. Installed once, for the
    process; nothing else changes."""
    original = aioice.stun.parse_message
    if getattr(original, "_bridge_guard", False):
        return

    def parse_message(data: bytes) -> aioice.stun.Message:
        try:
            return original(data)
        except struct.error as exc:
            raise ValueError(f"malformed STUN message: {exc}") from None

    parse_message._bridge_guard = True  # type: ignore[attr-defined]
    aioice.stun.parse_message = parse_message


@contextlib.contextmanager
def _gathering_on(addresses: tuple[str, ...]) -> Iterator[None]:
    if not addresses:
        yield
        return
    _install_host_address_hook()
    if not getattr(getattr(aioice.ice, "get_host_addresses", None), "_bridge_hook", False):
        raise LocalProtocolError("this aioice version cannot be told which host addresses to gather on")
    token = _gather_addresses.set(addresses)
    try:
        yield
    finally:
        _gather_addresses.reset(token)


# ------------------------------------------------------------------------------------ SDP validation


def check_sdp(text: object, kind: str) -> str:
    """Return ``text`` if it is a plausible data-channel-only SDP from a remote peer, else raise
    RemoteProtocolError. ``kind`` ("offer"/"answer") only names it in messages."""
    _count_candidates(text, kind)
    assert isinstance(text, str)
    return text


def _count_candidates(text: object, kind: str) -> int:
    """check_sdp's work; returns how many ICE candidates the SDP lists."""
    if not isinstance(text, str):
        raise RemoteProtocolError(f"SDP {kind} is not a string")
    if len(text) > MAX_SDP_LENGTH:
        raise RemoteProtocolError(f"SDP {kind} of {len(text)} characters is over the limit of {MAX_SDP_LENGTH}")
    if not text.isascii():
        raise RemoteProtocolError(f"SDP {kind} is not ASCII")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # the parser raises assorted errors (even AssertionError) on garbage
        raise RemoteProtocolError(f"SDP {kind} does not parse: {type(exc).__name__}: {exc}") from None
    if not description.media:
        raise RemoteProtocolError(f"SDP {kind} has no media section")
    candidates = 0
    for media in description.media:
        if media.kind != "application":
            raise RemoteProtocolError(f"SDP {kind} has a {media.kind!r} media section; only data channels are accepted")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise RemoteProtocolError(f"SDP {kind} has no ICE credentials")
        if media.dtls is None or not media.dtls.fingerprints:
            raise RemoteProtocolError(f"SDP {kind} has no DTLS fingerprint")
        candidates += len(media.ice_candidates)
    if candidates > MAX_REMOTE_CANDIDATES:
        raise RemoteProtocolError(f"SDP {kind} has {candidates} candidates, over the limit of {MAX_REMOTE_CANDIDATES}")
    return candidates


async def _end_of_remote_candidates(pc: RTCPeerConnection, candidates: int) -> None:
    """The remote SDP is complete (nothing is trickled; simple-peer never sends a=end-of-candidates): say
    so, or aioice keeps waiting for more candidates and never reports failure. Call it only after our own
    gathering, because aioice then drops ICE components without remote candidates.

    A remote SDP without candidates is the exception: ending there would fail at once, while the remote's
    own checks may still reach us and give a peer-reflexive pair, so it is left to connect_timeout."""
    if candidates:
        await pc.addIceCandidate(None)


# ------------------------------------------------------------------------------------ the transport

_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> asyncio.Task[Any]:
    """Run a clean-up coroutine in the background, keeping a reference until it is done."""
    task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def _close_pc(pc: RTCPeerConnection) -> None:
    try:
        await pc.close()
    except Exception:  # clean-up must not fail the caller; aiortc's close touches many transports
        log.debug("error closing a peer connection", exc_info=True)


def _ice_connection(pc: RTCPeerConnection) -> Any:
    """The aioice Connection under ``pc``'s data channels (private aiortc state: AttributeError if this aiortc
    does not have it, or before there is an SCTP transport)."""
    return pc.sctp.transport.transport._connection  # type: ignore[union-attr]


def _selected_remote_address(pc: RTCPeerConnection) -> tuple[str, int]:
    """The (ip, port) of the nominated remote ICE candidate, or ("webrtc", 0) if aiortc does not tell."""
    try:
        for pair in _ice_connection(pc)._nominated.values():
            host, port = pair.remote_addr[:2]
            return (str(host), int(port))
    except Exception:  # private aioice state: best effort, for logs and bans only
        pass
    return ("webrtc", 0)


class RtcTransport:
    """A PeerTransport over one open data channel of one peer connection (which it owns)."""

    kind = "webrtc"

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel, config: RtcConfig) -> None:
        self._pc = pc
        self._channel = channel
        self._high = config.buffered_amount_high
        self._inbox = Inbox()
        self._queued = 0
        self._closing = False
        self._error: BaseException | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_lock = asyncio.Lock()
        self._close_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.remote_address: tuple[str, int] = _selected_remote_address(pc)
        channel.bufferedAmountLowThreshold = config.buffered_amount_low
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._on_buffered_amount_low)
        channel.on("close", self._on_remote_close)
        pc.on("connectionstatechange", self._on_connection_state)
        if channel.readyState != "open":
            self._on_remote_close()

    def __repr__(self) -> str:
        return f"<RtcTransport {self.remote_address[0]}:{self.remote_address[1]} label={self._channel.label!r}>"

    # ---------------------------------------------------------------------------------- diagnostics
    @property
    def channel(self) -> RTCDataChannel:
        """The underlying aiortc data channel (for tests and diagnostics; do not send on it)."""
        return self._channel

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet handed to SCTP."""
        return self._channel.bufferedAmount

    # ---------------------------------------------------------------------------------- callbacks
    def _on_message(self, message: bytes | str) -> None:
        if self._closing or self._inbox.eof:
            return
        if not isinstance(message, bytes):
            self._fail(RemoteProtocolError("text message on a BitTorrent data channel"))
            return
        if not message:
            return
        self._queued += len(message)
        if self._queued > READ_QUEUE_LIMIT:
            self._fail(RemoteProtocolError(f"peer sent over {READ_QUEUE_LIMIT} bytes that were not read"))
            return
        self._inbox.put(message)

    def _on_buffered_amount_low(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _on_connection_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._on_remote_close()

    def _on_remote_close(self) -> None:
        """The channel or the connection went away: deliver what was received, then end of stream."""
        if not self._inbox.eof:
            log.debug("%r: closed by the remote side or the network", self)
        self._inbox.end()
        self._fail_writers()
        self._start_close()

    def _fail(self, error: RemoteProtocolError) -> None:
        """Drop the peer for a protocol breach: read() raises ``error`` once, then returns b""."""
        log.debug("%r: %s", self, error)
        self._error = error
        self.close()

    def _raise_error(self) -> None:
        """For read(): the breach that dropped the peer, once."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _fail_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("data channel closed"))

    def _start_close(self) -> None:
        if self._close_task is not None:
            return
        with contextlib.suppress(Exception):
            self._channel.remove_listener("message", self._on_message)
            self._channel.close()
        self._close_task = _spawn(self._finish_close())

    async def _finish_close(self) -> None:
        await _close_pc(self._pc)
        if not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------------------------ PeerTransport
    async def read(self) -> bytes:
        """Received bytes (queued messages joined, up to READ_BATCH_LIMIT); b"" at end of stream.

        Raises RemoteProtocolError once if the peer was dropped for a breach (a text message, a flood)."""
        if not await self._inbox.wait(self._raise_error):
            return b""
        chunks = self._inbox.chunks
        first = chunks.popleft()
        if not chunks or len(first) >= READ_BATCH_LIMIT:
            self._queued -= len(first)
            return first
        batch = [first]
        size = len(first)
        while chunks and size + len(chunks[0]) <= READ_BATCH_LIMIT:
            chunk = chunks.popleft()
            batch.append(chunk)
            size += len(chunk)
        self._queued -= size
        return b"".join(batch)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as messages of at most MAX_MESSAGE_SIZE bytes, waiting before each one while the
        channel holds more than ``buffered_amount_high`` bytes. Raises ConnectionResetError once closed."""
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if self._closing or self._inbox.eof:
            raise ConnectionResetError("data channel closed")
        if not size:
            return
        if size <= MAX_MESSAGE_SIZE and not self._write_lock.locked() and self._channel.bufferedAmount <= self._high:
            self._send(data if isinstance(data, bytes) else bytes(data))
            return
        view = memoryview(data).cast("B")
        # The lock keeps one write's messages contiguous when several tasks write to the same peer.
        async with self._write_lock:
            for pos in range(0, size, MAX_MESSAGE_SIZE):
                while self._channel.bufferedAmount > self._high:
                    if self._closing or self._inbox.eof:
                        raise ConnectionResetError("data channel closed")
                    waiter = asyncio.get_running_loop().create_future()
                    self._drain_waiters.append(waiter)
                    await waiter
                self._send(bytes(view[pos : pos + MAX_MESSAGE_SIZE]))

    def _send(self, message: bytes) -> None:
        if self._closing or self._inbox.eof:
            raise ConnectionResetError("data channel closed")
        try:
            self._channel.send(message)
        except InvalidStateError:
            raise ConnectionResetError("data channel closed") from None

    def close(self) -> None:
        """Close the channel and the peer connection now; read() returns b"" from here on."""
        if self._closing:
            return
        self._closing = True
        self._inbox.chunks.clear()
        self._queued = 0
        self._inbox.end()
        self._fail_writers()
        self._start_close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


# ------------------------------------------------------------------------------------- establishing


def _new_peer_connection(config: RtcConfig) -> tuple[RTCPeerConnection, list[str]]:
    """A peer connection, and the ICE server URLs it was given (those of ``config`` that answer lately)."""
    _install_stun_parse_guard()
    rtc_sctp.install_params_guard()  # a security fix, so also without sctp_fixes
    urls = ICE_SERVERS.usable(config.ice_servers)
    # An explicit (possibly empty) list: aiortc would otherwise add Google's public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[_ice_server(u) for u in urls])), urls


@contextlib.contextmanager
def _gathering(pc: RTCPeerConnection, config: RtcConfig, urls: list[str]) -> Iterator[None]:
    """Around setLocalDescription (where aiortc gathers): on ``config``'s host addresses; then the sockets'
    receive buffers are set and the ICE servers judged by what they gave."""
    started = time.monotonic()
    with _gathering_on(config.host_addresses):
        yield
    _grow_receive_buffers(pc, config.receive_buffer)
    local = pc.localDescription
    if urls and local is not None:
        ICE_SERVERS.gathered(urls, local.sdp, time.monotonic() - started)


def _grow_receive_buffers(pc: RTCPeerConnection, size: int) -> None:
    """Ask for a ``size``-byte SO_RCVBUF on every socket ICE gathered on (after gathering: aioice opens
    them in setLocalDescription). Best effort: private aioice state, and the kernel may give less."""
    if not size:
        return
    try:
        protocols = list(_ice_connection(pc)._protocols)
    except AttributeError:  # another aioice or aiortc: leave the system default
        log.debug("cannot reach the ICE sockets to set their receive buffer")
        return
    for protocol in protocols:
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as exc:
            log.debug("SO_RCVBUF %d refused on an ICE socket: %s", size, exc)


#: A configured STUN or TURN server that gave nothing is left out of new connections for this long, and twice
#: as long each time it fails again, up to ICE_SERVER_RETRY_MAX. aioice waits 5 s for a server that does
#: not answer, in every offer and every answer (a 5-offer announce then takes 25 s), and a relay that
#: refuses our credentials will refuse them again.
ICE_SERVER_RETRY = 60.0
ICE_SERVER_RETRY_MAX = 900.0
#: Gathering that takes this long without a server-reflexive candidate means the STUN server did not
#: answer (aioice gives it 5 s; an answer takes one round trip).
GATHER_SLOW = 4.0


class IceServers:
    """Which configured ICE servers new connections use: all of them, less those that recently gave nothing
    (see ICE_SERVER_RETRY). One per process (:data:`ICE_SERVERS`), since the servers are the same for
    every torrent. aiortc uses the first STUN and the first TURN URL it is given, so leaving one out puts
    the next of its kind to work."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: URL -> (monotonic time it may be tried again, the wait that was set)
        self._down: dict[str, tuple[float, float]] = {}
        self._warned: set[str] = set()

    def usable(self, urls: tuple[str, ...]) -> list[str]:
        now = self._clock()
        return [u for u in urls if self._down.get(u, (0.0, 0.0))[0] <= now]

    def gathered(self, urls: list[str], sdp: str, seconds: float) -> None:
        """Judge the servers aiortc used (the first of each kind in ``urls``) by what gathering gave: a
        relay candidate from the TURN server; a server-reflexive one from the STUN server, or at least an
        answer within GATHER_SLOW (a STUN server answers on IPv4 only)."""
        turn = next((u for u in urls if u.startswith(("turn:", "turns:"))), None)
        stun = next((u for u in urls if u.startswith(("stun:", "stuns:"))), None)
        if turn is not None:
            self._judge(turn, " typ relay" in sdp, "gave no relay candidate: check its user name and password and "
                        "that it is reachable; WebRTC peers behind a NAT may not connect")
        if stun is not None:
            self._judge(stun, " typ srflx" in sdp or seconds < GATHER_SLOW,
                        f"did not answer within {seconds:.0f} s; WebRTC peers behind a NAT may not connect")

    def _judge(self, url: str, ok: bool, problem: str) -> None:
        if ok:
            self._down.pop(url, None)
            return
        wait = self._down.get(url, (0.0, 0.0))[1]
        wait = min(ICE_SERVER_RETRY_MAX, wait * 2) if wait else ICE_SERVER_RETRY
        self._down[url] = (self._clock() + wait, wait)
        server = str(_ice_server(url).urls)  # the credentials stay out of the log
        level = logging.INFO if url in self._warned else logging.WARNING
        self._warned.add(url)
        log.log(level, "the ICE server %s %s. New connections go without it for %.0f s", server, problem, wait)


#: The process's record of which ICE servers answer.
ICE_SERVERS = IceServers()


def _watch_failure(pc: RTCPeerConnection, opened: asyncio.Future[RtcTransport]) -> None:
    """Fail ``opened`` as soon as the connection fails, rather than at the timeout."""

    def on_state() -> None:
        if pc.connectionState in ("failed", "closed") and not opened.done():
            opened.set_exception(ConnectionError(f"WebRTC connection {pc.connectionState} (ICE or DTLS)"))

    pc.on("connectionstatechange", on_state)


async def _await_open(
    pc: RTCPeerConnection, opened: asyncio.Future[RtcTransport], timeout: float, what: str
) -> RtcTransport:
    """Wait for ``opened``; on timeout or failure close everything, then raise (on cancellation the
    closing goes on in the background)."""
    try:
        async with asyncio.timeout(timeout):
            transport = await asyncio.shield(opened)
    except Exception as exc:
        await asyncio.shield(_discard(pc, opened))
        if isinstance(exc, TimeoutError):
            raise TimeoutError(f"{what}: no data channel open within {timeout:g} s") from None
        raise
    except BaseException:
        _discard(pc, opened)
        raise
    log.debug("%r: open (%s)", transport, what)
    return transport


def _discard(pc: RTCPeerConnection, opened: asyncio.Future[RtcTransport]) -> asyncio.Future[Any]:
    """Close what exists -- the transport if the channel opened meanwhile, else the peer connection --
    and return a future that is done once it is closed."""
    if opened.done() and not opened.cancelled() and opened.exception() is None:
        transport = opened.result()
        transport.close()
        return asyncio.ensure_future(transport.wait_closed())
    if not opened.done():
        opened.cancel()
    return _spawn(_close_pc(pc))


async def wait_closing() -> None:
    """Wait until every peer connection this module is closing in the background has closed (for a clean
    shutdown, and for tests that check nothing is left open)."""
    while True:
        # A task that has ended leaves the set by its done callback, which the event loop runs a moment
        # later (or never, if that loop has closed). Since Python 3.12, gather() of tasks that have all
        # ended returns without yielding to the loop, so waiting for the callbacks would spin forever.
        for task in [t for t in _background if t.done()]:
            _background.discard(task)
        if not _background:
            return
        await asyncio.gather(*list(_background), return_exceptions=True)


class PendingOffer:
    """Our offer, waiting for an answer. Discard unanswered ones with close()."""

    def __init__(self, pc: RTCPeerConnection, sdp: str, opened: asyncio.Future[RtcTransport], config: RtcConfig) -> None:
        self._pc = pc
        self._opened = opened
        self._config = config
        #: "waiting" -> "answered" (accept_answer running) -> "connected" (the transport owns the connection)
        #: or "closed".
        self._state = "waiting"
        self._closing: asyncio.Future[Any] | None = None
        #: The complete offer SDP (every candidate included; nothing is trickled).
        self.sdp = sdp

    async def accept_answer(self, answer_sdp: str) -> RtcTransport:
        """Apply the remote answer and wait until the data channel is open.

        Raises RemoteProtocolError for an unusable answer, ConnectionError if ICE/DTLS fails and
        TimeoutError after ``connect_timeout``; in every such case the offer is closed."""
        if self._state != "waiting":
            raise LocalProtocolError(f"this offer is {self._state}; it can be answered once")
        self._state = "answered"
        pc = self._pc
        try:
            candidates = _count_candidates(answer_sdp, "answer")
            try:
                async with asyncio.timeout(self._config.connect_timeout):
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
                    await _end_of_remote_candidates(pc, candidates)
            except TimeoutError:
                raise
            except Exception as exc:
                raise RemoteProtocolError(f"unusable SDP answer: {type(exc).__name__}: {exc}") from None
            transport = await _await_open(pc, self._opened, self._config.connect_timeout, "offer")
        except Exception:
            self._state = "closed"
            self._closing = _discard(pc, self._opened)
            await asyncio.shield(self._closing)
            raise
        except BaseException:
            self._state = "closed"
            self._closing = _discard(pc, self._opened)
            raise
        self._state = "connected"
        return transport

    def close(self) -> None:
        """Discard the offer (a no-op once it has produced a transport, which then owns the connection)."""
        if self._state in ("connected", "closed"):
            return
        if self._state == "answered" and not self._opened.done():
            # accept_answer is waiting: it should fail as any broken connection does, not look cancelled
            self._opened.set_exception(ConnectionError("the offer was closed"))
        self._state = "closed"
        self._closing = _discard(self._pc, self._opened)

    async def wait_closed(self) -> None:
        """Wait until a closed (or failed) offer has released its peer connection."""
        if self._closing is not None:
            await asyncio.shield(self._closing)


async def create_offer(config: RtcConfig | None = None) -> PendingOffer:
    """Create a peer connection with one ordered, reliable data channel (random 40-hex label, as
    simple-peer does) and a complete offer SDP."""
    config = config or RtcConfig()
    pc, urls = _new_peer_connection(config)
    opened: asyncio.Future[RtcTransport] = asyncio.get_running_loop().create_future()
    try:
        channel = pc.createDataChannel(secrets.token_hex(20), ordered=True)
        if config.sctp_fixes:
            rtc_sctp.install(pc)

        def on_open() -> None:
            if not opened.done():
                opened.set_result(RtcTransport(pc, channel, config))

        channel.on("open", on_open)
        _watch_failure(pc, opened)
        with _gathering(pc, config, urls):
            await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        assert local is not None
    except BaseException:
        opened.cancel()
        _spawn(_close_pc(pc))
        raise
    return PendingOffer(pc, local.sdp, opened, config)


async def answer_offer(offer_sdp: str, config: RtcConfig | None = None) -> tuple[str, asyncio.Task[RtcTransport]]:
    """Answer a remote offer: returns the complete answer SDP and a task whose result is the transport once
    the remote's data channel (any label) is open.

    Raises RemoteProtocolError at once for an unusable offer. The task raises ConnectionError if ICE/DTLS
    fails and TimeoutError after ``connect_timeout``; cancel it to give up (the connection is closed then,
    and also on any failure)."""
    config = config or RtcConfig()
    candidates = _count_candidates(offer_sdp, "offer")
    pc, urls = _new_peer_connection(config)
    opened: asyncio.Future[RtcTransport] = asyncio.get_running_loop().create_future()

    def on_datachannel(channel: RTCDataChannel) -> None:
        if opened.done():
            log.debug("answer: closing an extra data channel %r", channel.label)
            channel.close()
            return
        opened.set_result(RtcTransport(pc, channel, config))

    pc.on("datachannel", on_datachannel)
    _watch_failure(pc, opened)
    try:
        async with asyncio.timeout(config.connect_timeout):
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                if config.sctp_fixes:
                    rtc_sctp.install(pc)
                answer = await pc.createAnswer()
            except Exception as exc:
                raise RemoteProtocolError(f"unusable SDP offer: {type(exc).__name__}: {exc}") from None
            with _gathering(pc, config, urls):
                await pc.setLocalDescription(answer)
            await _end_of_remote_candidates(pc, candidates)
        local = pc.localDescription
        assert local is not None
    except BaseException:
        _discard(pc, opened)
        raise
    task = asyncio.get_running_loop().create_task(_await_open(pc, opened, config.connect_timeout, "answer"))

    def done(task: asyncio.Task[RtcTransport]) -> None:
        # A task cancelled before it ever ran has not closed anything itself; and a failed answer nobody
        # waits for should end quietly, so its exception is marked as seen here.
        if task.cancelled() or task.exception() is not None:
            _discard(pc, opened)

    task.add_done_callback(done)
    return local.sdp, task


__all__: list[str] = [
    "MAX_MESSAGE_SIZE",
    "MAX_REMOTE_CANDIDATES",
    "MAX_SDP_LENGTH",
    "READ_BATCH_LIMIT",
    "READ_QUEUE_LIMIT",
    "PendingOffer",
    "RtcConfig",
    "RtcTransport",
    "answer_offer",
    "check_sdp",
    "create_offer",
    "wait_closing",
]
