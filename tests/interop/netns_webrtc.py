"""Driver for test_webrtc_libtorrent.py: libtorrent and the bridge trade a torrent over WebRTC only.

Run as ``unshare -n python tests/interop/netns_webrtc.py DIRECTION WORKDIR [--bridge-tcp loopback|veth]``
(the test does that). It must run in a private network namespace: it adds a veth pair there
(``netns.setup_veth``), because libtorrent's ICE agent (libjuice) never gathers candidates on 127/8.

* ``bridge-seeds``: the bridge seeds a torrent made by ``bridge create``; libtorrent downloads it.
* ``libtorrent-seeds``: libtorrent seeds a torrent made by libtorrent; the bridge downloads it.
* ``libtorrent-seeds-magnet``: the same, the bridge starting from a magnet link (metadata over WebRTC).

The only tracker is the bridge's embedded one (``python -m bridge tracker``) on ``VETH_A``, and the
torrent names only its ws:// URL, so both sides find each other only as WebTorrent peers. libtorrent
runs in this process with TCP and uTP off (incoming and outgoing) and no DHT/LSD/UPnP/NAT-PMP/PEX, and
it is never told any address of the bridge. Its WebRTC gathers candidates on the veth addresses; the
bridge's (aioice) on ``VETH_B`` (``--webrtc-host``). By default the bridge's TCP listener is on the
namespace's 127.0.0.1 (``--bridge-tcp loopback``), an address no one is ever told (the torrent has no
HTTP/UDP tracker), so even a libtorrent that dialled TCP could not find it.

Output: one JSON object on the last line of stdout (``ok``, ``error``, digests, the bridge's
``uploaded=/downloaded=`` totals, its ``connected (KIND, ...)`` log lines, libtorrent's peer_connect_alert socket types,
timings). Logs of every program are in WORKDIR/logs. Every wait is bounded; the whole run ends within
``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

from netns import VETH_A, VETH_B, NamespaceError, setup_veth

REPO_ROOT = Path(__file__).resolve().parents[2]
DIRECTIONS = ("bridge-seeds", "libtorrent-seeds", "libtorrent-seeds-magnet")
PIECE_LENGTH = 64 * 1024
#: name -> size. Sizes are not multiples of the piece or block length, so pieces straddle files.
LAYOUT: tuple[tuple[str, int], ...] = (
    ("alpha.bin", 6 * 1024 * 1024 + 12_345),
    ("sub/readme.txt", 13),
    ("sub/deeper/beta.bin", 4 * 1024 * 1024 + 777),
)
STATS_RE = re.compile(r"uploaded=(\d+) downloaded=(\d+)")
SOCKET_TYPE_RE = re.compile(r"\(([\w/ ]+)\)\s*$")
CONNECTED_RE = re.compile(r"\[[^\]]*\] connected \((\w+), (\w+)\)")


class DriverError(Exception):
    pass


# -------------------------------------------------------------------------------------------- data


def make_payload(root: Path, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    digests = {}
    for rel, size in LAYOUT:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def tree_sha256(root: Path) -> dict[str, str]:
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return out


# ------------------------------------------------------------------------------------- processes


class Child:
    """A child process in this process group (so killing the driver's group ends it too), output in files."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.out_path = logs / f"{name}.stdout.log"
        self.err_path = logs / f"{name}.stderr.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, deadline: float, stream: str = "stdout") -> re.Match[str]:
        rx = re.compile(pattern, re.M)
        while True:
            m = rx.search(self.stdout() if stream == "stdout" else self.stderr())
            if m:
                return m
            if not self.running():
                raise DriverError(f"{self.name} exited ({self.proc.returncode}) before printing /{pattern}/ on {stream}")
            if time.monotonic() > deadline:
                raise DriverError(f"{self.name} printed no /{pattern}/ on {stream} in time")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def bridge_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args]


# ------------------------------------------------------------------------------------ libtorrent


class Libtorrent:
    """An in-process libtorrent session that can reach peers through WebTorrent (WebRTC) only."""

    def __init__(self, logs: Path) -> None:
        import libtorrent as lt

        self.lt = lt
        self.log = (logs / "libtorrent.alerts.log").open("a")
        settings: dict[str, Any] = {
            # No peer ever uses this port (TCP and uTP are off), but libtorrent announces once per listen
            # socket: with none ("") it never announces. Its WebRTC candidates do not depend on it: libjuice
            # gathers on every non-loopback address by itself (here both veth ends, one UDP port).
            "listen_interfaces": f"{VETH_A}:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_tcp": False,
            "enable_incoming_tcp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "webtorrent_stun_server": "",
            "min_announce_interval": 1,
            "stop_tracker_timeout": 1,
            "user_agent": "libtorrent-webrtc-interop-test",
            "alert_mask": int(lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker
                              | lt.alert_category.peer | lt.alert_category.connect | lt.alert_category.storage),
        }
        self.connections: list[dict[str, str]] = []
        self.session = lt.session(settings, 0)  # no default plugins: no ut_pex
        self.session.add_extension("ut_metadata")
        self.pump()

    def pump(self) -> list[Any]:
        alerts = list(self.session.pop_alerts())
        for a in alerts:
            message = a.message()
            self.log.write(f"{time.strftime('%H:%M:%S')} {type(a).__name__}: {message}\n")
            # "peer 10.77.0.2:53020 outgoing connection to peer (RTC)": the socket type ends the message
            if isinstance(a, (self.lt.peer_connect_alert, self.lt.incoming_connection_alert)):
                m = SOCKET_TYPE_RE.search(message)
                self.connections.append({"endpoint": f"{a.endpoint[0]}:{a.endpoint[1]}" if hasattr(a, "endpoint")
                                         else "?", "socket": m.group(1) if m else "?", "message": message})
        self.log.flush()
        return alerts

    def add(self, torrent: Path, save_path: Path) -> Any:
        lt = self.lt
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(torrent))
        atp.save_path = str(save_path)
        atp.flags = (atp.flags | lt.torrent_flags.disable_pex) & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        save_path.mkdir(parents=True, exist_ok=True)
        return self.session.add_torrent(atp)

    def wait(self, handle: Any, want: str, deadline: float) -> Any:
        """Until the torrent is seeding (after a check of the data) or ``want == "finished"``."""
        while True:
            self.pump()
            st = handle.status()
            if st.errc.value():
                raise DriverError(f"libtorrent torrent error: {st.errc.message()}")
            if st.is_seeding or (want == "finished" and st.is_finished):
                return st
            if time.monotonic() > deadline:
                raise DriverError(f"libtorrent not {want} in time (state {st.state}, progress {st.progress:.3f}, "
                                  f"{st.num_peers} peers, {st.total_payload_download} bytes in)")
            time.sleep(0.1)

    def make_torrent(self, source: Path, out: Path, announce: str) -> None:
        lt = self.lt
        fs = lt.file_storage()
        lt.add_files(fs, str(source))
        ct = lt.create_torrent(fs, PIECE_LENGTH, lt.create_torrent.v1_only)
        ct.add_tracker(announce, 0)
        ct.set_creator("webtorrent-bridge WebRTC interop test (libtorrent)")
        lt.set_piece_hashes(ct, str(source.parent))
        out.write_bytes(lt.bencode(ct.generate()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pump()
            for h in self.session.get_torrents():
                self.session.remove_torrent(h)
            self.session.pause()
            self.pump()
        self.log.close()
        del self.session


# ------------------------------------------------------------------------------------------- run


def run(direction: str, work: Path, bridge_tcp: str, deadline: float, result: dict[str, Any]) -> None:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    lt_peer: Libtorrent | None = None
    t0 = time.monotonic()
    timings = result.setdefault("seconds", {})
    try:
        setup_veth()
        result["stage"] = "tracker"
        tracker = Child("tracker", bridge_argv("-v", "tracker", "--host", VETH_A, "--port", "0",
                                              "--interval", "15"), logs)
        children.append(tracker)
        ws_url = tracker.wait_for(r"ws://\S+", deadline).group(0)
        result["tracker"] = ws_url
        timings["tracker"] = round(time.monotonic() - t0, 2)

        src_parent = work / "src"
        src = src_parent / "payload"
        expected = make_payload(src, seed=20240611 + DIRECTIONS.index(direction))
        result["expected"] = expected
        result["total_size"] = total = sum(size for _, size in LAYOUT)
        torrent = work / "payload.torrent"
        tcp_host = "127.0.0.1" if bridge_tcp == "loopback" else VETH_B
        net_args = ["--host", tcp_host, "--port", "0", "--webrtc-host", VETH_B]
        lt_peer = Libtorrent(logs)

        if direction == "bridge-seeds":
            result["stage"] = "bridge create"
            made = subprocess.run(bridge_argv("create", str(src), "-o", str(torrent), "--announce", ws_url,
                                              "--piece-length", str(PIECE_LENGTH)),
                                  cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
            if made.returncode != 0:
                raise DriverError(f"bridge create failed ({made.returncode}): {made.stderr}")
            result["stage"] = "bridge seed"
            bridge = Child("bridge-seed", bridge_argv("-v", "seed", str(torrent), "-o", str(src_parent), *net_args),
                           logs)
            children.append(bridge)
            bridge.wait_for(r"^magnet:\?", deadline)  # printed once the data is verified
            timings["bridge_seeding"] = round(time.monotonic() - t0, 2)
            result["stage"] = "libtorrent download"
            out = work / "lt-out"
            handle = lt_peer.add(torrent, out)
            t1 = time.monotonic()
            lt_peer.wait(handle, "finished", deadline)
            timings["transfer"] = round(time.monotonic() - t1, 2)
            result["stage"] = "stop bridge"
            result["bridge_rc"] = bridge.stop(signal.SIGINT)
        else:
            result["stage"] = "libtorrent seed"
            lt_peer.make_torrent(src, torrent, ws_url)
            handle = lt_peer.add(torrent, src_parent)
            lt_peer.wait(handle, "seeding", deadline)
            timings["libtorrent_seeding"] = round(time.monotonic() - t0, 2)
            result["stage"] = "bridge download"
            source = str(torrent)
            if direction == "libtorrent-seeds-magnet":
                info_hash = lt_peer.lt.torrent_info(str(torrent)).info_hashes().v1.to_bytes().hex()
                source = f"magnet:?xt=urn:btih:{info_hash}&tr={urllib.parse.quote(ws_url, safe='')}"
            result["bridge_source"] = source
            out = work / "bridge-out"
            bridge = Child("bridge-download", bridge_argv("-v", "download", source, "-o", str(out), *net_args), logs)
            children.append(bridge)
            t1 = time.monotonic()
            while bridge.running():
                lt_peer.pump()
                if time.monotonic() > deadline:
                    raise DriverError("the bridge did not finish the download in time")
                time.sleep(0.1)
            timings["transfer"] = round(time.monotonic() - t1, 2)
            result["bridge_rc"] = bridge.proc.returncode

        result["stage"] = "checks"
        lt_peer.pump()
        st = handle.status()
        result["libtorrent_totals"] = {"uploaded": st.total_payload_upload, "downloaded": st.total_payload_download}
        result["libtorrent_connections"] = lt_peer.connections
        result["source_dir"], result["download_dir"] = str(src), str(out / "payload")
        result["actual"] = tree_sha256(out / "payload")
        err = bridge.stderr()
        stats = STATS_RE.findall(err)
        result["bridge_stats"] = {"uploaded": int(stats[-1][0]), "downloaded": int(stats[-1][1])} if stats else None
        result["bridge_connections"] = [f"{kind} {way}" for kind, way in CONNECTED_RE.findall(err)]
        result["stage"] = "done"
        problems = []
        if result["actual"] != expected:
            problems.append("the downloaded files differ from the source (SHA-256)")
        if result["bridge_rc"] != 0:
            problems.append(f"the bridge exited with {result['bridge_rc']}")
        moved = (result["bridge_stats"] or {}).get("uploaded" if direction == "bridge-seeds" else "downloaded", 0)
        if moved < total:
            problems.append(f"the bridge reports {moved} payload bytes moved, less than the {total} of the torrent")
        result["ok"] = not problems
        if problems:
            result["error"] = "; ".join(problems)
    finally:
        if lt_peer is not None:
            lt_peer.close()
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop(signal.SIGINT, timeout=10)
        timings["total"] = round(time.monotonic() - t0, 2)


def _terminated(signum: int, frame: Any) -> None:
    raise DriverError("terminated (SIGTERM)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("direction", choices=DIRECTIONS)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--bridge-tcp", choices=("loopback", "veth"), default="loopback",
                    help="where the bridge's TCP listener is: 127.0.0.1 (unreachable from libtorrent) or VETH_B")
    ap.add_argument("--deadline", type=float, default=110.0, help="seconds for the whole run")
    args = ap.parse_args()
    deadline = time.monotonic() + args.deadline
    result: dict[str, Any] = {"ok": False, "direction": args.direction, "bridge_tcp": args.bridge_tcp, "stage": "start"}
    # SIGTERM (a timeout in the test) ends the run through the finally clauses, children included.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args.direction, args.workdir, args.bridge_tcp, deadline, result)
    except (DriverError, NamespaceError) as e:
        result["error"] = f"{result['stage']}: {e}"
    except Exception:
        result["error"] = f"{result['stage']}: {traceback.format_exc()}"
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
