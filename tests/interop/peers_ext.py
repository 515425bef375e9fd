"""Extra interop helpers for the magnet / BEP 9 / BEP 10 / BEP 11 / BEP 6 tests.

Built on ``peers.py`` (which stays as it is):

* ``ExtLibtorrentPeer``: a ``LibtorrentPeer`` on its own 127.0.0.N, optionally with ut_pex
  turned on (only for tests about PEX), that records the connection alerts and the protocol-level
  lines of libtorrent's peer log (handshake bits, HAVE_ALL, UT_METADATA, PEX, ...), and can add a
  torrent from a magnet link alone.
* ``ext_libtorrent``: makes one and hands it to the ``Harness`` so it is closed at teardown.
* ``RawPeer``: a blocking BitTorrent wire client on a plain socket, for checking exactly what the
  bridge sends after the handshake.
* ``wait_until``: a bounded poll that fails the test with a message and the logs.

Everything here is bounded in time and fails (never skips) when a peer cannot run.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import (
    TRANSFER_TIMEOUT,
    Harness,
    LibtorrentPeer,
    _with_context,
    fail,
    next_loopback_ip,
    require_libtorrent,
    split_address,
)

#: Peer-log lines worth keeping (libtorrent logs every block otherwise). Matched as substrings
#: of the alert message, e.g. ``9a1065 peer 127.0.0.1:60882 <== HAVE_ALL [  ]``.
PEER_LOG_KEEP = (
    "HANDSHAKE",
    "EXTENSIONS",
    "HAVE_ALL",
    "HAVE_NONE",
    "BITFIELD",
    "UT_METADATA",
    "PEX",
    "ALLOWED_FAST",
    "REJECT",
    "CONNECTION_CLOSED",
    "PEER_ERROR",
    "CONNECTING",
    "CONNECTION",
)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               context: Callable[[], str] | None = None, interval: float = 0.1,
               tick: Callable[[], Any] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout:.0f} s waiting for {what}\n" + _with_context(context))
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# libtorrent with its own address, optional PEX and a protocol log


class ExtLibtorrentPeer(LibtorrentPeer):
    """``LibtorrentPeer`` bound to ``ip`` (a 127.0.0.N of its own), TCP only, no DHT/LSD/UPnP/NAT-PMP.

    ``pex=True`` adds libtorrent's ut_pex plugin and leaves PEX on for the torrents it adds; with
    ``pex=False`` PEX stays off as in ``LibtorrentPeer``. ``peer_log=True`` turns on libtorrent's
    per-peer protocol log; the lines matching ``PEER_LOG_KEEP`` are kept in ``peer_log_lines``.
    ``alerts`` keeps (alert class name, message) of every other alert.
    """

    def __init__(self, log_dir: Path, name: str, ip: str, pex: bool = False, peer_log: bool = False,
                 settings: dict[str, Any] | None = None) -> None:
        lt_ = require_libtorrent()
        self.ip = ip
        self.pex = pex
        self.peer_log_lines: list[str] = []
        self.alerts: list[tuple[str, str]] = []
        mask = (lt_.alert_category.error | lt_.alert_category.status | lt_.alert_category.peer
                | lt_.alert_category.connect | lt_.alert_category.storage
                | lt_.alert_category.performance_warning)
        if peer_log:
            mask |= lt_.alert_category.peer_log
        pack: dict[str, Any] = {
            "listen_interfaces": f"{ip}:0",
            # Dial from the same address, so a peer that hears of this one (PEX) gets an address
            # it can dial back.
            "outgoing_interfaces": ip,
            "alert_mask": int(mask),
            "alert_queue_size": 100_000,
        }
        pack.update(settings or {})
        super().__init__(log_dir, name=name, settings=pack)
        if pex:
            self.session.add_extension("ut_pex")

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def pump_alerts(self) -> list[Any]:
        alerts = list(self.session.pop_alerts())
        kept = []
        stamp = time.strftime("%H:%M:%S")
        for a in alerts:
            if isinstance(a, self.lt.peer_log_alert):
                msg = a.message()
                if not any(k in msg for k in PEER_LOG_KEEP):
                    continue
                self.peer_log_lines.append(msg)
            else:
                self.alerts.append((type(a).__name__, a.message()))
            self._log.write(f"{stamp} {type(a).__name__}: {a.message()}\n")
            kept.append(a)
        if kept:
            self._log.flush()
        return alerts

    def _flags(self, atp: Any) -> Any:
        flags = atp.flags & ~self.lt.torrent_flags.auto_managed & ~self.lt.torrent_flags.paused
        if self.pex:
            return flags & ~self.lt.torrent_flags.disable_pex
        return flags | self.lt.torrent_flags.disable_pex

    def add(self, torrent: Any, save_path: Path, trackers: Sequence[str] = (), upload_limit: int = 0) -> Any:
        atp = self.lt.add_torrent_params()
        atp.ti = self.lt.torrent_info(str(torrent.path))
        atp.save_path = str(save_path)
        atp.flags = self._flags(atp)
        if trackers:
            atp.trackers = list(trackers)
        if upload_limit:
            atp.upload_limit = upload_limit
        save_path.mkdir(parents=True, exist_ok=True)
        return self.session.add_torrent(atp)

    def add_magnet(self, magnet: str, save_path: Path) -> Any:
        """Add a torrent from its magnet link only (no .torrent): libtorrent must fetch the metadata."""
        atp = self.lt.parse_magnet_uri(magnet)
        if atp.ti is not None:
            fail(f"libtorrent parsed metadata out of the magnet link {magnet!r}?")
        atp.save_path = str(save_path)
        atp.flags = self._flags(atp)
        save_path.mkdir(parents=True, exist_ok=True)
        return self.session.add_torrent(atp)

    def peers_of(self, handle: Any) -> list[Any]:
        try:
            return list(handle.get_peer_info())
        except RuntimeError:  # the torrent was removed
            return []

    def wait_metadata(self, handle: Any, timeout: float = TRANSFER_TIMEOUT, reconnect: Sequence[str] = (),
                      context: Callable[[], str] | None = None) -> Any:
        """Wait until the magnet torrent has its metadata; re-dials ``reconnect`` every few seconds."""
        deadline = time.monotonic() + timeout
        next_dial = 0.0
        while True:
            self.pump_alerts()
            st = handle.status()
            if st.errc.value():
                fail(f"libtorrent torrent error while fetching metadata: {st.errc.message()}\n"
                     + _with_context(context) + self.log_excerpt())
            if st.has_metadata:
                return handle.torrent_file()
            now = time.monotonic()
            if reconnect and now >= next_dial:
                for p in reconnect:
                    self.connect(handle, p)
                next_dial = now + 3.0
            if now > deadline:
                fail(f"libtorrent got no metadata within {timeout:.0f} s ({st.num_peers} peers)\n"
                     + _with_context(context) + self.log_excerpt())
            time.sleep(0.1)

    def count_alerts(self, name: str) -> int:
        self.pump_alerts()
        return sum(1 for n, _ in self.alerts if n == name)

    def log_lines(self, *needles: str) -> list[str]:
        """Kept peer-log lines containing every one of ``needles``."""
        self.pump_alerts()
        return [line for line in self.peer_log_lines if all(n in line for n in needles)]


def ext_libtorrent(harness: Harness, name: str, ip: str | None = None, pex: bool = False,
                   peer_log: bool = False, settings: dict[str, Any] | None = None) -> ExtLibtorrentPeer:
    """An ``ExtLibtorrentPeer`` owned by ``harness`` (closed at teardown, logs in failure reports)."""
    peer = ExtLibtorrentPeer(harness.log_dir, name=harness._name(name), ip=ip or next_loopback_ip(),
                             pex=pex, peer_log=peer_log, settings=settings)
    harness._owned.append(peer)
    return peer


# --------------------------------------------------------------------------------------------
# A raw wire client


PROTOCOL = b"\x13BitTorrent protocol"

MSG_NAMES = {
    0: "choke", 1: "unchoke", 2: "interested", 3: "not interested", 4: "have", 5: "bitfield",
    6: "request", 7: "piece", 8: "cancel", 9: "port", 13: "suggest", 14: "have-all",
    15: "have-none", 16: "reject", 17: "allowed-fast", 20: "extended",
}


def reserved_bits(extensions: bool = True, fast: bool = True) -> bytes:
    r = bytearray(8)
    if extensions:
        r[5] |= 0x10
    if fast:
        r[7] |= 0x04
    return bytes(r)


@dataclass(frozen=True)
class Message:
    msg_id: int  #: -1 for a keep-alive
    payload: bytes

    @property
    def name(self) -> str:
        return "keep-alive" if self.msg_id < 0 else MSG_NAMES.get(self.msg_id, f"id {self.msg_id}")


class RawPeer:
    """A blocking, bounded BitTorrent wire connection (for inspecting what the bridge sends)."""

    def __init__(self, address: str, timeout: float = 10.0, source_ip: str | None = None) -> None:
        host, port = split_address(address)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source_ip:
            self.sock.bind((source_ip, 0))
        try:
            self.sock.connect((host, port))
        except OSError as exc:
            self.sock.close()
            fail(f"cannot connect to {address}: {exc}")
        self.received: list[Message] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def handshake(self, info_hash: bytes, reserved: bytes,
                  peer_id: bytes | None = None) -> tuple[bytes, bytes, bytes]:
        """Send our handshake; return the reply's (reserved, info_hash, peer_id)."""
        pid = peer_id or (b"-PY0001-" + os.urandom(6).hex().encode())
        self.sock.sendall(PROTOCOL + reserved + info_hash + pid)
        data = self._recv_exact(68, time.monotonic() + self.timeout)
        if data is None:
            fail(f"no handshake reply within {self.timeout:.0f} s")
        if data[:20] != PROTOCOL:
            fail(f"reply is not a BitTorrent handshake: {data[:20]!r}")
        return data[20:28], data[28:48], data[48:68]

    def read_message(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when nothing (complete) arrives within ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        head = self._recv_exact(4, deadline)
        if head is None:
            return None
        (length,) = struct.unpack(">I", head)
        if length > 2 * 1024 * 1024:
            fail(f"message of {length} bytes from the peer")
        if length == 0:
            msg = Message(-1, b"")
        else:
            body = self._recv_exact(length, deadline + self.timeout)
            if body is None:
                fail(f"a {length}-byte message did not arrive in full")
            msg = Message(body[0], body[1:])
        self.received.append(msg)
        return msg

    def send(self, msg_id: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">IB", 1 + len(payload), msg_id) + payload)

    def read_opening(self, quiet: float = 1.5, limit: int = 16) -> list[Message]:
        """Messages the peer sends on its own after the handshake, until it is quiet for ``quiet`` s."""
        out: list[Message] = []
        while len(out) < limit:
            msg = self.read_message(timeout=quiet)
            if msg is None:
                break
            out.append(msg)
        return out


def bdecode(data: bytes) -> Any:
    lt_ = require_libtorrent()
    return lt_.bdecode(data)
