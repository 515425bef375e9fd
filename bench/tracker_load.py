#!/usr/bin/env python3
"""WebSocket tracker load: the embedded tracker against bittorrent-tracker (the npm reference), same load.

N WebSocket clients (default 200) join one swarm and then announce in a closed loop, each announce carrying
5 offers (WebTorrent's count) with a realistic-size SDP. Every client reads everything the tracker sends it:
its announce replies and the offers forwarded to it by the others. The figure is announces per second,
counted from the announce replies the clients receive during the measured window (after a warm-up).

Each tracker runs in its own process: the bridge's as ``webtorrent-bridge tracker`` would run it (uvloop
when installed), bittorrent-tracker 11 in Node with ``{http: false, udp: false, ws: true}`` from
tests/tools/node_modules. The load comes from another process (uvloop + aiohttp WebSocket clients). The
machine has 2 cores, so the load generator can limit both trackers: the table also shows each tracker's
CPU use and announces per CPU-second of the tracker, which does not depend on how fast the load is.

    python bench/tracker_load.py                          # 200 clients, 5 offers, 10 s per tracker
    python bench/tracker_load.py --clients 500 --duration 20 --repeat 3
    python bench/tracker_load.py --trackers bridge        # only the embedded tracker

This is a benchmark, not a test: it prints figures and does not fail when the 2x goal is missed (only when
a tracker misbehaves: errors, missing replies, no offers forwarded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from _common import (
    REPO_ROOT,
    BenchError,
    Children,
    bench_id,
    bench_main,
    child_env,
    format_table,
    proc_cpu_seconds,
    ws_announce,
)

TOOLS_DIR = os.path.join(REPO_ROOT, "tests", "tools")
GOAL = 2.0  # the embedded tracker should do at least twice the reference's announces per second

# bittorrent-tracker as a WebSocket-only tracker, run with `node --input-type=module -e` from tests/tools so
# that 'bittorrent-tracker/server' resolves there (the package root needs node-datachannel; see PEERS.md).
NODE_TRACKER = r"""
import Server from 'bittorrent-tracker/server'
const interval = Number(process.env.TRACKER_INTERVAL || '120')
const server = new Server({ http: false, udp: false, ws: true, stats: false, interval: interval * 1000 * 5 })
server.on('error', err => console.error('error:', err.message))
server.on('warning', () => {})
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.ws.address().port }) + '\n')
})
const stop = () => { server.close(() => process.exit(0)); setTimeout(() => process.exit(0), 2000).unref() }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
"""


# ------------------------------------------------------------------------------------------ load process


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    n_clients = args.clients
    started = asyncio.Event()
    stop = False
    measuring = False
    counts = {"announces": 0, "offers": 0, "failures": 0, "other": 0}
    latencies: list[float] = []
    ready = 0
    all_ready = asyncio.Event()
    errors: list[str] = []

    def announce_text(n: int, event: str | None, first_offer: int) -> str:
        offer_ids = [bench_id(b"offer-", (args.client_base + n) * 100 + first_offer + i) for i in range(args.offers)]
        return ws_announce(bench_id(b"bench-swarm-", n % args.swarms), bench_id(b"-WW0001-", args.client_base + n),
                           offer_ids, args.sdp_bytes, n * 10, event)

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ready
        first = announce_text(n, "started", 0)
        again = announce_text(n, None, 50)
        async with session.ws_connect(args.url, compress=0, max_msg_size=1 << 20, autoping=True) as ws:

            async def one(text: str) -> None:
                t0 = time.perf_counter()
                await ws.send_str(text)
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise BenchError(f"client {n}: {msg.type.name} {msg.data!r}")
                    data: str = msg.data
                    if '"offer"' in data:
                        if measuring:
                            counts["offers"] += 1
                        continue
                    if '"failure reason"' in data:
                        counts["failures"] += 1
                        if len(errors) < 5:
                            errors.append(data[:200])
                        return
                    if '"interval"' in data:
                        if measuring:
                            counts["announces"] += 1
                            latencies.append(time.perf_counter() - t0)
                        return
                    counts["other"] += 1

            await one(first)
            ready += 1
            if ready == n_clients:
                all_ready.set()
            await started.wait()
            while not stop:
                await one(again)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks: list[asyncio.Task[None]] = []
        for n in range(n_clients):
            tasks.append(asyncio.create_task(client(session, n)))
            if n % 50 == 49:
                await asyncio.sleep(0.01)  # do not flood the listen backlog
        try:
            async with asyncio.timeout(60):
                waiter = asyncio.ensure_future(all_ready.wait())
                done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if waiter not in done:
                    waiter.cancel()
                    for t in done:
                        t.result()  # raises the client's error
                    raise BenchError("a client ended before the start")
        except TimeoutError:
            raise BenchError(f"only {ready} of {n_clients} clients joined within 60 s") from None
        started.set()
        await asyncio.sleep(args.warmup)
        measuring = True
        cpu0 = proc_cpu_seconds(args.tracker_pid) if args.tracker_pid else None
        own0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.sleep(args.duration)
        measuring = False
        elapsed = time.perf_counter() - t0
        cpu1 = proc_cpu_seconds(args.tracker_pid) if args.tracker_pid else None
        own1 = time.process_time()
        stop = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                results = await asyncio.gather(*tasks, return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    errors.append(f"{len(failed)} clients failed: {failed[0]!r}")
        for t in tasks:
            t.cancel()
    latencies.sort()

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    return {
        "seconds": elapsed,
        "announces": counts["announces"],
        "offers_received": counts["offers"],
        "failures": counts["failures"],
        "unexpected": counts["other"],
        "errors": errors,
        "tracker_cpu": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "load_cpu": own1 - own0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def load_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tracker_load.py _load")
    p.add_argument("--url", required=True)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--client-base", type=int, default=0)
    p.add_argument("--offers", type=int, default=5)
    p.add_argument("--swarms", type=int, default=1)
    p.add_argument("--sdp-bytes", type=int, default=600)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--tracker-pid", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(_load(args))
    except ImportError:
        result = asyncio.run(_load(args))
    print(json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ bridge tracker


def serve_bridge_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tracker_load.py _serve-bridge")
    p.add_argument("--interval", type=int, default=120)
    args = p.parse_args(argv)
    from bridge.allocator import tune_malloc
    from bridge.tracker import TrackerServer, run_tracker

    tune_malloc()  # as bridge/cli.py does for `webtorrent-bridge tracker`

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(server: TrackerServer) -> None:
            print(json.dumps({"port": server.port}), flush=True)

        await run_tracker("127.0.0.1", 0, stop, interval=args.interval, ready=ready)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0


# ------------------------------------------------------------------------------------------ orchestration


async def run_one(kind: str, args: argparse.Namespace, children: Children) -> dict[str, Any]:
    env = child_env()
    if kind == "bridge":
        tracker = await children.start("bridge-tracker", [sys.executable, os.path.abspath(__file__),
                                                          "_serve-bridge", "--interval", "120"], env=env)
    else:
        if not os.path.isdir(os.path.join(TOOLS_DIR, "node_modules", "bittorrent-tracker")):
            raise BenchError(f"bittorrent-tracker is not installed in {TOOLS_DIR}; run scripts/setup")
        env = dict(env, TRACKER_INTERVAL="120")
        tracker = await children.start("bittorrent-tracker", ["node", "--input-type=module", "-e", NODE_TRACKER],
                                       env=env, cwd=TOOLS_DIR)
    try:
        line = await tracker.expect(lambda ln: ln.stream == "out" and ln.text.startswith("{"), 30, "its port")
        port = int(json.loads(line.text)["port"])
        url = f"ws://127.0.0.1:{port}/"
        procs = max(1, args.load_procs)
        per = [args.clients // procs + (1 if i < args.clients % procs else 0) for i in range(procs)]
        loaders = []
        base = 0
        for i, n in enumerate(per):
            loaders.append(await children.start(f"load{i}", [
                sys.executable, os.path.abspath(__file__), "_load", "--url", url, "--clients", str(n),
                "--client-base", str(base), "--offers", str(args.offers), "--swarms", str(args.swarms),
                "--sdp-bytes", str(args.sdp_bytes), "--warmup", str(args.warmup),
                "--duration", str(args.duration), "--tracker-pid", str(tracker.pid)], env=child_env()))
            base += n
        parts = []
        for loader in loaders:
            res_line = await loader.expect(lambda ln: ln.stream == "out" and ln.text.startswith("{"),
                                           args.duration + args.warmup + 120, "the load result")
            parts.append(json.loads(res_line.text))
            await children.stop(loader)
    finally:
        await children.stop(tracker)
    seconds = max(p["seconds"] for p in parts)
    cpu = [p["tracker_cpu"] for p in parts if p["tracker_cpu"] is not None]
    result = {
        "tracker": kind,
        "seconds": seconds,
        "announces": sum(p["announces"] for p in parts),
        "offers_received": sum(p["offers_received"] for p in parts),
        "failures": sum(p["failures"] for p in parts),
        "unexpected": sum(p["unexpected"] for p in parts),
        "errors": [e for p in parts for e in p["errors"]],
        "tracker_cpu": max(cpu) if cpu else None,
        "load_cpu": sum(p["load_cpu"] for p in parts),
        "p50_ms": max((p["p50_ms"] for p in parts if p["p50_ms"] is not None), default=None),
        "p99_ms": max((p["p99_ms"] for p in parts if p["p99_ms"] is not None), default=None),
    }
    result["per_second"] = result["announces"] / seconds if seconds else 0.0
    result["per_cpu_second"] = (result["announces"] / result["tracker_cpu"]) if result["tracker_cpu"] else None
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


async def orchestrate(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.trackers.split(",") if k.strip()]
    for k in kinds:
        if k not in ("bridge", "reference"):
            raise SystemExit(f"unknown tracker {k!r} (bridge, reference)")
    children = Children()
    best: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    ok = True
    try:
        for rep in range(args.repeat):
            for kind in kinds:
                print(f"[{kind}] run {rep + 1}/{args.repeat}: {args.clients} clients, {args.offers} offers, "
                      f"{args.duration:g} s ...", file=sys.stderr, flush=True)
                r = await run_one(kind, args, children)
                r["run"] = rep + 1
                runs.append(r)
                problems = []
                if r["failures"] or r["errors"]:
                    problems.append(f"{r['failures']} failures, errors: {r['errors'][:3]}")
                if r["announces"] == 0:
                    problems.append("no announce replies")
                expected_offers = r["announces"] * min(args.offers, args.clients // args.swarms - 1)
                if expected_offers and r["offers_received"] < 0.5 * expected_offers:
                    problems.append(f"only {r['offers_received']} offers received for {r['announces']} announces")
                if problems:
                    ok = False
                    print(f"[{kind}] PROBLEM: " + "; ".join(problems), file=sys.stderr)
                if kind not in best or r["per_second"] > best[kind]["per_second"]:
                    best[kind] = r
    finally:
        await children.close()

    headers = ["tracker", "announces/s", "offers fwd/s", "p50 ms", "p99 ms", "tracker CPU%",
               "announces/CPU-s", "load CPU%", "failures"]
    rows = []
    for kind in kinds:
        r = best[kind]
        sec = r["seconds"] or 1.0
        name = "embedded (bridge)" if kind == "bridge" else "bittorrent-tracker 11"
        rows.append([name, f"{r['per_second']:.0f}", f"{r['offers_received'] / sec:.0f}", _fmt(r["p50_ms"], ".1f"),
                     _fmt(r["p99_ms"], ".1f"),
                     "n/a" if r["tracker_cpu"] is None else f"{100 * r['tracker_cpu'] / sec:.0f}%",
                     _fmt(r["per_cpu_second"], ".0f"), f"{100 * r['load_cpu'] / sec:.0f}%", str(r["failures"])])
    print(f"WebSocket tracker load: {args.clients} clients in {args.swarms} swarm(s), {args.offers} offers "
          f"of {args.sdp_bytes} B SDP per announce, {args.duration:g} s measured after {args.warmup:g} s warm-up"
          f"{', best of ' + str(args.repeat) if args.repeat > 1 else ''}; load from {args.load_procs} process(es)")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print(format_table(headers, rows, right=[False] + [True] * (len(headers) - 1)))
    if "bridge" in best and "reference" in best:
        b, ref = best["bridge"], best["reference"]
        ratio = b["per_second"] / ref["per_second"] if ref["per_second"] else float("inf")
        line = f"\nembedded / bittorrent-tracker: {ratio:.2f}x announces/s (goal >= {GOAL:.1f}x)"
        if b["per_cpu_second"] and ref["per_cpu_second"]:
            line += f", {b['per_cpu_second'] / ref['per_cpu_second']:.2f}x announces per tracker CPU-second"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_load":
        return load_main(argv[1:])
    if argv and argv[0] == "_serve-bridge":
        return serve_bridge_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200, help="WebSocket clients (default 200)")
    p.add_argument("--offers", type=int, default=5, help="offers per announce (default 5, like WebTorrent)")
    p.add_argument("--swarms", type=int, default=1, help="swarms the clients are spread over (default 1)")
    p.add_argument("--sdp-bytes", type=int, default=600, help="size of each fake SDP (default 600)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per tracker (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per tracker; the best is shown")
    p.add_argument("--load-procs", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--trackers", default="bridge,reference", help="bridge,reference (default both)")
    p.add_argument("--json", help="write every run's figures here")
    args = p.parse_args(argv)
    if args.clients < 2 or args.swarms < 1 or args.clients // args.swarms < 2:
        p.error("need at least 2 clients per swarm")
    return bench_main(lambda: asyncio.run(orchestrate(args)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
