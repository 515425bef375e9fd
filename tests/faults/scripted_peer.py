"""A scripted, hostile BitTorrent peer for the fault-injection tests, plus the measuring helpers they share.

The peer speaks the wire protocol through ``bridge.proto.wire.Wire`` (or raw bytes, for what no codec
would send) over plain asyncio streams, so each test states exactly what goes on the wire:

* ``dial(...)`` opens a connection to the bridge from a chosen 127.0.0.x address and exchanges handshakes;
* ``ScriptedPeer`` listens on a 127.0.0.x address and runs a behaviour coroutine on every connection the
  bridge makes to it (the bridge dials the addresses it is given);
* ``PeerConn`` is one such connection: ``send`` events, ``send_raw`` bytes, read decoded events, and
  ``wait_closed`` to time how long the bridge takes to hang up.

Behaviour used by the tests: ``stall_after`` (a seed that serves some blocks, then goes silent). The
corrupt seed is ``ScriptedSeed`` of tests/engine/test_engine.py; the peers that flood the bridge dial it.

``MemoryProbe`` measures the peak of Python allocations (tracemalloc) during a scenario, which is where a
buffer sized by a peer would show up.

Everything is bounded in time: every wait takes a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import resource
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from peers import LibtorrentPeer, TorrentFile, make_torrent_libtorrent

from bridge.config import PeerConfig, SessionConfig
from bridge.errors import RemoteProtocolError
from bridge.proto import events as ev
from bridge.proto.metainfo import InfoDict, parse_torrent
from bridge.proto.wire import Wire, make_reserved

#: Bytes read from the socket at a time.
READ_SIZE = 256 * 1024
#: The bridge and well-behaved peers live on 127.0.0.1, hostile ones on 127.0.0.2 (the bridge bans per IP).
GOOD_IP = "127.0.0.1"
BAD_IP = "127.0.0.2"
MIB = 1024 * 1024


def make_peer_id(tag: str = "XX") -> bytes:
    """An Azureus-style peer id for a scripted peer (``-XX0000-`` + 12 random hex digits)."""
    return f"-{tag[:2]}0000-".encode() + os.urandom(6).hex().encode()


def full_bitfield(num_pieces: int) -> bytes:
    """A bitfield claiming every piece."""
    bits = bytearray((num_pieces + 7) // 8)
    for i in range(num_pieces):
        bits[i >> 3] |= 0x80 >> (i & 7)
    return bytes(bits)


@dataclass
class PeerConn:
    """One connection seen from the scripted side, after the handshakes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    wire: Wire
    #: the bridge's handshake
    theirs: ev.Handshake
    #: events that arrived with the handshake and were not consumed yet
    backlog: list[ev.Event] = field(default_factory=list)
    #: bytes received from the bridge (after the handshake)
    received_bytes: int = 0
    #: every Request the bridge sent us, in order
    requests: list[ev.Request] = field(default_factory=list)

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, *events: ev.Event) -> None:
        self.writer.write(b"".join(self.wire.send(e) for e in events))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.writer.drain()

    async def read_events(self, timeout: float = 10.0) -> list[ev.Event]:
        """The next decoded events (at least one). Raises EOFError when the bridge closed."""
        if self.backlog:
            out, self.backlog = self.backlog, []
            return out
        async with asyncio.timeout(timeout):
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise EOFError("the bridge closed the connection")
                self.received_bytes += len(data)
                events = self.wire.receive_data(data)
                self.requests += [e for e in events if isinstance(e, ev.Request)]
                if events:
                    return events

    async def wait_for(self, predicate: Callable[[ev.Event], bool], timeout: float = 10.0) -> ev.Event:
        """Read until an event matching ``predicate`` arrives (others are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                for e in await self.read_events(timeout):
                    if predicate(e):
                        return e

    async def wait_closed(self, timeout: float) -> float:
        """Read (and count) everything until the bridge closes; returns the seconds it took.

        Raises TimeoutError if the connection is still open after ``timeout`` seconds."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                while data := await self.reader.read(READ_SIZE):
                    self.received_bytes += len(data)
        return time.monotonic() - started

    def close(self) -> None:
        self.writer.close()


async def _exchange_handshakes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info_hash: bytes,
                               *, fast: bool, extensions: bool, timeout: float) -> PeerConn:
    wire = Wire()
    writer.write(wire.send(ev.Handshake(info_hash, make_peer_id(), make_reserved(extensions, fast))))
    async with asyncio.timeout(timeout):
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                raise EOFError("closed during the handshake")
            events = wire.receive_data(data)
            if events:
                first = events[0]
                assert isinstance(first, ev.Handshake), first
                if first.info_hash != info_hash:
                    raise RemoteProtocolError("handshake for another torrent")
                return PeerConn(reader, writer, wire, first, backlog=events[1:])


async def dial(host: str, port: int, info_hash: bytes, *, local_host: str = "127.0.0.1", fast: bool = False,
               extensions: bool = False, timeout: float = 10.0) -> PeerConn:
    """Connect to the bridge from ``local_host`` and exchange handshakes."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(local_host, 0))
    try:
        return await _exchange_handshakes(reader, writer, info_hash, fast=fast, extensions=extensions,
                                          timeout=timeout)
    except BaseException:
        writer.close()
        raise


Behaviour = Callable[[PeerConn], Awaitable[None]]


class ScriptedPeer:
    """Listens on ``host`` (port 0) and runs ``behaviour`` on each connection the bridge makes to it."""

    def __init__(self, info: InfoDict, behaviour: Behaviour, host: str = "127.0.0.2", *, fast: bool = False,
                 extensions: bool = False) -> None:
        self.info = info
        self.behaviour = behaviour
        self.host = host
        self.fast = fast
        self.extensions = extensions
        self.port = 0
        self.connections: list[PeerConn] = []
        #: errors raised by behaviours (other than the connection going away), for the test to assert on
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._on_connection, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            conn = await _exchange_handshakes(reader, writer, self.info.info_hash, fast=self.fast,
                                              extensions=self.extensions, timeout=10.0)
            self.connections.append(conn)
            await self.behaviour(conn)
        except (EOFError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as e:  # a bug in the script: reported by the test
            self.errors.append(e)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# Behaviours


def stall_after(data: bytes, info: InfoDict, blocks: int, keepalive: float = 5.0) -> tuple[Behaviour, dict[str, int]]:
    """A seed that claims every piece, unchokes, serves the first ``blocks`` requested blocks correctly and
    then never sends another block (only keep-alives, so no inactivity timeout can save the bridge).

    Returns the behaviour and a live counter dict: ``served`` blocks, ``ignored`` requests."""
    counts = {"served": 0, "ignored": 0}

    async def behaviour(conn: PeerConn) -> None:
        conn.send(ev.Bitfield(full_bitfield(info.num_pieces)), ev.Unchoke())
        last_keepalive = time.monotonic()
        while True:
            try:
                events = await conn.read_events(timeout=keepalive)
            except TimeoutError:
                events = []
            for e in events:
                if not isinstance(e, ev.Request):
                    continue
                if counts["served"] < blocks:
                    start = e.index * info.piece_length + e.begin
                    conn.send(ev.Piece(e.index, e.begin, data[start : start + e.length]))
                    counts["served"] += 1
                else:
                    counts["ignored"] += 1
            if time.monotonic() - last_keepalive >= keepalive:
                conn.send(ev.KeepAlive())
                last_keepalive = time.monotonic()
            await conn.drain()

    return behaviour, counts


# --------------------------------------------------------------------------------------------
# Plumbing shared by the fault tests


def bridge_config(*, trackers: bool = False, webrtc: bool = False, **peer: Any) -> SessionConfig:
    """The bridge on 127.0.0.1, any port, TCP only (no uTP), no trackers or WebRTC unless asked for."""
    return SessionConfig(host=GOOD_IP, port=0, utp=False, webrtc=webrtc, trackers_enabled=trackers,
                         webrtc_hosts=(GOOD_IP,) if webrtc else (), peer=PeerConfig(**peer))


def make_data(tmp_path: Path, size: int, piece_length: int, seed: int = 7) -> tuple[bytes, TorrentFile, InfoDict]:
    """Random data in ``tmp_path/src/payload.bin`` and a torrent of it made by libtorrent."""
    data = random.Random(seed).randbytes(size)
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "payload.bin").write_bytes(data)
    (tmp_path / "torrents").mkdir(exist_ok=True)
    torrent = make_torrent_libtorrent(src / "payload.bin", tmp_path / "torrents" / "payload.torrent",
                                      piece_length=piece_length)
    info = parse_torrent(torrent.path.read_bytes()).info
    return data, torrent, info


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes()) if path.exists() else "(missing)"


async def until(cond: Any, what: str, timeout: float, interval: float = 0.05) -> float:
    """Poll ``cond()`` until true; returns the seconds it took. Fails the test after ``timeout``."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s", pytrace=False)
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def lt_wait_seeding(peer: LibtorrentPeer, handle: Any, timeout: float, context: Any = None) -> list[Any]:
    """Wait (without blocking the loop) until libtorrent has the whole torrent and flushed it to disk.
    Returns every alert seen meanwhile."""
    seen: list[Any] = []
    lt = peer.lt
    started = time.monotonic()
    while not handle.status().is_seeding:
        seen += peer.pump_alerts()
        if time.monotonic() - started > timeout:
            st = handle.status()
            pytest.fail(f"{peer.name} did not complete within {timeout:.0f} s (progress {st.progress:.3f}, "
                        f"{st.num_peers} peers)\n{context() if context else ''}\n{peer.log_excerpt()}",
                        pytrace=False)
        await asyncio.sleep(0.1)
    handle.flush_cache()
    while not any(isinstance(a, lt.cache_flushed_alert) for a in seen):
        if time.monotonic() - started > timeout:
            pytest.fail(f"{peer.name} did not flush its cache\n{peer.log_excerpt()}", pytrace=False)
        seen += peer.pump_alerts()
        await asyncio.sleep(0.02)
    return seen


# --------------------------------------------------------------------------------------------
# Measuring


class MemoryProbe:
    """Peak growth of Python allocations (tracemalloc) while the ``with`` block runs, in bytes.

    tracemalloc sees every bytes/bytearray/memoryview-backed buffer the engine could allocate for a peer's
    data (the asyncio transports hand over ``bytes``, the wire codec buffers in a ``bytearray``). The RSS
    figure (current resident set, from /proc) is reported beside it as a cross-check of the whole process.
    """

    def __init__(self) -> None:
        self.peak_growth = 0
        self.rss_growth = 0
        self._base = 0
        self._rss0 = 0
        self._was_tracing = False

    def __enter__(self) -> MemoryProbe:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        self._rss0 = current_rss()
        return self

    def sample(self) -> int:
        """Peak growth so far."""
        self.peak_growth = max(self.peak_growth, tracemalloc.get_traced_memory()[1] - self._base)
        return self.peak_growth

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self.rss_growth = current_rss() - self._rss0
        if not self._was_tracing:
            tracemalloc.stop()


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def report(scenario: str, outcome: str, figure: str) -> None:
    """One line per scenario for ``pytest -s`` (and the README's reliability table)."""
    print(f"\nFAULT | {scenario} | {outcome} | {figure}")
