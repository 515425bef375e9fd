"""uTP (BEP 29) between two bridges over an emulated WAN link: delay, loss, and a bottleneck shared with TCP.

Two private network namespaces joined by one link: side A (10.77.0.1) holds the seeding bridge and a
TCP sender, side B (10.77.0.2) the downloading bridge and a TCP receiver, so every byte crosses the link
(two addresses in one namespace would talk over its loopback, never the veth). The test runs this file
as a driver under ``unshare -n`` (namespace A); the driver makes namespace B (``unshare -n sleep``, joined
with ``nsenter``), the link, and every process, and prints one JSON result line. Nothing leaves the
namespaces. Both bridges run with ``--no-tcp --no-webrtc``: uTP is the only way between them.

The link, in the data direction (A -> B) only; B -> A (requests, ACKs) is a plain link. That keeps the
round trip at 50 ms, the delay of a long national path, and the run short enough for CI.

1. lossy: ``tc qdisc add dev veth0 root netem delay 50ms loss 2%``. A TCP flow runs alone, then the
   bridge downloads the torrent over uTP, with the same TCP flow measured again alongside it. The
   download must complete within TRANSFER_BOUND with every byte right (SHA-256). The two flows share no
   queue here (each is limited by the random loss, not by the link), so this half only catches a uTP
   that floods the link or starves the machine.
2. bottleneck: ``netem delay 50ms rate 16mbit limit 400``: a 2 MB/s link with about 250 ms of queue,
   more than LEDBAT's 100 ms target. TCP alone fills it; then a second uTP download starts, and after
   RAMP seconds the TCP flow is measured again. LEDBAT must yield: TCP must keep MIN_TCP_SHARE of its
   solo rate (see there why).

The link is the kernel's netem (``tc``, iproute2; the sch_netem module). Where namespaces or netem are
not available the test fails and says why; it is never skipped. Where the kernel lacks sch_netem (as on
the machine this was written on) the default ``UTP_NETEM_LINK=auto`` uses, and says it uses, the user-space
emulator; ``UTP_NETEM_LINK=netem`` insists on netem. ``UTP_NETEM_LINK=tun`` replaces netem
with a user-space emulator (this file's ``relay``: two TUN devices, one per namespace, and a process that
forwards packets between them with the same delay, random loss, rate and queue limit), for kernels built
without sch_netem. The TCP flow is a plain socket sender and receiver (this file's ``tcp-send`` and
``tcp-recv``) using CUBIC. The whole test takes about 90-100 s (measured with the emulator).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from netns import VETH_A, VETH_B, namespace_unavailable, netem_unavailable, tc_path

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve()
REPO_ROOT = HERE.parents[2]
LINK_ENV = "UTP_NETEM_LINK"
LINK_KINDS = ("netem", "tun")

#: The torrent: one random file. At 50 ms and 2 % loss uTP moves about 0.36 MB/s, bound by its loss
#: response (libtorrent <-> libtorrent over uTP took the same 47 s for 16 MiB as the bridges): 16 MiB take
#: 47 s, 64 MiB 187 s (about 4 minutes for the whole test), too long for CI for no more coverage.
SIZE_MIB = 16
#: The bottleneck phase's torrent. The download must still run when the 15 s of TCP measurement beside
#: it end (RAMP + TCP_SKIP + TCP_WINDOW): at the bottleneck's 2 MB/s even a uTP that took the whole link
#: needs 21 s for 40 MiB. (16 MiB sometimes finished first once uTP's start-up got faster.)
BOTTLENECK_SIZE_MIB = 40
PIECE_LENGTH = 256 * 1024
#: Bound for the lossy uTP download (process start -> "complete:"): 3x the 47 s measured.
TRANSFER_BOUND = 150.0
#: TCP measurement: bytes received over WINDOW seconds, starting SKIP seconds after the first byte
#: (slow start left out).
TCP_SKIP = 2.0
TCP_WINDOW = 10.0
#: The TCP flow's congestion control, first available: CUBIC is Linux's usual default and loss-based,
#: like the TCP that LEDBAT was designed to yield to. Set per socket, because a host's default may be BBR
#: (it is on the machine this was written on), which ignores random loss and keeps queues short, so it
#: would measure something else: 2 % loss cost CUBIC about 98 % of the 50 ms link, BBR next to nothing.
TCP_CONGESTION = ("cubic", "reno")
#: Seconds the bottleneck's uTP download runs (filling the queue) before TCP is measured beside it.
RAMP = 3.0
#: TCP alongside uTP must keep at least this share of its solo rate, in both phases. Two loss-based flows
#: that share a bottleneck fairly get half each, so 0.5 is what a uTP that competed like one more TCP
#: flow would leave; LEDBAT must do better (back off once the queue passes its 100 ms target). It does not
#: leave TCP everything within 10 s: libutp's window shrinks by at most 3000 bytes per round trip. Measured
#: on the bottleneck (user-space emulator): the bridge's uTP left TCP 0.70-0.78, libtorrent's uTP 0.68-0.69,
#: and the bridge's uTP patched to ignore delay and loss 0.41. On the lossy link the flows share no queue,
#: and TCP's rate varies by about +-25 % between 10 s windows (0.15-0.25 MB/s), inside the margin.
MIN_TCP_SHARE = 0.5
#: The driver's own bound for the whole run; the test kills it some time after.
DRIVER_DEADLINE = 240.0
RUN_TIMEOUT = DRIVER_DEADLINE + 40.0

STATS_RE = re.compile(r"uploaded=(\d+) downloaded=(\d+)")


@dataclass(frozen=True)
class LinkParams:
    """One direction of the link, in netem's terms."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0  # 0: unlimited
    limit: int = 1000  # packets held (netem's default)

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms:g}ms", "loss", f"{self.loss_pct:g}%"]
        if self.rate_mbit:
            args += ["rate", f"{self.rate_mbit:g}mbit"]
        return [*args, "limit", str(self.limit)]

    def describe(self) -> str:
        return "netem " + " ".join(self.netem_args())


CLEAN = LinkParams()
LOSSY = LinkParams(delay_ms=50, loss_pct=2.0)
BOTTLENECK = LinkParams(delay_ms=50, rate_mbit=16, limit=400)


class DriverError(Exception):
    pass


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


# ============================================================================ the test (outside)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as e:
        return f"({e})"


def _diagnostics(workdir: Path, stderr: str, result: dict[str, Any] | None) -> str:
    parts = []
    if result is not None:
        parts.append("driver result: " + json.dumps(result, indent=1))
    parts.append("--- driver stderr (tail):\n" + ("\n".join(stderr.splitlines()[-40:]) or "(empty)"))
    logs = workdir / "logs"
    if logs.is_dir():
        for path in sorted(logs.iterdir(), key=lambda p: (not p.name.startswith("bridge"), p.name)):
            if path.stat().st_size:
                parts.append(f"--- {path.name} (tail):\n{_tail(path)}")
    return "\n".join(parts)


def _link_kind() -> str:
    """netem when the kernel has it; else (``auto``, the default) the user-space emulator, said aloud.
    ``UTP_NETEM_LINK=netem`` insists on netem (and fails without it)."""
    kind = os.environ.get(LINK_ENV, "auto")
    if kind not in (*LINK_KINDS, "auto"):
        fail(f"{LINK_ENV}={kind!r}: choose one of auto, {', '.join(LINK_KINDS)}")
    if kind == "auto":
        why = netem_unavailable()
        kind = "netem" if why is None else "tun"
        if why is not None:
            print(f"\nnetem is not available here ({why}); using the user-space link emulator (same delay, "
                  "loss, rate and queue limit)", file=sys.stderr)
    return kind


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_utp_over_a_lossy_link_and_beside_tcp(tmp_path: Path) -> None:
    kind = _link_kind()
    why = netem_unavailable() if kind == "netem" else (namespace_unavailable() or _tun_unavailable())
    if why is not None:
        alt = (f" ({LINK_ENV}=tun runs the same test with a user-space link emulator instead of netem)"
               if kind == "netem" else "")
        fail(f"this test emulates a WAN link between two network namespaces, which cannot be done here: {why}"
             + alt)
    if shutil.which("nsenter") is None:
        fail("`nsenter` (util-linux) is not installed: the test cannot run programs in its second namespace")
    workdir = tmp_path / "run"
    workdir.mkdir()
    cmd = ["unshare", "-n", sys.executable, str(HERE), "driver", str(workdir), "--link", kind,
           "--deadline", str(DRIVER_DEADLINE)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc)
    stderr = err.decode(errors="replace")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    result: dict[str, Any] | None = None
    with contextlib.suppress(ValueError, IndexError):
        result = json.loads(lines[-1])
    if timed_out:
        fail(f"the driver ran over {RUN_TIMEOUT:.0f} s and was killed\n" + _diagnostics(workdir, stderr, result))
    if result is None:
        fail(f"the driver (exit code {proc.returncode}) printed no JSON result: `{' '.join(cmd)}`\n"
             + _diagnostics(workdir, stderr, None))
    assert result is not None
    if result.get("error"):
        fail(f"{result.get('stage')}: {result['error']}\n" + _diagnostics(workdir, stderr, result))

    def context() -> str:
        return _diagnostics(workdir, stderr, result)

    lossy, neck = result["lossy"], result["bottleneck"]
    # 1. The lossy link: the data, the time, and uTP only.
    assert lossy["sha256_ok"], f"the downloaded file differs from the source (SHA-256)\n{context()}"
    assert lossy["download_rc"] == 0, f"the downloading bridge exited with {lossy['download_rc']}\n{context()}"
    assert lossy["transfer_s"] <= TRANSFER_BOUND, (
        f"{SIZE_MIB} MiB over uTP took {lossy['transfer_s']:.0f} s at {LOSSY.describe()}, more than "
        f"{TRANSFER_BOUND:.0f} s\n{context()}")
    for phase in (lossy, neck):
        assert phase["connections"] and all(c.startswith("utp") for c in phase["connections"]), (
            f"the downloading bridge did not connect over uTP only: {phase['connections']}\n{context()}")
        assert phase["utp_active_through_window"], (
            f"the uTP download was over before the TCP measurement beside it ended\n{context()}")
    # 2. TCP beside uTP keeps its share, on both links.
    for name, phase in (("lossy", lossy), ("bottleneck", neck)):
        solo, beside = phase["tcp_solo_mbps"], phase["tcp_beside_utp_mbps"]
        assert solo > 0, f"{name}: the TCP flow moved nothing on its own\n{context()}"
        assert beside >= MIN_TCP_SHARE * solo, (
            f"{name} link ({phase['link']}): TCP got {beside:.2f} MB/s beside the uTP download against "
            f"{solo:.2f} MB/s alone ({beside / solo:.0%} < {MIN_TCP_SHARE:.0%}): uTP does not yield to TCP"
            f"\n{context()}")


# ======================================================================= the driver (namespace A)


class Child:
    """A process of the driver's process group, with its output in files."""

    def __init__(self, name: str, argv: list[str], logs: Path, stdin: bool = False) -> None:
        self.name = name
        self.out_path = logs / f"{name}.stdout.log"
        self.err_path = logs / f"{name}.stderr.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=err,
                                         stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.started = time.monotonic()

    def text(self, stream: str = "stdout") -> str:
        return (self.out_path if stream == "stdout" else self.err_path).read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, deadline: float, stream: str = "stdout", count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` (multi-line) in the stream."""
        rx = re.compile(pattern, re.M)
        while True:
            found = list(rx.finditer(self.text(stream)))
            if len(found) >= count:
                return found[count - 1]
            if not self.running():
                raise DriverError(f"{self.name} exited ({self.proc.returncode}) before printing /{pattern}/ "
                                  f"on {stream}")
            if time.monotonic() > deadline:
                raise DriverError(f"{self.name} printed no /{pattern}/ on {stream} in time")
            time.sleep(0.05)

    def wait_exit(self, deadline: float) -> int:
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise DriverError(f"{self.name} did not exit in time") from None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise DriverError(f"`{' '.join(argv)}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")


class Network:
    """Namespace B (a ``sleep`` holding it) and the link between it and this one, namespace A."""

    def __init__(self, kind: str, logs: Path, deadline: float) -> None:
        self.kind = kind
        self.logs = logs
        self.ip = shutil.which("ip") or "/usr/sbin/ip"
        self.tc = tc_path() or "tc"
        self.nsenter = shutil.which("nsenter") or "nsenter"
        own = os.readlink("/proc/self/ns/net")
        self.holder = Child("netns-b", ["unshare", "-n", "sleep", str(int(deadline - time.monotonic()) + 60)], logs)
        while True:
            try:
                if os.readlink(f"/proc/{self.holder.proc.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            if not self.holder.running():
                raise DriverError(f"`unshare -n sleep` exited ({self.holder.proc.returncode}): "
                                  f"{self.holder.text('stderr')}")
            if time.monotonic() > deadline:
                raise DriverError("namespace B did not appear in time")
            time.sleep(0.01)
        self.relay: Child | None = None
        self.dev_a, self.dev_b = ("veth0", "veth1") if kind == "netem" else ("tun0", "tun1")

    def in_b(self, argv: list[str]) -> list[str]:
        """``argv`` run in namespace B."""
        return [self.nsenter, f"--net=/proc/{self.holder.proc.pid}/ns/net", "--", *argv]

    def setup(self, forward: LinkParams, back: LinkParams, deadline: float) -> None:
        ip, pid = self.ip, str(self.holder.proc.pid)
        _run([ip, "link", "set", "lo", "up"])
        _run(self.in_b([ip, "link", "set", "lo", "up"]))
        if self.kind == "netem":
            _run([ip, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", pid])
            _run([ip, "addr", "add", f"{VETH_A}/24", "dev", "veth0"])
            _run(self.in_b([ip, "addr", "add", f"{VETH_B}/24", "dev", "veth1"]))
            # One segment per packet: netem would otherwise delay and drop TCP's 64 KiB GSO super-packets
            # whole, 45 segments at a time.
            _run([ip, "link", "set", "veth0", "gso_max_size", "1500", "up"])
            _run(self.in_b([ip, "link", "set", "veth1", "gso_max_size", "1500", "up"]))
        else:
            self.relay = Child("relay", [sys.executable, str(HERE), "relay", json.dumps(asdict(forward)),
                                         json.dumps(asdict(back))], self.logs, stdin=True)
            self.relay.wait_for(r"^ready", deadline)
            _run([ip, "link", "set", "tun1", "netns", pid])
            _run([ip, "addr", "add", VETH_A, "peer", VETH_B, "dev", "tun0"])
            _run(self.in_b([ip, "addr", "add", VETH_B, "peer", VETH_A, "dev", "tun1"]))
            _run([ip, "link", "set", "tun0", "txqueuelen", "1000", "up"])
            _run(self.in_b([ip, "link", "set", "tun1", "txqueuelen", "1000", "up"]))
        self.configure(forward, back, deadline)

    def configure(self, forward: LinkParams, back: LinkParams, deadline: float) -> None:
        if self.relay is not None:
            n = self.relay.text().count("configured") + 1
            self.relay.send(json.dumps({"forward": asdict(forward), "back": asdict(back)}))
            self.relay.wait_for(r"^configured", deadline, count=n)
            return
        for params, in_ns, dev in ((forward, lambda a: a, "veth0"), (back, self.in_b, "veth1")):
            with contextlib.suppress(DriverError):  # none yet
                _run(in_ns([self.tc, "qdisc", "del", "dev", dev, "root"]))
            if params != CLEAN:
                _run(in_ns([self.tc, "qdisc", "add", "dev", dev, "root", "netem", *params.netem_args()]))

    def stats(self) -> str:
        if self.relay is not None:
            return self.relay.text()[-2000:]
        out = []
        for in_ns, dev in ((lambda a: a, "veth0"), (self.in_b, "veth1")):
            res = subprocess.run(in_ns([self.tc, "-s", "qdisc", "show", "dev", dev]), capture_output=True,
                                 text=True, timeout=20)
            out.append(f"{dev}: {res.stdout.strip()}")
        return "\n".join(out)

    def close(self) -> None:
        if self.relay is not None:
            with contextlib.suppress(Exception):
                self.relay.send("quit")
            self.relay.stop(signal.SIGTERM, timeout=5)
        self.holder.stop(signal.SIGKILL, timeout=5)


def bridge(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", "-v", *args]


def tcp_flow(net: Network, recv: Child, port: int, logs: Path, flows: list[int], deadline: float) -> float:
    """One TCP flow A -> B; its rate (MB/s) as the receiver measured it."""
    flows[0] += 1
    n = flows[0]
    sender = Child(f"tcp-send-{n}", [sys.executable, str(HERE), "tcp-send", f"{VETH_B}:{port}",
                                     "--max-seconds", str(TCP_SKIP + TCP_WINDOW + 30)], logs)
    try:
        m = recv.wait_for(rf'^{{"flow": {n}, .*$', min(deadline, time.monotonic() + TCP_SKIP + TCP_WINDOW + 30))
    finally:
        sender.stop(signal.SIGTERM, timeout=5)
    flow = json.loads(m.group(0))
    return float(flow["mbps"])


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(work: Path, kind: str, deadline: float, result: dict[str, Any], size_mib: int = SIZE_MIB,
        transfer_bound: float = TRANSFER_BOUND) -> None:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    net: Network | None = None
    t0 = time.monotonic()
    try:
        result["stage"] = "namespaces and link"
        net = Network(kind, logs, deadline)
        net.setup(LOSSY, CLEAN, deadline)

        result["stage"] = "data and torrents"
        src = work / "src"
        src.mkdir()
        net_args = ["--no-tcp", "--no-webrtc", "--port", "0"]
        seeds: dict[str, tuple[Path, int]] = {}  # phase -> (torrent, seeder port)
        expected = ""
        payload = src
        for phase, mib, seed in (("lossy", size_mib, 20240612), ("bottleneck", BOTTLENECK_SIZE_MIB, 20240613)):
            file = src / phase / f"random-{mib}MiB.bin"
            file.parent.mkdir()
            data = random.Random(seed).randbytes(mib * 1024 * 1024)
            file.write_bytes(data)
            if phase == "lossy":
                payload, expected = file, hashlib.sha256(data).hexdigest()
            del data
            torrent = work / f"{phase}.torrent"
            made = subprocess.run(bridge("create", str(file), "-o", str(torrent), "--piece-length",
                                         str(PIECE_LENGTH)), cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=60)
            if made.returncode != 0:
                raise DriverError(f"bridge create failed ({made.returncode}): {made.stderr}")
            result["stage"] = f"seeder ({phase})"
            seeder = Child(f"bridge-seed-{phase}", bridge("seed", str(torrent), "-o", str(file.parent), "--host",
                                                          VETH_A, *net_args), logs)
            children.append(seeder)
            port = int(seeder.wait_for(r"^listening on [\d.]+:(\d+)", deadline, "stderr").group(1))
            seeder.wait_for(r"^magnet:\?", deadline)
            seeds[phase] = (torrent, port)
        recv = Child("tcp-recv", net.in_b([sys.executable, str(HERE), "tcp-recv", VETH_B, "--skip", str(TCP_SKIP),
                                           "--window", str(TCP_WINDOW)]), logs)
        children.append(recv)
        recv_port = int(recv.wait_for(r'^\{"port": (\d+)\}', deadline).group(1))
        flows = [0]

        def download(name: str, phase: str) -> Child:
            out = work / name
            torrent, port = seeds[phase]
            child = Child(name, net.in_b(bridge("download", str(torrent), "-o", str(out), "--host", VETH_B,
                                                "--peer", f"{VETH_A}:{port}", *net_args)), logs)
            children.append(child)
            return child

        for phase, params in (("lossy", LOSSY), ("bottleneck", BOTTLENECK)):
            res: dict[str, Any] = {"link": params.describe() + " (A -> B only)"}
            result[phase] = res
            if phase != "lossy":
                result["stage"] = f"{phase}: link"
                net.configure(params, CLEAN, deadline)
            result["stage"] = f"{phase}: TCP alone"
            res["tcp_solo_mbps"] = tcp_flow(net, recv, recv_port, logs, flows, deadline)
            result["stage"] = f"{phase}: uTP download"
            dl = download(f"bridge-download-{phase}", phase)
            dl.wait_for(r"connected \(utp", deadline, "stderr")
            res["connected_s"] = round(time.monotonic() - dl.started, 2)
            if phase != "lossy":
                time.sleep(RAMP)
            result["stage"] = f"{phase}: TCP beside uTP"
            res["tcp_beside_utp_mbps"] = tcp_flow(net, recv, recv_port, logs, flows, deadline)
            res["utp_active_through_window"] = dl.running() and "complete: " not in dl.text("stderr")
            res["tcp_share"] = round(res["tcp_beside_utp_mbps"] / max(res["tcp_solo_mbps"], 1e-9), 3)
            if phase == "lossy":
                result["stage"] = f"{phase}: uTP download to the end"
                dl.wait_for(r"^complete: ", min(deadline, dl.started + transfer_bound + 30), "stderr")
                res["transfer_s"] = round(time.monotonic() - dl.started, 2)
                res["utp_mbps"] = round(size_mib * 1024 * 1024 / res["transfer_s"] / 1e6, 3)
                res["download_rc"] = dl.wait_exit(min(deadline, time.monotonic() + 30))
                got = file_sha256(work / dl.name / payload.name)
                res["sha256_ok"] = got == expected
            else:
                elapsed = time.monotonic() - dl.started
                res["download_rc"] = dl.stop(signal.SIGINT)
                stats = STATS_RE.findall(dl.text("stderr"))
                moved = int(stats[-1][1]) if stats else 0
                res["utp_downloaded"] = moved
                res["utp_mbps_whole_run"] = round(moved / elapsed / 1e6, 3)
            res["connections"] = [f"{k} {w}" for k, w in
                                  re.findall(r"connected \((\w+), (\w+)\)", dl.text("stderr"))]
            res["link_stats"] = net.stats()
        result["stage"] = "done"
    finally:
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop(signal.SIGINT, timeout=10)
        if net is not None:
            net.close()
        result["total_s"] = round(time.monotonic() - t0, 2)


def _terminated(signum: int, frame: Any) -> None:
    raise DriverError("terminated (SIGTERM)")


def driver_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="test_utp_netem.py driver")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--link", choices=LINK_KINDS, default="netem")
    ap.add_argument("--deadline", type=float, default=DRIVER_DEADLINE)
    ap.add_argument("--size-mib", type=int, default=SIZE_MIB, help="size of the torrent (for measurements)")
    ap.add_argument("--transfer-bound", type=float, default=TRANSFER_BOUND)
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.deadline
    result: dict[str, Any] = {"link_kind": args.link, "size_mib": args.size_mib, "stage": "start"}
    signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args.workdir, args.link, deadline, result, args.size_mib, args.transfer_bound)
    except DriverError as e:
        result["error"] = str(e)
    except Exception:
        result["error"] = traceback.format_exc()
    print(json.dumps(result), flush=True)
    return 1 if result.get("error") else 0


# ========================================================================= TCP flow (either side)


def tcp_recv_main(argv: list[str]) -> int:
    """Accept flows one after another; for each, print the rate over WINDOW seconds after SKIP."""
    ap = argparse.ArgumentParser(prog="test_utp_netem.py tcp-recv")
    ap.add_argument("host")
    ap.add_argument("--skip", type=float, default=TCP_SKIP)
    ap.add_argument("--window", type=float, default=TCP_WINDOW)
    args = ap.parse_args(argv)
    srv = socket.create_server((args.host, 0))
    srv.settimeout(600)
    print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
    flow = 0
    while True:
        conn, _ = srv.accept()
        flow += 1
        conn.settimeout(args.skip + args.window + 30)
        first = start = None
        counted = 0
        now = time.monotonic()
        try:
            while True:
                data = conn.recv(1 << 20)
                now = time.monotonic()
                if not data:
                    break
                if first is None:
                    first = now
                if start is None:
                    if now >= first + args.skip:
                        start = now  # the window opens with this read; its bytes came before
                    continue
                counted += len(data)
                if now >= start + args.window:
                    break
        except OSError as e:
            print(json.dumps({"flow_error": flow, "error": str(e)}), flush=True)
        conn.close()
        seconds = now - start if start is not None else 0.0
        print(json.dumps({"flow": flow, "bytes": counted, "seconds": round(seconds, 3),
                          "mbps": round(counted / seconds / 1e6, 4) if seconds > 0 else 0.0}), flush=True)


def tcp_send_main(argv: list[str]) -> int:
    """Send until the receiver closes (or --max-seconds)."""
    ap = argparse.ArgumentParser(prog="test_utp_netem.py tcp-send")
    ap.add_argument("to")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    host, port = args.to.rsplit(":", 1)
    end = time.monotonic() + args.max_seconds
    chunk = random.Random(1).randbytes(64 * 1024)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(10)
        for cc in TCP_CONGESTION:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
                break
        used = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
        print(json.dumps({"congestion_control": used}), flush=True)
        with contextlib.suppress(OSError):
            while time.monotonic() < end:
                s.sendall(chunk)
    return 0


# ============================================================ user-space netem (UTP_NETEM_LINK=tun)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _tun_unavailable() -> str | None:
    cmd = ["unshare", "-n", sys.executable, "-c",
           "import fcntl, os, struct; fd = os.open('/dev/net/tun', os.O_RDWR); "
           f"fcntl.ioctl(fd, {TUNSETIFF}, struct.pack('16sH22x', b'tun0', {IFF_TUN | IFF_NO_PI}))"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        return f"cannot create a TUN device (/dev/net/tun, CONFIG_TUN): {res.stderr.strip().splitlines()[-1:]}"
    return None


class _Direction:
    """netem in a queue: random loss, a rate (serialisation), then a fixed delay; tail drop at ``limit``."""

    def __init__(self, name: str, src: int, dst: int, rng: random.Random) -> None:
        self.name, self.src, self.dst, self.rng = name, src, dst, rng
        self.params = CLEAN
        self.queue: deque[tuple[float, bytes]] = deque()
        self.free_at = 0.0  # when the "wire" finishes the last accepted packet
        self.last_release = 0.0
        self.stats = {"in": 0, "out": 0, "lost": 0, "overflow": 0, "write_errors": 0}

    def push(self, packet: bytes, now: float) -> None:
        p = self.params
        self.stats["in"] += 1
        if len(self.queue) >= p.limit:
            self.stats["overflow"] += 1
            return
        if p.loss_pct and self.rng.random() * 100.0 < p.loss_pct:
            self.stats["lost"] += 1
            return
        sent = now
        if p.rate_mbit:
            sent = max(now, self.free_at) + len(packet) * 8 / (p.rate_mbit * 1e6)
            self.free_at = sent
        release = max(sent + p.delay_ms / 1000.0, self.last_release)
        self.last_release = release
        self.queue.append((release, packet))

    def flush(self, now: float) -> None:
        q = self.queue
        while q and q[0][0] <= now:
            _, packet = q.popleft()
            try:
                os.write(self.dst, packet)
                self.stats["out"] += 1
            except OSError:
                self.stats["write_errors"] += 1

    def read(self, now: float) -> None:
        for _ in range(512):
            try:
                packet = os.read(self.src, 65536)
            except BlockingIOError:
                return
            except OSError:  # the device is not up yet
                return
            self.push(packet, now)


def relay_main(argv: list[str]) -> int:
    """Two TUN devices, tun0 and tun1 (the driver moves tun1 to namespace B); forward between them."""
    forward, back = (LinkParams(**json.loads(a)) for a in argv[:2])
    fd0, fd1 = _open_tun("tun0"), _open_tun("tun1")
    rng = random.Random(4242)
    ab, ba = _Direction("A->B", fd0, fd1, rng), _Direction("B->A", fd1, fd0, rng)
    ab.params, ba.params = forward, back
    os.set_blocking(0, False)
    poller = select.epoll()
    poller.register(fd0, select.EPOLLIN)
    poller.register(fd1, select.EPOLLIN)
    poller.register(0, select.EPOLLIN)
    print("ready", flush=True)
    pending = b""
    while True:
        now = time.monotonic()
        heads = [d.queue[0][0] for d in (ab, ba) if d.queue]
        timeout = max(0.0, min(heads) - now) if heads else 1.0
        for fd, _ in poller.poll(timeout):
            now = time.monotonic()
            if fd == fd0:
                ab.read(now)
            elif fd == fd1:
                ba.read(now)
            else:
                chunk = os.read(0, 65536)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip() == b"quit":
                        print(json.dumps({"A->B": ab.stats, "B->A": ba.stats}), flush=True)
                        return 0
                    cfg = json.loads(line)
                    ab.params, ba.params = LinkParams(**cfg["forward"]), LinkParams(**cfg["back"])
                    print(json.dumps({"A->B": ab.stats, "B->A": ba.stats}), flush=True)
                    print("configured", flush=True)
        now = time.monotonic()
        ab.flush(now)
        ba.flush(now)


COMMANDS = {"driver": driver_main, "relay": relay_main, "tcp-send": tcp_send_main, "tcp-recv": tcp_recv_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: {sys.argv[0]} {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
