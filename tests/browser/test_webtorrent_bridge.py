"""Real WebTorrent in headless Chromium and the bridge, one swarm, WebRTC data channels, a ws tracker.

Each test runs twice: with the bridge's embedded tracker (``webtorrent-bridge tracker``) and with
bittorrent-tracker (npm, the reference). Everything runs on this machine: the bridge gathers ICE candidates on
127.0.0.1 only, and the page uses no STUN server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from chromium_rtc import CHROMIUM, CHROMIUM_FLAGS

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "web" / "node_modules" / "webtorrent" / "dist" / "webtorrent.min.js"
PAGE = Path(__file__).resolve().parent / "webtorrent" / "wt.html"
WS_TRACKER = REPO / "tests" / "tools" / "ws_tracker.mjs"
#: Bound on one browser transfer of a few MiB (WebTorrent allows 25 s for connection setup alone).
TRANSFER_TIMEOUT = 90.0


@pytest.fixture(params=["embedded", "bittorrent-tracker"])
async def ws_tracker(request) -> AsyncIterator[str]:
    """A WebSocket tracker: the bridge's own (``webtorrent-bridge tracker``) or the npm reference."""
    if request.param == "embedded":
        cmd = [sys.executable, "-m", "bridge", "tracker", "--host", "127.0.0.1", "--port", "0"]
        cwd = REPO
    else:
        node = shutil.which("node")
        if node is None or not (REPO / "tests" / "tools" / "node_modules" / "bittorrent-tracker").is_dir():
            pytest.fail("node and tests/tools/node_modules/bittorrent-tracker are needed (run scripts/setup)")
        cmd = [node, str(WS_TRACKER)]
        cwd = WS_TRACKER.parent
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(cwd),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        m = re.search(r"ws://[^\s\"]+", line)
        assert m, f"no ws:// URL from the {request.param} tracker: {line!r}"
        yield m.group(0)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.fixture
async def wt_page() -> AsyncIterator[object]:
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing (run scripts/setup, which installs WebTorrent from npm)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        pytest.fail(f"playwright (PyPI) is needed: {e}")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; run scripts/setup)")

    app = web.Application()
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    async def bundle(request: web.Request) -> web.FileResponse:
        return web.FileResponse(BUNDLE, headers={"Content-Type": "text/javascript"})

    app.router.add_get("/", index)
    app.router.add_get("/webtorrent.min.js", bundle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(permissions=["microphone"])
            page = await context.new_page()
            page.set_default_timeout(TRANSFER_TIMEOUT * 1000)
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function("window.ready === true", timeout=30_000)
            yield page
        finally:
            await browser.close()
            await runner.cleanup()


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(2)
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def make_file(folder: Path, name: str, size: int) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = folder / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def test_browser_downloads_from_bridge_seed(tmp_path, ws_tracker, wt_page):
    src, digest = make_file(tmp_path / "src", "five.bin", 5 * 1024 * 1024)
    torrent = tmp_path / "five.torrent"
    created = subprocess.run([sys.executable, "-m", "bridge", "create", str(src), "-o", str(torrent),
                              "--announce", ws_tracker], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert created.returncode == 0, created.stderr
    magnet = created.stdout.strip().splitlines()[-1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "-v", "seed", str(torrent), "-o", str(src.parent), "--port", "0",
        "--host", "127.0.0.1", "--webrtc-host", "127.0.0.1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
    )
    log: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(30):
            await proc.stdout.readline()  # the magnet: data verified, seeding
        stderr_reader = asyncio.create_task(_drain(proc.stderr, log))
        files = await wt_page.evaluate("([m, a]) => window.download(m, a)", [magnet, [ws_tracker]])
        assert files == [{"name": "five.bin", "sha256": digest}], "".join(log[-60:])
        stderr_reader.cancel()
    finally:
        await stop(proc)


async def test_bridge_downloads_from_browser_seed(tmp_path, ws_tracker, wt_page):
    data = os.urandom(3 * 1024 * 1024 + 123)
    magnet = await wt_page.evaluate("([n, b, a]) => window.seed(n, b, a)",
                                    ["from-browser.bin", base64.b64encode(data).decode(), [ws_tracker]])
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "-v", "download", magnet, "--announce", ws_tracker, "-o", str(out),
        "--port", "0", "--host", "127.0.0.1", "--webrtc-host", "127.0.0.1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
    )
    try:
        async with asyncio.timeout(TRANSFER_TIMEOUT):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode(errors="replace")[-6000:]
        assert hashlib.sha256((out / "from-browser.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    finally:
        await stop(proc)


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


def libtorrent_tcp_seed(torrent: Path, data_dir: Path):
    """libtorrent seeding over TCP only (no uTP, no WebTorrent, no DHT/LSD/UPnP/NAT-PMP), on 127.0.0.1."""
    try:
        import libtorrent as lt
    except ImportError as e:
        pytest.fail(f"libtorrent (PyPI) is needed: {e}")
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
    }
    # libtorrent 2.1 also speaks WebTorrent, but only through ws:// trackers; this torrent names none and
    # libtorrent is never told the page's tracker, so the bridge is the page's only way to the data.
    ses = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(torrent))
    params.save_path = str(data_dir)
    handle = ses.add_torrent(params)
    return lt, ses, handle


async def test_cross_swarm_classic_seed_to_browser_through_bridge(tmp_path, ws_tracker, wt_page):
    """libtorrent seeds over TCP only; the bridge joins with --peer; the page has only the magnet and the
    ws tracker, so every byte it gets comes through the bridge."""
    src, digest = make_file(tmp_path / "src", "relay.bin", 4 * 1024 * 1024 + 77)
    torrent = tmp_path / "relay.torrent"
    created = subprocess.run([sys.executable, "-m", "bridge", "create", str(src), "-o", str(torrent)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert created.returncode == 0, created.stderr
    magnet = created.stdout.strip().splitlines()[-1]
    lt, ses, handle = libtorrent_tcp_seed(torrent, src.parent)
    async with asyncio.timeout(30):
        while not handle.status().is_seeding:
            await asyncio.sleep(0.1)
    seed_port = ses.listen_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "-v", "download", str(torrent), "-o", str(tmp_path / "bridge"), "--seed",
        "--peer", f"127.0.0.1:{seed_port}", "--announce", ws_tracker, "--port", "0", "--host", "127.0.0.1",
        "--webrtc-host", "127.0.0.1", stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
    )
    log: list[str] = []
    assert proc.stderr is not None
    drain = asyncio.create_task(_drain(proc.stderr, log))
    try:
        files = await wt_page.evaluate("([m, a]) => window.download(m, a)", [magnet, [ws_tracker]])
        assert files == [{"name": "relay.bin", "sha256": digest}], "".join(log[-60:])
        assert any("connected (webrtc" in line for line in log), "".join(log[-60:])
    finally:
        await stop(proc)
        drain.cancel()
        del ses
