"""The embedded tracker's I/O: one aiohttp application and one UDP endpoint on the same port number.

* ``GET /`` with a WebSocket upgrade: WebTorrent signalling (the bittorrent-tracker protocol), codec
  :mod:`bridge.proto.wstracker`. aiohttp answers the handshake; the frames after it are read and written
  here with :mod:`bridge.proto.websocket` (see ``_WsConn``).
* ``GET /announce`` and ``GET /scrape``: BEP 3 / 7 / 23 / 48 over HTTP, codec :mod:`bridge.tracker.codec`.
* ``GET /stats``: JSON counters, and the event loop's lag (``loop_lag``, see bridge/looplag.py).
* UDP on the same port number: BEP 15 connect, announce and scrape.

All swarm logic is in :class:`bridge.tracker.state.SwarmRegistry`; this module only moves bytes, keeps the
clock (``loop.time()``) and enforces per-connection limits. A bad request gets a ``failure reason`` (or is
dropped); it never disturbs other clients.

Every message to a WebSocket client goes through that connection's outbox (see ``_WsConn``), flushed in
one write per WS_FLUSH_DELAY and held back while the transport is over its high-water mark. A connection
whose outbox is over a high-water mark is not read until it drains, so a client that does not read its
replies stops being served; offers forwarded to a connection whose outbox is full are dropped (WebTorrent
gives up on an unanswered offer after 50 s anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web

try:  # websockets' C XOR of a masked payload: 0.3 us per 3.5 KB message against 7 us in Python
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from ..errors import TrackerError
from ..looplag import LoopLagMonitor
from ..proto.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    ServerFrameParser,
    WebSocketError,
    check_handshake,
    close_frame,
    frame,
    frame_header,
    is_upgrade_request,
    parse_close,
)
from ..proto.wstracker import (
    MAX_MESSAGE_SIZE,
    Announce,
    AnnounceReply,
    Answer,
    Failure,
    Scrape,
    ScrapeReply,
    encode_tracker_message,
    id_to_str,
    parse_client_message,
    tracker_message_object,
)
from .codec import (
    ConnectionIds,
    UdpAnnounce,
    UdpConnect,
    UdpRequestError,
    UdpScrape,
    encode_http_announce_reply,
    encode_http_failure,
    encode_http_scrape_reply,
    encode_udp_announce,
    encode_udp_connect,
    encode_udp_error,
    encode_udp_scrape,
    normalize_ip,
    parse_http_announce,
    parse_http_scrape,
    parse_udp_request,
)
from .state import DEFAULT_INTERVAL, MAX_WS_CONNECTIONS, SwarmRegistry

__all__ = ["TrackerServer", "start_tracker", "run_tracker", "MAX_WS_CONNECTIONS", "WS_MAX_MESSAGE_SIZE"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------------------

#: Largest WebSocket message read, in bytes: the codec's limit (64 KiB, as aquatic). aiohttp checks the
#: frame header, so a larger message closes the connection (code 1009) before its payload is buffered.
WS_MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
#: Bytes queued for one WebSocket connection before messages to it are dropped. Ten forwarded offers of
#: ~3 KB SDP are 30 KB; 256 KiB is far beyond a healthy client's backlog.
MAX_OUTBOX_BYTES = 256 * 1024
#: Bytes queued over all WebSocket connections before messages are dropped, so that many clients that do
#: not read cannot make the tracker hold MAX_WS_CONNECTIONS * MAX_OUTBOX_BYTES.
MAX_OUTBOX_BYTES_TOTAL = 128 * 1024 * 1024
#: A connection with more than this queued is not read until its outbox drains below it.
OUTBOX_HIGH_WATER = 64 * 1024
#: The outbox is not flushed while the transport holds more than this unsent (the client reads slowly) ...
#: With the outbox limit, a stalled connection holds at most about 320 KiB in user space.
WRITE_HIGH_WATER = 64 * 1024
#: ... until it is down to this.
WRITE_LOW_WATER = 16 * 1024
#: Seconds a connection's outbox collects messages before one write sends them all. Under load each
#: connection gets offers from many announces; writing them together halves the tracker's syscalls (on
#: loopback a write also pays for the receiver's TCP work). Signalling waits this long at most: nothing
#: next to WebRTC set-up, which takes hundreds of milliseconds.
WS_FLUSH_DELAY = 0.002
#: Seconds between checks of a stalled transport (only for connections over WRITE_HIGH_WATER).
DRAIN_POLL = 0.01
#: A connection silent for WS_HEARTBEAT / 2 to WS_HEARTBEAT seconds gets a ping, and is closed when it has
#: not answered it WS_HEARTBEAT / 2 seconds later. Dead connections would otherwise keep their peers in
#: swarms until expiry.
WS_HEARTBEAT = 60.0
#: Largest HTTP request body accepted (announce and scrape are GETs; nothing needs a body).
MAX_HTTP_BODY = 4096
#: Bytes the UDP transport may hold unsent (the kernel buffer is full) before replies are dropped.
MAX_UDP_SEND_BACKLOG = 1024 * 1024
#: Receive buffer asked for the UDP socket, so a burst of announces is not dropped by the kernel.
UDP_RECV_BUFFER = 1024 * 1024
#: Distinct encoded announce replies kept (one per swarm and count pair in use; a few hundred bytes each).
REPLY_CACHE_SIZE = 4096
#: Attempts at finding a port number free for both TCP and UDP when asked for port 0.
_BIND_ATTEMPTS = 50


def _url_host(host: str) -> str:
    """The host to put in URLs: wildcards become loopback, IPv6 literals get brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _failure_json(reason: str, action: str = "announce", info_hash: bytes | None = None) -> str:
    """A failure message that always carries ``action`` (WebTorrent treats a message without it as a
    socket error and reconnects), and ``info_hash`` when known, so the client can tell whose it is."""
    if info_hash is not None and action == "announce":
        return encode_tracker_message(Failure(reason, info_hash))
    d: dict[str, Any] = {"action": action, "failure reason": reason}
    if info_hash is not None:
        d["info_hash"] = id_to_str(info_hash)
    return json.dumps(d)


def _request_context(data: str | bytes) -> tuple[str, bytes | None]:
    """Best effort, for a message the codec rejected: its action ("announce"/"scrape") and a valid
    info_hash if it has one, so the failure reply reaches the right torrent."""
    if len(data) > WS_MAX_MESSAGE_SIZE:
        return "announce", None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return "announce", None
    if not isinstance(obj, dict):
        return "announce", None
    action = "scrape" if obj.get("action") == "scrape" else "announce"
    ih = obj.get("info_hash")
    if isinstance(ih, str) and len(ih) == 20:
        with contextlib.suppress(UnicodeEncodeError):
            return action, ih.encode("latin-1")
    return action, None


class _Outboxes:
    """What all WebSocket connections of one tracker share: the bytes queued over all of them, the messages
    dropped for lack of room, and the connections waiting for the next flush (one timer for all of them)."""

    __slots__ = ("queued", "dropped", "dirty", "scheduled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queued = 0
        self.dropped = 0
        self.dirty: list[_WsConn] = []
        self.scheduled = False
        self.loop = loop

    def mark(self, conn: _WsConn) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_later(WS_FLUSH_DELAY, self.flush_all)

    def flush_all(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()


class _WsUpgrade(web.StreamResponse):
    """The 101 response that hands a connection over to :class:`_WsConn`.

    aiohttp writes its headers; from then on the connection's bytes go to ``_WsConn.feed_data`` (registered
    with ``request.protocol.set_parser``, as aiohttp's own WebSocketResponse does) and frames are written to
    the transport directly. There is no body to end."""

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class _WsConn:
    """One WebSocket connection: its frame parser and its outbox. Also the registry's socket key (by identity).

    Reading: aiohttp's RequestHandler calls :meth:`feed_data` with every chunk read from the socket once the
    handshake is done, and each complete message goes straight to the tracker's handler, in the same call.
    aiohttp's own WebSocketResponse queues each message and wakes a task to read it, which cost more than
    the tracker's work on the message. Pings are answered here; a close frame is answered and ends the
    connection; a protocol violation closes it with the close code the parser gives (1002, 1007, 1009).

    Writing: messages are framed here and written to the transport in one write per WS_FLUSH_DELAY: an
    announce sends a reply plus up to ten offers to other connections, and under load each connection gets
    several messages per pass. Nothing is written once the connection is closing.

    Back-pressure: while the transport holds more than WRITE_HIGH_WATER unsent bytes the outbox is not
    flushed; it is retried every DRAIN_POLL seconds until the transport is under WRITE_LOW_WATER. The
    connection is not read while its outbox is over OUTBOX_HIGH_WATER, and messages that would take the
    outbox over MAX_OUTBOX_BYTES (or all outboxes together over MAX_OUTBOX_BYTES_TOTAL) are dropped.
    """

    __slots__ = ("transport", "remote", "outboxes", "parser", "on_message", "frames", "queued", "scheduled",
                 "waiting", "paused", "closed", "dropped", "seen", "pinged", "done", "__weakref__")

    def __init__(self, transport: asyncio.Transport, remote: str, outboxes: _Outboxes,
                 on_message: Callable[[_WsConn, bytes], None]) -> None:
        self.transport = transport
        self.remote = remote
        self.outboxes = outboxes
        self.parser = ServerFrameParser(WS_MAX_MESSAGE_SIZE, apply_mask)
        self.on_message = on_message
        self.frames: list[bytes] = []
        self.queued = 0
        self.scheduled = False
        self.waiting: asyncio.Task[None] | None = None
        self.paused = False
        self.closed = False
        self.dropped = 0
        #: bytes came in since the last heartbeat sweep / a ping was sent and not yet answered
        self.seen = True
        self.pinged = False
        #: resolved when the connection is over (closed by either side, or lost)
        self.done: asyncio.Future[None] = outboxes.loop.create_future()

    # -------------------------------------------------------------------------- reading (aiohttp calls)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """Bytes from the socket. Returns (True, b"") once the connection is over, as aiohttp expects."""
        if self.closed:
            return True, b""
        self.seen = True
        try:
            events = self.parser.feed(data)
        except WebSocketError as exc:
            log.debug("ws %s: %s; closing (%d)", self.remote, exc.reason, exc.code)
            self.finish(close_frame(exc.code, exc.reason))
            return True, b""
        for opcode, payload in events:
            if opcode == OP_TEXT or opcode == OP_BINARY:
                try:
                    self.on_message(self, payload)
                except Exception:  # a bug must cost only this connection
                    log.exception("ws %s: internal error; closing the connection", self.remote)
                    self.finish(close_frame(CLOSE_INTERNAL_ERROR, "internal error"))
                    return True, b""
                if self.closed:
                    return True, b""
            elif opcode == OP_PING:
                self.send_control(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                try:
                    code = parse_close(payload)[0]
                except WebSocketError as exc:
                    self.finish(close_frame(exc.code, exc.reason))
                else:
                    self.finish(close_frame(CLOSE_NORMAL if code == 1005 else code))
                return True, b""
            else:  # OP_PONG
                self.pinged = False
        if self.queued > OUTBOX_HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        """The socket closed (aiohttp's connection_lost)."""
        self.finish(None)

    # -------------------------------------------------------------------------- writing

    def send(self, text: str) -> bool:
        """Queue one text message; False (dropped) if the connection is closing or its outbox is full."""
        return self.send_payload(text.encode("utf-8"))

    def send_payload(self, payload: bytes) -> bool:
        """Queue one text message already encoded as UTF-8."""
        n = len(payload)
        if self._enqueue(n, frame_header(OP_TEXT, n), payload):
            return True
        self.dropped += 1
        self.outboxes.dropped += 1
        return False

    def send_control(self, data: bytes) -> None:
        """Queue a whole control frame (pong, ping). It counts towards the outbox like a message, so a client
        that sends pings and never reads the pongs is stopped by the same limits (a dropped pong is
        allowed: only the latest ping needs an answer)."""
        self._enqueue(len(data), data)

    def _enqueue(self, n: int, *chunks: bytes) -> bool:
        """Add ``chunks`` (``n`` bytes counted towards the outbox limits) and make sure a flush is coming;
        False if the connection is closing or the limits leave no room."""
        outboxes = self.outboxes
        if self.closed or self.queued + n > MAX_OUTBOX_BYTES or outboxes.queued + n > MAX_OUTBOX_BYTES_TOTAL:
            return False
        outboxes.queued += n
        self.queued += n
        self.frames.extend(chunks)
        if not self.scheduled and self.waiting is None:
            self.scheduled = True
            outboxes.mark(self)
        return True

    def flush(self) -> None:
        self.scheduled = False
        if not self.frames or self.closed:
            return
        transport = self.transport
        if transport.is_closing():
            self.finish(None)
            return
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            if self.waiting is None:
                self.waiting = self.outboxes.loop.create_task(self._wait_writable())
            return
        transport.write(b"".join(self.frames))
        self.frames.clear()
        self.outboxes.queued -= self.queued
        self.queued = 0
        if self.paused:
            self.paused = False
            transport.resume_reading()

    async def _wait_writable(self) -> None:
        try:
            while not self.closed and not self.transport.is_closing():
                if self.transport.get_write_buffer_size() <= WRITE_LOW_WATER:
                    break
                await asyncio.sleep(DRAIN_POLL)
        finally:
            self.waiting = None
        self.flush()

    def finish(self, last_frame: bytes | None) -> None:
        """End the connection: write what is queued and ``last_frame`` (a close frame) if the socket is still
        open, then let the handler return (aiohttp then closes the socket). Idempotent."""
        if self.closed:
            return
        self.closed = True
        transport = self.transport
        if last_frame is not None and not transport.is_closing():
            self.frames.append(last_frame)
            transport.write(b"".join(self.frames))
        self.frames.clear()
        self.outboxes.queued -= self.queued
        self.queued = 0
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        if not self.done.done():
            self.done.set_result(None)


class _UdpTracker(asyncio.DatagramProtocol):
    def __init__(self, server: TrackerServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's (and some asyncio) datagram transports do not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECV_BUFFER)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.server._on_datagram(data, addr)
        except Exception:  # a bug must cost only this datagram
            log.exception("udp tracker: internal error on a datagram from %s", addr)
            return
        transport = self.transport
        if reply is None or transport is None or transport.is_closing():
            return
        # asyncio's and uvloop's datagram transports both have it; typeshed lists it on WriteTransport only.
        backlog: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
        if backlog is not None and backlog() > MAX_UDP_SEND_BACKLOG:
            self.server.udp_dropped += 1
            return
        transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp tracker socket error: %s", exc)


class TrackerServer:
    """A running embedded tracker. Make one with :func:`start_tracker`; stop it with :meth:`close`."""

    def __init__(self, host: str, interval: int, rng: random.Random | None, secret: bytes | None,
                 max_connections: int = MAX_WS_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host = host
        self.port = 0
        self.interval = interval
        self.max_connections = max_connections
        self.loop_lag = LoopLagMonitor(name="tracker event loop")
        self.state = SwarmRegistry(interval=interval, rng=rng)
        self._ids = ConnectionIds(secret if secret is not None else secrets.token_bytes(32))
        self._conns: set[_WsConn] = set()
        self._reply_cache: dict[AnnounceReply, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._outboxes = _Outboxes(self._loop)
        self._heartbeat: asyncio.Task[None] | None = None
        # counters for /stats
        self.ws_messages = 0
        self.ws_failures = 0
        self.http_failures = 0
        self.scrapes: dict[str, int] = {"http": 0, "udp": 0, "ws": 0}
        self.udp_connects = 0
        self.udp_failures = 0
        self.udp_dropped = 0

    # ------------------------------------------------------------------------------------- URLs

    @property
    def http_announce_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/announce"

    @property
    def udp_announce_url(self) -> str:
        return f"udp://{_url_host(self.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.host)}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/stats"

    # ------------------------------------------------------------------------------------- lifecycle

    async def _start(self, port: int) -> None:
        app = web.Application(client_max_size=MAX_HTTP_BODY)
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/announce", self._handle_http_announce)
        app.router.add_get("/scrape", self._handle_http_scrape)
        app.router.add_get("/stats", self._handle_stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            tcp = await self._bind(port)
            site = web.SockSite(runner, tcp)
            await site.start()
        except BaseException:
            await self._cleanup()
            raise
        self._expiry = asyncio.create_task(self._expire_loop(), name="tracker-expiry")
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="tracker-ws-heartbeat")
        self.loop_lag.start()
        log.info("tracker listening on %s:%d (http %s, udp %s, ws %s)", self.host, self.port,
                 self.http_announce_url, self.udp_announce_url, self.ws_url)

    async def _bind(self, port: int) -> socket.socket:
        """A listening TCP socket and the UDP endpoint, both on the same port number."""
        loop = self._loop
        infos = await loop.getaddrinfo(self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {self.host!r}")
        # "localhost" may resolve to ::1 first; the URLs name the host, and IPv4 is what clients try first.
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _, _, _, sockaddr = infos[0]
        last_error: OSError | None = None
        for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    with contextlib.suppress(OSError):
                        tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tcp.bind(sockaddr)
                tcp.listen(1024)
                tcp.setblocking(False)
                actual = int(tcp.getsockname()[1])
                udp_addr = (sockaddr[0], actual, *sockaddr[2:])
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpTracker(self), local_addr=udp_addr, family=family)
            except OSError as exc:
                tcp.close()
                last_error = exc
                continue
            self._udp = transport
            self.port = actual
            return tcp
        raise last_error or OSError("could not bind the tracker")

    async def close(self) -> None:
        """Stop serving: close every WebSocket (going away), the HTTP site and the UDP endpoint."""
        if self._closed:
            return
        self._closed = True
        await self._cleanup()
        log.info("tracker on port %d closed", self.port)

    async def _cleanup(self) -> None:
        await self.loop_lag.stop()
        for task in (self._expiry, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conns:
            # Going away: each connection gets a close frame and its handler returns, after which aiohttp
            # closes the socket (the server closes first, as RFC 6455 7.1.1 asks); runner.cleanup below
            # waits for the handlers.
            for conn in list(self._conns):
                conn.finish(close_frame(CLOSE_GOING_AWAY, "tracker shutting down"))
        if self._udp is not None:
            self._udp.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> TrackerServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _expire_loop(self) -> None:
        period = max(1.0, self.interval / 2)
        while True:
            await asyncio.sleep(period)
            removed = self.state.expire(self._loop.time())
            if removed:
                log.debug("tracker: expired %d peers", removed)

    async def _heartbeat_loop(self) -> None:
        """Every WS_HEARTBEAT / 2 seconds: a connection that sent nothing since the last sweep gets a ping,
        and one that has not answered the ping by the next sweep is closed. A dead connection would
        otherwise keep its peers in swarms until they expire."""
        while True:
            await asyncio.sleep(WS_HEARTBEAT / 2)
            for conn in list(self._conns):
                if conn.seen:
                    conn.seen = False
                    conn.pinged = False
                elif not conn.pinged:
                    conn.pinged = True
                    conn.send_control(frame(OP_PING))
                else:
                    log.debug("ws %s: no answer to ping; closing", conn.remote)
                    conn.finish(close_frame(CLOSE_GOING_AWAY, "no answer to ping"))

    # ------------------------------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        s = self.state.stats()
        s["ws_connections"] = len(self._conns)
        s["ws_messages"] = self.ws_messages
        s["failures"] = {"ws": self.ws_failures, "http": self.http_failures, "udp": self.udp_failures}
        s["scrapes"] = dict(self.scrapes)
        s["udp_connects"] = self.udp_connects
        s["dropped"] = {"udp": self.udp_dropped, "ws": self._outboxes.dropped}
        s["ws_queued_bytes"] = self._outboxes.queued
        s["loop_lag"] = self.loop_lag.snapshot()
        return s

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    # ------------------------------------------------------------------------------------- HTTP

    @staticmethod
    def _remote(request: web.Request) -> str | None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer:
            return None
        try:
            return normalize_ip(str(peer[0]))
        except ValueError:
            return None

    @staticmethod
    def _bencoded(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def _handle_http_announce(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # ws://host:port/announce, as WebSocket tracker URLs are often written: signalling as on "/".
            return await self._handle_root(request)
        ip = self._remote(request)
        try:
            if ip is None:
                raise TrackerError("cannot tell the client's address")
            q = parse_http_announce(request.rel_url.raw_query_string)
            reply = self.state.announce_addr("http", q.info_hash, q.peer_id, ip, q.port, q.left, q.event,
                                             q.numwant, self._loop.time())
        except TrackerError as exc:
            self.http_failures += 1
            log.debug("http announce from %s refused: %s", ip, exc)
            return self._bencoded(encode_http_failure(str(exc)))
        return self._bencoded(encode_http_announce_reply(reply, compact=q.compact, no_peer_id=q.no_peer_id))

    async def _handle_http_scrape(self, request: web.Request) -> web.Response:
        try:
            hashes = parse_http_scrape(request.rel_url.raw_query_string)
        except TrackerError as exc:
            self.http_failures += 1
            return self._bencoded(encode_http_failure(str(exc)))
        self.scrapes["http"] += 1
        return self._bencoded(encode_http_scrape_reply(self.state.scrape(hashes)))

    # ------------------------------------------------------------------------------------- UDP

    def _on_datagram(self, data: bytes, addr: Any) -> bytes | None:
        """The reply to one datagram, or None. Only a connect request is answered without a valid
        connection id, and its reply is no larger than the request: a forged source address cannot turn
        the tracker into an amplifier."""
        now = self._loop.time()
        try:
            ip = normalize_ip(str(addr[0]))
            req = parse_udp_request(data)
        except UdpRequestError as exc:
            self.udp_failures += 1
            if not self._ids.valid(exc.connection_id, ip, now):
                return None
            return encode_udp_error(exc.transaction_id, str(exc))
        except (TrackerError, ValueError):
            self.udp_failures += 1
            return None  # not a BEP 15 request: no answer
        if isinstance(req, UdpConnect):
            self.udp_connects += 1
            return encode_udp_connect(req.transaction_id, self._ids.issue(ip, now))
        if not self._ids.valid(req.connection_id, ip, now):
            self.udp_failures += 1
            # 25 bytes: shorter than any scrape (36+) or announce (98+) request.
            return encode_udp_error(req.transaction_id, "bad connection id")
        if isinstance(req, UdpScrape):
            self.scrapes["udp"] += 1
            return encode_udp_scrape(req.transaction_id, self.state.scrape(req.info_hashes))
        assert isinstance(req, UdpAnnounce)
        ipv6 = ":" in ip
        try:
            reply = self.state.announce_addr("udp", req.info_hash, req.peer_id, ip, req.port, req.left,
                                             req.event, req.numwant, now, want4=not ipv6, want6=ipv6)
        except TrackerError as exc:
            self.udp_failures += 1
            return encode_udp_error(req.transaction_id, str(exc))
        return encode_udp_announce(req.transaction_id, reply, ipv6=ipv6)

    # ------------------------------------------------------------------------------------- WebSocket

    async def _handle_root(self, request: web.Request) -> web.StreamResponse:
        if not is_upgrade_request(request.headers):
            return web.Response(text="webtorrent-bridge tracker: WebSocket signalling here, "
                                     "HTTP at /announce and /scrape, UDP on this port number\n")
        try:
            accept = check_handshake(request.method, request.headers)
        except HandshakeError as exc:
            return web.Response(status=400, text=f"bad WebSocket handshake: {exc}\n")
        if len(self._conns) >= self.max_connections or self._closed:
            return web.Response(status=503, text="too many connections\n")
        transport = request.transport
        if transport is None:
            return web.Response(status=500, text="no transport\n")
        response = _WsUpgrade(status=101, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                   "Sec-WebSocket-Accept": accept})
        response.force_close()
        await response.prepare(request)
        conn = _WsConn(transport, request.remote or "?", self._outboxes, self._on_ws_message)
        self._conns.add(conn)
        try:
            request.protocol.keep_alive(False)
            request.protocol.set_parser(conn)  # type: ignore[arg-type]  # duck-typed: feed_data, feed_eof
            await conn.done
        finally:
            self._conns.discard(conn)
            conn.finish(None)
            removed = self.state.close_socket(conn)
            if removed:
                log.debug("ws %s closed: left %d swarms", conn.remote, removed)
        return response

    def _on_ws_message(self, conn: _WsConn, data: str | bytes) -> None:
        self.ws_messages += 1
        try:
            msg = parse_client_message(data, orjson.loads)
        except TrackerError as exc:
            self.ws_failures += 1
            action, ih = _request_context(data)
            conn.send(_failure_json(str(exc), action, ih))
            return
        now = self._loop.time()
        if isinstance(msg, Scrape):
            self.scrapes["ws"] += 1
            conn.send_payload(orjson.dumps(tracker_message_object(
                ScrapeReply(tuple(self.state.scrape(msg.info_hashes))))))
            return
        try:
            if isinstance(msg, Announce):
                out = self.state.announce_ws(conn, msg, now)
            else:
                assert isinstance(msg, Answer)
                out = self.state.answer_ws(conn, msg, now)
        except TrackerError as exc:
            self.ws_failures += 1
            conn.send(_failure_json(str(exc), "announce", msg.info_hash))
            return
        for target, message in out:
            assert isinstance(target, _WsConn)
            if isinstance(message, AnnounceReply):
                target.send_payload(self._encoded_reply(message))
            else:
                target.send_payload(orjson.dumps(tracker_message_object(message)))

    def _encoded_reply(self, reply: AnnounceReply) -> bytes:
        """Announce replies repeat (same swarm, same counts) far more often than they change: encode each
        distinct one once. The cache is emptied when it reaches REPLY_CACHE_SIZE entries."""
        payload = self._reply_cache.get(reply)
        if payload is None:
            if len(self._reply_cache) >= REPLY_CACHE_SIZE:
                self._reply_cache.clear()
            payload = self._reply_cache[reply] = orjson.dumps(tracker_message_object(reply))
        return payload


async def start_tracker(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    interval: int = DEFAULT_INTERVAL,
    rng: random.Random | None = None,
    secret: bytes | None = None,
    max_connections: int = MAX_WS_CONNECTIONS,
) -> TrackerServer:
    """Start the embedded tracker on ``host``: TCP ``port`` (0: any free one) for HTTP and WebSocket, and
    UDP on the same port number. ``interval`` is the re-announce interval told to clients (seconds);
    ``rng`` the random source for peer selection; ``secret`` the key of UDP connection ids (random);
    ``max_connections`` the WebSocket connections served at once."""
    server = TrackerServer(host, interval, rng, secret, max_connections)
    await server._start(port)
    return server


async def run_tracker(
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    interval: int = DEFAULT_INTERVAL,
    ready: Callable[[TrackerServer], None] | None = None,
    max_connections: int = MAX_WS_CONNECTIONS,
) -> None:
    """Serve until ``stop`` is set (for ``webtorrent-bridge tracker``). ``ready`` is called once the
    tracker listens, with the server (its URLs), so the CLI can print them."""
    server = await start_tracker(host, port, interval=interval, max_connections=max_connections)
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        await server.close()

