#!/usr/bin/env python3
"""Raw data-channel throughput through RtcTransport on loopback: no BitTorrent, just bytes.

Pairs (sender -> receiver), each moving ``--size-mib`` MiB (default 32):

* ``aiortc-aiortc``: two Python processes (the receiver is this script started with ``--role receiver``,
  signalling over its stdin/stdout). RtcTransport on both ends.
* ``aiortc-chromium``: RtcTransport offers, headless Chromium's RTCPeerConnection answers and counts.
* ``chromium-aiortc``: Chromium sends 16 KiB messages, pausing above 1 MiB buffered (as simple-peer does,
  with a higher mark), RtcTransport reads.

Chromium is the Debian build (/usr/bin/chromium) driven by Python playwright with the page and flags of
tests/browser (chromium_rtc.py). MB/s is 10^6 bytes per second of wall time, from the first byte written
to the last byte received; CPU% is user+system time of the Python process(es) over the same run (100% =
one core; the browser's CPU is not counted). Data is checked by SHA-256 in every direction.

    python bench/rtc_raw.py                         # all three pairs, asyncio loop
    python bench/rtc_raw.py --loop uvloop --repeat 3
    python bench/rtc_raw.py --pairs aiortc-aiortc --size-mib 64

This is a benchmark, not a test: it fails only when data arrives wrong or not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "browser"))

from bridge.net.rtc import RtcConfig, RtcTransport, answer_offer, create_offer, wait_closing  # noqa: E402

# sctp_fixes=False and receive_buffer=0: the reference is aiortc as it is, without bridge.net.rtc_sctp and
# with the system's socket buffers. (main() below measures the bridge's defaults.)
CONFIG = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0, sctp_fixes=False, receive_buffer=0)
MIB = 1024 * 1024
WRITE_SIZE = 256 * 1024
TIMEOUT = 300.0


def payload(size: int) -> bytes:
    return os.urandom(size)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def drain(transport: RtcTransport, size: int) -> tuple[str, float]:
    """Read ``size`` bytes; returns their SHA-256 and the time the first byte arrived."""
    h = hashlib.sha256()
    got = 0
    first = 0.0
    while got < size:
        chunk = await transport.read()
        if not chunk:
            raise RuntimeError(f"stream ended after {got} of {size} bytes")
        if not got:
            first = time.perf_counter()
        h.update(chunk)
        got += len(chunk)
    return h.hexdigest(), first


async def send_all(transport: RtcTransport, data: bytes) -> None:
    view = memoryview(data)
    for pos in range(0, len(data), WRITE_SIZE):
        await transport.write(view[pos : pos + WRITE_SIZE])


# ------------------------------------------------------------------------------------ aiortc -> aiortc


async def receiver_role(size: int) -> None:
    """The child process: answer the offer read from stdin, receive ``size`` bytes, report as JSON."""
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    answer, answered = await answer_offer(json.loads(line)["offer"], CONFIG)
    print(json.dumps({"answer": answer}), flush=True)
    transport = await answered
    cpu0 = cpu()
    digest, _ = await drain(transport, size)
    done = time.perf_counter()
    print(json.dumps({"sha256": digest, "done": done, "cpu": cpu() - cpu0}), flush=True)
    transport.close()
    await transport.wait_closed()
    await wait_closing()


async def aiortc_to_aiortc(size: int, loop_name: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--role", "receiver", "--size-bytes", str(size),
        "--loop", loop_name, "--high-kib", str(CONFIG.buffered_amount_high // 1024),
        "--low-kib", str(CONFIG.buffered_amount_low // 1024),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        data = payload(size)
        offer = await create_offer(CONFIG)
        proc.stdin.write((json.dumps({"offer": offer.sdp}) + "\n").encode())
        await proc.stdin.drain()
        answer = json.loads(await proc.stdout.readline())["answer"]
        transport = await offer.accept_answer(answer)
        cpu0 = cpu()
        start = time.perf_counter()
        await send_all(transport, data)
        report = json.loads(await proc.stdout.readline())
        sender_cpu = cpu() - cpu0
        # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes on one machine
        wall = report["done"] - start
        ok = report["sha256"] == hashlib.sha256(data).hexdigest()
        transport.close()
        await transport.wait_closed()
        await asyncio.wait_for(proc.wait(), 30)
        return {"wall": wall, "ok": ok, "cpu": f"sender {100 * sender_cpu / wall:.0f}%, receiver {100 * report['cpu'] / wall:.0f}%"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ----------------------------------------------------------------------------------- with Chromium


async def with_chromium(run: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    from chromium_rtc import rtc_page

    async with rtc_page() as page:
        return await run(page)


async def aiortc_to_chromium(size: int, _loop: str) -> dict[str, Any]:
    from chromium_rtc import loopback_only

    async def run(page: Any) -> dict[str, Any]:
        offer = await create_offer(CONFIG)
        answer = loopback_only(await page.call("answerOffer", offer.sdp))
        transport, _ = await asyncio.gather(offer.accept_answer(answer), page.call("waitChannel"))
        data = payload(size)
        received = asyncio.ensure_future(page.call("receive", size, True, timeout=TIMEOUT))
        await asyncio.sleep(0.2)  # let the page start waiting before the clock starts
        cpu0 = cpu()
        start = time.perf_counter()
        await send_all(transport, data)
        result = await received
        wall = time.perf_counter() - start
        used = cpu() - cpu0
        transport.close()
        await transport.wait_closed()
        return {"wall": wall, "ok": result["sha256"] == hashlib.sha256(data).hexdigest(), "cpu": f"python {100 * used / wall:.0f}%"}

    return await with_chromium(run)


async def chromium_to_aiortc(size: int, _loop: str) -> dict[str, Any]:
    from chromium_rtc import loopback_only

    async def run(page: Any) -> dict[str, Any]:
        offer = loopback_only(await page.call("makeOffer"))
        answer, answered = await answer_offer(offer, CONFIG)
        _, transport = await asyncio.gather(page.call("acceptAnswer", answer), answered)
        cpu0 = cpu()
        start = time.perf_counter()
        sent = asyncio.ensure_future(page.call("send", size, True, timeout=TIMEOUT))
        digest, _ = await drain(transport, size)
        wall = time.perf_counter() - start  # includes the page generating its random data (a few ms)
        used = cpu() - cpu0
        ok = digest == await sent
        transport.close()
        await transport.wait_closed()
        return {"wall": wall, "ok": ok, "cpu": f"python {100 * used / wall:.0f}%"}

    return await with_chromium(run)


PAIRS: dict[str, Callable[[int, str], Awaitable[dict[str, Any]]]] = {
    "aiortc-aiortc": aiortc_to_aiortc,
    "aiortc-chromium": aiortc_to_chromium,
    "chromium-aiortc": chromium_to_aiortc,
}


async def main_async(args: argparse.Namespace) -> int:
    size = args.size_bytes or args.size_mib * MIB
    if args.role == "receiver":
        await receiver_role(size)
        return 0
    pairs = args.pairs.split(",")
    print(
        f"{size / MIB:g} MiB per run, loop {args.loop}, best of {args.repeat}, bufferedAmount marks "
        f"{CONFIG.buffered_amount_high // 1024}/{CONFIG.buffered_amount_low // 1024} KiB; "
        f"load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    rows = []
    failed = False
    for name in pairs:
        best: dict[str, Any] | None = None
        for i in range(args.repeat):
            async with asyncio.timeout(TIMEOUT):
                result = await PAIRS[name](size, args.loop)
            await wait_closing()
            print(f"  {name} run {i + 1}: {size / result['wall'] / 1e6:.1f} MB/s, {result['wall']:.2f} s, {result['cpu']}, data {'OK' if result['ok'] else 'WRONG'}", file=sys.stderr)
            failed |= not result["ok"]
            if best is None or result["wall"] < best["wall"]:
                best = result
        assert best is not None
        rows.append((name, size / best["wall"] / 1e6, best["wall"], best["cpu"], "OK" if best["ok"] else "WRONG"))
    print(f"{'pair':<17} {'MB/s':>7} {'wall s':>7}  {'CPU':<28} data")
    for name, rate, wall, cpu_text, ok in rows:
        print(f"{name:<17} {rate:7.1f} {wall:7.2f}  {cpu_text:<28} {ok}")
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated subset of " + ",".join(PAIRS))
    p.add_argument("--size-mib", type=int, default=32)
    p.add_argument("--size-bytes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--high-kib", type=int, default=RtcConfig.buffered_amount_high // 1024, help="RtcConfig.buffered_amount_high")
    p.add_argument("--low-kib", type=int, default=RtcConfig.buffered_amount_low // 1024, help="RtcConfig.buffered_amount_low")
    p.add_argument("--role", choices=["main", "receiver"], default="main", help=argparse.SUPPRESS)
    args = p.parse_args()
    global CONFIG
    CONFIG = RtcConfig(
        host_addresses=("127.0.0.1",), connect_timeout=20.0,
        buffered_amount_high=args.high_kib * 1024, buffered_amount_low=args.low_kib * 1024,
    )
    for name in args.pairs.split(","):
        if name not in PAIRS:
            p.error(f"unknown pair {name!r}")
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(main_async(args))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
