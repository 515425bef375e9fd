"""Two WebTorrent pages in headless Chromium exchange a 1 MiB file through the embedded tracker's WebSocket
signalling; the SHA-256 of what the second page received must match.

Chromium is Debian's (/usr/bin/chromium) driven by Python playwright; WebTorrent's browser bundle is served
from web/node_modules by a small aiohttp server in the test. Each page keeps only 127.0.0.1 ICE candidates in
the SDP it hands to WebTorrent, so the peer connection stays on loopback. If the browser cannot run, the test
fails and says why: it never skips.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.tracker import TrackerServer

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "web" / "node_modules" / "webtorrent" / "dist" / "webtorrent.min.js"
CHROMIUM = "/usr/bin/chromium"
# BROWSER.md: headless, as root, loopback only; no --disable-features of our own (it would replace
# playwright's list). playwright adds --headless itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
]
SIZE = 1024 * 1024
#: Bound for the whole exchange (a prototype took 0.5 s end to end; a loaded machine is slower).
EXCHANGE_TIMEOUT = 60.0

# Runs before any page script: the SDP that WebTorrent (simple-peer) reads from localDescription keeps only
# the 127.0.0.1 host candidates, so the other page can only try loopback.
LOOPBACK_ONLY_SDP = r"""
(() => {
  const desc = Object.getOwnPropertyDescriptor(RTCPeerConnection.prototype, 'localDescription');
  Object.defineProperty(RTCPeerConnection.prototype, 'localDescription', {
    configurable: true,
    get () {
      const d = desc.get.call(this);
      if (!d) return d;
      const sdp = d.sdp.split('\r\n')
        .filter(l => !l.startsWith('a=candidate:') || l.split(' ')[4] === '127.0.0.1')
        .join('\r\n');
      return new RTCSessionDescription({ type: d.type, sdp });
    }
  });
})();
"""

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tracker test</title>
<script type="module">
import WebTorrent from '/webtorrent.min.js'

function newClient () {
  const client = new WebTorrent({ tracker: { rtcConfig: { iceServers: [] } } })
  client.on('error', err => { window.lastError = String(err) })
  return client
}

function hex (buf) {
  return Array.from(new Uint8Array(buf), b => b.toString(16).padStart(2, '0')).join('')
}

window.seed = (b64, announce) => new Promise((resolve, reject) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0))
  const client = newClient()
  client.on('error', err => reject(String(err)))
  client.seed(new File([bytes], 'payload.bin'), { announce: [announce], name: 'payload.bin' },
    torrent => resolve(torrent.magnetURI))
})

window.leech = (magnet) => new Promise((resolve, reject) => {
  const client = newClient()
  client.on('error', err => reject(String(err)))
  client.add(magnet, torrent => {
    const finish = async () => {
      const buf = await torrent.files[0].arrayBuffer()
      resolve({ sha256: hex(await crypto.subtle.digest('SHA-256', buf)), length: buf.byteLength,
                peers: torrent.numPeers })
    }
    if (torrent.done) finish(); else torrent.on('done', finish)
  })
})

window.pageReady = true
</script>
"""


@pytest.fixture
async def web_server() -> AsyncIterator[str]:
    if not BUNDLE.is_file():
        pytest.fail(f"WebTorrent's browser bundle is missing ({BUNDLE}); run scripts/setup", pytrace=False)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def bundle(request: web.Request) -> web.FileResponse:
        return web.FileResponse(BUNDLE, headers={"Content-Type": "text/javascript"})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/webtorrent.min.js", bundle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        pytest.fail(f"Python playwright is not installed ({exc}); pip install playwright (never "
                    "`playwright install`)", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup)", pytrace=False)
    async with async_playwright() as p:
        try:
            b = await asyncio.wait_for(
                p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS), 60)
        except Exception as exc:
            pytest.fail(f"Chromium did not start under playwright: {exc}", pytrace=False)
        try:
            yield b
        finally:
            await asyncio.wait_for(b.close(), 30)


async def open_page(browser: Any, url: str) -> Any:
    # The microphone grant makes Chromium offer real host addresses instead of <uuid>.local mDNS names.
    context = await browser.new_context(permissions=["microphone"])
    await context.add_init_script(LOOPBACK_ONLY_SDP)
    page = await context.new_page()
    logs: list[str] = []
    page.on("console", lambda msg: logs.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: logs.append(f"pageerror: {err}"))
    page.logs = logs
    await page.goto(url)
    await page.wait_for_function("window.pageReady === true", timeout=30_000)
    return page


async def test_two_webtorrent_pages_exchange_a_file_through_the_tracker(
    tracker: TrackerServer, web_server: str, browser: Any
) -> None:
    data = random.Random(4).randbytes(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    seeder = await open_page(browser, web_server)
    leecher = await open_page(browser, web_server)

    def context() -> str:
        return (f"tracker stats: {tracker.stats()}\nseeder console: {seeder.logs[-20:]}\n"
                f"leecher console: {leecher.logs[-20:]}")

    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT):
            magnet = await seeder.evaluate("([b64, url]) => window.seed(b64, url)",
                                           [base64.b64encode(data).decode(), tracker.ws_url])
            assert "tr=ws%3A%2F%2F127.0.0.1" in magnet, magnet
            result = await leecher.evaluate("(magnet) => window.leech(magnet)", magnet)
    except TimeoutError:
        pytest.fail(f"no exchange within {EXCHANGE_TIMEOUT:.0f} s\n{context()}", pytrace=False)
    assert result["length"] == SIZE, context()
    assert result["sha256"] == digest, context()
    stats = tracker.stats()
    assert stats["offers_forwarded"] >= 1 and stats["answers_relayed"] >= 1, context()
    assert stats["announces"]["ws"] >= 2, context()
