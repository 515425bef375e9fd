#!/usr/bin/env python3
"""TCP throughput on loopback: libtorrent and the bridge, as seeder and leecher, in one run.

Transfers one random single-file torrent (made by libtorrent, v1 only) for four pairs -- seeder -> leecher:
libtorrent -> libtorrent (the reference), libtorrent -> bridge, bridge -> libtorrent and bridge -> bridge --
and prints MB/s, wall time, CPU% of each side and the ratio to libtorrent -> libtorrent.

Every side is its own process. The seeder is started first and must have verified its data (libtorrent:
torrent checked and seeding; bridge: magnet printed) before the timer starts. The timer runs from starting
the leecher process to the leecher reporting the download complete and verified (libtorrent:
torrent_finished_alert; bridge: its ``complete:`` line), so each figure includes the leecher's start-up,
which is also shown on its own. CPU% is user+system time from /proc/<pid>/stat over that same window
(leecher: process start to completion; seeder: the delta over the window), 100% = one core.

This is a benchmark, not a test: it does not fail when the targets are missed (only when data is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from _common import (
    MIB,
    REPO_ROOT,
    BenchError,
    Child,
    Children,
    Line,
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

LT_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_common.py")
PAIRS = {  # key -> (seeder, leecher)
    "lt-lt": ("libtorrent", "libtorrent"),
    "lt-bridge": ("libtorrent", "bridge"),
    "bridge-lt": ("bridge", "libtorrent"),
    "bridge-bridge": ("bridge", "bridge"),
}
REFERENCE = "lt-lt"
TARGETS = {"bridge-bridge": 1.0, "lt-bridge": 1.0}  # at least this many times libtorrent -> libtorrent
MEASURED_REFERENCE = "about 286 MB/s for 1 GiB on this 2-core machine (shared/PEERS.md)"


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
    lt_preset: str
    lt_mse: bool

    def lt_args(self) -> list[str]:
        return ["--preset", self.lt_preset] + ([] if self.lt_mse else ["--no-mse"])


# ------------------------------------------------------------------------------------- the sides


def json_of(line: Line) -> dict:
    return json.loads(line.text)


async def start_seeder(kids: Children, kind: str, s: Setup) -> tuple[Child, int]:
    """Start a seeder and wait until it has verified its data; return it and its port."""
    if kind == "libtorrent":
        child = await kids.start("libtorrent seeder", [sys.executable, LT_PEER, "lt-peer", "seed", s.torrent,
                                                       s.data_dir, *s.lt_args()], env=child_env())
        line = await child.expect(is_json_event("ready"), s.timeout, "the seeder to verify its data")
        ev = json_of(line)
        if ev["ev"] == "error":
            raise BenchError(f"libtorrent seeder: {ev.get('msg')}")
        return child, int(ev["port"])
    child = await kids.start("bridge seeder", [sys.executable, "-m", "bridge", "seed", s.torrent, "-o", s.data_dir,
                                               "--port", "0", "--host", "127.0.0.1"], env=child_env(), cwd=REPO_ROOT)
    line = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("listening on "),
                              60, "'listening on HOST:PORT'")
    port = int(line.text.rsplit(":", 1)[1])
    await child.expect(lambda ln: ln.stream == "out" and ln.text.startswith("magnet:"), s.timeout,
                       "the magnet line (data verified)")
    return child, port


async def run_leecher(kids: Children, kind: str, s: Setup, out_dir: str, seed_port: int,
                      seeder: Child) -> Result:
    """Start the leecher, wait for it to complete; timings and CPU over the window."""
    seed_cpu0 = seeder.cpu()
    leech_cpu_reported: float | None = None
    if kind == "libtorrent":
        child = await kids.start("libtorrent leecher", [sys.executable, LT_PEER, "lt-peer", "leech", s.torrent,
                                                        out_dir, "--connect", str(seed_port), *s.lt_args()],
                                 env=child_env())
        t0 = child.started
        ready = await child.expect(is_json_event("ready"), 60, "the leecher to start")
        done = await child.expect(is_json_event("finished"), s.timeout, "the download to finish")
        ev = json_of(done)
        if ev["ev"] == "error":
            raise BenchError(f"libtorrent leecher: {ev.get('msg')}\n{child.tail()}")
        leech_cpu_reported = ev.get("cpu")
    else:
        child = await kids.start("bridge leecher", [sys.executable, "-m", "bridge", "download", s.torrent, "-o",
                                                    out_dir, "--peer", f"127.0.0.1:{seed_port}", "--port", "0",
                                                    "--host", "127.0.0.1"], env=child_env(), cwd=REPO_ROOT)
        t0 = child.started
        ready = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("listening on "), 60,
                                   "'listening on HOST:PORT'")
        done = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("complete: "), s.timeout,
                                  "the download to complete")
    leech_cpu = child.cpu()
    if leech_cpu is None:
        leech_cpu = leech_cpu_reported
    seed_cpu1 = seeder.cpu()
    wall = done.t - t0
    startup = ready.t - t0
    rc = await child.wait(60)
    if rc is None:
        await kids.stop(child)
        raise BenchError(f"{child.name}: did not exit within 60 s after completing\n{child.tail()}")
    if kind == "bridge" and rc != 0:
        raise BenchError(f"{child.name}: exit code {rc}\n{child.tail()}")
    await kids.stop(child)
    r = Result(pair="", run=0, ok=True, wall=wall, startup=startup, mbps=s.size / wall / 1e6,
               mbps_transfer=s.size / max(wall - startup, 1e-9) / 1e6, leech_cpu=leech_cpu,
               seed_cpu=None if seed_cpu0 is None or seed_cpu1 is None else seed_cpu1 - seed_cpu0)
    return r


async def run_pair(kids: Children, key: str, run: int, s: Setup, keep: bool) -> Result:
    seed_kind, leech_kind = PAIRS[key]
    out_dir = os.path.join(s.tmp, f"{key}-run{run}")
    os.makedirs(out_dir)
    seeder = None
    try:
        seeder, port = await start_seeder(kids, seed_kind, s)
        r = await run_leecher(kids, leech_kind, s, out_dir, port, seeder)
        r.pair, r.run = key, run
        got = os.path.join(out_dir, s.name)
        r.sha_ok = await asyncio.to_thread(sha256_file, got) == s.sha256
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
        return max(good, key=lambda r: r.mbps)
    return runs[-1] if runs else None


def report(results: list[Result], keys: list[str], s: Setup, repeat: int) -> str:
    ref = best_of(results, REFERENCE)
    ref_mbps = ref.mbps if ref and ref.ok else None
    headers = ["seeder -> leecher", "MB/s", "wall s", "startup s", "MB/s excl. startup", "seeder CPU%",
               "leecher CPU%", f"vs {PAIRS[REFERENCE][0]}->{PAIRS[REFERENCE][1]}", "target", "SHA-256"]
    if repeat > 1:
        headers.append(f"all runs MB/s (best of {repeat})")
    rows = []
    for key in keys:
        b = best_of(results, key)
        label = "{} -> {}".format(*PAIRS[key])
        target = f">= {TARGETS[key]:.2f}x" if key in TARGETS else ("reference" if key == REFERENCE else "")
        if b is None or not b.ok:
            row = [label, "FAIL", "", "", "", "", "", "", target, "FAIL" if b and b.sha_ok is False else "n/a"]
        else:
            ratio = f"{b.mbps / ref_mbps:.2f}x" if ref_mbps else "n/a"
            if key in TARGETS and ref_mbps:
                target += " met" if b.mbps / ref_mbps >= TARGETS[key] else " MISSED"
            row = [label, f"{b.mbps:.1f}", f"{b.wall:.2f}", f"{b.startup:.2f}", f"{b.mbps_transfer:.1f}",
                   b.cpu_pct("seed"), b.cpu_pct("leech"), ratio, target, "OK"]
        if repeat > 1:
            row.append(" ".join(f"{r.mbps:.0f}" if r.ok else "FAIL" for r in results if r.pair == key))
        rows.append(row)
    right = [False, True, True, True, True, True, True, True, False, False] + ([False] if repeat > 1 else [])
    lines = [format_table(headers, rows, right), ""]
    lines.append(f"size {s.size / MIB:.0f} MiB ({s.size} bytes), piece length {s.piece_length // 1024} KiB, "
                 f"{-(-s.size // s.piece_length)} pieces; MB = 10^6 bytes; CPU% 100 = one core "
                 f"({os.cpu_count()} cores here)")
    lines.append("timer: leecher process start -> leecher reports complete+verified; 'startup' = leecher start -> "
                 "its listener/session is up")
    lines.append(f"reference for the targets: libtorrent -> libtorrent, {MEASURED_REFERENCE}")
    lines.append(lt_settings_summary(s.lt_preset, s.lt_mse))
    lines.append("bridge: python -m bridge seed/download --host 127.0.0.1 --port 0 (leecher dials the seeder "
                 "with --peer), default settings")
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

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)

    load0 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench-tcp-", dir=args.tmpdir)
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
                  sha256=digest, timeout=args.timeout, lt_preset=args.lt_preset,
                  lt_mse=not args.lt_no_mse)
        for run in range(1, args.repeat + 1):
            for key in keys:
                label = "{} -> {}".format(*PAIRS[key])
                print(f"run {run}/{args.repeat}: {label} ...", file=sys.stderr, flush=True)
                r = await run_pair(kids, key, run, s, args.keep)
                results.append(r)
                msg = (f"{r.mbps:.1f} MB/s in {r.wall:.2f} s (startup {r.startup:.2f} s), CPU seeder "
                       f"{r.cpu_pct('seed')} leecher {r.cpu_pct('leech')}, SHA-256 OK") if r.ok else "FAILED"
                print(f"  {msg}", file=sys.stderr, flush=True)
        print()
        print(f"TCP throughput on loopback, {platform.python_implementation()} {platform.python_version()}, "
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the random file in MiB")
    p.add_argument("--piece-length", metavar="BYTES",
                   help="piece length (e.g. 262144, 256k, 1m); default 1 MiB for 1 GiB, halved with the size")
    p.add_argument("--repeat", type=int, default=1, help="runs of each pair; the best one is reported")
    p.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated subset of: " + ", ".join(PAIRS))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per seeder check and per transfer")
    p.add_argument("--lt-preset", default="high_performance_seed", choices=["high_performance_seed", "default"],
                   help="libtorrent settings preset under the loopback overrides")
    p.add_argument("--lt-no-mse", action="store_true",
                   help="turn libtorrent's MSE/PE off (by default it dials with an MSE handshake first and "
                        "retries in plaintext, about 1 s later, if the other side rejects it)")
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
    raise SystemExit(main())
