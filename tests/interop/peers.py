"""Real BitTorrent peers for the interop tests, all confined to loopback.

Everything here is synchronous and bounded in time: every wait takes a timeout and ends the
test with ``pytest.fail`` (never a skip) when it runs out, quoting the logs of the programs
involved. A missing program (libtorrent bindings, transmission-daemon, aria2c, node, the npm
tracker) is also a failure, with a message that says to run ``scripts/setup``.

The pieces:

* ``make_payload`` / ``tree_sha256``: random test data and its digests.
* ``make_torrent_libtorrent`` / ``make_torrent_mktorrent``: .torrent files made without the bridge.
* ``LibtorrentPeer``: an in-process libtorrent session (TCP only, no DHT/LSD/UPnP/NAT-PMP/PEX).
* ``Tracker``: bittorrent-tracker (HTTP + UDP) from ``tests/tools/tracker.mjs``, with scrape.
* ``Transmission``: a transmission-daemon on its own 127.0.0.N, driven over its JSON RPC.
* ``Aria2``: one aria2c download (it finds peers only through a tracker).
* ``BridgeProcess``: ``python -m bridge ...`` as a subprocess.
* ``Harness``: owns all of the above for one test and tears them down in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from ports import free_port

lt: Any
_LT_IMPORT_ERROR: ImportError | None
try:
    import libtorrent as lt
except ImportError as exc:  # reported by require_libtorrent(), never skipped
    lt = None
    _LT_IMPORT_ERROR = exc
else:
    _LT_IMPORT_ERROR = None

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tests" / "tools"

#: Bound for moving a 32 MiB torrent between two peers on loopback. Real peers take 1-10 s.
TRANSFER_TIMEOUT = 120.0
#: Transmission 3.00 unchokes a new peer only at its next rechoke (every 10 s) and then moves
#: at most ~7.6 MB/s per peer (its own limit), less on a busy machine: a longer bound.
TRANSMISSION_TRANSFER_TIMEOUT = 180.0
#: Bound for a program to start up (bind its port, verify its data, answer RPC).
STARTUP_TIMEOUT = 60.0
#: Bound for a process to exit after SIGINT/SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: Piece length of the torrents made for the tests. Small enough that a 32 MiB torrent has
#: 128+ pieces (so several peers can trade them), large enough to be ordinary.
PIECE_LENGTH = 256 * 1024

SETUP_HINT = "run scripts/setup to install the interop test peers"
LISTENING_RE = re.compile(r"listening on (\S+):(\d+)")
STATS_RE = re.compile(r"uploaded=(\d+) downloaded=(\d+)")


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


# --------------------------------------------------------------------------------------------
# Addresses


_loopback_counter = itertools.count()


def next_loopback_ip() -> str:
    """A fresh 127.0.0.N (N in 10..249) for a client that must have an address of its own.

    Transmission tracks peers by IP only and refuses a second connection from an address whose
    peer already finished, so each Transmission and aria2 instance gets its own address.
    The bridge and libtorrent stay on 127.0.0.1.
    """
    return f"127.0.0.{10 + next(_loopback_counter) % 240}"


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        fail(f"{name} is not installed (not on PATH); {SETUP_HINT}")
    return path


def require_libtorrent() -> Any:
    if lt is None:
        fail(f"the libtorrent Python bindings cannot be imported ({_LT_IMPORT_ERROR}); {SETUP_HINT}")
    return lt


# --------------------------------------------------------------------------------------------
# Test data


@dataclass(frozen=True)
class Payload:
    """Random data on disk that the tests share (read-only by convention).

    ``base`` holds ``multi/`` (a nested multi-file tree) and ``single.bin``. A torrent made of
    ``base / "multi"`` is named ``multi``; seeders use ``base`` as their save path.
    """

    base: Path
    multi: Path
    single: Path
    multi_sha256: dict[str, str]
    single_sha256: str

    @property
    def multi_size(self) -> int:
        return sum(p.stat().st_size for p in self.multi.rglob("*") if p.is_file())


#: Sizes are deliberately not multiples of the piece length (or of 16 KiB blocks), so pieces
#: straddle file boundaries; one file is smaller than a block and sits inside a single piece.
MULTI_LAYOUT: tuple[tuple[str, int], ...] = (
    ("top-level.bin", 5 * 1024 * 1024 + 123),
    ("docs/readme.txt", 13),
    ("docs/deeper/alpha.dat", 7 * 1024 * 1024 + 4567),
    ("docs/deeper/nested/beta.dat", 11 * 1024 * 1024 + 99_999),
    ("media/gamma.bin", 9 * 1024 * 1024 - 777),
    ("media/delta.bin", 333_333),
)
SINGLE_SIZE = 9 * 1024 * 1024 + 4321


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * 1024 * 1024)
            f.write(rng.randbytes(n))
            left -= n


def make_payload(base: Path, seed: int = 20240611) -> Payload:
    rng = random.Random(seed)
    multi = base / "multi"
    for rel, size in MULTI_LAYOUT:
        _write_random(multi / rel, size, rng)
    single = base / "single.bin"
    _write_random(single, SINGLE_SIZE, rng)
    total = sum(size for _, size in MULTI_LAYOUT)
    assert total >= 32 * 1024 * 1024, total
    return Payload(
        base=base,
        multi=multi,
        single=single,
        multi_sha256=tree_sha256(multi),
        single_sha256=sha256_file(single),
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` for every regular file under ``root``."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def describe_tree_mismatch(expected: dict[str, str], actual: dict[str, str], root: Path) -> str:
    lines = [f"contents of {root} differ from the source data:"]
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            lines.append(f"  missing: {name}")
        elif name not in expected:
            size = (root / name).stat().st_size
            lines.append(f"  unexpected: {name} ({size} bytes)")
        elif expected[name] != actual[name]:
            size = (root / name).stat().st_size
            lines.append(f"  wrong content: {name} ({size} bytes)")
    return "\n".join(lines)


def _with_context(context: Callable[[], str] | None) -> str:
    """The caller's logs (usually the bridge's), placed before the helper's own program's logs."""
    return (context() + "\n") if context else ""


def wait_tree(root: Path, expected: dict[str, str], timeout: float = TRANSFER_TIMEOUT,
              context: Callable[[], str] | None = None, alive: Callable[[], bool] | None = None,
              interval: float = 1.0) -> None:
    """Poll until the files under ``root`` are exactly ``expected`` (for a peer that keeps running).

    ``alive`` (e.g. ``BridgeProcess.running``) ends the wait early when the writer has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        actual = tree_sha256(root)
        if actual == expected:
            return
        if alive is not None and not alive():
            fail("the downloader died: " + describe_tree_mismatch(expected, actual, root) + "\n"
                 + _with_context(context))
        if time.monotonic() > deadline:
            fail(f"not complete after {timeout:.0f} s: " + describe_tree_mismatch(expected, actual, root) + "\n"
                 + _with_context(context))
        time.sleep(interval)


def copy_tree(source: Path, dest_parent: Path) -> Path:
    """Copy ``source`` (file or directory) into ``dest_parent``; returns the copy.

    Seeds that are being tested (the bridge) get a private copy of the data, so a bug that
    writes to it cannot spoil the shared payload for later tests.
    """
    dest_parent.mkdir(parents=True, exist_ok=True)
    dest = dest_parent / source.name
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copy2(source, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Torrents made independently of the bridge


@dataclass(frozen=True)
class TorrentFile:
    path: Path
    info_hash: bytes  #: v1 info-hash (SHA-1 of the bencoded info dict)
    name: str
    piece_length: int
    total_size: int
    num_files: int
    announce: tuple[str, ...]

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()


def read_torrent(path: Path, announce: Sequence[str] = ()) -> TorrentFile:
    lt_ = require_libtorrent()
    ti = lt_.torrent_info(str(path))
    return TorrentFile(
        path=path,
        info_hash=ti.info_hashes().v1.to_bytes(),
        name=ti.name(),
        piece_length=ti.piece_length(),
        total_size=ti.total_size(),
        num_files=ti.num_files(),
        announce=tuple(announce),
    )


def make_torrent_libtorrent(
    source: Path,
    out: Path,
    announce: Sequence[str] = (),
    piece_length: int = PIECE_LENGTH,
) -> TorrentFile:
    """A v1-only torrent of ``source`` (file or directory) made by libtorrent.

    Each announce URL gets its own tier. The torrent has no pad files, so pieces cross file
    boundaries (``make_payload`` relies on this).
    """
    lt_ = require_libtorrent()
    ct = lt_.create_torrent(lt_.list_files(str(source)), piece_length, lt_.create_torrent.v1_only)
    for tier, url in enumerate(announce):
        ct.add_tracker(url, tier)
    ct.set_creator("webtorrent-bridge interop tests (libtorrent)")
    lt_.set_piece_hashes(ct, str(source.parent))
    entry = ct.generate()
    files = entry[b"info"].get(b"files", [])
    if any(b"attr" in f for f in files):
        fail(f"libtorrent added pad files to {source}; the tests want pieces to cross file boundaries")
    out.write_bytes(lt_.bencode(entry))
    return read_torrent(out, announce)


def make_torrent_mktorrent(
    source: Path,
    out: Path,
    announce: Sequence[str],
    piece_length: int = PIECE_LENGTH,
) -> TorrentFile:
    """A torrent of ``source`` made by mktorrent (which insists on at least one announce URL)."""
    exe = require_program("mktorrent")
    if not announce:
        raise ValueError("mktorrent needs an announce URL")
    exponent = piece_length.bit_length() - 1
    if 1 << exponent != piece_length:
        raise ValueError("mktorrent piece length must be a power of two")
    cmd = [exe, "-l", str(exponent), "-o", str(out)]
    for url in announce:
        cmd += ["-a", url]
    cmd.append(str(source))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    if res.returncode != 0:
        fail(f"mktorrent failed ({res.returncode}): {res.stdout}{res.stderr}")
    return read_torrent(out, announce)


# --------------------------------------------------------------------------------------------
# Logs


def tail(path: Path, max_lines: int = 80, max_chars: int = 20_000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    lines = text.splitlines()[-max_lines:]
    out = "\n".join(lines)
    return out[-max_chars:] if out else "(empty)"


# --------------------------------------------------------------------------------------------
# Subprocesses


class ManagedProcess:
    """A child process in its own process group, with stdout/stderr going to files."""

    label = "process"

    def __init__(self, cmd: Sequence[str], log_dir: Path, name: str, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdout_pipe: bool = False) -> None:
        self.cmd = list(cmd)
        self.name = name
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._stdout_file = None if stdout_pipe else self.stdout_path.open("wb")
        self._stderr_file = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=str(cwd) if cwd else None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._stdout_file,
            stderr=self._stderr_file,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_excerpt(self, max_lines: int = 60) -> str:
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with {rc}"
        parts = [f"--- {self.name} ({state}): {' '.join(self.cmd)}"]
        if self.stdout_path.exists() and self.stdout_path.stat().st_size:
            parts.append(f"--- {self.name} stdout (tail):\n{tail(self.stdout_path, max_lines)}")
        parts.append(f"--- {self.name} stderr (tail):\n{tail(self.stderr_path, max_lines)}")
        return "\n".join(parts)

    def log_files(self) -> list[tuple[str, Path]]:
        return [(f"{self.name} stderr", self.stderr_path), (f"{self.name} stdout", self.stdout_path)]

    def wait(self, timeout: float) -> int | None:
        """Wait for exit; None if still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
        """Send ``sig`` to the process group, wait up to ``timeout``, then SIGKILL it.

        Returns (exit code, whether it had to be killed). Safe to call more than once.
        """
        killed = False
        if self.proc.poll() is None:
            self._signal_group(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
        # Whatever happened to the leader, leave no member of its group behind.
        self._signal_group(signal.SIGKILL)
        rc = self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_files()
        return rc, killed

    def _close_files(self) -> None:
        for f in (self._stdout_file, self._stderr_file):
            if f is not None and not f.closed:
                f.close()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


class BridgeProcess(ManagedProcess):
    """``python -m bridge ARGS...`` run from the repository root."""

    label = "bridge"

    def __init__(self, args: Sequence[str], log_dir: Path, name: str = "bridge") -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONFAULTHANDLER", "1")
        self.args = [str(a) for a in args]
        super().__init__([sys.executable, "-m", "bridge", *self.args], log_dir, name, cwd=REPO_ROOT, env=env)

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> tuple[str, int]:
        """The (host, port) from the ``listening on HOST:PORT`` line the bridge prints on stderr."""
        deadline = time.monotonic() + timeout
        while True:
            m = LISTENING_RE.search(self.stderr_text())
            if m:
                host = m.group(1).strip("[]")
                if host in ("0.0.0.0", "::", ""):
                    host = "127.0.0.1"
                return host, int(m.group(2))
            if not self.running():
                fail(f"{self.name} exited ({self.returncode}) before printing 'listening on HOST:PORT'\n"
                     + self.log_excerpt())
            if time.monotonic() > deadline:
                fail(f"{self.name} printed no 'listening on HOST:PORT' within {timeout:.0f} s\n"
                     + self.log_excerpt())
            time.sleep(0.05)

    def wait_exit(self, timeout: float = TRANSFER_TIMEOUT) -> int:
        rc = self.wait(timeout)
        if rc is None:
            fail(f"{self.name} still running after {timeout:.0f} s\n" + self.log_excerpt())
        return rc

    def stop_cleanly(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT, as a user's Ctrl-C; fails the test if it does not exit in time."""
        rc, killed = self.stop(signal.SIGINT, timeout)
        if killed:
            fail(f"{self.name} ignored SIGINT for {timeout:.0f} s and was killed\n" + self.log_excerpt())
        return rc

    def stats(self) -> tuple[int, int]:
        """(uploaded, downloaded) payload bytes from the final ``uploaded=N downloaded=M`` line."""
        matches = STATS_RE.findall(self.stderr_text())
        if not matches:
            fail(f"{self.name} printed no 'uploaded=N downloaded=M' line\n" + self.log_excerpt())
        up, down = matches[-1]
        return int(up), int(down)

    def magnet(self) -> str:
        lines = [line for line in self.stdout_text().splitlines() if line.strip()]
        if not lines or not lines[-1].startswith("magnet:?"):
            fail(f"{self.name} did not print a magnet URI as its last line of stdout\n" + self.log_excerpt())
        return lines[-1].strip()


@dataclass(frozen=True)
class ScrapeResult:
    complete: int
    incomplete: int
    downloaded: int


class Tracker(ManagedProcess):
    """bittorrent-tracker (the npm reference tracker) serving HTTP and UDP on 127.0.0.1."""

    label = "tracker"

    def __init__(self, log_dir: Path, interval: int = 2, name: str = "tracker") -> None:
        node = require_program("node")
        script = TOOLS_DIR / "tracker.mjs"
        if not (TOOLS_DIR / "node_modules" / "bittorrent-tracker").is_dir():
            fail(f"bittorrent-tracker is not installed in {TOOLS_DIR}/node_modules; {SETUP_HINT}")
        super().__init__([node, str(script), "--host", "127.0.0.1", "--interval", str(interval)],
                         log_dir, name, cwd=TOOLS_DIR, stdout_pipe=True)
        try:
            self.info = self._read_ports()
        except BaseException:
            self.stop()
            raise
        self.http_announce: str = self.info["http_announce"]
        self.udp_announce: str = self.info["udp_announce"]
        self.http_port: int = int(self.info["http_port"])
        self.udp_port: int = int(self.info["udp_port"])

    def _read_ports(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                fail("tracker.mjs printed no ports within the start-up bound\n" + self.log_excerpt())
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    fail("tracker.mjs exited before printing its ports\n" + self.log_excerpt())
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        self.stdout_path.write_bytes(line + b"\n")
        try:
            info: dict[str, Any] = json.loads(line)
        except ValueError:
            fail(f"tracker.mjs printed {line!r}, not JSON\n" + self.log_excerpt())
        return info

    def scrape(self, info_hash: bytes) -> ScrapeResult:
        url = (f"http://127.0.0.1:{self.http_port}/scrape?info_hash="
               + urllib.parse.quote_from_bytes(info_hash, safe=""))
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
        decoded = require_libtorrent().bdecode(body) or {}
        entry: dict[bytes, Any] = {}
        for key, value in decoded.get(b"files", {}).items():
            # bittorrent-tracker 11 writes the binary info-hash key of a scrape reply as the
            # UTF-8 encoding of its bytes taken as Latin-1 (32 bytes here, not 20): undo that.
            if key == info_hash or _latin1_roundtrip(key) == info_hash:
                entry = value
        return ScrapeResult(
            complete=int(entry.get(b"complete", 0)),
            incomplete=int(entry.get(b"incomplete", 0)),
            downloaded=int(entry.get(b"downloaded", 0)),
        )

    def wait_for_peers(self, info_hash: bytes, complete: int = 0, incomplete: int = 0, total: int = 0,
                       timeout: float = STARTUP_TIMEOUT, context: Callable[[], str] | None = None) -> ScrapeResult:
        """Wait until the tracker knows at least ``complete`` seeds, ``incomplete`` leechers and
        ``total`` peers of either kind (scraping it over HTTP)."""
        deadline = time.monotonic() + timeout
        last: ScrapeResult | None = None
        while True:
            if not self.running():
                fail("the tracker died\n" + self.log_excerpt())
            with contextlib.suppress(OSError, urllib.error.URLError):
                last = self.scrape(info_hash)
                if (last.complete >= complete and last.incomplete >= incomplete
                        and last.complete + last.incomplete >= total):
                    return last
            if time.monotonic() > deadline:
                fail(f"tracker never saw {complete} seed(s), {incomplete} leecher(s), {total} peer(s) for "
                     f"{info_hash.hex()} within {timeout:.0f} s (last scrape: {last})\n"
                     + _with_context(context) + self.log_excerpt())
            time.sleep(0.2)


def _latin1_roundtrip(key: bytes) -> bytes | None:
    try:
        return key.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


class Transmission(ManagedProcess):
    """transmission-daemon 3.x on its own 127.0.0.N, TCP only (uTP off), unencrypted allowed.

    Transmission never dials loopback peers (it treats 127/8 as invalid), so the other side
    must connect to ``peer_address``. The RPC listens on the same 127.0.0.N.
    """

    label = "transmission"

    def __init__(self, workdir: Path, name: str = "transmission", encryption: int = 0,
                 utp: bool = False) -> None:
        exe = require_program("transmission-daemon")
        require_program("transmission-remote")
        self.bind_ip = next_loopback_ip()
        self.peer_port = free_port(self.bind_ip)
        self.rpc_port = free_port(self.bind_ip)
        self.config_dir = workdir / "config"
        self.download_dir = workdir / "downloads"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "bind-address-ipv4": self.bind_ip,
            "bind-address-ipv6": "::1",
            "peer-port": self.peer_port,
            "peer-port-random-on-start": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "port-forwarding-enabled": False,
            "utp-enabled": utp,
            "encryption": encryption,  # 0 = allow/prefer plain, 1 = prefer MSE, 2 = require MSE
            "blocklist-enabled": False,
            "rpc-enabled": True,
            "rpc-bind-address": self.bind_ip,
            "rpc-port": self.rpc_port,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": False,
            "rpc-host-whitelist-enabled": False,
            "download-dir": str(self.download_dir),
            "incomplete-dir-enabled": False,
            "watch-dir-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "speed-limit-up-enabled": False,
            "speed-limit-down-enabled": False,
            "alt-speed-enabled": False,
            "download-queue-enabled": False,
            "seed-queue-enabled": False,
            "queue-stalled-enabled": False,
            "start-added-torrents": True,
            "rename-partial-files": False,
            "message-level": 2,
        }
        (self.config_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        self._session_id = ""
        super().__init__([exe, "-f", "-g", str(self.config_dir)], workdir, name)
        try:
            self._wait_rpc()
        except BaseException:
            self.stop()
            raise

    @property
    def peer_address(self) -> str:
        return f"{self.bind_ip}:{self.peer_port}"

    def rpc(self, method: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"http://{self.bind_ip}:{self.rpc_port}/transmission/rpc"
        body = json.dumps({"method": method, "arguments": arguments or {}}).encode()
        for _ in range(3):
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"X-Transmission-Session-Id": self._session_id,
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    reply: dict[str, Any] = json.loads(resp.read())
            except urllib.error.HTTPError as err:
                if err.code == 409:  # CSRF dance: retry with the session id it hands out
                    self._session_id = err.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if reply.get("result") != "success":
                fail(f"transmission RPC {method} failed: {reply}\n" + self.log_excerpt())
            result: dict[str, Any] = reply.get("arguments", {})
            return result
        fail(f"transmission RPC {method}: no session id accepted\n" + self.log_excerpt())

    def _wait_rpc(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if not self.running():
                fail("transmission-daemon exited at start-up\n" + self.log_excerpt())
            try:
                self.rpc("session-get")
                return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                fail("transmission-daemon RPC did not come up\n" + self.log_excerpt())
            time.sleep(0.1)

    def add(self, torrent: TorrentFile, download_dir: Path | None = None) -> int:
        """Add ``torrent`` with transmission-remote; returns Transmission's torrent id."""
        target = download_dir or self.download_dir
        target.mkdir(parents=True, exist_ok=True)
        cmd = ["transmission-remote", f"{self.bind_ip}:{self.rpc_port}", "-a", str(torrent.path), "-w", str(target)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if res.returncode != 0 or "success" not in res.stdout:
            fail(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout}{res.stderr}\n" + self.log_excerpt())
        for t in self.rpc("torrent-get", {"fields": ["id", "hashString"]})["torrents"]:
            if t["hashString"].lower() == torrent.info_hash_hex:
                return int(t["id"])
        fail(f"transmission does not list {torrent.info_hash_hex} after adding it\n" + self.log_excerpt())

    STATUS_FIELDS = ("id", "name", "status", "percentDone", "leftUntilDone", "haveValid", "error",
                     "errorString", "uploadedEver", "downloadedEver", "peersConnected", "recheckProgress")

    def status(self, torrent_id: int) -> dict[str, Any]:
        got = self.rpc("torrent-get", {"ids": [torrent_id], "fields": list(self.STATUS_FIELDS)})["torrents"]
        if not got:
            fail(f"transmission lost torrent {torrent_id}\n" + self.log_excerpt())
        return dict(got[0])

    # status codes of Transmission 3: 0 stopped, 1 check-wait, 2 check, 3 dl-wait, 4 dl, 5 seed-wait, 6 seed
    def wait_seeding(self, torrent_id: int, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        """Wait until the torrent is verified complete and seeding."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(torrent_id)
            if st["error"]:
                fail(f"transmission torrent error: {st}\n" + self.log_excerpt())
            if st["status"] == 6 and st["leftUntilDone"] == 0:
                return st
            if st["status"] == 0 and st["percentDone"] >= 1.0:
                self.rpc("torrent-start", {"ids": [torrent_id]})
            if time.monotonic() > deadline:
                fail(f"transmission did not start seeding within {timeout:.0f} s: {st}\n" + self.log_excerpt())
            time.sleep(0.2)

    def wait_downloading(self, torrent_id: int, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        """Wait until the torrent is added, checked and ready to accept peers as a leecher."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(torrent_id)
            if st["status"] in (4, 6):
                return st
            if time.monotonic() > deadline:
                fail(f"transmission did not start the torrent within {timeout:.0f} s: {st}\n" + self.log_excerpt())
            time.sleep(0.1)

    def wait_complete(self, torrent_id: int, timeout: float = TRANSFER_TIMEOUT,
                      context: Callable[[], str] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(torrent_id)
            if st["leftUntilDone"] == 0 and st["percentDone"] >= 1.0 and st["status"] in (0, 5, 6):
                return st
            if time.monotonic() > deadline:
                fail(f"transmission did not complete the download within {timeout:.0f} s: {st}\n"
                     + _with_context(context) + self.log_excerpt())
            time.sleep(0.2)


class Aria2(ManagedProcess):
    """One ``aria2c`` download of a .torrent. aria2 learns peers only from trackers."""

    label = "aria2"

    def __init__(self, torrent: TorrentFile, out_dir: Path, log_dir: Path, name: str = "aria2",
                 extra_args: Sequence[str] = (), tracker_interval: int = 2) -> None:
        exe = require_program("aria2c")
        self.bind_ip = next_loopback_ip()
        self.listen_port = free_port(self.bind_ip)
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.aria2.log"
        cmd = [
            exe,
            "--no-conf=true",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            f"--interface={self.bind_ip}",
            f"--listen-port={self.listen_port}",
            "--seed-time=0",
            f"--bt-stop-timeout={int(TRANSFER_TIMEOUT)}",
            # Re-announce every few seconds (whatever the tracker says) so a peer that joins
            # the swarm after aria2 started is found quickly.
            f"--bt-tracker-interval={tracker_interval}",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--bt-save-metadata=false",
            "--summary-interval=0",
            "--show-console-readout=false",
            "--console-log-level=warn",
            f"--log={self.log_path}",
            "--log-level=info",
            # If the test process dies without tearing down, aria2 follows it.
            f"--stop-with-process={os.getpid()}",
            f"--dir={out_dir}",
            *extra_args,
            str(torrent.path),
        ]
        super().__init__(cmd, log_dir, name)

    def log_files(self) -> list[tuple[str, Path]]:
        return [*super().log_files(), (f"{self.name} log", self.log_path)]

    def log_excerpt(self, max_lines: int = 60) -> str:
        return super().log_excerpt(max_lines) + f"\n--- {self.name} log (tail):\n{tail(self.log_path, max_lines)}"

    def wait_done(self, timeout: float = TRANSFER_TIMEOUT, context: Callable[[], str] | None = None) -> int:
        rc = self.wait(timeout)
        if rc is None:
            fail(f"aria2c did not finish within {timeout:.0f} s\n" + _with_context(context) + self.log_excerpt())
        return rc


# --------------------------------------------------------------------------------------------
# libtorrent, in-process


class LibtorrentPeer:
    """An in-process libtorrent session bound to 127.0.0.1, TCP only, no DHT/LSD/UPnP/NAT-PMP/PEX."""

    label = "libtorrent"

    def __init__(self, log_dir: Path, name: str = "libtorrent", settings: dict[str, Any] | None = None) -> None:
        lt_ = require_libtorrent()
        self.lt = lt_
        self.name = name
        self.log_path = log_dir / f"{name}.alerts.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a")
        pack: dict[str, Any] = {
            "listen_interfaces": "127.0.0.1:0",
            "outgoing_interfaces": "",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_tcp": True,
            "enable_incoming_tcp": True,
            "allow_multiple_connections_per_ip": True,
            # Announce to a test tracker again within seconds when asked to, not minutes.
            "min_announce_interval": 1,
            "stop_tracker_timeout": 1,
            "user_agent": "libtorrent-interop-test",
            "alert_mask": int(
                lt_.alert_category.error
                | lt_.alert_category.status
                | lt_.alert_category.tracker
                | lt_.alert_category.peer
                | lt_.alert_category.connect
                | lt_.alert_category.storage
                | lt_.alert_category.performance_warning
            ),
        }
        pack.update(settings or {})
        # No default plugins: that leaves out ut_pex (PEX must be off). ut_metadata and
        # smart_ban are added back since ordinary clients have them.
        self.session = lt_.session(pack, 0)
        self.session.add_extension("ut_metadata")
        self.session.add_extension("smart_ban")
        self._closed = False
        self.pump_alerts()

    # -- bookkeeping

    @property
    def port(self) -> int:
        return int(self.session.listen_port())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pump_alerts(self) -> list[Any]:
        alerts = list(self.session.pop_alerts())
        for a in alerts:
            self._log.write(f"{time.strftime('%H:%M:%S')} {type(a).__name__}: {a.message()}\n")
        if alerts:
            self._log.flush()
        return alerts

    def log_files(self) -> list[tuple[str, Path]]:
        return [(f"{self.name} alerts", self.log_path)]

    def log_excerpt(self, max_lines: int = 60) -> str:
        self.pump_alerts()
        return f"--- {self.name} alerts (tail):\n{tail(self.log_path, max_lines)}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.pump_alerts()
            for h in self.session.get_torrents():
                self.session.remove_torrent(h)
            self.session.pause()
        self._log.close()
        # The session object shuts down when it is garbage collected.
        del self.session

    # -- torrents

    def add(self, torrent: TorrentFile, save_path: Path, trackers: Sequence[str] = (),
            upload_limit: int = 0) -> Any:
        atp = self.lt.add_torrent_params()
        atp.ti = self.lt.torrent_info(str(torrent.path))
        atp.save_path = str(save_path)
        atp.flags = (atp.flags | self.lt.torrent_flags.disable_pex) & ~self.lt.torrent_flags.auto_managed
        atp.flags &= ~self.lt.torrent_flags.paused
        if trackers:
            atp.trackers = list(trackers)
        if upload_limit:
            atp.upload_limit = upload_limit
        save_path.mkdir(parents=True, exist_ok=True)
        return self.session.add_torrent(atp)

    def add_seed(self, torrent: TorrentFile, save_path: Path, trackers: Sequence[str] = (),
                 upload_limit: int = 0, timeout: float = STARTUP_TIMEOUT) -> Any:
        """Add a torrent whose data is in ``save_path``; returns the handle once it seeds."""
        h = self.add(torrent, save_path, trackers, upload_limit)
        deadline = time.monotonic() + timeout
        checked = False
        while True:
            for a in self.pump_alerts():
                if isinstance(a, self.lt.torrent_checked_alert) and a.handle == h:
                    checked = True
            st = h.status()
            if st.errc.value():
                fail(f"libtorrent cannot seed {torrent.name}: {st.errc.message()}\n" + self.log_excerpt())
            if st.is_seeding:
                return h
            if checked and st.state == self.lt.torrent_status.states.downloading:
                fail(f"libtorrent checked the data of {torrent.name} in {save_path} and found only "
                     f"{st.num_pieces} of {h.torrent_file().num_pieces()} pieces valid\n" + self.log_excerpt())
            if time.monotonic() > deadline:
                fail(f"libtorrent did not verify {torrent.name} as complete within {timeout:.0f} s "
                     f"(state {st.state}, progress {st.progress:.3f})\n" + self.log_excerpt())
            time.sleep(0.05)

    def connect(self, handle: Any, address: str) -> None:
        host, port = split_address(address)
        handle.connect_peer((host, port))

    def wait_complete(self, handle: Any, timeout: float = TRANSFER_TIMEOUT, reconnect: Iterable[str] = (),
                      context: Callable[[], str] | None = None) -> Any:
        """Wait until ``handle`` has every piece; re-dials ``reconnect`` peers every few seconds.

        (libtorrent waits a minute before retrying a peer that failed, and the other side may
        not have been listening yet; connect_peer on a connected peer is a no-op.)
        """
        peers = list(reconnect)
        deadline = time.monotonic() + timeout
        next_dial = 0.0
        while True:
            self.pump_alerts()
            st = handle.status()
            if st.errc.value():
                fail(f"libtorrent torrent error: {st.errc.message()}\n" + _with_context(context)
                     + self.log_excerpt())
            if st.is_seeding or st.is_finished:
                self._flush(handle)
                return st
            now = time.monotonic()
            if peers and now >= next_dial:
                for p in peers:
                    self.connect(handle, p)
                next_dial = now + 3.0
            if now > deadline:
                fail(f"libtorrent did not complete the download within {timeout:.0f} s "
                     f"(progress {st.progress:.3f}, {st.num_peers} peers, "
                     f"{st.total_payload_download} bytes in)\n" + _with_context(context)
                     + self.log_excerpt())
            time.sleep(0.1)

    def _flush(self, handle: Any, timeout: float = 15.0) -> None:
        """Wait until libtorrent has written every downloaded piece to disk. A piece counts as had once
        hashed, which can be before its disk write ends: comparing files right away may read old data."""
        handle.flush_cache()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.pump_alerts():
                if isinstance(a, self.lt.cache_flushed_alert) and a.handle == handle:
                    return
            time.sleep(0.02)
        fail(f"libtorrent did not flush its disk cache within {timeout:.0f} s\n" + self.log_excerpt())

    def wait_announced(self, handle: Any, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for a successful tracker reply for ``handle``."""
        deadline = time.monotonic() + timeout
        while True:
            for a in self.pump_alerts():
                if isinstance(a, self.lt.tracker_reply_alert) and a.handle == handle:
                    return
            if time.monotonic() > deadline:
                fail(f"libtorrent got no tracker reply within {timeout:.0f} s\n" + self.log_excerpt())
            time.sleep(0.05)

    @staticmethod
    def totals(handle: Any) -> tuple[int, int]:
        """(payload uploaded, payload downloaded) of this torrent in this session."""
        st = handle.status()
        return int(st.total_payload_upload), int(st.total_payload_download)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


# --------------------------------------------------------------------------------------------
# One test's worth of peers


@dataclass
class Harness:
    """Starts peers for one test and stops them all, last started first, at teardown.

    ``workdir`` is the test's tmp_path. Every program gets a subdirectory and log files there;
    ``log_files`` lists them for the failure report.
    """

    workdir: Path
    _owned: list[Any] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict)

    def _name(self, base: str) -> str:
        n = self._counts.get(base, 0) + 1
        self._counts[base] = n
        return base if n == 1 else f"{base}{n}"

    def path(self, *parts: str) -> Path:
        p = self.workdir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def log_dir(self) -> Path:
        return self.path("logs")

    # -- factories

    def tracker(self, interval: int = 2) -> Tracker:
        t = Tracker(self.log_dir, interval=interval, name=self._name("tracker"))
        self._owned.append(t)
        return t

    def libtorrent(self, settings: dict[str, Any] | None = None, name: str = "libtorrent") -> LibtorrentPeer:
        peer = LibtorrentPeer(self.log_dir, name=self._name(name), settings=settings)
        self._owned.append(peer)
        return peer

    def transmission(self, **kwargs: Any) -> Transmission:
        name = self._name("transmission")
        t = Transmission(self.path(name), name=name, **kwargs)
        self._owned.append(t)
        return t

    def aria2(self, torrent: TorrentFile, out_dir: Path, **kwargs: Any) -> Aria2:
        a = Aria2(torrent, out_dir, self.log_dir, name=self._name("aria2"), **kwargs)
        self._owned.append(a)
        return a

    def bridge(self, *args: str | Path, name: str = "bridge") -> BridgeProcess:
        b = BridgeProcess([str(a) for a in args], self.log_dir, name=self._name(name))
        self._owned.append(b)
        return b

    def bridge_download(self, torrent: TorrentFile | Path, out_dir: Path, peers: Sequence[str] = (),
                        announce: Sequence[str] = (), seed: bool = False, extra: Sequence[str] = ()) -> BridgeProcess:
        source = torrent.path if isinstance(torrent, TorrentFile) else torrent
        args: list[str | Path] = ["download", source, "-o", out_dir, "--host", "127.0.0.1", "--port", "0"]
        for p in peers:
            args += ["--peer", p]
        for url in announce:
            args += ["--announce", url]
        if seed:
            args.append("--seed")
        args += list(extra)
        return self.bridge(*args)

    def bridge_seed(self, source: TorrentFile | Path, data_dir: Path | None = None, peers: Sequence[str] = (),
                    announce: Sequence[str] = (), extra: Sequence[str] = ()) -> BridgeProcess:
        src = source.path if isinstance(source, TorrentFile) else source
        args: list[str | Path] = ["seed", src]
        if data_dir is not None:
            args += ["-o", data_dir]
        args += ["--host", "127.0.0.1", "--port", "0"]
        for p in peers:
            args += ["--peer", p]
        for url in announce:
            args += ["--announce", url]
        args += list(extra)
        return self.bridge(*args, name="bridge-seed")

    def torrent(self, source: Path, announce: Sequence[str] = (), maker: str = "libtorrent",
                piece_length: int = PIECE_LENGTH) -> TorrentFile:
        out = self.path("torrents") / f"{source.name}.{maker}.{len(list(self.path('torrents').iterdir()))}.torrent"
        if maker == "libtorrent":
            return make_torrent_libtorrent(source, out, announce, piece_length)
        if maker == "mktorrent":
            return make_torrent_mktorrent(source, out, announce, piece_length)
        raise ValueError(maker)

    # -- reporting and teardown

    def log_files(self) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        for thing in self._owned:
            out += thing.log_files()
        return out

    def describe(self, only: type | None = None) -> str:
        """Log tails of every program (or only those of one class), the bridge's first, for
        assertion messages."""
        things = sorted(self._owned, key=lambda t: not isinstance(t, BridgeProcess))
        parts = [thing.log_excerpt() for thing in things if only is None or isinstance(thing, only)]
        return "\n".join(parts)

    def bridge_logs(self) -> str:
        return self.describe(BridgeProcess)

    def close(self) -> None:
        errors = []
        for thing in reversed(self._owned):
            try:
                if isinstance(thing, LibtorrentPeer):
                    thing.close()
                elif isinstance(thing, BridgeProcess):
                    thing.stop(signal.SIGINT)
                else:
                    thing.stop(signal.SIGTERM)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"{thing}: {exc!r}")
        if errors:
            raise RuntimeError("teardown errors: " + "; ".join(errors))
