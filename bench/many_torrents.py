#!/usr/bin/env python3
"""One `serve` with many small seeded torrents and many connected peers: memory, idle CPU, API latency.

It makes ``--torrents`` small files (default 1000, 64 KiB each) in a data folder, starts ``webtorrent-bridge
serve`` on loopback (no WebRTC, no trackers), adds every torrent through the API (POST base64 .torrent),
waits until all seed, then connects ``--peers`` peers (default 200): plain TCP BitTorrent connections
made with the bridge's own wire codec from this process, each to a random torrent, each handshaking and
then idling (interested, keep-alives). Then it measures over ``--idle`` seconds:

* RSS of the serve process (VmRSS, and VmHWM, the peak),
* CPU of the serve process at idle (user+system, % of one core),
* API latency: GET /api/v1/torrents (the whole list) and GET /api/v1/torrents/{infohash}, p50 and p99.

Goals printed with the figures (not enforced): RSS under 300 MB, idle CPU under 5% of one core.

    python bench/many_torrents.py
    python bench/many_torrents.py --torrents 200 --peers 50 --idle 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from _common import REPO_ROOT, child_env, format_table, proc_cpu_seconds

sys.path.insert(0, REPO_ROOT)

from bridge.create import make_info  # noqa: E402
from bridge.proto import events as ev  # noqa: E402
from bridge.proto.metainfo import build_torrent  # noqa: E402
from bridge.proto.wire import Wire, make_reserved  # noqa: E402

RSS_GOAL_MB = 300
IDLE_CPU_GOAL = 5.0


def rss_mb(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text)[1]) / 1024  # type: ignore[index]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text)[1]) / 1024  # type: ignore[index]
    return rss, hwm


def api(url: str, method: str = "GET", body: object = None) -> tuple[float, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        payload = json.loads(r.read())
    return time.perf_counter() - t0, payload


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def idle_peers(port: int, hashes: list[bytes], n: int, hold: asyncio.Event) -> int:
    """n connections, each handshakes with a random torrent and idles until ``hold`` is set."""
    connected = 0

    async def one(i: int) -> None:
        nonlocal connected
        ih = random.choice(hashes)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = Wire()
        writer.write(wire.send(ev.Handshake(ih, b"-XB0001-" + b"%012d" % i, make_reserved(True, True))))
        got = b""
        while len(got) < 68:
            chunk = await reader.read(65536)
            if not chunk:
                return
            got += chunk
        connected += 1
        writer.write(wire.send(ev.Interested()))
        try:
            while not hold.is_set():
                try:
                    await asyncio.wait_for(reader.read(65536), 30)
                except TimeoutError:
                    writer.write(wire.send(ev.KeepAlive()))
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    deadline = time.monotonic() + 60
    while connected < n and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.1)
    return connected


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torrents", type=int, default=1000)
    p.add_argument("--peers", type=int, default=200)
    p.add_argument("--size-kib", type=int, default=64, help="size of each torrent's file (default 64)")
    p.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement (default 20)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="bench-many-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    print(f"making {args.torrents} torrents of {args.size_kib} KiB in {work} ...", file=sys.stderr)
    torrents = []
    rng = random.Random(1)
    for i in range(args.torrents):
        path = os.path.join(data, f"file-{i:05d}.bin")
        with open(path, "wb") as f:
            f.write(rng.randbytes(args.size_kib * 1024))
        info = make_info(path)
        torrents.append((info.info_hash, build_torrent(info)))

    cmd = [sys.executable, "-m", "bridge", "serve", "--http-port", "0", "--port", "0", "--peer-host", "127.0.0.1",
           "--data-dir", data, "--state-dir", os.path.join(work, "state"), "--no-webrtc"]
    log_path = os.path.join(work, "serve.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO_ROOT, env=child_env())
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"API, page and streams: (http://127\.0\.0\.1:\d+)/", open(log_path).read())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("serve did not start:\n" + open(log_path).read()[-2000:])
            time.sleep(0.05)
        base = m.group(1)
        peer_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", open(log_path).read())[1])  # type: ignore[index]
        add_lat = []
        t0 = time.monotonic()
        for _, raw in torrents:
            lat, _ = api(base + "/api/v1/torrents", "POST", {"torrent": base64.b64encode(raw).decode()})
            add_lat.append(lat)
        while True:
            _, stats = api(base + "/api/v1/stats")
            if stats["states"].get("seeding", 0) >= args.torrents:  # type: ignore[index,union-attr]
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"not all torrents seed after 600 s: {stats}")
            time.sleep(0.5)
        added_in = time.monotonic() - t0
        print(f"{args.torrents} torrents added and seeding in {added_in:.1f} s; connecting {args.peers} peers",
              file=sys.stderr)

        async def measure() -> dict[str, float]:
            hold = asyncio.Event()
            peer_task = asyncio.create_task(idle_peers(peer_port, [h for h, _ in torrents], args.peers, hold))
            while not peer_task.done():
                _, stats = await asyncio.to_thread(api, base + "/api/v1/stats")
                connected = sum(stats["peers"].values())  # type: ignore[index,union-attr]
                if connected >= args.peers:
                    break
                await asyncio.sleep(0.5)
                if peer_task.done():
                    break
            await asyncio.sleep(2)
            cpu0, w0 = proc_cpu_seconds(proc.pid) or 0.0, time.monotonic()
            await asyncio.sleep(args.idle)
            cpu1, w1 = proc_cpu_seconds(proc.pid) or 0.0, time.monotonic()
            _, stats = await asyncio.to_thread(api, base + "/api/v1/stats")
            list_lat, show_lat = [], []
            for _ in range(30):
                list_lat.append((await asyncio.to_thread(api, base + "/api/v1/torrents"))[0])
                ih = random.choice(torrents)[0].hex()
                show_lat.append((await asyncio.to_thread(api, base + f"/api/v1/torrents/{ih}"))[0])
            rss, hwm = rss_mb(proc.pid)
            hold.set()
            peer_task.cancel()
            return {"idle_cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0), "rss_mb": rss, "peak_rss_mb": hwm,
                    "peers_connected": float(sum(stats["peers"].values())),  # type: ignore[index,union-attr]
                    "list_p50_ms": pct(list_lat, 0.5), "list_p99_ms": pct(list_lat, 0.99),
                    "show_p50_ms": pct(show_lat, 0.5), "show_p99_ms": pct(show_lat, 0.99),
                    "add_p50_ms": pct(add_lat, 0.5), "add_p99_ms": pct(add_lat, 0.99)}

        fig = asyncio.run(measure())
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = [
        ["torrents / peers connected", f"{args.torrents} / {fig['peers_connected']:.0f}", ""],
        ["RSS (peak)", f"{fig['rss_mb']:.0f} MB ({fig['peak_rss_mb']:.0f} MB)", f"goal < {RSS_GOAL_MB} MB"],
        ["CPU at idle", f"{fig['idle_cpu_pct']:.1f}% of one core", f"goal < {IDLE_CPU_GOAL}%"],
        ["GET /api/v1/torrents p50/p99", f"{fig['list_p50_ms']:.1f} / {fig['list_p99_ms']:.1f} ms", ""],
        ["GET /api/v1/torrents/{ih} p50/p99", f"{fig['show_p50_ms']:.1f} / {fig['show_p99_ms']:.1f} ms", ""],
        ["POST /api/v1/torrents p50/p99", f"{fig['add_p50_ms']:.1f} / {fig['add_p99_ms']:.1f} ms", ""],
    ]
    print(format_table(["figure", "value", "goal"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
