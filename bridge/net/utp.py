"""uTP over asyncio: one UDP socket drives every uTP connection (bridge/proto/utp.py does the protocol).

:class:`UtpSocket` owns the UDP endpoint on the listen port. It demultiplexes datagrams: uTP ones (by
their first byte) go to the connection keyed by (address, connection id), a SYN from a new peer makes an
incoming connection, and anything else goes to ``on_other`` (UDP tracker replies, later the DHT). One
timer per socket drives all connections. Each connection is exposed as a :class:`UtpTransport`, the same
byte-stream PeerTransport that TCP and WebRTC peers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..proto import utp as p

log = logging.getLogger(__name__)

__all__ = ["UtpSocket", "UtpTransport", "open_utp_socket", "UDP_SOCKET_BUFFER"]

#: Kernel send and receive buffer asked for the UDP socket. The default receive buffer (~208 KiB) drops
#: packets at a few MB/s (libtorrent's uTP ran at 6 MB/s with it, 242 MB/s with 4 MiB); Linux caps the
#: request at net.core.rmem_max / wmem_max unless we are root (SO_RCVBUFFORCE).
UDP_SOCKET_BUFFER = 4 * 1024 * 1024
#: uTP connections on one socket. Each costs buffers; more is an attack, not a swarm.
MAX_CONNECTIONS = 2000
#: Seconds a connect() waits for the handshake before giving up (libutp's SYN retries take about this).
CONNECT_TIMEOUT = 10.0
#: Bytes a connection may have queued or in flight before write() waits (back-pressure).
WRITE_HIGH_WATER = 1024 * 1024
#: Bytes received and not yet read by the peer task before the advertised window closes (via
#: data_consumed, which is only called as the reader takes data).
READ_QUEUE_LIMIT = 1024 * 1024

Address = tuple[str, int]


class UtpTransport:
    """A PeerTransport over one uTP connection."""

    kind = "utp"

    def __init__(self, owner: UtpSocket, address: Address, conn: p.UtpConnection) -> None:
        self._owner = owner
        self.conn = conn
        self.remote_address = address
        self._chunks: deque[bytes] = deque()
        #: readers see the end of the stream (closed by either side)
        self._eof = False
        #: the connection is over (state machine closed, or aborted)
        self._done = False
        self._error: str | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------------ driven by the socket
    def _process_events(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, p.Connected):
                if not self.connected.done():
                    self.connected.set_result(None)
            elif isinstance(event, p.DataReceived):
                if event.data:
                    self._chunks.append(event.data)
                    self._wake(self._read_waiter)
            elif isinstance(event, p.ConnectionClosed):
                self._finish(event.reason if event.error else None)
        if self._write_waiters and conn.send_buffered < WRITE_HIGH_WATER:
            self._release_writers(None)

    def _finish(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        self._eof = True
        self._error = error
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(error or "closed during the handshake"))
            self.connected.exception()
        self._wake(self._read_waiter)
        self._release_writers(ConnectionResetError(error or "connection closed"))
        self._owner._forget(self)
        if not self._closed.done():
            self._closed.set_result(None)

    @staticmethod
    def _wake(w: asyncio.Future[None] | None) -> None:
        if w is not None and not w.done():
            w.set_result(None)

    def _release_writers(self, exc: Exception | None) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for w in waiters:
            if w.done():
                continue
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)
                w.exception()

    # ------------------------------------------------------------------------------ PeerTransport
    async def read(self) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data = self._chunks.popleft()
        if not self._eof:
            self.conn.data_consumed(len(data))
            self._owner._kick(self)
        return data

    async def write(self, data: bytes) -> None:
        if self._eof:
            raise ConnectionResetError(self._error or "connection closed")
        self.conn.send(data)
        self._owner._kick(self)
        while self.conn.send_buffered >= WRITE_HIGH_WATER and not self._eof:
            w = asyncio.get_running_loop().create_future()
            self._write_waiters.append(w)
            await w

    def close(self) -> None:
        if self._eof:
            return
        with contextlib.suppress(Exception):
            self.conn.close()
        self._owner._kick(self)
        # The FIN exchange finishes in the background; readers see the end now.
        self._eof = True
        self._wake(self._read_waiter)
        self._release_writers(ConnectionResetError("closed"))

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.reset()
        self._owner._kick(self)
        self._finish("reset by us")
        key = (self.remote_address, self.conn.recv_id)
        if self._owner._conns.get(key) is self:
            del self._owner._conns[key]

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


class UtpSocket(asyncio.DatagramProtocol):
    """The UDP endpoint of the listen port: every uTP connection, plus a hook for other UDP protocols."""

    def __init__(self, on_incoming: Callable[[UtpTransport], Awaitable[None]] | None = None,
                 on_other: Callable[[bytes, Address], None] | None = None,
                 rng: random.Random | None = None, accept: bool = True) -> None:
        self._on_incoming = on_incoming
        self.on_other = on_other
        self._rng = rng or random.Random()
        self._accept = accept
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._conns: dict[tuple[Address, int], UtpTransport] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: set[UtpTransport] = set()
        self._flush_scheduled = False
        self.dropped = 0
        self.local_address: Address = ("?", 0)
        self.family: int = int(socket.AF_INET)
        #: other protocols' replies on this socket (UDP trackers), by sender address
        self._subscribers: dict[Address, list[Callable[[bytes], None]]] = {}

    # ------------------------------------------------------------------------- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _size_buffers(sock)
            name = sock.getsockname()
            self.local_address = (str(name[0]), int(name[1]))
            self.family = int(sock.family)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        address: Address = (addr[0], addr[1])
        if not p.looks_like_utp(data):
            subscribers = self._subscribers.get(address)
            if subscribers:
                for callback in list(subscribers):
                    callback(data)  # each announce keeps only its own transaction id
            elif self.on_other is not None:
                self.on_other(data, address)
            else:
                self.dropped += 1
            return
        if len(data) < p.HEADER_SIZE:
            self.dropped += 1
            return
        # The hot path (once per datagram): type and connection id straight from the bytes.
        kind = data[0] >> 4
        cid = (data[2] << 8) | data[3]
        now = self._loop.time()
        t = self._conns.get((address, cid))
        if t is None and kind == p.ST_RESET:
            # libutp answers a connection it does not know with a RESET carrying *our* send_id.
            for rid in ((cid - 1) & 0xFFFF, (cid + 1) & 0xFFFF):
                cand = self._conns.get((address, rid))
                if cand is not None and cand.conn.send_id == cid:
                    t = cand
                    break
        if t is None:
            if kind != p.ST_SYN or not self._accept or self._on_incoming is None:
                self.dropped += 1
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self.dropped += 1
                return
            try:
                conn = p.UtpConnection.accept(data, now, self._rng, mtu=self._mtu(address))
            except Exception as e:  # a malformed SYN: nothing to answer
                log.debug("uTP SYN from %s refused: %s", address, e)
                self.dropped += 1
                return
            key = (address, conn.recv_id)
            if key in self._conns:  # a retransmitted SYN of a connection we already have
                self._conns[key].conn.receive_datagram(data, now)
                self._kick(self._conns[key])
                return
            t = UtpTransport(self, address, conn)
            self._conns[key] = t
            task = self._loop.create_task(self._run_incoming(t), name=f"utp in {address}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            t.conn.receive_datagram(data, now)
        self._kick(t)

    def error_received(self, exc: Exception) -> None:
        log.debug("uTP socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for t in list(self._conns.values()):
            t._finish("socket closed")

    async def _run_incoming(self, t: UtpTransport) -> None:
        assert self._on_incoming is not None
        try:
            await self._on_incoming(t)
        finally:
            t.close()

    # ----------------------------------------------------------------------------- connections
    async def connect(self, address: Address, timeout: float = CONNECT_TIMEOUT) -> UtpTransport:
        """Open a uTP connection; raises ConnectionError or TimeoutError."""
        if self._transport is None:
            raise ConnectionError("the uTP socket is closed")
        if len(self._conns) >= MAX_CONNECTIONS:
            raise ConnectionError("too many uTP connections")
        conn = p.UtpConnection.connect(self._loop.time(), self._rng, mtu=self._mtu(address))
        key = (address, conn.recv_id)
        while key in self._conns:  # a 16-bit id may collide
            conn = p.UtpConnection.connect(self._loop.time(), self._rng, mtu=self._mtu(address))
            key = (address, conn.recv_id)
        t = UtpTransport(self, address, conn)
        self._conns[key] = t
        self._kick(t)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(t.connected)
        except BaseException:
            t.abort()
            raise
        return t

    @staticmethod
    def _mtu(address: Address) -> int:
        """Largest UDP payload for this peer: IPv6 paths are assumed to carry less."""
        return p.UDP_IPV6_MTU if ":" in address[0] else p.UDP_IPV4_MTU

    def _forget(self, t: UtpTransport) -> None:
        # Keep driving a connection until its state machine is done (FIN/RESET retransmits), then drop it.
        key = (t.remote_address, t.conn.recv_id)
        if self._conns.get(key) is t and t.conn.closed:
            del self._conns[key]

    # ------------------------------------------------------------- sharing with the UDP tracker client
    def sendto(self, data: bytes, addr: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def subscribe(self, addr: Address, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Non-uTP datagrams from ``addr`` (a UDP tracker's replies) go to ``callback`` until the returned
        function is called. Several announces to one tracker each get every reply and keep their own."""
        self._subscribers.setdefault(addr, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(addr, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(addr, None)
        return unsubscribe

    @property
    def connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------------------- sending and timers
    def _kick(self, t: UtpTransport) -> None:
        """Something changed for ``t``: process its events and send what it has, once per loop pass."""
        self._dirty.add(t)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        now = self._loop.time()
        for t in dirty:
            self._service(t, now)
        self._reschedule()

    def _service(self, t: UtpTransport, now: float) -> None:
        t._process_events()
        transport = self._transport
        if transport is not None:
            for datagram in t.conn.datagrams_to_send(now):
                transport.sendto(datagram, t.remote_address)
        t._process_events()
        if t.conn.closed:
            key = (t.remote_address, t.conn.recv_id)
            if self._conns.get(key) is t:
                del self._conns[key]
            t._finish(None)
        else:
            due = t.conn.get_timer()
            if due is not None and (self._timer_at is None or due < self._timer_at):
                self._arm(due)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _reschedule(self) -> None:
        if self._timer_at is None:
            due = [d for t in self._conns.values() if (d := t.conn.get_timer()) is not None]
            if due:
                self._arm(min(due))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        for t in list(self._conns.values()):
            due = t.conn.get_timer()
            if due is not None and due <= now:
                t.conn.handle_timer(now)
            self._service(t, now)
        self._reschedule()

    def close(self) -> None:
        for t in list(self._conns.values()):
            t.abort()
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _size_buffers(sock: socket.socket) -> None:
    for opt, force in ((socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
                       (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None))):
        done = False
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, UDP_SOCKET_BUFFER)
                done = True
            except OSError:
                pass
        if not done:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER)


async def open_utp_socket(host: str, port: int, **kwargs: Any) -> UtpSocket:
    """Bind the UDP endpoint (``port`` 0: any free one) and return its protocol."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(lambda: UtpSocket(**kwargs), local_addr=(host, port))
    return protocol
