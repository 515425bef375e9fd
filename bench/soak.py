#!/usr/bin/env python3
"""Load and soak: one bridge seeding to TCP and WebRTC peers while the embedded tracker serves 10,000
WebSocket clients; memory, file descriptors, throughput and event-loop lag, sampled for minutes.

Everything runs on 127.0.0.1 with port 0 (no DHT, LSD, UPnP or NAT-PMP: the bridge has none; no STUN:
aiortc gets ``iceServers=[]``). Processes:

* the tracker: ``python -m bridge tracker --host 127.0.0.1 --port 0 --interval I --max-connections N``;
* the bridge: ``python -m bridge serve`` (uTP, TCP and WebRTC on, ``--webrtc-host 127.0.0.1``, the tracker's
  ws:// URL added to every torrent), seeding one torrent of random data added through its API;
* ``_tcp-peers`` (this script): ``--tcp-peers`` plain BitTorrent connections built on bridge.proto.wire, each
  looping: interested, download a few random pieces (SHA-1 checked), not interested, pause, again;
* ``_rtc-peers`` (this script): ``--rtc-peers`` aiortc peers (bridge.net.rtc) that find the bridge through
  the tracker (announce with offers, take the bridge's answer, or answer the bridge's offer), then run the
  same download loop over the data channel;
* ``_ws-load`` (this script): ``--ws-clients`` raw WebSocket clients (asyncio protocols, a few KB each) in
  ``--ws-swarms`` swarms of their own, each announcing every ``--ws-interval`` seconds with 5 fake offers,
  answering some offers forwarded to them, and reconnecting at ``--ws-churn`` per second.

Every few seconds it samples the bridge's and the tracker's RSS (VmRSS, VmHWM), open fds, threads and CPU
from /proc, their event-loop lag (the bridge's /metrics, the tracker's /stats; see bridge/looplag.py), and
the peers' bytes received. At the end it prints a table (and ``--json``) and exits 1 if a process's RSS or
fds kept growing over the measured window, if a loop-lag p99 reached 100 ms, or if a piece arrived wrong.

    python bench/soak.py                      # 5 minutes, 200 TCP + 50 WebRTC peers, 10,000 tracker clients
    python bench/soak.py --quick              # about 60 s
    python bench/soak.py --duration 600 --json soak.json
    python bench/soak.py --quick --tcp-peers 20 --rtc-peers 5 --ws-clients 500 --duration 20   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from _common import (
    MIB,
    REPO_ROOT,
    BenchError,
    Child,
    Children,
    bench_id,
    bench_main,
    child_env,
    fake_sdp,
    format_table,
    proc_cpu_seconds,
    ws_announce,
)

sys.path.insert(0, REPO_ROOT)

from bridge.cli import raise_open_files  # noqa: E402
from bridge.errors import RemoteProtocolError  # noqa: E402
from bridge.looplag import histogram_quantile  # noqa: E402
from bridge.proto import events as ev  # noqa: E402
from bridge.proto.metainfo import InfoDict, parse_torrent  # noqa: E402
from bridge.proto.wire import BLOCK_SIZE, Wire, encode_request, make_reserved  # noqa: E402

LAG_TARGET = 0.100  # p99 of each process's event-loop lag must stay under this (seconds)
FLAT_FRACTION = 0.10  # growth in the second half of the window must stay under this share of the first's
STATUS_EVERY = 1.0  # seconds between the load processes' status lines


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def emit(**kw: Any) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def load_torrent(path: str) -> InfoDict:
    with open(path, "rb") as f:
        return parse_torrent(f.read()).info


# =========================================================================================================
# The downloading peer, shared by the TCP and WebRTC load processes (sans-IO: bytes in, bytes out)
# =========================================================================================================


class TokenBucket:
    """Bytes per second for the requests of a whole load process; rate 0 means unlimited."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate * 0.05, 4 * BLOCK_SIZE)
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self, n: int) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


#: Seconds a peer the churn closed on purpose may take to be back (handshaken) before it counts as lost.
REJOIN_GRACE = 20.0


class Pool:
    """What the peers of one load process share: the torrent, the policy, the counters, the budget."""

    def __init__(self, info: InfoDict, args: argparse.Namespace, rate: float) -> None:
        self.info = info
        self.info_hash = info.info_hash
        self.depth = args.depth
        self.per_cycle = args.pieces_per_cycle
        self.think = (args.think_min, args.think_max)
        self.patience = args.patience
        self.verify = not args.no_verify
        self.rng = random.Random(args.seed)
        self.bucket = TokenBucket(rate)
        self.waiting: deque[LoadPeer] = deque()
        self._wake_scheduled = False
        self.peers: set[LoadPeer] = set()
        self.bytes = 0
        self.blocks = 0
        self.pieces_ok = 0
        self.pieces_bad = 0
        self.unexpected_blocks = 0
        self.served: set[int] = set()  # slots that received at least one block
        self.protocol_errors = 0
        # Slots whose peer the churn closed on purpose and whose next peer has not handshaken yet, with the
        # time by which it should have: they are reconnecting, not lost (the verdict counts them with the
        # connected ones), unless the reconnection takes longer than REJOIN_GRACE.
        self.rejoining: dict[int, float] = {}

    def wait_for_budget(self, peer: LoadPeer) -> None:
        if not peer.waiting:
            peer.waiting = True
            self.waiting.append(peer)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_later(0.01, self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        for _ in range(len(self.waiting)):
            peer = self.waiting.popleft()
            peer.waiting = False
            if not peer.closed:
                peer.fill()
                peer.flush()
            if self.waiting and self.waiting[-1] is peer:  # it is waiting again: the budget is spent
                break
        if self.waiting and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_later(0.01, self._wake)

    def tick(self) -> None:
        now = time.monotonic()
        for peer in list(self.peers):
            peer.tick(now)

    def counters(self) -> dict[str, Any]:
        connected = [p for p in self.peers if p.handshaken and not p.closed]
        now = time.monotonic()
        # A slot being churned counts once: its old peer stays connected here until the close is processed.
        live = {p.slot for p in connected}
        rejoining = sum(1 for slot, deadline in self.rejoining.items() if deadline > now and slot not in live)
        return {"connected": len(connected), "rejoining": rejoining, "bytes": self.bytes,
                "blocks": self.blocks,
                "pieces_ok": self.pieces_ok, "pieces_bad": self.pieces_bad, "served": len(self.served),
                "unchoked": sum(1 for p in connected if not p.choked),
                "downloading": sum(1 for p in connected if p.phase == DOWNLOADING and not p.choked),
                "unexpected_blocks": self.unexpected_blocks, "protocol_errors": self.protocol_errors}


IDLE, WANTING, DOWNLOADING = 0, 1, 2


class LoadPeer:
    """One peer's BitTorrent side: handshake, then cycles of interest and random-piece downloads.

    ``send`` takes bytes for the connection; ``close`` ends it. Events come in through ``data``; the pool
    calls ``tick`` every quarter second for the timers (pause, patience, keep-alive, stalls)."""

    def __init__(self, pool: Pool, slot: int, peer_id: bytes, send: Callable[[bytes], None],
                 close: Callable[[], None]) -> None:
        self.pool = pool
        self.slot = slot
        self.peer_id = peer_id
        self._send = send
        self._close = close
        self.wire = Wire()
        self._out: list[bytes] = []
        self.handshaken = False
        self.closed = False
        self.choked = True
        self.phase = IDLE
        self.waiting = False
        now = time.monotonic()
        self.created = now
        self.next_want = now + pool.rng.uniform(0, pool.think[1])
        self.want_since = now
        self.last_sent = now
        self.last_block = now
        self.outstanding: set[tuple[int, int]] = set()
        self.piece = -1
        self.piece_size = 0
        self.todo: list[int] = []
        self.got = 0
        self.buf = bytearray()
        self.cycle_pieces = 0
        pool.peers.add(self)

    def opening(self) -> bytes:
        return (self.wire.send(ev.Handshake(self.pool.info_hash, self.peer_id, make_reserved(True, True)))
                + self.wire.send(ev.HaveNone()))

    def gone(self) -> None:
        self.closed = True
        self.pool.peers.discard(self)

    def close(self) -> None:
        if not self.closed:
            self.gone()
            self._close()

    def flush(self) -> None:
        if self._out and not self.closed:
            data = b"".join(self._out)
            self._out.clear()
            self.last_sent = time.monotonic()
            self._send(data)

    # ------------------------------------------------------------------------------------------ input
    def data(self, chunk: bytes) -> None:
        try:
            events = self.wire.receive_data(chunk)
        except RemoteProtocolError:
            self.pool.protocol_errors += 1
            self.close()
            return
        for e in events:
            if isinstance(e, ev.Piece):
                self._on_piece(e)
            elif isinstance(e, ev.Handshake):
                if e.info_hash != self.pool.info_hash:
                    self.pool.protocol_errors += 1
                    self.close()
                    return
                self.handshaken = True
                self.pool.rejoining.pop(self.slot, None)
            elif isinstance(e, ev.Unchoke):
                self.choked = False
                if self.phase == WANTING:
                    self.phase = DOWNLOADING
            elif isinstance(e, ev.Choke):
                self.choked = True
                if self.phase == DOWNLOADING:
                    self.phase = WANTING
                    self.want_since = time.monotonic()
            elif isinstance(e, ev.RejectRequest):
                if (e.index, e.begin) in self.outstanding:
                    self.outstanding.discard((e.index, e.begin))
                    if e.index == self.piece:
                        self.todo.append(e.begin)
        self.fill()
        self.flush()

    def _on_piece(self, e: ev.Piece) -> None:
        key = (e.index, e.begin)
        if key not in self.outstanding:
            self.pool.unexpected_blocks += 1
            return
        self.outstanding.discard(key)
        n = len(e.data)
        pool = self.pool
        pool.bytes += n
        pool.blocks += 1
        pool.served.add(self.slot)
        self.last_block = time.monotonic()
        if pool.verify:
            self.buf[e.begin : e.begin + n] = e.data
        self.got += n
        if self.got >= self.piece_size and not self.todo and not self.outstanding:
            if pool.verify:
                if hashlib.sha1(self.buf).digest() == pool.info.piece_hash(self.piece):
                    pool.pieces_ok += 1
                else:
                    pool.pieces_bad += 1
            else:
                pool.pieces_ok += 1
            self.piece = -1
            self.cycle_pieces += 1
            if self.cycle_pieces >= pool.per_cycle:
                self.cycle_pieces = 0
                self._pause(self.last_block)

    # ----------------------------------------------------------------------------------------- output
    def _pause(self, now: float) -> None:
        """Not interested for a while (this gives the bridge's upload slot to someone else)."""
        if self.phase != IDLE:
            self._out.append(self.wire.send(ev.NotInterested()))
        self.phase = IDLE
        self.next_want = now + self.pool.rng.uniform(*self.pool.think)

    def _new_piece(self) -> None:
        info = self.pool.info
        self.piece = self.pool.rng.randrange(info.num_pieces)
        self.piece_size = info.piece_size(self.piece)
        self.todo = list(range(0, self.piece_size, BLOCK_SIZE))[::-1]
        self.got = 0
        if self.pool.verify:
            self.buf = bytearray(self.piece_size)

    def fill(self) -> None:
        if self.phase != DOWNLOADING or self.choked or self.closed:
            return
        pool = self.pool
        while len(self.outstanding) < pool.depth:
            if not self.todo:
                if self.piece >= 0:
                    break  # the rest of this piece is on its way
                self._new_piece()
            begin = self.todo[-1]
            length = min(BLOCK_SIZE, self.piece_size - begin)
            if not pool.bucket.take(length):
                pool.wait_for_budget(self)
                break
            self.todo.pop()
            self.outstanding.add((self.piece, begin))
            self._out.append(encode_request(self.piece, begin, length))

    def tick(self, now: float) -> None:
        if self.closed:
            return
        if not self.handshaken:
            if now - self.created > 30:
                self.pool.protocol_errors += 1
                self.close()
            return
        if self.phase == IDLE and now >= self.next_want:
            self.phase = WANTING if self.choked else DOWNLOADING
            self.want_since = now
            self._out.append(self.wire.send(ev.Interested()))
            self.fill()
        elif self.phase == WANTING and now - self.want_since > self.pool.patience:
            self._pause(now)  # no upload slot for us: try again later
        elif self.phase == DOWNLOADING and self.outstanding and now - self.last_block > 20:
            # requests lost (choked without rejects): ask again
            for index, begin in self.outstanding:
                if index == self.piece:
                    self.todo.append(begin)
            self.outstanding.clear()
            self.last_block = now
            self.fill()
        if now - self.last_sent > 30:
            self._out.append(self.wire.send(ev.KeepAlive()))
        self.flush()


def status_line(kind: str, target: int, pool: Pool, **extra: Any) -> None:
    emit(ev="status", kind=kind, target=target, t=time.monotonic(), cpu=sum(os.times()[:2]), **pool.counters(),
         **extra)


async def periodic(pool: Pool, report: Callable[[], None], stop: asyncio.Event) -> None:
    last = 0.0
    while not stop.is_set():
        pool.tick()
        now = time.monotonic()
        if now - last >= STATUS_EVERY:
            last = now
            report()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def stop_on_sigterm() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# =========================================================================================================
# _tcp-peers: plain BitTorrent over TCP
# =========================================================================================================


class TcpConn(asyncio.Protocol):
    def __init__(self, load: TcpLoad, slot: int, peer_id: bytes) -> None:
        self.load = load
        self.slot = slot
        self.peer_id = peer_id
        self.transport: asyncio.Transport | None = None
        self.peer: LoadPeer | None = None
        self.intentional = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        self.peer = LoadPeer(self.load.pool, self.slot, self.peer_id, transport.write, transport.close)
        transport.write(self.peer.opening())

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.gone()
        self.load.lost(self)


class TcpLoad:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool = Pool(load_torrent(args.torrent), args, args.rate)
        self.conns: list[TcpConn | None] = [None] * args.peers
        self.serial = 0
        self.drops = 0
        self.reconnects = 0
        self.connect_errors = 0
        self.stopping = False
        self._sem = asyncio.Semaphore(32)

    async def connect(self, slot: int, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping:
            return
        self.serial += 1
        peer_id = (b"-SK0001-" + b"%012d" % (self.args.id_base + self.serial))[:20]
        async with self._sem:
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: TcpConn(self, slot, peer_id), "127.0.0.1", self.args.port)
            except OSError:
                self.connect_errors += 1
                asyncio.ensure_future(self.connect(slot, 1.0))
                return
        self.conns[slot] = conn

    def lost(self, conn: TcpConn) -> None:
        if self.conns[conn.slot] is conn:
            self.conns[conn.slot] = None
        if self.stopping:
            return
        if conn.intentional:
            asyncio.ensure_future(self.connect(conn.slot))
        else:
            self.drops += 1
            asyncio.ensure_future(self.connect(conn.slot, 1.0))

    def churn_one(self) -> None:
        live = [c for c in self.conns if c is not None and c.peer is not None and c.peer.handshaken]
        if live:
            conn = self.pool.rng.choice(live)
            conn.intentional = True
            self.pool.rejoining[conn.slot] = time.monotonic() + REJOIN_GRACE
            self.reconnects += 1
            assert conn.transport is not None
            conn.transport.close()

    def report(self) -> None:
        status_line("tcp", self.args.peers, self.pool, drops=self.drops, reconnects=self.reconnects,
                    connect_errors=self.connect_errors)


async def tcp_peers(args: argparse.Namespace) -> None:
    stop = stop_on_sigterm()
    load = TcpLoad(args)
    tasks = [asyncio.ensure_future(load.connect(slot)) for slot in range(args.peers)]
    churn = asyncio.ensure_future(churner(args.churn, load.churn_one, stop))
    await periodic(load.pool, load.report, stop)
    load.stopping = True
    churn.cancel()
    for t in tasks:
        t.cancel()
    for conn in load.conns:
        if conn is not None and conn.transport is not None:
            conn.transport.close()
    load.report()
    await asyncio.sleep(0.2)


async def churner(per_minute: float, one: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``one`` ``per_minute`` times a minute, evenly spaced (0: never)."""
    if per_minute <= 0:
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60.0 / per_minute)
        if not stop.is_set():
            one()


# =========================================================================================================
# _rtc-peers: aiortc peers that find the bridge through the WebSocket tracker
# =========================================================================================================


class RtcLoad:
    def __init__(self, args: argparse.Namespace) -> None:
        from bridge.net.rtc import RtcConfig

        self.args = args
        self.info = load_torrent(args.torrent)
        self.pool = Pool(self.info, args, args.rate)
        self.config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0)
        self.transports: dict[int, Any] = {}
        self.intentional: set[int] = set()
        self.serial = 0
        self.attempts = 0
        self.failures = 0
        self.via_our_offer = 0
        self.via_their_offer = 0
        self.drops = 0
        self.reconnects = 0
        self.signalling = asyncio.Semaphore(args.signalling)
        self.stopping = False
        self.last_failure = ""

    def report(self) -> None:
        status_line("rtc", self.args.peers, self.pool, attempts=self.attempts, failures=self.failures,
                    via_our_offer=self.via_our_offer, via_their_offer=self.via_their_offer, drops=self.drops,
                    reconnects=self.reconnects, last_failure=self.last_failure)

    def churn_one(self) -> None:
        live = [slot for slot, t in self.transports.items() if slot not in self.intentional]
        if live:
            slot = self.pool.rng.choice(live)
            self.intentional.add(slot)
            self.pool.rejoining[slot] = time.monotonic() + REJOIN_GRACE
            self.reconnects += 1
            self.transports[slot].close()

    async def slot_loop(self, slot: int) -> None:
        while not self.stopping:
            self.serial += 1
            peer_id = (b"-SKRTC1-" + b"%012d" % (self.args.id_base + self.serial))[:20]
            try:
                async with self.signalling:
                    self.attempts += 1
                    transport = await self.find_bridge(peer_id)
            except Exception as e:  # noqa: BLE001 -- any failure: count it, wait, try again
                self.failures += 1
                self.last_failure = f"{type(e).__name__}: {e}"[:200]
                await asyncio.sleep(1.0 + self.pool.rng.random())
                continue
            self.transports[slot] = transport
            await self.run_peer(slot, peer_id, transport)
            self.transports.pop(slot, None)
            if slot in self.intentional:
                self.intentional.discard(slot)
            elif not self.stopping:
                self.drops += 1
                await asyncio.sleep(1.0)

    async def find_bridge(self, peer_id: bytes) -> Any:
        """Announce with offers until the bridge answers one (or sends an offer we answer); the transport."""
        from websockets.asyncio.client import connect

        from bridge.net.rtc import answer_offer, create_offer
        from bridge.proto.wstracker import (
            Announce,
            Answer,
            ForwardedOffer,
            Offer,
            RelayedAnswer,
            encode_client_message,
            parse_tracker_message,
        )

        ih = self.info.info_hash
        n = self.args.signalling
        pending = {os.urandom(20): await create_offer(self.config) for _ in range(n)}
        try:
            async with connect(self.args.tracker, compression=None, open_timeout=10, close_timeout=2,
                               max_size=1 << 20) as ws:
                await ws.send(encode_client_message(Announce(
                    ih, peer_id, numwant=n, left=self.info.total_length, event="started",
                    offers=tuple(Offer(oid, p.sdp) for oid, p in pending.items()))))
                try:
                    async with asyncio.timeout(15):
                        while True:
                            msg = parse_tracker_message(await ws.recv())
                            if isinstance(msg, RelayedAnswer) and msg.offer_id in pending:
                                offer = pending.pop(msg.offer_id)
                                transport = await offer.accept_answer(msg.sdp)
                                self.via_our_offer += 1
                                break
                            if isinstance(msg, ForwardedOffer) and not msg.peer_id.startswith(b"-SK"):
                                answer, opened = await answer_offer(msg.sdp, self.config)
                                await ws.send(encode_client_message(Answer(ih, peer_id, msg.peer_id, msg.offer_id,
                                                                           answer)))
                                transport = await opened
                                self.via_their_offer += 1
                                break
                except TimeoutError:
                    raise TimeoutError("no answer from the bridge within 15 s") from None
                with contextlib.suppress(Exception):
                    await ws.send(encode_client_message(Announce(ih, peer_id, numwant=0, left=0, event="stopped")))
                return transport
        finally:
            for offer in pending.values():
                offer.close()

    async def run_peer(self, slot: int, peer_id: bytes, transport: Any) -> None:
        out: list[bytes] = []
        wake = asyncio.Event()

        def send(data: bytes) -> None:
            out.append(data)
            wake.set()

        peer = LoadPeer(self.pool, slot, peer_id, send, transport.close)

        async def writer() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while out:
                    data = b"".join(out)
                    out.clear()
                    await transport.write(data)

        send(peer.opening())
        task = asyncio.ensure_future(writer())
        try:
            while not peer.closed:
                data = await transport.read()
                if not data:
                    break
                peer.data(data)
        except (RemoteProtocolError, ConnectionError, OSError):
            self.pool.protocol_errors += 1
        finally:
            peer.gone()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            transport.close()
            await transport.wait_closed()


async def rtc_peers(args: argparse.Namespace) -> None:
    from bridge.net.rtc import wait_closing

    stop = stop_on_sigterm()
    load = RtcLoad(args)
    tasks = [asyncio.ensure_future(load.slot_loop(slot)) for slot in range(args.peers)]
    churn = asyncio.ensure_future(churner(args.churn, load.churn_one, stop))
    await periodic(load.pool, load.report, stop)
    load.stopping = True
    churn.cancel()
    load.report()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await wait_closing()


# =========================================================================================================
# _ws-load: raw WebSocket clients of the tracker
# =========================================================================================================

WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64: the reply's accept key is not checked
_MASK = b"\0\0\0\0"  # a client must mask; a zero key leaves the payload as it is (the server cannot tell)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload


class WsClient(asyncio.Protocol):
    """One tracker client: upgrade, announce every ``interval`` seconds, read (and sometimes answer) offers."""

    __slots__ = ("load", "slot", "serial", "transport", "buf", "open", "announced", "sent_at", "timer",
                 "offer_n", "intentional", "peer_id", "info_hash")

    def __init__(self, load: WsLoad, slot: int, serial: int) -> None:
        self.load = load
        self.slot = slot
        self.serial = serial
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.announced = False
        self.sent_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.offer_n = 0
        self.intentional = False
        self.peer_id = bench_id(b"-WS0001-", serial)
        self.info_hash = bench_id(b"soak-swarm-", slot % load.args.swarms)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.write(b"GET / HTTP/1.1\r\nHost: " + self.load.host + b"\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + WS_KEY +
                        b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.load.refused += 1
                self.load.last_refusal = bytes(buf[:80]).decode("latin-1")
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.open = True
            self.load.opened(self)
            self.announce("started")
            # spread the regular announces over the interval, as clients that joined at different times are
            assert self.timer is not None
            self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_later(self.load.args.interval * self.load.rng.random(),
                                                               self.announce)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4
            end = pos + head + length
            if end > n:
                break
            self.frame(buf[pos] & 0x0F, bytes(buf[pos + head : end]))
            pos = end
        if pos:
            del buf[:pos]

    def frame(self, opcode: int, payload: bytes) -> None:
        load = self.load
        if opcode == 1:
            if b'"offer"' in payload:
                load.offers += 1
                if load.rng.random() < load.args.answer_fraction:
                    self.answer(payload)
            elif b'"failure reason"' in payload:
                load.failures += 1
                if len(load.failure_samples) < 5:
                    load.failure_samples.append(payload[:200].decode("utf-8", "replace"))
            elif b'"interval"' in payload:
                load.replies += 1
                load.rtts.append(time.monotonic() - self.sent_at)
                if not self.announced:
                    self.announced = True
                    load.announced += 1
            elif b'"answer"' in payload:
                load.answers_received += 1
        elif opcode == 9:  # ping
            self.send(10, payload)
        elif opcode == 8:  # close
            self.send(8, payload[:2])
            assert self.transport is not None
            self.transport.close()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(opcode, payload))

    def announce(self, event: str | None = None) -> None:
        load = self.load
        args = load.args
        self.timer = asyncio.get_running_loop().call_later(args.interval * load.rng.uniform(0.9, 1.1), self.announce)
        first = self.serial * 1000 + self.offer_n
        self.offer_n = (self.offer_n + args.offers) % 1000
        offer_ids = [bench_id(b"o", first + i) for i in range(args.offers)]
        text = ws_announce(self.info_hash, self.peer_id, offer_ids, args.sdp_bytes, self.serial, event)
        self.sent_at = time.monotonic()
        self.send(1, text.encode())

    def answer(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            text = json.dumps({"action": "announce", "info_hash": msg["info_hash"], "peer_id": self.peer_id,
                               "to_peer_id": msg["peer_id"], "offer_id": msg["offer_id"],
                               "answer": {"type": "answer", "sdp": fake_sdp(self.serial, self.load.args.sdp_bytes)}})
        except (ValueError, KeyError):
            self.load.failures += 1
            return
        self.load.answers_sent += 1
        self.send(1, text.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.load.lost(self)


class WsLoad:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host = f"127.0.0.1:{args.port}".encode()
        self.rng = random.Random(args.seed)
        self.clients: list[WsClient | None] = [None] * args.clients
        self.open_count = 0
        self.serial = args.id_base
        self.replies = 0
        self.announced = 0
        self.offers = 0
        self.answers_sent = 0
        self.answers_received = 0
        self.failures = 0
        self.failure_samples: list[str] = []
        self.refused = 0
        self.last_refusal = ""
        self.connect_errors = 0
        self.drops = 0
        self.reconnects = 0
        self.rtts: list[float] = []
        self.stopping = False
        self._sem = asyncio.Semaphore(args.connect_concurrency)

    async def connect(self, slot: int, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping:
            return
        self.serial += 1
        serial = self.serial
        async with self._sem:
            try:
                _, client = await asyncio.get_running_loop().create_connection(
                    lambda: WsClient(self, slot, serial), "127.0.0.1", self.args.port)
            except OSError:
                self.connect_errors += 1
                asyncio.ensure_future(self.connect(slot, 1.0 + self.rng.random()))
                return
            self.clients[slot] = client
            # hold the slot of the semaphore until the upgrade is done, so the tracker's backlog is not flooded
            for _ in range(200):
                if client.open or client.transport is None or client.transport.is_closing():
                    break
                await asyncio.sleep(0.05)

    def opened(self, client: WsClient) -> None:
        self.open_count += 1

    def lost(self, client: WsClient) -> None:
        if client.open:
            self.open_count -= 1
        if self.clients[client.slot] is client:
            self.clients[client.slot] = None
        if self.stopping:
            return
        if client.intentional:
            asyncio.ensure_future(self.connect(client.slot))
        else:
            self.drops += 1
            asyncio.ensure_future(self.connect(client.slot, 1.0 + self.rng.random()))

    def churn_one(self) -> None:
        for _ in range(10):
            client = self.clients[self.rng.randrange(len(self.clients))]
            if client is not None and client.open and client.transport is not None:
                client.intentional = True
                self.reconnects += 1
                if self.rng.random() < 0.5:
                    client.send(8, (1000).to_bytes(2, "big"))  # a clean close; otherwise the socket just goes
                client.transport.close()
                return

    def report(self) -> None:
        rtts = sorted(self.rtts)
        self.rtts = []

        def pct(q: float) -> float | None:
            return round(rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000, 2) if rtts else None

        emit(ev="status", kind="ws", target=self.args.clients, t=time.monotonic(), cpu=sum(os.times()[:2]),
             connected=self.open_count, announced=self.announced, replies=self.replies, offers=self.offers,
             answers_sent=self.answers_sent, answers_received=self.answers_received, failures=self.failures,
             failure_samples=self.failure_samples, refused=self.refused, last_refusal=self.last_refusal,
             connect_errors=self.connect_errors, drops=self.drops, reconnects=self.reconnects,
             rtt_p50_ms=pct(0.5), rtt_p99_ms=pct(0.99))


async def ws_load(args: argparse.Namespace) -> None:
    stop = stop_on_sigterm()
    load = WsLoad(args)
    tasks = [asyncio.ensure_future(load.connect(slot)) for slot in range(args.clients)]
    churn = asyncio.ensure_future(churner(args.churn * 60, load.churn_one, stop))
    last = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now - last >= STATUS_EVERY:
            last = now
            load.report()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    load.stopping = True
    churn.cancel()
    for t in tasks:
        t.cancel()
    load.report()
    for client in load.clients:
        if client is not None and client.transport is not None:
            client.transport.close()
    await asyncio.sleep(0.5)


# =========================================================================================================
# The orchestrator
# =========================================================================================================


def proc_stats(pid: int) -> dict[str, Any] | None:
    """RSS and peak RSS (bytes), threads, open fds and CPU seconds of ``pid``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None

    def field(name: str) -> int:
        m = re.search(rf"^{name}:\s+(\d+)", status, re.M)
        return int(m.group(1)) if m else 0

    return {"rss": field("VmRSS") * 1024, "hwm": field("VmHWM") * 1024, "threads": field("Threads"), "fds": fds,
            "cpu": proc_cpu_seconds(pid)}


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (from /proc/<pid>/limits)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_metrics(text: str) -> dict[str, Any]:
    """What the soak needs from serve's /metrics: peers and bytes by kind, the loop-lag histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"peers": {}, "uploaded": {}, "lag_buckets": [], "lag_max": None, "lag_recent": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "bridge_peers":
                out["peers"][s.labels["kind"]] = int(s.value)
            elif s.name == "bridge_payload_uploaded_bytes_total":
                out["uploaded"][s.labels["kind"]] = int(s.value)
            elif s.name == "bridge_event_loop_lag_seconds_bucket":
                out["lag_buckets"].append([float(s.labels["le"]), s.value])
            elif s.name == "bridge_event_loop_lag_max_seconds":
                out["lag_max"] = s.value
            elif s.name == "bridge_event_loop_lag_recent_seconds":
                out["lag_recent"][{"0.5": "p50", "0.99": "p99", "1": "max", "1.0": "max"}[s.labels["quantile"]]] = s.value
    out["lag_buckets"].sort()
    return out


def tracker_lag(stats: dict[str, Any]) -> dict[str, Any]:
    lag = stats["loop_lag"]
    return {"lag_buckets": [[math.inf if le == "+Inf" else float(le), n] for le, n in lag["buckets"]],
            "lag_max": lag["max"], "lag_recent": lag["recent"]}


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children = Children()
        self.work = args.tmpdir or tempfile.mkdtemp(prefix="bench-soak-")
        self.samples: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.log_counts: dict[str, dict[str, int]] = {}
        self.pumps: list[asyncio.Task[None]] = []
        self.t0 = 0.0  # load start (monotonic)
        self.measure_from: float | None = None  # seconds after t0
        self.notes: list[str] = []
        #: the first error or traceback each child printed (up to 40 lines)
        self.first_errors: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------- children
    def pump(self, child: Child) -> None:
        """Read a child's output for the rest of its life: JSON status lines, and a count of errors."""
        counts = self.log_counts.setdefault(child.name, {"warnings": 0, "errors": 0, "tracebacks": 0})
        first_error: list[str] = []

        async def run() -> None:
            while True:
                line = await child.queue.get()
                if line is None:
                    return
                text = line.text
                if line.stream == "out" and text.startswith('{"ev"'):
                    with contextlib.suppress(ValueError):
                        self.latest[child.name] = json.loads(text)
                    continue
                if " WARNING " in text:
                    counts["warnings"] += 1
                elif " ERROR " in text or " CRITICAL " in text:
                    counts["errors"] += 1
                elif text.startswith("Traceback"):
                    counts["tracebacks"] += 1
                if (" ERROR " in text or text.startswith("Traceback") or first_error) and len(first_error) < 40:
                    if not first_error:
                        self.first_errors[child.name] = first_error
                    first_error.append(text)

        self.pumps.append(asyncio.ensure_future(run()))

    async def start_tracker(self) -> tuple[Child, int]:
        a = self.args
        max_conn = a.ws_clients + a.rtc_peers + 100
        child = await self.children.start("tracker", [
            sys.executable, "-m", "bridge", "tracker", "--host", "127.0.0.1", "--port", "0",
            "--interval", str(a.ws_interval), "--max-connections", str(max_conn)], env=child_env(), cwd=REPO_ROOT)
        line = await child.expect(lambda ln: ln.stream == "out" and "ws://127.0.0.1:" in ln.text, 60,
                                  "the tracker's URL")
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", line.text).group(1))  # type: ignore[union-attr]
        self.pump(child)
        return child, port

    async def start_bridge(self, tracker_port: int) -> tuple[Child, str, int]:
        a = self.args
        cmd = [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--http-port", "0", "--port", "0",
               "--peer-host", "127.0.0.1", "--data-dir", os.path.join(self.work, "data"),
               "--state-dir", os.path.join(self.work, "state"), "--webrtc-host", "127.0.0.1",
               "--announce", f"ws://127.0.0.1:{tracker_port}", "--max-peers", str(a.tcp_peers + a.rtc_peers + 50)]
        child = await self.children.start("bridge", cmd, env=child_env(), cwd=REPO_ROOT)
        port = 0
        url = ""
        deadline = time.monotonic() + 60
        while not (port and url):
            line = await child.expect(lambda ln: ln.stream == "err" and ("listening on" in ln.text or
                                                                         "API, page" in ln.text),
                                      max(1.0, deadline - time.monotonic()), "serve's addresses")
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line.text):
                port = int(m.group(1))
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/", line.text):
                url = m.group(1)
        self.pump(child)
        return child, url, port

    async def start_load(self, name: str, argv: list[str]) -> Child:
        child = await self.children.start(name, [sys.executable, os.path.abspath(__file__), *argv],
                                          env=child_env(), cwd=REPO_ROOT)
        self.pump(child)
        return child

    # --------------------------------------------------------------------------------------- sampling
    async def sample(self, http: Any, phase: str, bridge: Child, tracker: Child, bridge_url: str,
                     tracker_url: str) -> dict[str, Any]:
        s: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2) if self.t0 else None, "phase": phase,
                             "wall": time.time()}
        s["bridge"] = proc_stats(bridge.pid)
        s["tracker"] = proc_stats(tracker.pid)
        try:
            async with http.get(bridge_url + "/metrics") as r:
                s["bridge_metrics"] = parse_metrics(await r.text())
        except Exception as e:  # noqa: BLE001 -- a missed sample is reported, not fatal
            s["bridge_metrics"] = None
            self.notes.append(f"t={s['t']}: /metrics failed: {e!r}")
        try:
            async with http.get(tracker_url) as r:
                stats = await r.json()
            s["tracker_stats"] = {k: stats[k] for k in ("ws_connections", "announces", "offers_forwarded",
                                                        "answers_relayed", "swarms", "peers", "dropped",
                                                        "failures", "ws_queued_bytes")}
            s["tracker_stats"].update(tracker_lag(stats))
        except Exception as e:  # noqa: BLE001
            s["tracker_stats"] = None
            self.notes.append(f"t={s['t']}: tracker /stats failed: {e!r}")
        s["load"] = {k: dict(v) for k, v in self.latest.items()}
        self.samples.append(s)
        return s

    def progress(self, s: dict[str, Any]) -> None:
        b, t = s["bridge"] or {}, s["tracker"] or {}
        load = s["load"]
        bm = s.get("bridge_metrics") or {}
        ts = s.get("tracker_stats") or {}
        parts = [f"[{s['phase']:>8} {s['t'] or 0:6.1f}s]",
                 f"bridge {b.get('rss', 0) / MIB:5.0f} MiB {b.get('fds', 0):4d} fds"
                 f" lag {1000 * (bm.get('lag_recent') or {}).get('p99', 0):5.1f}/{1000 * (bm.get('lag_recent') or {}).get('max', 0):5.0f} ms",
                 f"tracker {t.get('rss', 0) / MIB:5.0f} MiB {t.get('fds', 0):5d} fds"
                 f" lag {1000 * (ts.get('lag_recent') or {}).get('p99', 0):5.1f}/{1000 * (ts.get('lag_recent') or {}).get('max', 0):5.0f} ms"]
        if "tcp" in load:
            parts.append(f"tcp {load['tcp']['connected']}/{load['tcp']['target']} {load['tcp']['bytes'] / 1e6:.0f} MB")
        if "rtc" in load:
            parts.append(f"rtc {load['rtc']['connected']}/{load['rtc']['target']} {load['rtc']['bytes'] / 1e6:.0f} MB")
        if "ws" in load:
            parts.append(f"ws {load['ws']['connected']}/{load['ws']['target']} {load['ws']['replies']} replies")
        print("  ".join(parts), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------- run
    async def run(self) -> dict[str, Any]:
        import aiohttp

        a = self.args
        data_dir = os.path.join(self.work, "data")
        os.makedirs(data_dir, exist_ok=True)
        print(f"soak: making {a.size_mib} MiB of random data in {self.work} ...", file=sys.stderr, flush=True)
        data_path = os.path.join(data_dir, "soak.bin")
        with open(data_path, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(MIB))
        from bridge.create import make_info
        from bridge.proto.metainfo import build_torrent

        info = make_info(data_path, a.piece_length)
        raw = build_torrent(info, created_by="bench/soak.py")
        torrent_path = os.path.join(self.work, "soak.torrent")
        with open(torrent_path, "wb") as f:
            f.write(raw)

        tracker, tracker_port = await self.start_tracker()
        tracker_url = f"http://127.0.0.1:{tracker_port}/stats"
        bridge, bridge_url, peer_port = await self.start_bridge(tracker_port)
        limits = {"soak.py": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                  "tracker": open_files_limit(tracker.pid), "bridge": open_files_limit(bridge.pid)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.post(bridge_url + "/api/v1/torrents",
                                 json={"torrent": base64.b64encode(raw).decode()}) as r:
                if r.status != 201:
                    raise BenchError(f"adding the torrent: HTTP {r.status} {await r.text()}")
            ih = info.info_hash.hex()
            deadline = time.monotonic() + 120
            while True:
                async with http.get(f"{bridge_url}/api/v1/torrents/{ih}") as r:
                    state = (await r.json())["state"]
                if state == "seeding":
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"the bridge is not seeding after 120 s (state {state})\n{bridge.tail()}")
                await asyncio.sleep(0.2)
            deadline = time.monotonic() + 30  # the bridge's announce on the tracker: WebRTC peers need it
            while True:
                async with http.get(tracker_url) as r:
                    if (await r.json())["peers"]["ws"] >= 1:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"the bridge did not announce to the tracker within 30 s\n{bridge.tail()}")
                await asyncio.sleep(0.2)
            print(f"soak: bridge pid {bridge.pid} seeding {ih[:8]} on 127.0.0.1:{peer_port}, tracker pid "
                  f"{tracker.pid} on port {tracker_port}", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)
            baseline = await self.sample(http, "baseline", bridge, tracker, bridge_url, tracker_url)
            self.progress(baseline)

            self.t0 = time.monotonic()
            common = ["--torrent", torrent_path, "--seed", str(a.seed), "--depth", str(a.depth),
                      "--pieces-per-cycle", str(a.pieces_per_cycle), "--think-min", str(a.think_min),
                      "--think-max", str(a.think_max), "--patience", str(a.patience)]
            if a.no_verify:
                common.append("--no-verify")
            loads = []
            if a.ws_clients:
                loads.append(await self.start_load("ws", [
                    "_ws-load", "--port", str(tracker_port), "--clients", str(a.ws_clients), "--swarms",
                    str(a.ws_swarms), "--offers", str(a.ws_offers), "--interval", str(a.ws_interval),
                    "--answer-fraction", str(a.ws_answer_fraction), "--churn", str(a.ws_churn),
                    "--sdp-bytes", str(a.sdp_bytes), "--seed", str(a.seed)]))
            if a.tcp_peers:
                loads.append(await self.start_load("tcp", [
                    "_tcp-peers", "--port", str(peer_port), "--peers", str(a.tcp_peers), "--rate",
                    str(a.tcp_rate_mib * MIB), "--churn", str(a.tcp_churn), *common]))
            if a.rtc_peers:
                loads.append(await self.start_load("rtc", [
                    "_rtc-peers", "--tracker", f"ws://127.0.0.1:{tracker_port}", "--peers", str(a.rtc_peers),
                    "--rate", str(a.rtc_rate_mib * MIB), "--churn", str(a.rtc_churn),
                    "--signalling", str(a.rtc_signalling), *common]))
            limits.update({c.name: open_files_limit(c.pid) for c in loads})
            targets = {"tcp": a.tcp_peers, "rtc": a.rtc_peers, "ws": a.ws_clients}
            end = self.t0 + a.duration
            ramp_deadline = self.t0 + a.ramp_timeout
            next_sample = time.monotonic()
            ramped_at: float | None = None
            while time.monotonic() < end:
                for c in (bridge, tracker, *loads):
                    if c.proc.returncode is not None:
                        raise BenchError(f"{c.name} exited (rc={c.proc.returncode}) during the soak\n{c.tail()}")
                now = time.monotonic()
                if ramped_at is None:
                    all_in = all((self.latest.get(k) or {}).get("connected", 0) >= n for k, n in targets.items() if n)
                    if all_in or now >= ramp_deadline:
                        ramped_at = now
                        self.measure_from = round(now - self.t0, 2)
                        if not all_in:
                            self.notes.append("not every peer or client was connected at the end of the ramp-up: "
                                              + ", ".join(f"{k} {(self.latest.get(k) or {}).get('connected', 0)}/{n}"
                                                          for k, n in targets.items() if n))
                        print(f"soak: ramp-up done in {now - self.t0:.1f} s; measuring", file=sys.stderr,
                              flush=True)
                        s = await self.sample(http, "measure", bridge, tracker, bridge_url, tracker_url)
                        self.progress(s)
                        next_sample = now + a.sample_interval
                        continue
                if now >= next_sample:
                    next_sample += a.sample_interval
                    s = await self.sample(http, "measure" if ramped_at else "ramp", bridge, tracker, bridge_url,
                                          tracker_url)
                    self.progress(s)
                await asyncio.sleep(min(0.2, max(0.0, min(next_sample, end) - time.monotonic())))
            if ramped_at is None:
                self.measure_from = round(time.monotonic() - self.t0, 2)
                self.notes.append("the load never finished ramping up")
            final = await self.sample(http, "end", bridge, tracker, bridge_url, tracker_url)
            self.progress(final)
            # Stop the load (SIGTERM: each prints a last status), then see what the bridge and the tracker
            # give back once every peer and client is gone.
            for c in loads:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await asyncio.gather(*(c.proc.wait() for c in loads))
            await asyncio.sleep(a.settle)
            after = await self.sample(http, "after", bridge, tracker, bridge_url, tracker_url)
            self.progress(after)
        for c in loads:
            await self.children.stop(c)
        rcs = {}
        for c in (bridge, tracker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.pid, signal.SIGTERM)
            rcs[c.name] = await c.wait(15)
            await self.children.stop(c)
        return {"limits": limits, "exit_codes": rcs, "info_hash": ih}

    async def close(self) -> None:
        await self.children.close()
        for p in self.pumps:
            p.cancel()
        if not self.args.keep and not self.args.tmpdir:
            shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- report


def _nearest(samples: list[dict[str, Any]], t: float) -> dict[str, Any]:
    return min(samples, key=lambda s: abs(s["t"] - t))


def linear_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def lag_summary(window: list[dict[str, Any]], key: str, lag_window_s: float) -> dict[str, Any]:
    """p50/p99 from the histogram's growth over the window (interpolated inside buckets), and the max.

    The max: each sample carries the max of the monitor's last minute, so the samples taken at least a
    minute after the window's start cover it exactly, and a new all-time max inside the window is exact
    too. Otherwise (a window under a minute) the max is only bounded: by the upper bound of the highest
    histogram bucket that grew, and by the last sample's minute; ``max_is_bound`` says so."""
    got = [s[key] for s in window if s.get(key)]
    if len(got) < 2:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "max_is_bound": False, "samples": 0}
    h0 = dict((le, n) for le, n in got[0]["lag_buckets"])
    delta = [(le, n - h0.get(le, 0)) for le, n in got[-1]["lag_buckets"]]
    start = window[0]["t"]
    covered = [s[key]["lag_recent"]["max"] for s in window if s.get(key) and s["t"] - start >= lag_window_s]
    bound = False
    if got[-1]["lag_max"] > got[0]["lag_max"]:
        mx = got[-1]["lag_max"]  # a new all-time max happened inside the window
    elif covered:
        mx = max(covered)
    else:
        # both are upper bounds: the smallest bucket bound every sample of the window is under, and the
        # max of the last minute (which reaches back before the window)
        top = next(le for le, n in delta if n >= delta[-1][1])
        mx = min(top, got[-1]["lag_recent"]["max"])
        bound = True
    p50, p99 = histogram_quantile(delta, 0.5), histogram_quantile(delta, 0.99)
    over = delta[-1][1] - dict(delta).get(LAG_TARGET, 0)
    return {"p50_ms": None if p50 is None else p50 * 1000, "p99_ms": None if p99 is None else p99 * 1000,
            "max_ms": mx * 1000, "max_is_bound": bound, "samples": int(delta[-1][1]), "over_100ms": int(over)}


def summarize(args: argparse.Namespace, samples: list[dict[str, Any]], measure_from: float,
              extra: dict[str, Any]) -> dict[str, Any]:
    baseline = next(s for s in samples if s["phase"] == "baseline")
    window = [s for s in samples if s["t"] is not None and s["phase"] in ("measure", "end") and s["t"] >= measure_from]
    loaded = [s for s in samples if s["phase"] in ("ramp", "measure", "end")]
    after = next((s for s in samples if s["phase"] == "after"), None)
    if len(window) < 3:
        raise BenchError(f"only {len(window)} samples in the measured window: make --duration longer")
    first, last = window[0], window[-1]
    mid = _nearest(window, (first["t"] + last["t"]) / 2)
    seconds = last["t"] - first["t"]
    out: dict[str, Any] = {"duration_s": last["t"], "ramp_up_s": measure_from, "measured_s": seconds,
                           "processes": {}, "failures": [], "warnings": []}
    for name in ("bridge", "tracker"):
        series = [(s["t"], s[name]["rss"]) for s in window if s[name]]
        p0, pm, p1 = first[name], mid[name], last[name]
        g1, g2 = pm["rss"] - p0["rss"], p1["rss"] - pm["rss"]
        tolerance = max(args.rss_tolerance_mib * MIB, 0.02 * pm["rss"])
        flat = g2 <= max(FLAT_FRACTION * g1, tolerance)
        second_half = [(t, v) for t, v in series if t >= mid["t"]]
        slope = linear_slope(second_half) * 60 / MIB  # MiB per minute
        fd_growth = p1["fds"] - p0["fds"]
        fd_flat = fd_growth <= max(50, 0.10 * p0["fds"])
        key = "bridge_metrics" if name == "bridge" else "tracker_stats"
        lag = lag_summary(window, key, 60.0)
        lag_all = lag_summary(loaded, key, 60.0)
        cpu = ((p1["cpu"] or 0) - (p0["cpu"] or 0)) / seconds * 100 if seconds else None
        proc = {
            "rss_baseline": baseline[name]["rss"], "rss_start": p0["rss"], "rss_mid": pm["rss"], "rss_end": p1["rss"],
            "rss_peak": max(s[name]["hwm"] for s in window if s[name]), "rss_after": after[name]["rss"] if after and after[name] else None,
            "rss_growth_first_half": g1, "rss_growth_second_half": g2, "rss_tolerance": tolerance,
            "rss_slope_second_half_mib_per_min": slope, "rss_flat": flat,
            "fds_baseline": baseline[name]["fds"], "fds_start": p0["fds"], "fds_end": p1["fds"],
            "fds_max": max(s[name]["fds"] for s in window if s[name]),
            "fds_after": after[name]["fds"] if after and after[name] else None, "fds_flat": fd_flat,
            "threads_start": p0["threads"], "threads_end": p1["threads"],
            "cpu_percent": cpu, "lag": lag, "lag_with_ramp_up": lag_all,
        }
        out["processes"][name] = proc
        if not flat:
            out["failures"].append(
                f"{name} RSS kept growing: +{g2 / MIB:.1f} MiB in the second half of the window against "
                f"+{g1 / MIB:.1f} MiB in the first (allowed: {FLAT_FRACTION:.0%} of it or {tolerance / MIB:.1f} MiB); "
                f"slope {slope:+.2f} MiB/min")
        if not fd_flat:
            out["failures"].append(f"{name} open fds grew from {p0['fds']} to {p1['fds']} over the window")
        if lag["p99_ms"] is None:
            out["failures"].append(f"{name}: no event-loop lag samples")
        elif lag["p99_ms"] >= LAG_TARGET * 1000:
            out["failures"].append(f"{name} event-loop lag p99 {lag['p99_ms']:.1f} ms >= {LAG_TARGET * 1000:.0f} ms")
    # peers and clients
    load_first, load_last = first["load"], last["load"]
    peers: dict[str, Any] = {}
    for kind, target in (("tcp", args.tcp_peers), ("rtc", args.rtc_peers), ("ws", args.ws_clients)):
        if not target:
            continue
        # A peer the churn is reconnecting on purpose counts as connected (it is not lost).
        conn = [s["load"][kind]["connected"] + s["load"][kind].get("rejoining", 0) for s in window if kind in s["load"]]
        l0, l1 = load_first.get(kind, {}), load_last.get(kind, {})
        d: dict[str, Any] = {"target": target,
                             "connected_at_start": l0.get("connected", 0) + l0.get("rejoining", 0),
                             "connected_min": min(conn) if conn else 0,
                             "connected_end": l1.get("connected", 0) + l1.get("rejoining", 0),
                             "rejoining_end": l1.get("rejoining", 0),
                             "connected_mean": sum(conn) / len(conn) if conn else 0,
                             "reconnects": l1.get("reconnects", 0), "drops": l1.get("drops", 0),
                             "load_cpu_percent": (l1.get("cpu", 0) - l0.get("cpu", 0)) / seconds * 100 if seconds else None}
        if kind in ("tcp", "rtc"):
            d.update({"bytes": l1.get("bytes", 0) - l0.get("bytes", 0), "bytes_total": l1.get("bytes", 0),
                      "pieces_ok": l1.get("pieces_ok", 0), "pieces_bad": l1.get("pieces_bad", 0),
                      "peers_served": l1.get("served", 0), "protocol_errors": l1.get("protocol_errors", 0)})
            d["mb_per_s"] = d["bytes"] / seconds / 1e6 if seconds else 0.0
            if l1.get("pieces_bad"):
                out["failures"].append(f"{kind}: {l1['pieces_bad']} pieces failed their SHA-1 check")
            bm0, bm1 = first.get("bridge_metrics") or {}, last.get("bridge_metrics") or {}
            k = "webrtc" if kind == "rtc" else "tcp"
            d["bridge_peers_end"] = (bm1.get("peers") or {}).get(k)
            d["bridge_uploaded"] = (bm1.get("uploaded") or {}).get(k, 0) - (bm0.get("uploaded") or {}).get(k, 0)
        if kind == "rtc":
            d.update({k2: l1.get(k2, 0) for k2 in ("attempts", "failures", "via_our_offer", "via_their_offer")})
            d["last_failure"] = l1.get("last_failure")
        if kind == "ws":
            d.update({"replies": l1.get("replies", 0) - l0.get("replies", 0), "offers_received": l1.get("offers", 0) - l0.get("offers", 0),
                      "answers_sent": l1.get("answers_sent", 0) - l0.get("answers_sent", 0),
                      "failures": l1.get("failures", 0), "failure_samples": l1.get("failure_samples"),
                      "refused": l1.get("refused", 0), "last_refusal": l1.get("last_refusal"),
                      "connect_errors": l1.get("connect_errors", 0)})
            d["replies_per_s"] = d["replies"] / seconds if seconds else 0.0
            ts0, ts1 = first.get("tracker_stats") or {}, last.get("tracker_stats") or {}
            if ts0 and ts1:
                d["tracker_announces_per_s"] = (ts1["announces"]["total"] - ts0["announces"]["total"]) / seconds
                d["tracker_offers_forwarded_per_s"] = (ts1["offers_forwarded"] - ts0["offers_forwarded"]) / seconds
                d["tracker_answers_relayed_per_s"] = (ts1["answers_relayed"] - ts0["answers_relayed"]) / seconds
                d["tracker_connections_end"] = ts1["ws_connections"]
                d["tracker_dropped"] = ts1["dropped"]
            if l1.get("failures"):
                out["warnings"].append(f"ws: {l1['failures']} failure replies, e.g. {(l1.get('failure_samples') or [''])[0]}")
        if d["connected_at_start"] < target:
            out["failures"].append(f"{kind}: only {d['connected_at_start']} of {target} connected at the end of the ramp-up")
        elif d["connected_min"] < 0.9 * target:
            out["failures"].append(f"{kind}: down to {d['connected_min']} of {target} connected during the window")
        peers[kind] = d
    out["peers"] = peers
    out.update(extra)
    return out


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    load = os.getloadavg()
    print(f"soak: {summary['duration_s']:.0f} s of load (ramp-up {summary['ramp_up_s']:.1f} s, then "
          f"{summary['measured_s']:.0f} s measured); {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    peers = summary["peers"]
    rows = []
    names = {"tcp": "TCP peers", "rtc": "WebRTC peers", "ws": "tracker WebSocket clients"}
    for kind, d in peers.items():
        detail = []
        if kind in ("tcp", "rtc"):
            detail.append(f"{d['mb_per_s']:.1f} MB/s received ({d['bytes'] / 1e6:.0f} MB; bridge sent "
                          f"{d['bridge_uploaded'] / 1e6:.0f} MB), {d['pieces_ok']} pieces OK, {d['pieces_bad']} bad, "
                          f"{d['peers_served']} peers served")
        if kind == "rtc":
            detail.append(f"{d['via_our_offer']}+{d['via_their_offer']} connected via our/the bridge's offer, "
                          f"{d['failures']} failed attempts")
        if kind == "ws":
            detail.append(f"{d['replies_per_s']:.0f} announces/s answered, "
                          f"{d.get('tracker_offers_forwarded_per_s', 0):.0f} offers/s forwarded, "
                          f"{d.get('tracker_answers_relayed_per_s', 0):.0f} answers/s relayed, "
                          f"{d['failures']} failures, {d['refused']} refused")
        detail.append(f"{d['reconnects']} reconnects, {d['drops']} drops, load CPU {d['load_cpu_percent'] or 0:.0f}%")
        rows.append([names[kind], f"{d['connected_at_start']}/{d['target']}",
                     f"{d['connected_min']}/{d['connected_end']}", "; ".join(detail)])
    print()
    print(format_table(["load", "connected", "min/end", "figures over the measured window"], rows))
    headers = ["process", "RSS base", "start", "mid", "end", "peak", "after", "growth 1st/2nd half", "slope 2nd",
               "RSS flat", "fds base", "start", "end", "after", "CPU%", "lag p50", "p99", "max", "p99 incl. ramp"]
    rows = []
    for name, p in summary["processes"].items():
        lag, lag_all = p["lag"], p["lag_with_ramp_up"]
        rows.append([name, _mib(p["rss_baseline"]), _mib(p["rss_start"]), _mib(p["rss_mid"]), _mib(p["rss_end"]),
                     _mib(p["rss_peak"]), _mib(p["rss_after"]),
                     f"{p['rss_growth_first_half'] / MIB:+.1f}/{p['rss_growth_second_half'] / MIB:+.1f} MiB",
                     f"{p['rss_slope_second_half_mib_per_min']:+.2f} MiB/min", "yes" if p["rss_flat"] else "NO",
                     str(p["fds_baseline"]), str(p["fds_start"]), str(p["fds_end"]), str(p["fds_after"]),
                     "-" if p["cpu_percent"] is None else f"{p['cpu_percent']:.0f}",
                     _ms(lag["p50_ms"]), _ms(lag["p99_ms"]), ("<=" if lag["max_is_bound"] else "") + _ms(lag["max_ms"]),
                     _ms(lag_all["p99_ms"])])
    print()
    print("RSS in MiB (VmRSS; peak = VmHWM), lag in ms (p50/p99 from the loop-lag histogram over the window)")
    print(format_table(headers, rows, right=[False] + [True] * (len(headers) - 1)))
    print()
    print(f"open-files limit (soft): {summary['limits']}; exit codes at SIGTERM: {summary['exit_codes']}")
    if summary.get("log_counts"):
        print("log lines: " + ", ".join(f"{k} {v['warnings']} warnings/{v['errors']} errors/{v['tracebacks']} tracebacks"
                                        for k, v in summary["log_counts"].items()))
    for w in summary["warnings"] + summary.get("notes", [])[:10]:
        print(f"note: {w}")
    for name, lines in (summary.get("first_errors") or {}).items():
        print(f"first error logged by {name}:")
        for line in lines[:20]:
            print(f"    {line}")
    if summary["failures"]:
        for f in summary["failures"]:
            print(f"FAIL: {f}")
    else:
        print(f"PASS: RSS and fds flat over the window, loop-lag p99 under {LAG_TARGET * 1000:.0f} ms in both processes")


# ---------------------------------------------------------------------------------------------- main


def need_open_files(need: int) -> None:
    """Raise this process's open-files limit (the children inherit it) to ``need``, or fail saying why."""
    if raise_open_files(need) < need:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        raise BenchError(f"{need} open files are needed but the hard limit is {hard} (raise it, e.g. "
                         f"`ulimit -Hn {need}` as root, or use fewer --ws-clients)")


async def orchestrate(args: argparse.Namespace) -> int:
    soak = Soak(args)
    try:
        extra = await soak.run()
    finally:
        await soak.close()
    assert soak.measure_from is not None
    extra["log_counts"] = soak.log_counts
    extra["notes"] = soak.notes
    extra["first_errors"] = soak.first_errors
    summary = summarize(args, soak.samples, soak.measure_from, extra)
    for name in ("tracker", "bridge"):
        lim = extra["limits"].get(name)
        if lim is not None and name == "tracker" and lim < args.ws_clients + args.rtc_peers + 10:
            summary["failures"].append(f"the tracker's open-files limit {lim} is below its connections")
    print_report(args, summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "samples": soak.samples}, f, indent=1, default=str)
    return 1 if summary["failures"] else 0


def add_peer_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depth", type=int, default=16, help="requests in flight per downloading peer (default 16)")
    p.add_argument("--pieces-per-cycle", type=int, default=4,
                   help="pieces a peer downloads before going not-interested for a while (default 4)")
    p.add_argument("--think-min", type=float, default=1.0, help="shortest pause between cycles, s (default 1)")
    p.add_argument("--think-max", type=float, default=5.0, help="longest pause between cycles, s (default 5)")
    p.add_argument("--patience", type=float, default=10.0,
                   help="seconds a choked, interested peer waits for an upload slot before pausing (default 10)")
    p.add_argument("--no-verify", action="store_true", help="do not SHA-1 the pieces the peers receive")
    p.add_argument("--seed", type=int, default=1, help="random seed of the load (default 1)")


def sub_main(argv: list[str]) -> int:
    cmd = argv[0]
    p = argparse.ArgumentParser(prog=f"soak.py {cmd}")
    p.add_argument("--id-base", type=int, default=0)
    if cmd == "_ws-load":
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--clients", type=int, required=True)
        p.add_argument("--swarms", type=int, default=100)
        p.add_argument("--offers", type=int, default=5)
        p.add_argument("--interval", type=float, default=30.0)
        p.add_argument("--answer-fraction", type=float, default=0.1)
        p.add_argument("--churn", type=float, default=0.0, help="reconnects per second")
        p.add_argument("--sdp-bytes", type=int, default=600)
        p.add_argument("--connect-concurrency", type=int, default=128)
        p.add_argument("--seed", type=int, default=1)
        run_loop(ws_load(p.parse_args(argv[1:])))
        return 0
    p.add_argument("--torrent", required=True)
    p.add_argument("--peers", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="bytes/s of requests for all peers (0: unlimited)")
    p.add_argument("--churn", type=float, default=0.0, help="reconnects per minute")
    add_peer_policy(p)
    if cmd == "_tcp-peers":
        p.add_argument("--port", type=int, required=True)
        run_loop(tcp_peers(p.parse_args(argv[1:])))
        return 0
    if cmd == "_rtc-peers":
        p.add_argument("--tracker", required=True)
        p.add_argument("--signalling", type=int, default=4)
        run_loop(rtc_peers(p.parse_args(argv[1:])))
        return 0
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("_"):
        return sub_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--duration", type=float, help="seconds of load, ramp-up included (default 300; --quick 60)")
    p.add_argument("--quick", action="store_true", help="about a minute: 60 s of load, 16 MiB, samples every 2 s")
    p.add_argument("--tcp-peers", type=int, default=200, help="TCP peers (default 200)")
    p.add_argument("--rtc-peers", type=int, default=50, help="WebRTC peers (default 50)")
    p.add_argument("--ws-clients", type=int, default=10_000, help="tracker WebSocket clients (default 10000)")
    p.add_argument("--ws-swarms", type=int, default=100, help="swarms the tracker clients are in (default 100)")
    p.add_argument("--ws-offers", type=int, default=5, help="offers per tracker announce (default 5)")
    p.add_argument("--ws-interval", type=int, default=30,
                   help="announce interval of the tracker and its clients, s (default 30: 333 announces/s for 10,000)")
    p.add_argument("--ws-answer-fraction", type=float, default=0.1,
                   help="share of forwarded offers a tracker client answers (default 0.1)")
    p.add_argument("--ws-churn", type=float, default=5.0, help="tracker clients reconnecting per second (default 5)")
    p.add_argument("--sdp-bytes", type=int, default=600, help="size of the tracker clients' fake SDP (default 600)")
    p.add_argument("--tcp-rate-mib", type=float, default=40.0,
                   help="MiB/s the TCP peers request in total (default 40; 0: as fast as the bridge sends)")
    p.add_argument("--rtc-rate-mib", type=float, default=4.0,
                   help="MiB/s the WebRTC peers request in total (default 4; 0: unlimited)")
    p.add_argument("--tcp-churn", type=float, default=30.0, help="TCP peers reconnecting per minute (default 30)")
    p.add_argument("--rtc-churn", type=float, default=6.0, help="WebRTC peers reconnecting per minute (default 6)")
    p.add_argument("--rtc-signalling", type=int, default=4,
                   help="WebRTC peers signalling at once, each with this many offers (default 4)")
    add_peer_policy(p)
    p.add_argument("--size-mib", type=int, help="size of the seeded torrent (default 64; --quick 16)")
    p.add_argument("--piece-length", type=int, default=256 * 1024, help="piece length (default 262144)")
    p.add_argument("--sample-interval", type=float, help="seconds between samples (default 5; --quick 2)")
    p.add_argument("--ramp-timeout", type=float, help="seconds the peers get to connect (default: half the duration)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the load stops before the last sample")
    p.add_argument("--rss-tolerance-mib", type=float, default=4.0,
                   help="RSS growth in the second half always accepted (default 4 MiB, or 2%% of RSS if more)")
    p.add_argument("--json", metavar="PATH", help="write the summary and every sample here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--tmpdir", help="work here (kept) instead of a new temporary directory")
    args = p.parse_args(argv)
    args.duration = args.duration or (60.0 if args.quick else 300.0)
    args.size_mib = args.size_mib or (16 if args.quick else 64)
    args.sample_interval = args.sample_interval or (2.0 if args.quick else 5.0)
    args.ramp_timeout = args.ramp_timeout or args.duration / 2
    if args.duration < 10:
        p.error("--duration must be at least 10 s")

    def run() -> int:
        need_open_files(args.ws_clients + args.rtc_peers + args.tcp_peers + 1000)
        return asyncio.run(orchestrate(args))

    return bench_main(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
