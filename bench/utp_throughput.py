#!/usr/bin/env python3
"""uTP throughput on loopback: bridge -> bridge over uTP and over TCP, and libtorrent -> libtorrent over uTP.

Transfers one random single-file torrent (made by libtorrent, v1 only) for three pairs -- seeder -> leecher:
the bridge over uTP only (``--no-tcp`` on both), the bridge over TCP only (``--no-utp`` on both), and
libtorrent over uTP only (TCP off both ways) -- and prints MB/s, wall time, CPU% of each side and two ratios:
bridge uTP / bridge TCP and bridge uTP / libtorrent uTP. Targets (printed, never enforced): bridge uTP at
least 100 MB/s and at least 0.5x the bridge's own TCP.

The method is bench/tcp_throughput.py's: every side is its own process; the seeder verifies its data
before the timer starts; the timer runs from starting the leecher process to the leecher reporting the
download complete and verified, so start-up is in it, and also shown on its own. The ratios and the targets
use the rate excluding the leecher's start-up (the transfer itself). CPU% is user+system time from
/proc/<pid>/stat over that window, 100% = one core. During each uTP transfer the UDP sockets' kernel
buffers are read with ``ss -uamp`` and shown (skmem rb/tb, bytes).

``--py-spy DIR`` records both bridges of the bridge-utp pair with ``py-spy record --native -f raw`` (one file
per process and run, for flame graphs or a quick ``sort``), which slows them down: figures of those runs are
not comparable.

This is a benchmark, not a test: it does not fail when the targets are missed (only when data is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import _common
from _common import (
    MIB,
    REPO_ROOT,
    BenchError,
    Child,
    Children,
    child_env,
    default_piece_length,
    format_table,
    is_json_event,
    lt_settings_summary,
    lt_version,
    make_random_file,
    make_torrent_with_libtorrent,
    parse_size,
    sha256_file,
    write_file,
)

THIS = os.path.abspath(__file__)
#: key -> (label, kind, bridge flags)
PAIRS = {
    "bridge-utp": ("bridge -> bridge, uTP", "bridge", ["--no-tcp"]),
    "bridge-tcp": ("bridge -> bridge, TCP", "bridge", ["--no-utp"]),
    "lt-utp": ("libtorrent -> libtorrent, uTP", "libtorrent", []),
}
TARGET_MBPS = 100.0  # bridge uTP, MB/s
TARGET_VS_TCP = 0.5  # bridge uTP / bridge TCP
SOCKET_BUFFER = 4 * MIB
#: libtorrent over uTP only, on top of bench/_common.py's loopback settings (which turn uTP off).
LT_UTP_SETTINGS: dict[str, object] = {
    "enable_outgoing_utp": True,
    "enable_incoming_utp": True,
    "enable_outgoing_tcp": False,
    "enable_incoming_tcp": False,
    "recv_socket_buffer_size": SOCKET_BUFFER,
    "send_socket_buffer_size": SOCKET_BUFFER,
}
SKMEM_RE = re.compile(r"skmem:\(([^)]*)\)")


@dataclass
class Result:
    pair: str
    run: int
    ok: bool
    error: str = ""
    wall: float = 0.0  # leecher start -> leecher complete
    startup: float = 0.0  # leecher start -> leecher listening/ready
    mbps: float = 0.0  # size / wall, MB = 10**6 bytes
    mbps_transfer: float = 0.0  # size / (wall - startup)
    seed_cpu: float | None = None  # CPU seconds over the window
    leech_cpu: float | None = None
    sha_ok: bool | None = None
    udp_buffers: dict[str, str] = field(default_factory=dict)  # side -> "rb=... tb=..." as the kernel has them

    def cpu_pct(self, which: str) -> str:
        v = self.seed_cpu if which == "seed" else self.leech_cpu
        return "n/a" if v is None or self.wall <= 0 else f"{100.0 * v / self.wall:.0f}%"


@dataclass
class Setup:
    tmp: str
    data_dir: str
    name: str
    torrent: str
    size: int
    piece_length: int
    sha256: str
    timeout: float
    py_spy: str | None
    py_spy_rate: int
    py_spy_native: bool


# ------------------------------------------------------------------------------------- the sides


def lt_argv(mode: str, s: Setup, save_path: str, connect: int | None = None) -> list[str]:
    argv = [sys.executable, THIS, "lt-peer", mode, s.torrent, save_path]
    return argv + (["--connect", str(connect)] if connect else [])


def bridge_argv(command: str, s: Setup, out_dir: str, flags: list[str], peer: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "bridge", command, s.torrent, "-o", out_dir, "--port", "0", "--host",
            "127.0.0.1", "--no-webrtc", *flags]
    return argv + (["--peer", f"127.0.0.1:{peer}"] if peer else [])


async def start_seeder(kids: Children, key: str, s: Setup) -> tuple[Child, int]:
    """Start a seeder and wait until it has verified its data; return it and its port."""
    _, kind, flags = PAIRS[key]
    if kind == "libtorrent":
        child = await kids.start("libtorrent seeder", lt_argv("seed", s, s.data_dir), env=child_env())
        line = await child.expect(is_json_event("ready"), s.timeout, "the seeder to verify its data")
        ev = json.loads(line.text)
        if ev["ev"] == "error":
            raise BenchError(f"libtorrent seeder: {ev.get('msg')}")
        return child, int(ev["port"])
    child = await kids.start("bridge seeder", bridge_argv("seed", s, s.data_dir, flags), env=child_env(),
                             cwd=REPO_ROOT)
    line = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("listening on "),
                              60, "'listening on HOST:PORT'")
    port = int(line.text.rsplit(":", 1)[1])
    await child.expect(lambda ln: ln.stream == "out" and ln.text.startswith("magnet:"), s.timeout,
                       "the magnet line (data verified)")
    return child, port


def udp_buffers(pids: dict[str, int]) -> dict[str, str]:
    """side -> the kernel's receive/send buffer sizes of that process's UDP sockets (``ss -uamp``)."""
    ss = shutil.which("ss")
    if ss is None:
        return {}
    try:
        out = subprocess.run([ss, "-u", "-a", "-m", "-n", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        for side, pid in pids.items():
            if f"pid={pid}," not in line:
                continue
            m = SKMEM_RE.search(line) or (SKMEM_RE.search(lines[i + 1]) if i + 1 < len(lines) else None)
            if m:
                kv = dict(re.findall(r"([a-z]+)(\d+)", m.group(1)))
                found[side] = f"rb={kv.get('rb', '?')} tb={kv.get('tb', '?')}"
    return found


async def sample_buffers(into: dict[str, str], seeder: int, leecher: int) -> None:
    """Every 0.25 s until cancelled: the UDP buffers of both sides (the last complete sample stays)."""
    while True:
        await asyncio.sleep(0.25)
        found = await asyncio.to_thread(udp_buffers, {"seeder": seeder, "leecher": leecher})
        if len(found) == 2:
            into.update(found)


async def py_spy(kids: Children, name: str, pid: int, path: str, rate: int, native: bool) -> Child:
    # --native stops the process for each sample (slower, distorts timing); without it py-spy reads the
    # Python stacks from outside, not stopping anything (--nonblocking).
    mode = ["--native"] if native else ["--nonblocking"]
    return await kids.start(f"py-spy {name}", ["py-spy", "record", "-p", str(pid), *mode, "-f", "raw",
                                               "-r", str(rate), "-o", path])


async def run_leecher(kids: Children, key: str, run: int, s: Setup, out_dir: str, seed_port: int,
                      seeder: Child) -> Result:
    """Start the leecher, wait for it to complete; timings and CPU over the window."""
    _, kind, flags = PAIRS[key]
    seed_cpu0 = seeder.cpu()
    leech_cpu_reported: float | None = None
    spies: list[Child] = []
    buffers: dict[str, str] = {}
    sampler: asyncio.Task[None] | None = None
    if kind == "libtorrent":
        child = await kids.start("libtorrent leecher", lt_argv("leech", s, out_dir, seed_port), env=child_env())
        t0 = child.started
        ready = await child.expect(is_json_event("ready"), 60, "the leecher to start")
        sampler = asyncio.create_task(sample_buffers(buffers, seeder.pid, child.pid))
        done = await child.expect(is_json_event("finished"), s.timeout, "the download to finish")
        ev = json.loads(done.text)
        if ev["ev"] == "error":
            raise BenchError(f"libtorrent leecher: {ev.get('msg')}\n{child.tail()}")
        leech_cpu_reported = ev.get("cpu")
    else:
        child = await kids.start("bridge leecher", bridge_argv("download", s, out_dir, flags, seed_port),
                                 env=child_env(), cwd=REPO_ROOT)
        t0 = child.started
        ready = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("listening on "), 60,
                                   "'listening on HOST:PORT'")
        if s.py_spy and key == "bridge-utp":
            for name, pid in (("seeder", seeder.pid), ("leecher", child.pid)):
                spies.append(await py_spy(kids, name, pid, os.path.join(s.py_spy, f"{key}-run{run}-{name}.txt"),
                                          s.py_spy_rate, s.py_spy_native))
        if "--no-tcp" in flags:
            sampler = asyncio.create_task(sample_buffers(buffers, seeder.pid, child.pid))
        done = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("complete: "), s.timeout,
                                  "the download to complete")
    if sampler is not None:
        sampler.cancel()
    leech_cpu = child.cpu()
    if leech_cpu is None:
        leech_cpu = leech_cpu_reported
    seed_cpu1 = seeder.cpu()
    wall = done.t - t0
    startup = ready.t - t0
    for spy in spies:  # py-spy writes its file when the process it records exits, or on SIGINT
        if spy.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                spy.proc.send_signal(signal.SIGINT)
    rc = await child.wait(60)
    if rc is None:
        await kids.stop(child)
        raise BenchError(f"{child.name}: did not exit within 60 s after completing\n{child.tail()}")
    if kind == "bridge" and rc != 0:
        raise BenchError(f"{child.name}: exit code {rc}\n{child.tail()}")
    await kids.stop(child)
    for spy in spies:
        rc = await spy.wait(30)
        if rc != 0:
            print(f"  {spy.name}: exit code {rc}\n{spy.tail()}", file=sys.stderr)
        await kids.stop(spy)
    return Result(pair=key, run=run, ok=True, wall=wall, startup=startup, mbps=s.size / wall / 1e6,
                  mbps_transfer=s.size / max(wall - startup, 1e-9) / 1e6, leech_cpu=leech_cpu,
                  seed_cpu=None if seed_cpu0 is None or seed_cpu1 is None else seed_cpu1 - seed_cpu0,
                  udp_buffers=buffers)


async def run_pair(kids: Children, key: str, run: int, s: Setup, keep: bool) -> Result:
    out_dir = os.path.join(s.tmp, f"{key}-run{run}")
    os.makedirs(out_dir)
    seeder = None
    try:
        seeder, port = await start_seeder(kids, key, s)
        r = await run_leecher(kids, key, run, s, out_dir, port, seeder)
        r.sha_ok = await asyncio.to_thread(sha256_file, os.path.join(out_dir, s.name)) == s.sha256
        r.ok = bool(r.sha_ok)
        if not r.ok:
            r.error = "downloaded file differs from the original (SHA-256)"
        return r
    except BenchError as e:
        return Result(pair=key, run=run, ok=False, error=str(e))
    finally:
        if seeder is not None:
            await kids.stop(seeder)
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)


# -------------------------------------------------------------------------------------- report


def best_of(results: list[Result], key: str) -> Result | None:
    runs = [r for r in results if r.pair == key]
    good = [r for r in runs if r.ok]
    if good:
        return max(good, key=lambda r: r.mbps_transfer)
    return runs[-1] if runs else None


def _sysctl(name: str) -> str:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return "?"


def report(results: list[Result], keys: list[str], s: Setup, repeat: int) -> str:
    headers = ["seeder -> leecher", "MB/s excl. startup", "MB/s", "wall s", "startup s", "seeder CPU%",
               "leecher CPU%", "UDP buffers (seeder; leecher)", "SHA-256"]
    if repeat > 1:
        headers.append(f"all runs MB/s excl. startup (best of {repeat})")
    rows = []
    for key in keys:
        b = best_of(results, key)
        label = PAIRS[key][0]
        if b is None or not b.ok:
            row = [label, "FAIL", "", "", "", "", "", "", "FAIL" if b and b.sha_ok is False else "n/a"]
        else:
            bufs = "; ".join(b.udp_buffers.get(side, "?") for side in ("seeder", "leecher")) if PAIRS[key][2] != [
                "--no-utp"] else "(TCP)"
            row = [label, f"{b.mbps_transfer:.1f}", f"{b.mbps:.1f}", f"{b.wall:.2f}", f"{b.startup:.2f}",
                   b.cpu_pct("seed"), b.cpu_pct("leech"), bufs, "OK"]
        if repeat > 1:
            row.append(" ".join(f"{r.mbps_transfer:.0f}" if r.ok else "FAIL" for r in results if r.pair == key))
        rows.append(row)
    right = [False, True, True, True, True, True, True, False, False] + ([False] if repeat > 1 else [])
    lines = [format_table(headers, rows, right), ""]

    def rate(key: str) -> float | None:
        b = best_of(results, key)
        return b.mbps_transfer if b is not None and b.ok else None

    utp, tcp, lt = rate("bridge-utp"), rate("bridge-tcp"), rate("lt-utp")
    if utp is not None:
        met = "met" if utp >= TARGET_MBPS else "MISSED"
        lines.append(f"bridge uTP: {utp:.1f} MB/s; target >= {TARGET_MBPS:.0f} MB/s: {met}")
    if utp is not None and tcp:
        met = "met" if utp / tcp >= TARGET_VS_TCP else "MISSED"
        lines.append(f"bridge uTP / bridge TCP: {utp / tcp:.2f}x; target >= {TARGET_VS_TCP:.2f}x: {met}")
    if utp is not None and lt:
        lines.append(f"bridge uTP / libtorrent uTP: {utp / lt:.2f}x (no target)")
    lines.append("")
    lines.append(f"size {s.size / MIB:.0f} MiB ({s.size} bytes), piece length {s.piece_length // 1024} KiB, "
                 f"{-(-s.size // s.piece_length)} pieces; MB = 10^6 bytes; CPU% 100 = one core "
                 f"({os.cpu_count()} cores here); ratios and targets use MB/s excl. startup")
    lines.append("timer: leecher process start -> leecher reports complete+verified; 'startup' = leecher start -> "
                 "its listener/session is up")
    lines.append("bridge: python -m bridge seed/download --host 127.0.0.1 --port 0 --no-webrtc, plus --no-tcp "
                 "(uTP) or --no-utp (TCP) on both sides; the leecher dials the seeder with --peer. Its UDP "
                 f"socket asks for {SOCKET_BUFFER // MIB} MiB send and receive buffers "
                 "(bridge/net/utp.py UDP_SOCKET_BUFFER; SO_RCVBUFFORCE/SO_SNDBUFFORCE when root, else capped "
                 "at the sysctls)")
    lines.append(f"libtorrent: {lt_settings_summary()}".replace("TCP only (uTP off)", "uTP only (TCP off)")
                 + f"; recv_socket_buffer_size = send_socket_buffer_size = {SOCKET_BUFFER} (SO_RCVBUF/SO_SNDBUF, "
                 "capped at the sysctls)")
    lines.append(f"sysctls: net.core.rmem_max={_sysctl('net.core.rmem_max')} "
                 f"wmem_max={_sysctl('net.core.wmem_max')} rmem_default={_sysctl('net.core.rmem_default')}; "
                 "UDP buffers column: the kernel's sk_rcvbuf/sk_sndbuf (ss -uamp skmem rb/tb; the kernel "
                 "doubles what setsockopt asked)")
    for r in results:
        if not r.ok:
            lines.append(f"\n{r.pair} run {r.run} FAILED: {r.error}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main


async def amain(args: argparse.Namespace, kids: Children) -> int:
    keys = [k.strip() for k in args.pairs.split(",") if k.strip()]
    bad = [k for k in keys if k not in PAIRS]
    if bad:
        print(f"unknown pair(s) {bad}; choose from {', '.join(PAIRS)}", file=sys.stderr)
        return 2
    size = args.size_mib * MIB
    piece_length = parse_size(args.piece_length) if args.piece_length else default_piece_length(size)
    if piece_length < 16 * 1024 or piece_length & (piece_length - 1):
        print("--piece-length must be a power of two of at least 16 KiB", file=sys.stderr)
        return 2
    if args.py_spy:
        if shutil.which("py-spy") is None:
            print("--py-spy: py-spy is not on PATH (pip install py-spy)", file=sys.stderr)
            return 2
        os.makedirs(args.py_spy, exist_ok=True)

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    load0 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench-utp-", dir=args.tmpdir)
    results: list[Result] = []
    try:
        data_dir = os.path.join(tmp, "seed")
        os.makedirs(data_dir)
        name = f"random-{args.size_mib}MiB.bin"
        t = time.monotonic()
        print(f"generating {args.size_mib} MiB of random data in {tmp} ...", file=sys.stderr, flush=True)
        digest = await asyncio.to_thread(make_random_file, os.path.join(data_dir, name), size)
        torrent_data = await asyncio.to_thread(make_torrent_with_libtorrent, os.path.join(data_dir, name),
                                               piece_length)
        torrent = os.path.join(tmp, name + ".torrent")
        await asyncio.to_thread(write_file, torrent, torrent_data)
        print(f"  data + torrent in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        s = Setup(tmp=tmp, data_dir=data_dir, name=name, torrent=torrent, size=size, piece_length=piece_length,
                  sha256=digest, timeout=args.timeout, py_spy=os.path.abspath(args.py_spy) if args.py_spy else None, py_spy_rate=args.py_spy_rate,
                  py_spy_native=not args.py_spy_python)
        for run in range(1, args.repeat + 1):
            for key in keys:
                print(f"run {run}/{args.repeat}: {PAIRS[key][0]} ...", file=sys.stderr, flush=True)
                r = await run_pair(kids, key, run, s, args.keep)
                results.append(r)
                msg = (f"{r.mbps_transfer:.1f} MB/s excl. startup ({r.mbps:.1f} MB/s in {r.wall:.2f} s, startup "
                       f"{r.startup:.2f} s), CPU seeder {r.cpu_pct('seed')} leecher {r.cpu_pct('leech')}, UDP "
                       f"buffers {r.udp_buffers or 'n/a'}, SHA-256 OK") if r.ok else f"FAILED: {r.error}"
                print(f"  {msg}", file=sys.stderr, flush=True)
        print()
        print(f"uTP throughput on loopback, {platform.python_implementation()} {platform.python_version()}, "
              f"libtorrent {lt_version()}, best of {args.repeat} run(s); load average "
              f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after")
        print()
        print(report(results, keys, s, args.repeat), flush=True)
        if args.json:
            doc = {"size": size, "piece_length": piece_length, "results": [asdict(r) for r in results]}
            await asyncio.to_thread(write_file, args.json, json.dumps(doc, indent=2).encode())
        return 0 if all(r.ok for r in results) else 1
    finally:
        await kids.close()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def lt_peer_main(argv: list[str]) -> int:
    """bench/_common.py's libtorrent peer, over uTP only."""
    _common.LT_LOOPBACK_SETTINGS.update(LT_UTP_SETTINGS)
    return _common.lt_peer_main(argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size-mib", type=int, default=256, help="size of the random file in MiB")
    p.add_argument("--piece-length", metavar="BYTES",
                   help="piece length (e.g. 262144, 256k, 1m); default about 1024 pieces (256 KiB for 256 MiB)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each pair; the best one is reported")
    p.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated subset of: " + ", ".join(PAIRS))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per seeder check and per transfer")
    p.add_argument("--py-spy", metavar="DIR",
                   help="record both bridges of bridge-utp with py-spy (--native, raw) into DIR (slows them)")
    p.add_argument("--py-spy-rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--py-spy-python", action="store_true",
                   help="Python stacks only, sampled without stopping the process (default: --native, which "
                        "stops it for each sample and so slows it)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data, torrent and downloads")
    p.add_argument("--tmpdir", help="parent of the temporary directory (default: the system's)")
    p.add_argument("--json", metavar="PATH", help="also write every run's figures as JSON")
    args = p.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1:
        p.error("--size-mib and --repeat must be at least 1")
    kids = Children()
    try:
        return asyncio.run(amain(args, kids))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        kids.kill_now()  # anything the event loop could not stop


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "lt-peer":
        raise SystemExit(lt_peer_main(sys.argv[2:]))
    raise SystemExit(main())
