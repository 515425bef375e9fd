"""uTP over asyncio: one UDP socket drives every uTP connection (bridge/proto/utp.py does the protocol).

:class:`UtpSocket` owns the UDP socket of the listen port. It demultiplexes datagrams: uTP ones (by
their first byte) go to the connection keyed by (address, connection id), a SYN from a new peer makes an
incoming connection, and anything else goes to ``on_other`` (UDP tracker replies, later the DHT). One
timer per socket drives all connections. Each connection is exposed as a :class:`UtpTransport`, the same
byte-stream PeerTransport that TCP and WebRTC peers use.

Per-datagram cost bounds uTP in Python, so the socket is read and written directly (``loop.add_reader``,
non-blocking ``recvfrom_into``/``sendmsg``) rather than through an asyncio datagram transport:

* one wake-up reads every waiting datagram (up to READ_BATCH_BYTES), and the connections answer once
  for the whole batch, so one ACK covers many data packets;
* on Linux, UDP generic segmentation offload (``UDP_SEGMENT``) sends a run of equal-size datagrams to
  one peer in one system call, and generic receive offload (``UDP_GRO``) hands us many datagrams of one
  flow in one read. On the wire they are ordinary datagrams, so peers see no difference. Where the kernel
  refuses either, the socket falls back to one datagram per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..proto import utp as p
from .transport import Inbox

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
#: Bytes a connection may have queued (not yet sent) before write() waits (back-pressure). What is in flight
#: besides is bounded by the congestion window and the peer's receive window.
WRITE_HIGH_WATER = 1024 * 1024
#: Bytes read in one wake-up before the connections answer (ACKs, window updates) and other tasks run:
#: ACKs go out at least every 256 KiB (about 190 packets), so a sender is never left waiting for one big batch.
READ_BATCH_BYTES = 256 * 1024
#: Largest UDP payload read at once: a whole GRO batch (64 KiB of coalesced datagrams).
RECV_BUFFER_SIZE = 65536
#: Datagrams queued in user space when the kernel's send buffer is full, before more are dropped (uTP
#: resends what is lost; this only rides out a short burst).
SEND_BACKLOG_LIMIT = 4 * 1024 * 1024
#: Linux socket options (include/uapi/linux/udp.h); Python's socket module does not name them.
UDP_SEGMENT = 103
UDP_GRO = 104
#: Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS was 64 before Linux 5.16) and most bytes
#: (an IPv4 datagram's 65,507-byte payload limit, with room to spare).
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")

Address = tuple[str, int]


class UtpTransport:
    """A PeerTransport over one uTP connection."""

    kind = "utp"

    def __init__(self, owner: UtpSocket, address: Address, conn: p.UtpConnection) -> None:
        self._owner = owner
        self.conn = conn
        self.remote_address = address
        #: its ``eof``: readers see the end of the stream (closed by either side)
        self._inbox = Inbox()
        #: the connection is over (state machine closed, or aborted)
        self._done = False
        self._error: str | None = None
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
                    self._inbox.put(event.data)
            elif isinstance(event, p.ConnectionClosed):
                self._finish(event.reason if event.error else None)
        if self._write_waiters and conn.send_queued < WRITE_HIGH_WATER:
            self._release_writers(None)

    def _finish(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(error or "closed during the handshake"))
            self.connected.exception()
        self._inbox.end()
        self._release_writers(ConnectionResetError(error or "connection closed"))
        self._owner._forget(self)
        if not self._closed.done():
            self._closed.set_result(None)

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
        if not await self._inbox.wait():
            return b""
        data = self._inbox.chunks.popleft()
        if not self._inbox.eof:
            self.conn.data_consumed(len(data))
            self._owner._kick(self)
        return data

    async def write(self, data: bytes) -> None:
        if self._inbox.eof:
            raise ConnectionResetError(self._error or "connection closed")
        self.conn.send(data)
        self._owner._kick(self)
        while self.conn.send_queued >= WRITE_HIGH_WATER and not self._inbox.eof:
            w = asyncio.get_running_loop().create_future()
            self._write_waiters.append(w)
            await w

    def close(self) -> None:
        if self._inbox.eof:
            return
        with contextlib.suppress(Exception):
            self.conn.close()
        self._owner._kick(self)
        # The FIN exchange finishes in the background; readers see the end now.
        self._inbox.end()
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


class UtpSocket:
    """The UDP socket of the listen port: every uTP connection, plus a hook for other UDP protocols."""

    def __init__(self, on_incoming: Callable[[UtpTransport], Awaitable[None]] | None = None,
                 on_other: Callable[[bytes, Address], None] | None = None,
                 rng: random.Random | None = None, accept: bool = True) -> None:
        self._on_incoming = on_incoming
        self.on_other = on_other
        self._rng = rng or random.Random()
        self._accept = accept
        self._sock: socket.socket | None = None
        self._loop = asyncio.get_running_loop()
        self._conns: dict[tuple[Address, int], UtpTransport] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: set[UtpTransport] = set()
        self._flush_scheduled = False
        self._rbuf = bytearray(RECV_BUFFER_SIZE)
        self._rview = memoryview(self._rbuf)
        #: datagrams waiting for room in the kernel's send buffer, and their bytes
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._backlog_bytes = 0
        #: UDP_SEGMENT / UDP_GRO are in use (Linux; turned off if the kernel refuses them)
        self.gso = sys.platform.startswith("linux")
        self.gro = False
        self.dropped = 0
        #: datagrams we could not send (backlog full, or an error from the kernel)
        self.send_dropped = 0
        self.local_address: Address = ("?", 0)
        self.family: int = int(socket.AF_INET)
        #: other protocols' replies on this socket (UDP trackers), by sender address
        self._subscribers: dict[Address, list[Callable[[bytes], None]]] = {}

    # ------------------------------------------------------------------------------ socket I/O
    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        _size_buffers(sock)
        if self.gso:
            try:
                sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                self.gro = False
        name = sock.getsockname()
        self.local_address = (str(name[0]), int(name[1]))
        self.family = int(sock.family)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buf, view, got = self._rbuf, self._rview, 0
        cmsg_size = socket.CMSG_SPACE(_GRO_SIZE.size) if self.gro else 0
        while got < READ_BATCH_BYTES:
            try:
                if cmsg_size:
                    n, ancdata, _, addr = sock.recvmsg_into((buf,), cmsg_size)
                else:
                    n, addr = sock.recvfrom_into(buf)
                    ancdata = []
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                log.debug("uTP socket error: %s", e)
                return
            got += n
            address: Address = (addr[0], addr[1])
            segment = 0
            for level, kind, data in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(data)[0]
            if 0 < segment < n:
                # One GRO read: datagrams of one flow (sender address and port). Most belong to one
                # connection; look it up again only when the connection id changes.
                now = self._loop.time()
                key_cid, t = -1, None
                for offset in range(0, n, segment):
                    seg = view[offset:min(offset + segment, n)]
                    if len(seg) >= p.HEADER_SIZE and seg[0] >> 4 != p.ST_SYN:
                        cid = (seg[2] << 8) | seg[3]
                        if cid == key_cid and t is not None:
                            t.conn.receive_datagram(seg, now)  # copies what it keeps
                            continue
                        key_cid = cid
                    else:
                        key_cid = -1
                    t = self._receive(bytes(seg), address, now)
                    if t is not None:
                        self._kick(t)
            else:
                self.datagram_received(bytes(view[:n]), address)

    def _send_datagrams(self, datagrams: list[bytes], addr: Address) -> None:
        """Send ``datagrams`` to ``addr`` in order, batching runs of equal size with GSO."""
        sock = self._sock
        if sock is None:
            return
        if self._backlog:
            self._queue(datagrams, 0, addr)
            return
        i, n = 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j, total = i + 1, size
            if self.gso:
                # A run of datagrams of one size; the last one may be shorter.
                while j < n and j - i < GSO_MAX_SEGMENTS and total + len(datagrams[j]) <= GSO_MAX_BYTES:
                    m = len(datagrams[j])
                    if m > size:
                        break
                    total += m
                    j += 1
                    if m < size:
                        break
            try:
                if j - i > 1:
                    sock.sendmsg(datagrams[i:j], [(socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, addr)
                else:
                    sock.sendto(datagrams[i], addr)
            except (BlockingIOError, InterruptedError):
                self._queue(datagrams, i, addr)
                return
            except OSError as e:
                if j - i > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.debug("uTP: UDP segmentation offload refused (%s); sending datagrams one by one", e)
                    self.gso = False
                    continue  # the same run again, one by one
                log.debug("uTP: sending to %s failed: %s", addr, e)
                self.send_dropped += j - i
            i = j

    def _queue(self, datagrams: list[bytes], start: int, addr: Address) -> None:
        if not self._backlog and self._sock is not None:
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
        for d in datagrams[start:]:
            if self._backlog_bytes + len(d) > SEND_BACKLOG_LIMIT:
                self.send_dropped += 1
                continue
            self._backlog.append((d, addr))
            self._backlog_bytes += len(d)

    def _on_writable(self) -> None:
        sock = self._sock
        backlog = self._backlog
        while backlog and sock is not None:
            d, addr = backlog[0]
            try:
                sock.sendto(d, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("uTP: sending to %s failed: %s", addr, e)
                self.send_dropped += 1
            backlog.popleft()
            self._backlog_bytes -= len(d)
        if sock is not None:
            self._loop.remove_writer(sock.fileno())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t = self._receive(data, (addr[0], addr[1]), self._loop.time())
        if t is not None:
            self._kick(t)

    def _receive(self, data: bytes, address: Address, now: float) -> UtpTransport | None:
        """Route one datagram; returns the connection that took it (to be kicked), if any."""
        if not p.looks_like_utp(data):
            subscribers = self._subscribers.get(address)
            if subscribers:
                for callback in list(subscribers):
                    callback(data)  # each announce keeps only its own transaction id
            elif self.on_other is not None:
                self.on_other(data, address)
            else:
                self.dropped += 1
            return None
        if len(data) < p.HEADER_SIZE:
            self.dropped += 1
            return None
        # The hot path (once per datagram): type and connection id straight from the bytes.
        kind = data[0] >> 4
        cid = (data[2] << 8) | data[3]
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
                return None
            if len(self._conns) >= MAX_CONNECTIONS:
                self.dropped += 1
                return None
            try:
                conn = p.UtpConnection.accept(data, now, self._rng, mtu=self._mtu(address))
            except Exception as e:  # a malformed SYN: nothing to answer
                log.debug("uTP SYN from %s refused: %s", address, e)
                self.dropped += 1
                return None
            key = (address, conn.recv_id)
            if key in self._conns:  # a retransmitted SYN of a connection we already have
                self._conns[key].conn.receive_datagram(data, now)
                return self._conns[key]
            t = UtpTransport(self, address, conn)
            self._conns[key] = t
            task = self._loop.create_task(self._run_incoming(t), name=f"utp in {address}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            t.conn.receive_datagram(data, now)
        return t

    async def _run_incoming(self, t: UtpTransport) -> None:
        assert self._on_incoming is not None
        try:
            await self._on_incoming(t)
        finally:
            t.close()

    # ----------------------------------------------------------------------------- connections
    async def connect(self, address: Address, timeout: float = CONNECT_TIMEOUT) -> UtpTransport:
        """Open a uTP connection; raises ConnectionError or TimeoutError."""
        if self._sock is None:
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
        self._send_datagrams([data], addr)

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
        datagrams = t.conn.datagrams_to_send(now)
        if datagrams:
            self._send_datagrams(datagrams, t.remote_address)
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
        self._flush()  # the RESETs go out before the socket closes
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            if self._backlog:
                self._loop.remove_writer(sock.fileno())
            self._backlog.clear()
            self._backlog_bytes = 0
            sock.close()


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
    """Bind the UDP socket (``port`` 0: any free one) and return the UtpSocket driving it."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(sockaddr)
        utp = UtpSocket(**kwargs)
        utp._attach(sock)
    except BaseException:
        sock.close()
        raise
    return utp
