#!/usr/bin/env python3
"""WebRTC throughput to a real WebTorrent page: the bridge, raw aiortc and libtorrent 2.1 side by side.

One run measures, on the same random file (``--size-mib``, default 64 MiB):

1. ``bridge``: ``python -m bridge seed TORRENT`` (uvloop, as the CLI picks it) seeds; headless Chromium
   running the real WebTorrent bundle (web/node_modules/webtorrent, page tests/browser/webtorrent/wt.html)
   adds the magnet and downloads through a ws tracker (the bridge's embedded one, a fresh one per run). The
   page keeps the torrent in memory, as the raw page does (``--page-store default``: WebTorrent's own store,
   which in Chromium writes every chunk to the Origin Private File System and is then the page's main cost).
2. ``raw aiortc``: the same bytes over one bare data channel, RtcTransport -> Chromium, no BitTorrent
   (bench/rtc_raw.py's aiortc-chromium, imported), in this process on uvloop.
2b. ``path``: the same as 2 with the bridge's SCTP (bridge/net/rtc_sctp.py's fixes and lean send path, as
   the bridge's own peer connections have it): the bridge's WebRTC path alone, against raw aiortc, to the
   same bare page.
3. ``raw-aiortc``: the same bytes from RtcTransport to RtcTransport in another process, no browser
   (bench/rtc_raw.py's aiortc-aiortc, the issue's "aiortc to aiortc raw"), on 127.0.0.1.
4. ``libtorrent``: libtorrent 2.1 seeding over WebRTC only (TCP and uTP off) to the same kind of page.

``--download`` measures the other direction, a WebTorrent page seeding (it fetches the file from the
bench's HTTP server and hashes it first, in memory unless ``--page-store default``):

5. ``bridge-dl``: ``python -m bridge download MAGNET --seed`` through a fresh embedded tracker; the clock
   runs from the page's first upload to the bridge's ``complete:`` line.
6. ``raw-dl``: Chromium -> RtcTransport over one bare data channel (bench/rtc_raw.py's chromium-aiortc),
   aiortc as it is; ``path-dl``: the same with the bridge's SCTP and socket buffers.
7. ``libtorrent-dl``: libtorrent 2.1 (default settings, WebRTC only) downloading the magnet; the clock
   stops at its torrent_finished_alert.

libtorrent's ICE (libjuice) never gathers on 127/8, so by default the script re-runs itself inside a private
network namespace (``unshare -n``, needs root) with a veth pair (10.77.0.1 and 10.77.0.2, nothing leaves it),
and all the measurements run there, with Chromium inside too. The trackers, the bridge and libtorrent use
10.77.0.1, and Chromium offers candidates on every address of the namespace; the raw channel keeps
rtc_raw.py's 127.0.0.1 (both are local addresses, carried by the same loopback path). Without namespaces
(or with ``--no-netns``) it runs parts 1 to 3 on 127.0.0.1 and says that libtorrent was skipped.

Times come from the page (performance.now()): from ``client.add()`` to the torrent's ``done`` event (metadata
fetch and connection set-up included), and from the first block received to ``done``. The raw channel's time
runs from the first byte written to the last one received, so the bridge's first-block figure is the one to
hold against it. The page checks SHA-256 of what it stored.

    python bench/rtc_throughput.py                        # 64 MiB, all four, in a namespace
    python bench/rtc_throughput.py --repeat 3             # best of 3 for each
    python bench/rtc_throughput.py --only bridge,raw --size-mib 32
    python bench/rtc_throughput.py --profile /tmp/bridge.prof   # the bridge seeder under cProfile
    python bench/rtc_throughput.py --page-store default   # WebTorrent's own (OPFS) store in the page
    python bench/rtc_throughput.py --only bridge,libtorrent --page-profile /tmp/page   # the page's JavaScript
    python bench/rtc_throughput.py --download --repeat 3  # the page seeds; the bridge, raw and libtorrent fetch

This is a benchmark, not a test: it fails only when data arrives wrong or not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "browser"))

import rtc_raw  # noqa: E402
from _common import (  # noqa: E402
    MIB,
    BenchError,
    Child,
    Children,
    child_env,
    default_piece_length,
    format_table,
    is_json_event,
    make_random_file,
    make_torrent_with_libtorrent,
    parse_size,
    sha256_file,
)
from chromium_rtc import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

from bridge.net.rtc import ICE_RECEIVE_BUFFER  # noqa: E402

BUNDLE = os.path.join(REPO_ROOT, "web", "node_modules", "webtorrent", "dist", "webtorrent.min.js")
PAGE = os.path.join(REPO_ROOT, "tests", "browser", "webtorrent", "wt.html")
#: The namespace's veth pair (see /work/shared/PEERS.md, "Private network namespaces").
NETNS_ADDRESS = "10.77.0.1"
NETNS_SETUP = [
    "ip link set lo up",
    "ip link add veth0 type veth peer name veth1",
    "ip addr add 10.77.0.1/24 dev veth0",
    "ip addr add 10.77.0.2/24 dev veth1",
    "ip link set veth0 up",
    "ip link set veth1 up",
    "ip route add default via 10.77.0.2 dev veth0",
]
METHODS = ("bridge", "raw", "path", "raw-aiortc", "libtorrent")
#: The download direction (--download): the WebTorrent page seeds, and the other side downloads.
DOWNLOAD_METHODS = ("bridge-dl", "raw-dl", "path-dl", "libtorrent-dl")
INTERRUPTED: list[bool] = []
PYTHON_SIDE = {"bridge": "bridge", "raw": "aiortc", "path": "aiortc", "raw-aiortc": "aiortc",
               "libtorrent": "libtorrent", "bridge-dl": "bridge", "raw-dl": "aiortc", "path-dl": "aiortc",
               "libtorrent-dl": "libtorrent"}
LABELS = {
    "bridge": "bridge -> WebTorrent",
    "raw": "raw aiortc -> Chromium",
    "path": "bridge's RtcTransport -> Chromium",
    "raw-aiortc": "raw aiortc -> aiortc",
    "libtorrent": "libtorrent -> WebTorrent",
    "bridge-dl": "WebTorrent -> bridge",
    "raw-dl": "Chromium -> raw aiortc",
    "path-dl": "Chromium -> bridge's RtcTransport",
    "libtorrent-dl": "WebTorrent -> libtorrent",
}

# In the wt.html page (window.client is WebTorrent with rtcConfig {iceServers: []}): add the magnet and time
# it; resolves at the torrent's 'done' event. HASH_JS then hashes what the page stored.
#
# With ``memory`` true the torrent is stored by MemStore below (chunks kept in an array, as the raw page keeps
# its bytes) instead of WebTorrent's default store, which in Chromium writes every chunk to the Origin
# Private File System (a file handle, createWritable and close per chunk, and reads back each piece to
# verify it). Profiled, that storage is most of the page's work, and it is the same whoever seeds. The
# memory store takes it out, so that the bridge and libtorrent are measured against the raw channel on the
# same terms: --page-store default keeps WebTorrent's own store.
# The abstract-chunk-store interface WebTorrent calls (put/get/close/destroy with callbacks), in memory.
MEMSTORE_JS = """
  class MemStore {
    constructor (chunkLength, opts) { this.chunkLength = Number(chunkLength); this.chunks = [] }
    put (index, buf, cb) { this.chunks[index] = buf; if (cb) queueMicrotask(() => cb(null)) }
    get (index, opts, cb) {
      if (typeof opts === 'function') { cb = opts; opts = null }
      let buf = this.chunks[index]
      if (!buf) {
        const err = new Error('Chunk not found'); err.notFound = true
        return queueMicrotask(() => cb(err))
      }
      if (opts) {
        const offset = opts.offset || 0
        buf = buf.subarray(offset, offset + (opts.length || buf.length - offset))
      }
      queueMicrotask(() => cb(null, buf))
    }
    close (cb) { if (cb) queueMicrotask(() => cb(null)) }
    destroy (cb) { this.chunks = []; if (cb) queueMicrotask(() => cb(null)) }
  }
"""
# Count the page's data-channel messages, both ways (whichever side offered): WebTorrent's work grows with
# the number of messages it handles, not only with the bytes.
COUNT_DC_JS = """
  const dc = window.benchDc = { received: 0, receivedBytes: 0, sent: 0 }
  if (!window.benchDcHooked) {  // on the prototype: WebTorrent (simple-peer) sets onmessage and calls send
    window.benchDcHooked = true
    const proto = RTCDataChannel.prototype
    const onmessage = Object.getOwnPropertyDescriptor(proto, 'onmessage')
    Object.defineProperty(proto, 'onmessage', {
      configurable: true,
      get () { return onmessage.get.call(this) },
      set (handler) {
        onmessage.set.call(this, handler && (e => {
          window.benchDc.received++; window.benchDc.receivedBytes += e.data.byteLength || 0; return handler(e)
        }))
      }
    })
    const send = proto.send
    proto.send = function (data) { window.benchDc.sent++; return send.call(this, data) }
  }
"""
DOWNLOAD_JS = """
async ([magnet, announce, memory]) => {
""" + MEMSTORE_JS + COUNT_DC_JS + """
  const client = window.client
  const t = { add: performance.now(), wire: null, first: null, done: null }
  return await new Promise((resolve, reject) => {
    client.on('error', e => reject(String(e)))
    const opts = memory ? { announce, store: MemStore } : { announce }
    const torrent = window.benchTorrent = client.add(magnet, opts)
    torrent.on('error', e => reject(String(e)))
    torrent.on('wire', () => { if (t.wire === null) t.wire = performance.now() })
    torrent.on('download', () => { if (t.first === null) t.first = performance.now() })
    torrent.on('done', () => { t.done = performance.now(); resolve({ t, peers: torrent.numPeers, dc }) })
  })
}
"""
# The download direction: the page fetches the bench file from its own server (/data), seeds it (hashing it
# first, with the run's piece length) and resolves with the magnet. On its first upload it calls the
# exposed benchFirstUpload(), which starts the clock in Python; the downloader's own report stops it.
SEED_JS = """
async ([announce, pieceLength, memory]) => {
""" + MEMSTORE_JS + COUNT_DC_JS + """
  const bytes = new Uint8Array(await (await fetch('/data')).arrayBuffer())
  const file = new File([bytes], 'rtc-bench.bin')
  const client = window.client
  return await new Promise((resolve, reject) => {
    client.on('error', e => reject(String(e)))
    const opts = memory ? { announce, pieceLength, store: MemStore } : { announce, pieceLength }
    let first = true
    const torrent = window.benchTorrent = client.seed(file, opts, t => resolve(t.magnetURI))
    torrent.on('upload', () => { if (first) { first = false; window.benchFirstUpload() } })
  })
}
"""
HASH_JS = """
async () => {
  const out = []
  for (const f of window.benchTorrent.files) {
    const digest = await crypto.subtle.digest('SHA-256', await f.arrayBuffer())
    out.push([...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join(''))
  }
  return out
}
"""


@dataclass
class Result:
    method: str
    ok: bool
    first_s: float  # first byte (block) to done
    total_s: float | None = None  # add() to done; None for the raw channel
    setup_s: float | None = None  # add() to the first block
    wire_s: float | None = None  # add() to the peer connection (signalling, ICE, DTLS, BitTorrent handshake)
    seeder_cpu: float | None = None  # % of one core, over the transfer
    seeder_cpu_s: float | None = None  # CPU seconds over the same window
    browser_cpu: float | None = None
    cpu_window_s: float | None = None  # the wall time seeder_cpu and browser_cpu are shares of
    udp_drops: int | None = None  # datagrams dropped for a full receive buffer (namespace only)
    own_drops: int | None = None  # ...of them, at the sockets of the process that is not the browser
    dc: dict[str, int] | None = None  # the page's data-channel messages: received, receivedBytes, sent

    def cpu_text(self, python_side: str) -> str:
        return f"{python_side} {fmt(self.seeder_cpu, '.0f')}%, browser {fmt(self.browser_cpu, '.0f')}%"


def cpu_budget(r: Result, size: int) -> tuple[float, float] | None:
    """(sender, Chromium) CPU milliseconds per MB over the run's CPU window, if both were measured."""
    if r.seeder_cpu is None or r.browser_cpu is None or r.cpu_window_s is None:
        return None
    per_mb = 10 * r.cpu_window_s / (size / 1e6)  # percent of a core -> ms per MB
    return r.seeder_cpu * per_mb, r.browser_cpu * per_mb


def profile_top(profile: dict[str, Any], n: int = 15) -> str:
    """The functions of a Chrome DevTools CPU profile with the most self time, as text lines."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    self_us: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        frame = nodes[sample]["callFrame"]
        where = f"{frame['functionName'] or '(anonymous)'} {frame['url'].rsplit('/', 1)[-1]}:{frame['lineNumber'] + 1}"
        self_us[where] = self_us.get(where, 0.0) + delta
    total = sum(self_us.values()) or 1.0
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:n]
    return "\n".join(f"    {100 * us / total:5.1f}%  {us / 1000:8.1f} ms  {where}" for where, us in top)


def same_run(results: dict[str, list[Result]], method: str, reference: str) -> str:
    """The ratio of ``method``'s MB/s to ``reference``'s within each repeat (the two ran a few seconds apart,
    so a slow spell of the machine weighs on both), and their median; "" for a single run."""
    pairs = list(zip(results[method], results[reference], strict=True))
    if len(pairs) < 2:
        return ""
    ratios = [ref.first_s / r.first_s for r, ref in pairs]
    median = statistics.median(ratios)
    return (f"; same-run ratios {', '.join(f'{x:.2f}' for x in ratios)}, median {median:.3f} "
            f"({'met' if median >= 0.8 else 'NOT met'})")


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------ measuring


def _proc_table() -> dict[int, tuple[int, bytes, float]]:
    """pid -> (parent pid, command name, CPU seconds) for every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        close = raw.rindex(b")")
        fields = raw[close + 2:].split()
        table[int(name)] = (int(fields[1]), raw[raw.index(b"(") + 1 : close], (int(fields[11]) + int(fields[12])) / tick)
    return table


def browser_cpu() -> dict[int, float]:
    """CPU seconds of each Chromium process started (through playwright) by this process."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            if table[pid][1].startswith(b"chrom"):
                out[pid] = table[pid][2]
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two browser_cpu() samples (processes that ended meanwhile are lost)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def socket_drops(pid: int) -> int | None:
    """Datagrams dropped so far at the UDP sockets ``pid`` has open (the drops column of /proc/net/udp,
    this namespace's); None if the process is gone."""
    try:
        inodes = {link[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if (link := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")}
    except OSError:
        return None
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if len(fields) > 12 and fields[9] in inodes:
                    total += int(fields[-1])
    return total


def udp_rcvbuf_errors() -> int:
    """UDP datagrams dropped because a socket's receive buffer was full (this namespace's counter)."""
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


# ----------------------------------------------------------------------------------- the network


def netns_available() -> str | None:
    """None if ``unshare -n`` works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n failed: {e}"
    if probe.returncode:
        return f"unshare -n failed: {probe.stderr.strip() or probe.returncode} (it needs root or CAP_SYS_ADMIN)"
    return None


def run_in_netns(argv: list[str]) -> int:
    """This script again, in a new network namespace. Ctrl-C reaches it too (same process group), and
    SIGTERM is passed on; either way it stops its own children before it exits, so we wait for it."""
    proc = subprocess.Popen(["unshare", "-n", "--", sys.executable, os.path.abspath(__file__), "--in-netns", *argv])
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def setup_netns() -> None:
    for cmd in NETNS_SETUP:
        subprocess.run(cmd.split(), check=True, capture_output=True, text=True, timeout=10)


# ----------------------------------------------------------------------------------- the page


class WtBrowser:
    """Headless Chromium (Debian, through playwright) and an HTTP server for wt.html, the bundle and the
    bench file (``/data``, which a seeding page fetches)."""

    def __init__(self, data_path: str) -> None:
        self.data_path = data_path
        self._stack = contextlib.AsyncExitStack()
        self.url = ""
        self.browser: Any = None

    async def __aenter__(self) -> WtBrowser:
        from aiohttp import web
        from playwright.async_api import async_playwright

        for path in (BUNDLE, CHROMIUM):
            if not os.path.exists(path):
                raise BenchError(f"{path} is missing (run scripts/setup)")
        app = web.Application()

        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(PAGE)

        async def bundle(request: web.Request) -> web.FileResponse:
            return web.FileResponse(BUNDLE, headers={"Content-Type": "text/javascript"})

        async def data(request: web.Request) -> web.FileResponse:
            return web.FileResponse(self.data_path, headers={"Content-Type": "application/octet-stream"})

        app.router.add_get("/", index)
        app.router.add_get("/webtorrent.min.js", bundle)
        app.router.add_get("/data", data)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        pw = await self._stack.enter_async_context(async_playwright())
        self.browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        self._stack.push_async_callback(self.browser.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def page(self, timeout: float) -> AsyncIterator[Any]:
        """A fresh context (so a fresh WebTorrent client and store) with wt.html loaded."""
        context = await self.browser.new_context(permissions=["microphone"])
        try:
            page = await context.new_page()
            page.set_default_timeout(timeout * 1000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(self.url)
            await page.wait_for_function("window.ready === true", timeout=30_000)
            yield page
            if errors:
                print(f"    page errors: {errors[:5]}", file=sys.stderr)
        finally:
            await context.close()


# ----------------------------------------------------------------------------------- the parts


async def start_tracker(children: Children, host: str) -> tuple[Child, str]:
    child = await children.start("tracker", [sys.executable, "-m", "bridge", "tracker", "--host", host, "--port", "0"],
                                 env=child_env(), cwd=REPO_ROOT)
    line = await child.expect(lambda ln: "ws://" in ln.text, 30, "the tracker's ws:// URL")
    m = re.search(r"ws://\S+", line.text)
    assert m is not None
    return child, m.group(0)


async def page_download(ctx: Context, method: str, tracker: str, seeder: Child) -> Result:
    async with ctx.wt.page(ctx.args.timeout) as page:
        drops0 = udp_rcvbuf_errors()
        cdp = None
        if ctx.args.page_profile:
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Profiler.enable")
            await cdp.send("Profiler.setSamplingInterval", {"interval": 250})
            await cdp.send("Profiler.start")
        seeder0, browser0 = seeder.cpu(), browser_cpu()
        wall0 = time.perf_counter()
        async with asyncio.timeout(ctx.args.timeout):
            out = await page.evaluate(DOWNLOAD_JS, [ctx.magnet, [tracker], ctx.args.page_store == "memory"])
        wall = time.perf_counter() - wall0
        if cdp is not None:
            profile = (await cdp.send("Profiler.stop"))["profile"]
            path = f"{ctx.args.page_profile}-{method}.cpuprofile"
            with open(path, "w") as f:
                json.dump(profile, f)
            print(f"  the page's JavaScript profile ({method}): {path}\n{profile_top(profile)}", file=sys.stderr)
        seeder1, browser1 = seeder.cpu(), browser_cpu()
        drops = udp_rcvbuf_errors() - drops0
        own_drops = socket_drops(seeder.pid)
        digests = await page.evaluate(HASH_JS)
    t = out["t"]
    return Result(
        method, digests == [ctx.digest], (t["done"] - t["first"]) / 1000, (t["done"] - t["add"]) / 1000,
        (t["first"] - t["add"]) / 1000, (t["wire"] - t["add"]) / 1000,
        seeder_cpu=100 * (seeder1 - seeder0) / wall if seeder0 is not None and seeder1 is not None else None,
        seeder_cpu_s=seeder1 - seeder0 if seeder0 is not None and seeder1 is not None else None,
        browser_cpu=100 * cpu_delta(browser0, browser1) / wall, cpu_window_s=wall,
        udp_drops=drops if ctx.netns else None, own_drops=own_drops, dc=out.get("dc"),
    )


async def run_bridge(ctx: Context) -> Result:
    children = ctx.children
    tracker, ws = await start_tracker(children, ctx.host)
    prefix = [sys.executable]
    if ctx.args.profile:
        prefix += ["-m", "cProfile", "-o", ctx.args.profile]
    seeder = await children.start("bridge", [
        *prefix, "-m", "bridge", "seed", ctx.torrent, "-o", ctx.data_dir, "--host", ctx.host, "--port", "0",
        "--webrtc-host", ctx.host, "--announce", ws,
    ], env=child_env(), cwd=REPO_ROOT)
    try:
        await seeder.expect(lambda ln: ln.stream == "out" and ln.text.startswith("magnet:"), 120,
                            "the bridge seeding (its magnet line)")
        await asyncio.sleep(0.5)  # its first announce reaches the tracker
        return await page_download(ctx, "bridge", ws, seeder)
    except BaseException:
        print(f"  bridge output:\n{seeder.tail()}", file=sys.stderr)
        raise
    finally:
        await children.stop(seeder, grace=15.0)  # cProfile writes its file on a clean exit (SIGTERM is one)
        await children.stop(tracker)


_rtc_raw_with_chromium = rtc_raw.with_chromium


async def run_raw(ctx: Context, method: str = "raw") -> Result:
    """bench/rtc_raw.py's aiortc-chromium, with this run's file as its payload and the browser's CPU taken
    around its ``run(page)`` (which includes the channel's set-up, a fraction of a second). ``path``: the
    same with the bridge's SCTP (bridge/net/rtc_sctp.py, as the bridge's peer connections have it) and
    socket buffers. ``raw-dl`` and ``path-dl``: the same the other way, rtc_raw.py's chromium-aiortc."""
    browser: dict[str, float] = {}

    async def with_chromium(run: Any) -> dict[str, Any]:
        async def timed(page: Any) -> dict[str, Any]:
            before, t0 = browser_cpu(), time.perf_counter()
            result = await run(page)
            browser["cpu"] = 100 * cpu_delta(before, browser_cpu()) / (time.perf_counter() - t0)
            return result

        return await _rtc_raw_with_chromium(timed)

    rtc_raw.payload = lambda size: ctx.data
    rtc_raw.with_chromium = with_chromium
    stock = rtc_raw.CONFIG
    path = method.startswith("path")
    rtc_raw.CONFIG = dataclasses.replace(stock, sctp_fixes=path, receive_buffer=ICE_RECEIVE_BUFFER if path else 0)
    pair = rtc_raw.chromium_to_aiortc if method.endswith("-dl") else rtc_raw.aiortc_to_chromium
    drops0 = udp_rcvbuf_errors()
    try:
        async with asyncio.timeout(ctx.args.timeout):
            r = await pair(len(ctx.data), "uvloop")
    finally:
        rtc_raw.CONFIG = stock
    drops = udp_rcvbuf_errors() - drops0
    await rtc_raw.wait_closing()
    m = re.search(r"python (\d+)%", r["cpu"])
    cpu = float(m.group(1)) if m else None
    return Result(method, r["ok"], r["wall"], seeder_cpu=cpu, seeder_cpu_s=cpu * r["wall"] / 100 if cpu else None,
                  browser_cpu=browser.get("cpu"), cpu_window_s=r["wall"], udp_drops=drops if ctx.netns else None)


LT_ROLE_TIMEOUT = 120.0


async def run_libtorrent(ctx: Context) -> Result:
    children = ctx.children
    tracker, ws = await start_tracker(children, ctx.host)
    seeder = await children.start("libtorrent", [
        sys.executable, os.path.abspath(__file__), "--role", "lt-seed", "--lt-torrent", ctx.torrent,
        "--lt-save", ctx.data_dir, "--lt-host", ctx.host, "--lt-tracker", ws, "--lt-preset", ctx.args.lt_preset,
    ], env=child_env(), cwd=REPO_ROOT)
    try:
        await seeder.expect(lambda ln: ln.stream == "out" and '"ready"' in ln.text, LT_ROLE_TIMEOUT,
                            "libtorrent seeding")
        await asyncio.sleep(1.0)  # its first announce (with offers) reaches the tracker
        return await page_download(ctx, "libtorrent", ws, seeder)
    except BaseException:
        print(f"  libtorrent output:\n{seeder.tail()}", file=sys.stderr)
        raise
    finally:
        await children.stop(seeder)
        await children.stop(tracker)


async def run_raw_aiortc(ctx: Context) -> Result:
    """bench/rtc_raw.py's aiortc-aiortc (the issue's "aiortc to aiortc raw"): the same bytes from this
    process to a receiver process, both RtcTransport on uvloop, on 127.0.0.1. No browser: its CPU and
    drops are not taken (the sender's CPU is)."""
    rtc_raw.payload = lambda size: ctx.data
    async with asyncio.timeout(ctx.args.timeout):
        r = await rtc_raw.aiortc_to_aiortc(len(ctx.data), "uvloop")
    await rtc_raw.wait_closing()
    m = re.search(r"sender (\d+)%", r["cpu"])
    cpu = float(m.group(1)) if m else None
    return Result("raw-aiortc", r["ok"], r["wall"], seeder_cpu=cpu,
                  seeder_cpu_s=cpu * r["wall"] / 100 if cpu else None)


async def run_path(ctx: Context) -> Result:
    return await run_raw(ctx, "path")


# ------------------------------------------------------------------------- the download direction


@dataclasses.dataclass
class SeedingPage:
    """A WebTorrent page seeding the bench file; ``first`` is when it first uploaded (time.monotonic())."""

    page: Any
    magnet: str
    first: asyncio.Future[tuple[float, float | None, dict[int, float]]]


@contextlib.asynccontextmanager
async def seeding_page(ctx: Context, tracker: str, downloader: list[Child]) -> AsyncIterator[SeedingPage]:
    """A fresh page seeding the bench file through ``tracker``. At its first upload it records the time
    and the CPU of ``downloader[0]`` (the process started after the page is ready) and of the browser."""
    async with ctx.wt.page(ctx.args.timeout) as page:
        first: asyncio.Future[tuple[float, float | None, dict[int, float]]] = asyncio.get_running_loop().create_future()

        def on_first_upload() -> None:
            if not first.done():
                first.set_result((time.monotonic(), downloader[0].cpu() if downloader else None, browser_cpu()))

        await page.expose_function("benchFirstUpload", on_first_upload)
        memory = ctx.args.page_store == "memory"
        async with asyncio.timeout(ctx.args.timeout):
            magnet = await page.evaluate(SEED_JS, [[tracker], ctx.piece, memory])
        yield SeedingPage(page, magnet, first)


async def download_from_page(ctx: Context, method: str, start: Any, done: Any) -> Result:
    """The page seeds; ``start(magnet, tracker)`` starts the downloader (a Child) and ``done(child)`` waits
    for its report that it has everything, returning when (time.monotonic()) and the path of its copy."""
    children = ctx.children
    tracker, ws = await start_tracker(children, ctx.host)
    holder: list[Child] = []
    child = None
    try:
        async with seeding_page(ctx, ws, holder) as seeding:
            drops0 = udp_rcvbuf_errors()
            t_start = time.monotonic()
            child = await start(seeding.magnet, ws)
            holder.append(child)
            async with asyncio.timeout(ctx.args.timeout):
                t_done, copy = await done(child)
                cpu1, browser1 = child.cpu(), browser_cpu()
                own_drops = socket_drops(child.pid)
                t_first, cpu0, browser0 = await seeding.first
            drops = udp_rcvbuf_errors() - drops0
            dc = await seeding.page.evaluate("() => window.benchDc")
        ok = sha256_file(copy) == ctx.digest
        wall = t_done - t_first
        return Result(
            method, ok, wall, t_done - t_start, t_first - t_start, None,
            seeder_cpu=100 * (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None,
            seeder_cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None,
            browser_cpu=100 * cpu_delta(browser0, browser1) / wall, cpu_window_s=wall,
            udp_drops=drops if ctx.netns else None, own_drops=own_drops, dc=dc,
        )
    except BaseException:
        if child is not None:
            print(f"  {method} output:\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        if child is not None:
            await children.stop(child, grace=15.0)
        await children.stop(tracker)


async def run_bridge_dl(ctx: Context) -> Result:
    """``python -m bridge download MAGNET --seed`` from the seeding page; done at its "complete:" line (with
    --seed it stays up, so its CPU can still be read)."""
    out = os.path.join(ctx.tmp, "bridge-dl")
    shutil.rmtree(out, ignore_errors=True)
    prefix = [sys.executable] + (["-m", "cProfile", "-o", ctx.args.profile] if ctx.args.profile else [])

    async def start(magnet: str, ws: str) -> Child:
        return await ctx.children.start("bridge", [
            *prefix, "-m", "bridge", "download", magnet, "--seed", "-o", out, "--host", ctx.host, "--port", "0",
            "--webrtc-host", ctx.host, "--announce", ws,
        ], env=child_env(), cwd=REPO_ROOT)

    async def done(child: Child) -> tuple[float, str]:
        line = await child.expect(lambda ln: ln.stream == "err" and ln.text.startswith("complete: "),
                                  ctx.args.timeout, "the bridge's download (its complete: line)")
        return line.t, os.path.join(out, "rtc-bench.bin")

    return await download_from_page(ctx, "bridge-dl", start, done)


async def run_libtorrent_dl(ctx: Context) -> Result:
    """libtorrent 2.1 (WebRTC only, default settings) downloading from the seeding page."""
    out = os.path.join(ctx.tmp, "libtorrent-dl")
    shutil.rmtree(out, ignore_errors=True)

    async def start(magnet: str, ws: str) -> Child:
        return await ctx.children.start("libtorrent", [
            sys.executable, os.path.abspath(__file__), "--role", "lt-download", "--lt-torrent", magnet,
            "--lt-save", out, "--lt-host", ctx.host, "--lt-tracker", ws,
        ], env=child_env(), cwd=REPO_ROOT)

    async def done(child: Child) -> tuple[float, str]:
        line = await child.expect(is_json_event("finished"), ctx.args.timeout, "libtorrent's download")
        if json.loads(line.text)["ev"] != "finished":
            raise BenchError(f"libtorrent: {line.text}")
        return line.t, os.path.join(out, "rtc-bench.bin")

    return await download_from_page(ctx, "libtorrent-dl", start, done)


async def run_raw_dl(ctx: Context) -> Result:
    """bench/rtc_raw.py's chromium-aiortc: the page sends its own random bytes (``--size-mib`` of them)."""
    return await run_raw(ctx, "raw-dl")


async def run_path_dl(ctx: Context) -> Result:
    return await run_raw(ctx, "path-dl")


RUNNERS = {"bridge": run_bridge, "raw": run_raw, "path": run_path, "raw-aiortc": run_raw_aiortc,
           "libtorrent": run_libtorrent, "bridge-dl": run_bridge_dl, "raw-dl": run_raw_dl, "path-dl": run_path_dl,
           "libtorrent-dl": run_libtorrent_dl}


# ------------------------------------------------------------------------------ libtorrent seeder


def lt_seed_role(args: argparse.Namespace) -> int:
    """A libtorrent 2.1 session seeding over WebRTC only; JSON lines on stdout."""
    import libtorrent as lt

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    settings: dict[str, Any] = dict(lt.high_performance_seed()) if args.lt_preset == "high_performance_seed" else {}
    settings.update({
        "listen_interfaces": f"{args.lt_host}:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # WebRTC only. (Never outgoing_interfaces: it breaks libtorrent's WebRTC, "No such device".)
        "enable_outgoing_tcp": False,
        "enable_incoming_tcp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "webtorrent_stun_server": "",
        "alert_mask": int(lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage),
    })
    ses = lt.session(settings)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.lt_torrent)
    atp.save_path = args.lt_save
    atp.trackers = [args.lt_tracker]
    h = ses.add_torrent(atp)

    def emit(**kw: object) -> None:
        print(json.dumps(kw), flush=True)

    ready = False
    last = 0.0
    while True:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
                emit(ev="error", msg=a.message())
                return 1
        st = h.status()
        if not ready and st.is_seeding and st.state == lt.torrent_status.seeding:
            ready = True
            emit(ev="ready")
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            emit(ev="progress", up=st.upload_rate, peers=st.num_peers, uploaded=st.total_upload)


def lt_download_role(args: argparse.Namespace) -> int:
    """A libtorrent 2.1 session (default settings) downloading a magnet over WebRTC only; it prints
    {"ev": "finished"} as soon as every piece has passed its hash check."""
    import libtorrent as lt

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ses = lt.session({
        "listen_interfaces": f"{args.lt_host}:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_tcp": False, "enable_incoming_tcp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "webtorrent_stun_server": "",
        "alert_mask": int(lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage),
    })
    atp = lt.parse_magnet_uri(args.lt_torrent)
    atp.save_path = args.lt_save
    atp.trackers = [args.lt_tracker]
    ses.add_torrent(atp)
    while True:
        ses.wait_for_alert(1000)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
                print(json.dumps({"ev": "error", "msg": a.message()}), flush=True)
                return 1
            if isinstance(a, lt.torrent_finished_alert):
                print(json.dumps({"ev": "finished"}), flush=True)


# ------------------------------------------------------------------------------------ main


@dataclass
class Context:
    args: argparse.Namespace
    children: Children
    wt: WtBrowser
    host: str
    data_dir: str
    torrent: str
    magnet: str
    digest: str
    data: bytes
    netns: bool
    tmp: str
    piece: int


async def main_async(args: argparse.Namespace, host: str, methods: list[str], note: str, netns: bool) -> int:
    import libtorrent as lt

    size = args.size_mib * MIB
    piece = parse_size(args.piece_length) if args.piece_length else default_piece_length(size)
    task = asyncio.current_task()
    assert task is not None

    def interrupt() -> None:
        INTERRUPTED.append(True)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C also ends the browser, which can fail first
        asyncio.get_running_loop().add_signal_handler(sig, interrupt)
    children = Children()
    tmp = tempfile.mkdtemp(prefix="rtc_throughput_", dir=args.tmpdir)
    failed = False
    try:
        data_dir = os.path.join(tmp, "data")
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "rtc-bench.bin")
        digest = make_random_file(path, size)
        torrent = os.path.join(tmp, "rtc-bench.torrent")
        with open(torrent, "wb") as f:
            f.write(make_torrent_with_libtorrent(path, piece))
        info_hash = str(lt.torrent_info(torrent).info_hash())
        magnet = f"magnet:?xt=urn:btih:{info_hash}&dn=rtc-bench.bin"
        with open(path, "rb") as f:
            data = f.read()
        print(f"{size / MIB:g} MiB, {piece // 1024} KiB pieces, best of {args.repeat}; {note}; "
              f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
        print("the bridge runs on uvloop (bridge/cli.py picks it when installed), and so does the raw sender",
              file=sys.stderr)
        results: dict[str, list[Result]] = {m: [] for m in methods}
        async with WtBrowser(path) as wt:
            ctx = Context(args, children, wt, host, data_dir, torrent, magnet, digest, data, netns, tmp, piece)
            for i in range(args.repeat):
                for m in methods:
                    r = await RUNNERS[m](ctx)
                    results[m].append(r)
                    failed |= not r.ok
                    print(f"  run {i + 1} {LABELS[m]}: {size / r.first_s / 1e6:.1f} MB/s first byte->done "
                          f"({r.first_s:.2f} s)"
                          + (f", {size / r.total_s / 1e6:.1f} MB/s add->done ({r.total_s:.2f} s; connected "
                             f"after {r.wire_s:.2f} s, first block after {r.setup_s:.2f} s)"
                             if r.total_s is not None and r.wire_s is not None else "")
                          + (f", {size / r.total_s / 1e6:.1f} MB/s start->done ({r.total_s:.2f} s from starting the "
                             f"downloader; first block after {r.setup_s:.2f} s)"
                             if r.total_s is not None and r.wire_s is None else "")
                          + f", {r.cpu_text(PYTHON_SIDE[m])}, UDP drops {fmt(r.udp_drops, 'd')}"
                          + (f" ({r.own_drops} at the {PYTHON_SIDE[m]}'s sockets)" if r.own_drops is not None else "")
                          + ", "
                          + (f"page got {r.dc['received']} messages (mean {r.dc['receivedBytes'] // max(1, r.dc['received'])}"
                             f" B) and sent {r.dc['sent']}, " if r.dc else "")
                          + f"data {'OK' if r.ok else 'WRONG'}", file=sys.stderr)
                if "bridge" in methods and "raw" in methods:
                    b, w = results["bridge"][-1], results["raw"][-1]
                    print(f"  run {i + 1} bridge / raw aiortc -> Chromium: {w.first_s / b.first_s:.2f}",
                          file=sys.stderr)
                if "path" in methods and "raw" in methods:
                    b, w = results["path"][-1], results["raw"][-1]
                    print(f"  run {i + 1} bridge's RtcTransport / raw aiortc -> Chromium: {w.first_s / b.first_s:.2f}",
                          file=sys.stderr)
        best = {m: min(rs, key=lambda r: r.first_s) for m, rs in results.items()}
        best_total = {m: min((r.total_s for r in rs if r.total_s is not None), default=None)
                      for m, rs in results.items()}
        rows = []
        for m, r in best.items():
            total = best_total[m]
            rows.append([LABELS[m], fmt(size / r.first_s / 1e6, ".1f"), fmt(r.first_s),
                         fmt(size / total / 1e6 if total else None, ".1f"), fmt(total),
                         fmt(r.seeder_cpu, ".0f"), fmt(r.browser_cpu, ".0f"), fmt(r.udp_drops, "d"),
                         "OK" if all(x.ok for x in results[m]) else "WRONG"])
        print(f"{size / MIB:g} MiB, {piece // 1024} KiB pieces; best of {args.repeat} (by first byte->done); "
              f"{note}; load average {os.getloadavg()[0]:.2f}")
        print(format_table(
            ["", "MB/s", "first byte->done s", "MB/s", "add()->done s", "sender CPU%", "browser CPU%",
             "UDP drops", "SHA-256"],
            rows, [False, True, True, True, True, True, True, True, False]))
        per_mb = [f"{m} {1000 * r.seeder_cpu_s / (size / 1e6):.0f}"
                  for m, r in best.items() if r.seeder_cpu_s is not None]
        print(f"sender CPU ms per MB (best runs; bridge and libtorrent include connection set-up): {', '.join(per_mb)}")
        budget = [f"{m} {a:.0f} + {b:.0f} = {a + b:.0f}" for m, r in best.items()
                  if (ab := cpu_budget(r, size)) is not None for a, b in [ab]]
        if budget:
            print("CPU budget, ms per MB, sender + Chromium (the two share 2 cores; the WebTorrent page costs "
                  f"Chromium more than the bare page, whoever sends): {', '.join(budget)}")
        if "bridge" in best and "raw" in best:
            ratio = best["raw"].first_s / best["bridge"].first_s
            print(f"bridge / raw aiortc -> Chromium, MB/s first byte->done: {ratio:.3f} (bar 0.80: "
                  f"{'met' if ratio >= 0.8 else 'NOT met'}){same_run(results, 'bridge', 'raw')}")
        if "path" in best and "raw" in best:
            ratio = best["raw"].first_s / best["path"].first_s
            print(f"the bridge's WebRTC path alone (RtcTransport with rtc_sctp, no BitTorrent) / raw aiortc, to the "
                  f"same page: {ratio:.2f}")
        if "bridge" in best and "raw-aiortc" in best:
            ratio = best["raw-aiortc"].first_s / best["bridge"].first_s
            print(f"bridge / raw aiortc -> aiortc, MB/s first byte->done: {ratio:.3f} (bar 0.80: "
                  f"{'met' if ratio >= 0.8 else 'NOT met'}){same_run(results, 'bridge', 'raw-aiortc')}")
        for bridge, lt, prefix, setup in (("bridge", "libtorrent", "", "add()"),
                                          ("bridge-dl", "libtorrent-dl", "download: ", "start")):
            if bridge in best and lt in best:
                tb, tt = best_total[bridge], best_total[lt]
                print(f"{prefix}bridge time / libtorrent time: first byte->done "
                      f"{best[bridge].first_s / best[lt].first_s:.2f}"
                      + (f", {setup}->done {tb / tt:.2f}" if tb and tt else ""))
        if "bridge-dl" in best and "raw-dl" in best:
            ratio = best["raw-dl"].first_s / best["bridge-dl"].first_s
            print(f"download: bridge / raw Chromium -> aiortc, MB/s first byte->done: {ratio:.3f}"
                  f"{same_run(results, 'bridge-dl', 'raw-dl')}")
        if "path-dl" in best and "raw-dl" in best:
            print(f"download: the bridge's WebRTC path alone / raw aiortc, from the same page: "
                  f"{best['raw-dl'].first_s / best['path-dl'].first_s:.2f}")
        return 1 if failed else 0
    finally:
        await children.close()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--piece-length", help="bytes, 256k or 1m (default: about 1024 pieces, 64 KiB for 64 MiB)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the best is shown")
    p.add_argument("--only", default=",".join(METHODS),
                   help=f"comma-separated methods: {', '.join(METHODS)} (the default), or the download direction's "
                        f"{', '.join(DOWNLOAD_METHODS)}")
    p.add_argument("--download", action="store_true",
                   help="the download direction (the page seeds): --only " + ",".join(DOWNLOAD_METHODS))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each transfer (default 300)")
    p.add_argument("--no-netns", action="store_true", help="run on 127.0.0.1 in this namespace (no libtorrent)")
    p.add_argument("--page-store", choices=["memory", "default"], default="memory",
                   help="where the WebTorrent page keeps the torrent: in memory, like the raw page (default), or "
                        "WebTorrent's own store (the Origin Private File System in Chromium)")
    p.add_argument("--lt-preset", choices=["high_performance_seed", "default"], default="high_performance_seed")
    p.add_argument("--profile", metavar="PATH", help="run the bridge seeder under cProfile, writing PATH")
    p.add_argument("--page-profile", metavar="PREFIX",
                   help="profile the WebTorrent page's JavaScript (DevTools CPU profiler) in each page run, "
                        "writing PREFIX-METHOD.cpuprofile and printing the top functions by self time")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--tmpdir", help="where to make the temporary directory")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--role", choices=["main", "lt-seed", "lt-download"], default="main", help=argparse.SUPPRESS)
    for name in ("lt-torrent", "lt-save", "lt-host", "lt-tracker"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "lt-seed":
        return lt_seed_role(args)
    if args.role == "lt-download":
        return lt_download_role(args)
    if args.download:
        args.only = ",".join(DOWNLOAD_METHODS)
    methods = [m for m in (*METHODS, *DOWNLOAD_METHODS) if m in args.only.split(",")]
    if unknown := set(args.only.split(",")) - set(METHODS) - set(DOWNLOAD_METHODS):
        p.error(f"unknown in --only: {', '.join(sorted(unknown))}")
    if args.profile:
        args.profile = os.path.abspath(args.profile)
    if args.page_profile:
        args.page_profile = os.path.abspath(args.page_profile)

    if args.in_netns:
        try:
            setup_netns()
        except subprocess.CalledProcessError as e:
            print(f"cannot set up the veth pair in the namespace: {e.cmd}: {e.stderr.strip()}", file=sys.stderr)
            return 2
        host, note = NETNS_ADDRESS, f"private network namespace, veth {NETNS_ADDRESS}"
    elif not args.no_netns and (why := netns_available()) is None:
        return run_in_netns(sys.argv[1:])
    else:
        host = "127.0.0.1"
        if args.no_netns:
            note = "loopback (--no-netns)"
        else:
            note = f"loopback: NO network namespace ({why})"
        if skipped := [m for m in ("libtorrent", "libtorrent-dl") if m in methods]:
            for m in skipped:
                methods.remove(m)
            note += "; libtorrent skipped (its ICE never gathers on 127/8)"
            print(f"libtorrent is skipped: it needs a network namespace. {note}", file=sys.stderr)
    import uvloop

    try:
        return uvloop.run(main_async(args, host, methods, note, args.in_netns))
    except BaseException:
        if not INTERRUPTED:
            raise
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
