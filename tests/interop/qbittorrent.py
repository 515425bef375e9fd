"""qBittorrent-nox (Debian 4.5, libtorrent 2.0 inside) as an interop peer, confined to loopback.

``QBittorrent`` runs one ``qbittorrent-nox`` with a private profile directory on its own 127.0.0.N,
with DHT, LSD, PEX, UPnP/NAT-PMP, GeoIP look-ups and queueing off, and drives it through its Web API
v2 (no login: Web UI authentication is off for loopback clients). ``protocol`` picks what it speaks
(``"UTP"`` = uTP only, ``"TCP"``, ``"Both"``); ``encryption`` is its MSE setting (0 prefer, 1 require,
2 off). ``start_qbittorrent(harness, ...)`` starts one that the harness stops at teardown.

Every wait is bounded and ends the test with ``pytest.fail`` (never a skip), quoting qBittorrent's own
log, its peer list and its Web UI peer log. A missing ``qbittorrent-nox`` is a failure too.

Quirks of 4.5.2 seen here:

* It logs "Failed to find the configured network address to listen on" for any 127.0.0.N other than
  127.0.0.1 (the address is not listed on ``lo``), then listens on it anyway (bound to ``lo``).
* In uTP-only mode it still opens a TCP listening socket; libtorrent refuses TCP peers on it.
* ``torrents/add`` answers 200 ``Fails.`` for a torrent it already has, HTTP 415 for a bad file.
* It lists a freshly checked torrent as seeding (``stalledUP``) up to ~1 s before its libtorrent
  accepts peers for it; until then (and whenever it has no active torrent) it answers a uTP SYN with
  ST_FIN. ``wait_seeding`` therefore also probes the peer port (``wait_accepting``).
* It prints "QtSingleCoreApplication: listen on local socket failed ... error 17" on stderr at every
  start; harmless (each instance has its own profile).
* ``sync/torrentPeers`` names the connection type ``μTP`` (uTP) or ``BT`` (TCP); libtorrent
  connects to a peer given with ``torrents/addPeers`` at once, but waits before redialling one
  that failed, so the waits here repeat ``addPeers`` every few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from peers import (
    STARTUP_TIMEOUT,
    TRANSFER_TIMEOUT,
    Harness,
    ManagedProcess,
    TorrentFile,
    fail,
    next_loopback_ip,
    require_program,
    tail,
)
from ports import free_port

#: qBittorrent's names for the transport of a peer connection (``sync/torrentPeers`` "connection").
#: 4.5 writes uTP with a Greek mu; a micro sign or plain "u" is accepted too.
UTP_CONNECTION_NAMES = frozenset({"\u03bcTP", "\u00b5TP", "uTP", "UTP"})
TCP_CONNECTION_NAMES = frozenset({"BT"})

#: torrents/info states of a complete torrent (4.5 API).
SEEDING_STATES = frozenset({"uploading", "stalledUP", "queuedUP", "forcedUP", "pausedUP"})
ERROR_STATES = frozenset({"error", "missingFiles"})
DOWNLOADING_STATES = frozenset({"downloading", "stalledDL", "queuedDL", "forcedDL", "pausedDL"})

#: How often a wait re-adds its peers (libtorrent backs off from a peer it failed to reach).
REDIAL_INTERVAL = 3.0
#: Bound for one Web API request.
API_TIMEOUT = 10.0


def is_utp(connection: str) -> bool:
    return connection in UTP_CONNECTION_NAMES


class QBittorrentError(Exception):
    """A Web API request that failed (HTTP error or refused); the waits turn it into ``fail``."""


class QBittorrent(ManagedProcess):
    """One ``qbittorrent-nox`` with its own profile, peer address and Web API address."""

    label = "qbittorrent"

    def __init__(self, workdir: Path, name: str = "qbittorrent", protocol: str = "UTP", encryption: int = 2,
                 extra_config: dict[str, dict[str, str]] | None = None) -> None:
        exe = require_program("qbittorrent-nox")
        if protocol not in ("UTP", "TCP", "Both"):
            raise ValueError(f"protocol must be UTP, TCP or Both, not {protocol!r}")
        if encryption not in (0, 1, 2):
            raise ValueError("encryption must be 0 (prefer), 1 (require) or 2 (off)")
        self.protocol = protocol
        self.encryption = encryption
        #: ``{"ip:port": {connection types}}`` of every peer ``peers()`` has seen.
        self.seen_connections: dict[str, set[str]] = {}
        self.bind_ip = next_loopback_ip()
        self.peer_port = free_port(self.bind_ip, udp_too=True)
        self.webui_port = free_port(self.bind_ip, udp_too=True)
        self.workdir = workdir
        self.profile = workdir / "profile"
        self.download_dir = workdir / "downloads"
        self.log_dir = workdir / "qblog"
        self.qb_log_path = self.log_dir / "qbittorrent.log"
        home = workdir / "home"
        for d in (self.profile / "qBittorrent" / "config", self.download_dir, self.log_dir, home):
            d.mkdir(parents=True, exist_ok=True)
        config = self._config()
        for section, values in (extra_config or {}).items():
            config.setdefault(section, {}).update(values)
        (self.profile / "qBittorrent" / "config" / "qBittorrent.conf").write_text(_ini(config))
        env = dict(os.environ)
        env["HOME"] = str(home)  # nothing may land in the real home directory
        env["XDG_CONFIG_HOME"] = str(home / ".config")
        env["XDG_DATA_HOME"] = str(home / ".local" / "share")
        env["XDG_CACHE_HOME"] = str(home / ".cache")
        env.pop("QBT_WEBUI_PORT", None)
        env.pop("QBT_TORRENTING_PORT", None)
        super().__init__([exe, f"--profile={self.profile}", f"--webui-port={self.webui_port}"],
                         workdir, name, env=env)
        try:
            self._wait_api()
        except BaseException:
            self.stop()
            raise

    def _config(self) -> dict[str, dict[str, str]]:
        return {
            "LegalNotice": {"Accepted": "true"},
            "Application": {
                "FileLogger\\Enabled": "true",
                "FileLogger\\Path": str(self.log_dir),
                "FileLogger\\Backup": "false",
                "FileLogger\\DeleteOld": "false",
                "FileLogger\\MaxSizeBytes": str(64 * 1024 * 1024),
            },
            "BitTorrent": {
                "Session\\DHTEnabled": "false",
                "Session\\LSDEnabled": "false",
                "Session\\PeXEnabled": "false",
                "Session\\AnonymousModeEnabled": "false",
                "Session\\Port": str(self.peer_port),
                "Session\\InterfaceAddress": self.bind_ip,
                "Session\\BTProtocol": self.protocol,
                "Session\\Encryption": str(self.encryption),
                "Session\\QueueingSystemEnabled": "false",
                "Session\\AddTorrentPaused": "false",
                "Session\\DefaultSavePath": str(self.download_dir),
                "Session\\TempPathEnabled": "false",
                "Session\\AddTrackersEnabled": "false",
                "Session\\TrackerFilteringEnabled": "false",
                "Session\\IPFilteringEnabled": "false",
                "Session\\GlobalMaxRatio": "-1",
                "Session\\GlobalMaxSeedingMinutes": "-1",
                # Rate limits (``add(download_limit=...)``) apply to uTP peers only with this on.
                "Session\\uTPRateLimited": "true",
                "Session\\ReannounceWhenAddressChanged": "false",
            },
            "Network": {
                "PortForwardingEnabled": "false",  # UPnP and NAT-PMP (4.5 key)
                "Proxy\\OnlyForTorrents": "false",
            },
            "Preferences": {
                "Connection\\ResolvePeerCountries": "false",  # no GeoIP database download
                "Connection\\UPnP": "false",  # the pre-4.3 spelling, in case it is migrated
                "General\\CheckForUpdates": "false",
                "Search\\SearchEnabled": "false",
                "WebUI\\Enabled": "true",
                "WebUI\\Address": self.bind_ip,
                "WebUI\\Port": str(self.webui_port),
                "WebUI\\UseUPnP": "false",
                "WebUI\\LocalHostAuth": "false",
                "WebUI\\AuthSubnetWhitelistEnabled": "true",
                "WebUI\\AuthSubnetWhitelist": "127.0.0.0/8",
                "WebUI\\CSRFProtection": "false",
                "WebUI\\ClickjackingProtection": "false",
                "WebUI\\HostHeaderValidation": "false",
                "WebUI\\HTTPS\\Enabled": "false",
            },
            "RSS": {"AutoDownloader\\EnableProcessing": "false", "Session\\EnableProcessing": "false"},
        }

    # -- addresses and logs

    @property
    def peer_address(self) -> str:
        return f"{self.bind_ip}:{self.peer_port}"

    @property
    def api_base(self) -> str:
        return f"http://{self.bind_ip}:{self.webui_port}/api/v2/"

    def log_files(self) -> list[tuple[str, Path]]:
        return [*super().log_files(), (f"{self.name} log", self.qb_log_path)]

    def log_excerpt(self, max_lines: int = 60) -> str:
        parts = [super().log_excerpt(max_lines), f"--- {self.name} log (tail):\n{tail(self.qb_log_path, max_lines)}"]
        if self.running():
            with contextlib.suppress(QBittorrentError, OSError, ValueError):
                entries = self.api_json("log/peers", {"last_known_id": "-1"})
                lines = [f"{e.get('ip')} blocked={e.get('blocked')} {e.get('reason', '')}" for e in entries]
                parts.append(f"--- {self.name} Web UI peer log:\n" + ("\n".join(lines[-max_lines:]) or "(empty)"))
        return "\n".join(parts)

    # -- Web API

    def api(self, path: str, params: dict[str, str] | None = None, data: dict[str, str] | None = None,
            files: dict[str, tuple[str, bytes]] | None = None) -> bytes:
        """GET ``path`` (or POST when ``data``/``files`` are given); returns the body."""
        url = self.api_base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Referer": f"http://{self.bind_ip}:{self.webui_port}"}
        body: bytes | None = None
        if files:
            boundary = uuid.uuid4().hex
            body = _multipart(boundary, data or {}, files)
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        elif data is not None:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=API_TIMEOUT) as resp:
                out: bytes = resp.read()
                return out
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode(errors="replace")
            raise QBittorrentError(f"{path}: HTTP {err.code} {detail}") from err

    def api_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return json.loads(self.api(path, params))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one request; a refused or failing request ends the test with the logs."""
        try:
            return fn()
        except (QBittorrentError, OSError, ValueError) as exc:
            fail(f"qBittorrent Web API {what} failed: {exc}\n" + self.log_excerpt())

    def _wait_api(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last: Exception | None = None
        while True:
            if not self.running():
                fail(f"qbittorrent-nox exited ({self.returncode}) at start-up\n" + self.log_excerpt())
            try:
                self.version = self.api("app/version").decode().strip()
                self.api_version = self.api("app/webapiVersion").decode().strip()
                prefs = self.api_json("app/preferences")
                break
            except (QBittorrentError, OSError, ValueError) as exc:
                last = exc
            if time.monotonic() > deadline:
                fail(f"qBittorrent's Web API did not answer within {STARTUP_TIMEOUT:.0f} s ({last})\n"
                     + self.log_excerpt())
            time.sleep(0.2)
        # The profile must have been read as written: a wrong key would silently leave DHT or UPnP on.
        expected = {"dht": False, "lsd": False, "pex": False, "upnp": False, "listen_port": self.peer_port,
                    "bittorrent_protocol": {"Both": 0, "TCP": 1, "UTP": 2}[self.protocol],
                    "encryption": self.encryption, "current_interface_address": self.bind_ip,
                    "resolve_peer_countries": False, "queueing_enabled": False}
        wrong = {k: (prefs.get(k), v) for k, v in expected.items() if prefs.get(k) != v}
        if wrong:
            fail(f"qBittorrent ignored its profile settings (got, wanted): {wrong}\n" + self.log_excerpt())
        self._wait_listening()

    def _wait_listening(self) -> None:
        """Wait for the "Successfully listening" lines for the peer port in qBittorrent's log."""
        want = ["UTP"] if self.protocol == "UTP" else ["TCP"] if self.protocol == "TCP" else ["TCP", "UTP"]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            text = self.qb_log_path.read_text(errors="replace") if self.qb_log_path.exists() else ""
            if all(f'Port: "{kind}/{self.peer_port}"' in text for kind in want):
                return
            if not self.running():
                fail(f"qbittorrent-nox exited ({self.returncode}) at start-up\n" + self.log_excerpt())
            if time.monotonic() > deadline:
                fail(f"qBittorrent did not report listening on {self.peer_address} ({'+'.join(want)}) "
                     f"within {STARTUP_TIMEOUT:.0f} s\n" + self.log_excerpt())
            time.sleep(0.1)

    # -- torrents

    def add(self, torrent: TorrentFile, save_path: Path | None = None, paused: bool = False,
            download_limit: int = 0) -> str:
        """Add ``torrent`` (a .torrent file) saving to ``save_path``; returns its info-hash (hex).

        qBittorrent checks existing data in ``save_path`` first, so a directory with the complete
        data makes it a seed (see ``wait_seeding``). ``download_limit`` (bytes/s, 0 = none) slows a
        download down so that its peer connections can be watched while it runs.
        """
        target = save_path or self.download_dir
        target.mkdir(parents=True, exist_ok=True)
        fields = {"savepath": str(target), "paused": "true" if paused else "false", "autoTMM": "false",
                  "contentLayout": "Original", "root_folder": "true", "sequentialDownload": "false"}
        if download_limit:
            fields["dlLimit"] = str(download_limit)
        reply = self._call("torrents/add", lambda: self.api(
            "torrents/add", data=fields, files={"torrents": (torrent.path.name, torrent.path.read_bytes())}))
        if reply.strip() != b"Ok.":
            fail(f"qBittorrent refused {torrent.path} ({reply!r})\n" + self.log_excerpt())
        h = torrent.info_hash_hex
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.find(h):
            if time.monotonic() > deadline:
                fail(f"qBittorrent does not list {h} {STARTUP_TIMEOUT:.0f} s after adding it\n" + self.log_excerpt())
            time.sleep(0.1)
        return h

    def find(self, info_hash: str) -> dict[str, Any] | None:
        got = self._call("torrents/info", lambda: self.api_json("torrents/info", {"hashes": info_hash}))
        return dict(got[0]) if got else None

    def info(self, info_hash: str) -> dict[str, Any]:
        st = self.find(info_hash)
        if st is None:
            fail(f"qBittorrent lost torrent {info_hash}\n" + self.log_excerpt())
        return st

    def add_peers(self, info_hash: str, peers: Iterable[str]) -> None:
        """Make qBittorrent connect to ``peers`` (``host:port``) for this torrent (torrents/addPeers)."""
        joined = "|".join(peers)
        self._call("torrents/addPeers", lambda: self.api(
            "torrents/addPeers", data={"hashes": info_hash, "peers": joined}))

    def peers(self, info_hash: str) -> dict[str, dict[str, Any]]:
        """The connected peers, ``{"ip:port": {"connection": "μTP"|"BT", "client": ..., ...}}``.

        Every call also records each peer's connection type in ``seen_connections`` (qBittorrent
        drops a peer as soon as both sides are seeds, so a test checks the types seen while the
        transfer ran).
        """
        got = self._call("sync/torrentPeers", lambda: self.api_json(
            "sync/torrentPeers", {"hash": info_hash, "rid": "0"}))
        peers = dict(got.get("peers") or {})
        for addr, peer in peers.items():
            self.seen_connections.setdefault(addr, set()).add(str(peer.get("connection")))
        return peers

    def describe_peers(self, info_hash: str) -> str:
        try:
            peers = self.api_json("sync/torrentPeers", {"hash": info_hash, "rid": "0"}).get("peers") or {}
        except (QBittorrentError, OSError, ValueError) as exc:
            return f"(peer list unavailable: {exc})"
        if not peers:
            return "(no peers)"
        keys = ("connection", "client", "flags", "progress", "downloaded", "uploaded", "dl_speed", "up_speed")
        return "\n".join(f"  {addr}: " + ", ".join(f"{k}={p.get(k)!r}" for k in keys) for addr, p in peers.items())

    def _status_line(self, info_hash: str, st: dict[str, Any]) -> str:
        keys = ("state", "progress", "amount_left", "downloaded", "uploaded", "num_seeds", "num_leechs", "dlspeed")
        return (", ".join(f"{k}={st.get(k)!r}" for k in keys)
                + f"\n{self.name} peers of {info_hash}:\n" + self.describe_peers(info_hash))

    def wait_seeding(self, info_hash: str, timeout: float = STARTUP_TIMEOUT, accepting: bool = True) -> dict[str, Any]:
        """Wait until qBittorrent has checked the data and seeds it (all pieces valid).

        With ``accepting`` (the default) it also waits until qBittorrent takes incoming peer
        connections (see ``wait_accepting``): it reports the torrent as seeding up to a second or so
        before its libtorrent stops turning peers away.
        """
        deadline = time.monotonic() + timeout
        incomplete_since: float | None = None
        while True:
            st = self.info(info_hash)
            state = st.get("state", "")
            now = time.monotonic()
            if state in ERROR_STATES:
                fail(f"qBittorrent cannot seed {info_hash}: {self._status_line(info_hash, st)}\n" + self.log_excerpt())
            if state in SEEDING_STATES and st.get("progress") == 1:
                if state != "pausedUP":
                    if accepting:
                        self.wait_accepting(info_hash, max(1.0, deadline - now))
                    return st
                self._call("torrents/resume", lambda: self.api("torrents/resume", data={"hashes": info_hash}))
            if state in DOWNLOADING_STATES:
                # Checked and found pieces missing (allow a moment for a check that has yet to start).
                incomplete_since = incomplete_since or now
                if now - incomplete_since > 5.0:
                    fail(f"qBittorrent checked {info_hash} and found the data incomplete: "
                         f"{self._status_line(info_hash, st)}\n" + self.log_excerpt())
            else:
                incomplete_since = None
            if now > deadline:
                fail(f"qBittorrent did not start seeding {info_hash} within {timeout:.0f} s: "
                     f"{self._status_line(info_hash, st)}\n" + self.log_excerpt())
            time.sleep(0.2)

    def wait_accepting(self, info_hash: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until qBittorrent accepts an incoming peer connection.

        libtorrent refuses incoming connections while none of its torrents is active; qBittorrent
        4.5 lists a freshly checked torrent as seeding (``stalledUP``) while its libtorrent torrent
        is still paused for up to about a second, and answers a uTP SYN with a FIN in that time.
        The probe: a uTP SYN from a throwaway UDP socket, which it must answer with ST_STATE (then
        a RESET closes it); in TCP-only mode, a plaintext BitTorrent handshake over TCP, which it
        must answer with its own (skipped when it requires encryption).
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.protocol != "TCP":
                ok, last = _probe_utp((self.bind_ip, self.peer_port))
            elif self.encryption != 1:
                ok, last = _probe_tcp((self.bind_ip, self.peer_port), bytes.fromhex(info_hash))
            else:
                return
            if ok:
                return
            if not self.running():
                fail(f"qbittorrent-nox exited ({self.returncode})\n" + self.log_excerpt())
            if time.monotonic() > deadline:
                fail(f"qBittorrent still refuses incoming peers for {info_hash} after {timeout:.0f} s "
                     f"(last probe: {last})\n" + self.log_excerpt())
            time.sleep(0.1)

    def wait_complete(self, info_hash: str, timeout: float = TRANSFER_TIMEOUT, reconnect: Sequence[str] = (),
                      context: Callable[[], str] | None = None) -> dict[str, Any]:
        """Wait until qBittorrent has every piece; re-adds ``reconnect`` peers every few seconds."""
        deadline = time.monotonic() + timeout
        next_dial = 0.0
        while True:
            st = self.info(info_hash)
            self.peers(info_hash)  # records connection types while the transfer runs
            if st.get("state") in ERROR_STATES:
                fail(f"qBittorrent torrent error: {self._status_line(info_hash, st)}\n"
                     + (context() + "\n" if context else "") + self.log_excerpt())
            if st.get("progress") == 1 and st.get("amount_left") == 0 and st.get("state") in SEEDING_STATES:
                return st
            now = time.monotonic()
            if reconnect and now >= next_dial:
                self.add_peers(info_hash, reconnect)
                next_dial = now + REDIAL_INTERVAL
            if now > deadline:
                fail(f"qBittorrent did not complete {info_hash} within {timeout:.0f} s: "
                     f"{self._status_line(info_hash, st)}\n" + (context() + "\n" if context else "")
                     + self.log_excerpt())
            time.sleep(0.1)

    def wait_peer(self, info_hash: str, match: Callable[[str, dict[str, Any]], bool] | None = None,
                  timeout: float = STARTUP_TIMEOUT, reconnect: Sequence[str] = (),
                  context: Callable[[], str] | None = None) -> tuple[str, dict[str, Any]]:
        """Wait for a connected peer (for which ``match(address, peer)`` holds); returns it."""
        deadline = time.monotonic() + timeout
        next_dial = 0.0
        while True:
            for addr, peer in self.peers(info_hash).items():
                if match is None or match(addr, peer):
                    return addr, peer
            now = time.monotonic()
            if reconnect and now >= next_dial:
                self.add_peers(info_hash, reconnect)
                next_dial = now + REDIAL_INTERVAL
            if now > deadline:
                fail(f"qBittorrent has no matching peer for {info_hash} after {timeout:.0f} s; peers:\n"
                     + self.describe_peers(info_hash) + "\n" + (context() + "\n" if context else "")
                     + self.log_excerpt())
            time.sleep(0.2)


def start_qbittorrent(harness: Harness, name: str = "qbittorrent", **kwargs: Any) -> QBittorrent:
    """A ``QBittorrent`` under the harness's work directory, stopped (SIGTERM) at teardown."""
    name = harness._name(name)
    qb = QBittorrent(harness.path(name), name=name, **kwargs)
    harness._owned.append(qb)
    return qb


# --------------------------------------------------------------------------------------------
# Helpers


def _probe_utp(address: tuple[str, int]) -> tuple[bool, str]:
    """Send a uTP SYN to ``address``; (accepted, what came back). Closes an accepted connection with
    ST_RESET. Header (BEP 29): type/version, extension, connection id, timestamp, timestamp
    difference, window, seq_nr, ack_nr."""
    recv_id = random.randrange(1, 0xFFFF)
    now = int(time.monotonic() * 1e6) & 0xFFFFFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        u.settimeout(0.5)
        u.sendto(struct.pack("!BBHIIIHH", 0x41, 0, recv_id, now, 0, 1 << 20, 1, 0), address)
        try:
            data, _ = u.recvfrom(2048)
        except OSError as exc:
            return False, f"no answer to a uTP SYN ({exc or 'timed out'})"
        kind = data[0] >> 4 if data else -1
        if kind == 2:  # ST_STATE: accepted
            u.sendto(struct.pack("!BBHIIIHH", 0x31, 0, (recv_id + 1) & 0xFFFF, now, 0, 0, 2, 0), address)
            return True, "ST_STATE"
        names = {0: "ST_DATA", 1: "ST_FIN", 3: "ST_RESET", 4: "ST_SYN"}
        return False, f"{names.get(kind, repr(data[:4]))} in answer to a uTP SYN"


def _probe_tcp(address: tuple[str, int], info_hash: bytes) -> tuple[bool, str]:
    """A plaintext BitTorrent handshake over TCP; (answered with a handshake, what happened)."""
    ours = b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-PR0001-" + os.urandom(12)
    try:
        with socket.create_connection(address, timeout=1.0) as s:
            s.sendall(ours)
            got = b""
            while len(got) < 48:
                chunk = s.recv(68 - len(got))
                if not chunk:
                    break
                got += chunk
    except OSError as exc:
        return False, f"TCP handshake probe: {exc}"
    if got[:20] == ours[:20] and got[28:48] == info_hash:
        return True, "handshake"
    return False, f"TCP handshake probe got {got[:48]!r}"


def _ini(config: dict[str, dict[str, str]]) -> str:
    out = []
    for section, values in config.items():
        out.append(f"[{section}]")
        out += [f"{k}={v}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


def _multipart(boundary: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    parts: list[bytes] = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, (filename, content) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
                     f"Content-Type: application/x-bittorrent\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)
