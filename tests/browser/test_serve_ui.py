"""The web UI of `serve` (web/ui.html at /) in headless Chromium, driven as a user would.

1. Without a token (loopback): add a libtorrent-seeded video by magnet through the page's form, watch the
   row reach seeding / 100%, open the detail, check its download link (the bytes) and its play link
   (/index.html?magnet=... with the bridge's ws tracker and web seed), then play it in the player page
   through the service worker. The player needs a WebTorrent peer for the metadata of a magnet (a web seed
   serves only file data), so this serve joins the WebRTC swarm, on 127.0.0.1.
2. With a token, on a phone-sized screen: the page asks for the token (a wrong one is refused), keeps it,
   lists; upload a .torrent paused, resume and pause it, an API error is shown, a torrent-provided name
   with markup stays text, and remove (cancel once; then with "delete data").

Screenshots go to the test's tmp_path; their paths are printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import peers
import pytest
from chromium_rtc import CHROMIUM, CHROMIUM_FLAGS
from test_serve import TOKEN, Serve
from test_video_stream import BUNDLE, make_video

#: Bound on one step seen in the page (a click's effect, a refresh).
STEP_TIMEOUT = 20.0
#: Bound on the bridge's download from the libtorrent seed, and on the player's first seconds of video.
TRANSFER_TIMEOUT = 90.0

T = TypeVar("T")


class Context:
    """What a failure message needs: the page console, serve's log, the other programs' logs."""

    def __init__(self, serve: Serve | None = None, harness: peers.Harness | None = None) -> None:
        self.serve = serve
        self.harness = harness
        self.console: list[str] = []

    def watch(self, page: Any, label: str) -> None:
        page.on("console", lambda m: self.console.append(f"[{label} {m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[{label} pageerror] {e}"))

    def __str__(self) -> str:
        parts = ["--- page console", *self.console[-40:]]
        if self.serve is not None:
            parts += ["--- serve log", self.serve.logs()]
        if self.harness is not None:
            parts += [self.harness.describe()]
        return "\n".join(parts)

    def assert_no_page_errors(self) -> None:
        errors = [line for line in self.console if "[ui pageerror]" in line]
        assert not errors, f"script errors in the UI: {errors}\n{self}"

    async def step(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except Exception as e:  # a playwright timeout or assertion: say what, with the logs
            pytest.fail(f"{what}: {type(e).__name__}: {e}\n{self}", pytrace=False)


def _playwright() -> Callable[[], Any]:
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing (run scripts/setup, which installs WebTorrent from npm)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        pytest.fail(f"playwright (PyPI) is needed: {e}")
    return async_playwright  # type: ignore[no-any-return]


async def _browser(pw: Any) -> Any:
    return await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[*CHROMIUM_FLAGS, "--autoplay-policy=no-user-gesture-required"])


async def _wait_text(page: Any, selector: str, predicate_js: str, timeout: float = STEP_TIMEOUT) -> None:
    """Wait until the textContent of ``selector`` satisfies ``predicate_js`` (a JS expression of ``t``)."""
    await page.wait_for_function(
        f"(sel) => {{ const e = document.querySelector(sel); if (!e) return false; const t = e.textContent; "
        f"return {predicate_js} }}", arg=selector, timeout=timeout * 1000, polling=100)


async def test_ui_adds_a_magnet_watches_it_seed_and_plays_it(tmp_path: Path) -> None:
    async_playwright = _playwright()
    video = make_video(tmp_path / "src")
    harness = peers.Harness(tmp_path / "harness")
    s: Serve | None = None
    try:
        torrent = harness.torrent(video, piece_length=64 * 1024)  # made by libtorrent, no trackers
        seed = harness.libtorrent(name="lt-seed")
        await asyncio.to_thread(seed.add_seed, torrent, video.parent)
        ih = torrent.info_hash_hex
        magnet = f"magnet:?xt=urn:btih:{ih}&dn=clip.webm&x.pe={quote(seed.address, safe='')}"
        s = Serve(tmp_path, "--tracker", "--tracker-port", "0", "--webrtc-host", "127.0.0.1", token=None,
                  webrtc=True)
        ctx = Context(s, harness)
        status, stats = await asyncio.to_thread(s.call, "GET", "/api/v1/stats")
        tracker = stats["tracker"]
        assert status == 200 and tracker.startswith("ws://127.0.0.1:"), stats

        async with async_playwright() as pw:
            browser = await _browser(pw)
            try:
                context = await browser.new_context(permissions=["microphone"])
                page = await context.new_page()
                ctx.watch(page, "ui")
                await ctx.step("open the UI", page.goto(s.url + "/"))
                await ctx.step("the first refresh", page.wait_for_function(
                    "window.ui && window.ui.refreshes > 0", timeout=STEP_TIMEOUT * 1000))
                assert await page.is_visible("#add") and not await page.is_visible("#token-form")
                assert await page.text_content("#empty") == "No torrents yet."

                await page.fill("#magnet-input", magnet)
                await page.click("#magnet-button")
                row = f'li.torrent[data-infohash="{ih}"]'
                await ctx.step("the row of the added magnet", page.wait_for_selector(row, timeout=STEP_TIMEOUT * 1000))
                await ctx.step("seeding / 100% in the row", _wait_text(
                    page, f"{row} .t-state", "t === 'seeding'", TRANSFER_TIMEOUT))
                await ctx.step("100% in the row", _wait_text(page, f"{row} .t-pct", "t === '100%'"))
                assert await page.text_content(f"{row} .t-name") == "clip.webm"
                assert await page.input_value("#magnet-input") == ""  # cleared after the add
                figures = await page.text_content(f"{row} .t-figures")
                assert figures is not None and "TCP" in figures and "web seed" in figures, figures

                await page.click(f"{row} .t-details")
                await ctx.step("the detail's files", page.wait_for_selector(
                    "#files .f-play", timeout=STEP_TIMEOUT * 1000))
                assert await page.text_content("#detail-name") == "clip.webm"
                assert await page.text_content("#detail-infohash") == ih
                assert page.url.endswith(f"#torrent={ih}")

                # Download link: the file's stream URL, serving the very bytes.
                href = await page.get_attribute("#files .f-download", "href")
                assert href == f"/torrents/{ih}/files/clip.webm", href
                got = await context.request.get(s.url + href)
                assert got.status == 200 and await got.body() == video.read_bytes()

                # Play link: the player page with the bridge's tracker and web seed in the magnet.
                play = await page.get_attribute("#files .f-play", "href")
                assert play is not None and play.startswith("/index.html?magnet="), play
                link_magnet = parse_qs(urlsplit(play).query)["magnet"][0]
                params = parse_qs(urlsplit(link_magnet).query)
                assert params["xt"] == [f"urn:btih:{ih}"], link_magnet
                assert params["tr"] == [tracker], link_magnet
                assert params["ws"] == [f"{s.url}/torrents/{ih}/files/"], link_magnet

                shot = tmp_path / "serve-ui.png"
                await page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot of the serve UI: {shot}")

                async with context.expect_page(timeout=STEP_TIMEOUT * 1000) as opened:
                    await page.click("#files .f-play")
                player = await opened.value
                ctx.watch(player, "player")
                await ctx.step("the player plays 1 s of the video", player.wait_for_function(
                    "() => window.demo && window.demo.state === 'error' || "
                    "(document.querySelector('video') && document.querySelector('video').currentTime > 1)",
                    timeout=TRANSFER_TIMEOUT * 1000, polling=200))
                state = await player.evaluate("window.demo")
                assert state["state"] != "error", f"{json.dumps(state)}\n{ctx}"
                assert urlsplit(player.url).path == "/index.html", player.url
                # Streamed through the service worker (its scope / covers /index.html), from the bridge.
                assert state["mode"] == "stream", f"{json.dumps(state)}\n{ctx}"
                assert state["videoFile"] == "clip.webm" and state["peers"]["bridge"] >= 1, state
                print(f"player: {state['peers']} peers, {state['fromBridge']} bytes from the bridge over WebRTC")
                await player.close()
                ctx.assert_no_page_errors()
            finally:
                await browser.close()
    finally:
        try:
            if s is not None:
                assert s.stop() == 0, s.logs()
        finally:
            harness.close()


async def test_ui_asks_for_the_token_and_manages_torrents_on_a_phone(tmp_path: Path) -> None:
    async_playwright = _playwright()
    harness = peers.Harness(tmp_path / "harness")
    share = tmp_path / "share"
    share.mkdir()
    odd = share / "<img src=x onerror=window.pwned=1>.bin"  # a torrent-provided name with markup
    odd.write_bytes(os.urandom(150_000))
    other = tmp_path / "other" / "upload.bin"
    other.parent.mkdir()
    other.write_bytes(os.urandom(120_000))
    uploaded = harness.torrent(other, piece_length=32 * 1024)
    fails = tmp_path / "fails" / "fails.bin"
    fails.parent.mkdir()
    fails.write_bytes(os.urandom(50_000))
    broken = harness.torrent(fails, piece_length=32 * 1024)
    s = Serve(tmp_path)  # with a token
    ctx = Context(s, harness)
    try:
        status, added = await asyncio.to_thread(s.call, "POST", "/api/v1/torrents", {"path": str(odd)})
        assert status == 201, added
        odd_ih = added["infohash"]
        up_ih = uploaded.info_hash_hex

        async with async_playwright() as pw:
            browser = await _browser(pw)
            try:
                context = await browser.new_context(permissions=["microphone"], viewport={"width": 390, "height": 800},
                                                    is_mobile=True, has_touch=True)
                page = await context.new_page()
                ctx.watch(page, "ui")
                await ctx.step("open the UI", page.goto(s.url + "/"))
                await ctx.step("the token form", page.wait_for_selector("#token-form", state="visible",
                                                                        timeout=STEP_TIMEOUT * 1000))
                assert not await page.is_visible("#add") and not await page.is_visible("#list-section")

                await page.fill("#token-input", "not-the-token")
                await page.click("#token-button")
                await ctx.step("the wrong token refused", _wait_text(page, "#message-text", "t.includes('refused')"))
                assert await page.is_visible("#token-form")

                await page.fill("#token-input", TOKEN)
                await page.click("#token-button")
                row = f'li.torrent[data-infohash="{odd_ih}"]'
                await ctx.step("the list once the token is given", page.wait_for_selector(
                    row, timeout=STEP_TIMEOUT * 1000))
                assert not await page.is_visible("#token-form") and not await page.is_visible("#message")
                assert await page.evaluate("localStorage.getItem('webtorrent-bridge-api-token')") == TOKEN
                await ctx.step("the path torrent seeding", _wait_text(page, f"{row} .t-state", "t === 'seeding'"))
                assert await page.text_content(f"{row} .t-name") == odd.name
                assert await page.evaluate("window.pwned === undefined && !document.querySelector('main img')")

                # A reload keeps the token: no form.
                await page.reload()
                await ctx.step("the list after a reload", page.wait_for_selector(row, timeout=STEP_TIMEOUT * 1000))
                assert not await page.is_visible("#token-form")

                # An API error (the server's own words) is shown.
                bad = "magnet:?xt=urn:btih:nothex"
                _, err = await asyncio.to_thread(s.call, "POST", "/api/v1/torrents", {"magnet": bad})
                await page.fill("#magnet-input", bad)
                await page.click("#magnet-button")
                await ctx.step("the API's error shown", _wait_text(page, "#message-text", f"t === {json.dumps(err['error'])}"))
                assert "error" in (await page.get_attribute("#message", "class") or "")
                await page.click("#message-close")

                # Upload a .torrent, paused; resume; pause.
                await page.check("#add-paused")
                await page.set_input_files("#file-input", str(uploaded.path))
                await page.click("#file-button")
                up_row = f'li.torrent[data-infohash="{up_ih}"]'
                await ctx.step("the uploaded torrent, paused", _wait_text(page, f"{up_row} .t-state", "t === 'paused'"))
                assert await page.text_content(f"{up_row} .t-toggle") == "Resume"
                await page.click(f"{up_row} .t-toggle")
                await ctx.step("resumed", _wait_text(page, f"{up_row} .t-state", "t !== 'paused'"))
                await ctx.step("the Pause button", _wait_text(page, f"{up_row} .t-toggle", "t === 'Pause'"))
                await page.click(f"{up_row} .t-toggle")
                await ctx.step("paused again", _wait_text(page, f"{up_row} .t-state", "t === 'paused'"))

                # A torrent stopped by an error (its file in the data folder is a symlink to outside) offers
                # Resume, which restarts it (and here fails again).
                outside = tmp_path / "outside.bin"
                outside.write_bytes(b"not the torrent's")
                (tmp_path / "data").mkdir(exist_ok=True)
                (tmp_path / "data" / broken.name).symlink_to(outside)
                status, added = await asyncio.to_thread(s.call, "POST", "/api/v1/torrents", {
                    "torrent": base64.b64encode(broken.path.read_bytes()).decode()})
                assert status == 201, added
                err_row = f'li.torrent[data-infohash="{broken.info_hash_hex}"]'
                await ctx.step("the failed torrent", _wait_text(page, f"{err_row} .t-state", "t === 'error'"))
                await ctx.step("its Resume button", _wait_text(page, f"{err_row} .t-toggle", "t === 'Resume'"))
                assert await page.is_visible(f"{err_row} .t-error")
                await page.click(f"{err_row} .t-toggle")
                await ctx.step("resumed: the error again", _wait_text(page, f"{err_row} .t-state", "t === 'error'"))
                status, _ = await asyncio.to_thread(s.call, "DELETE", f"/api/v1/torrents/{broken.info_hash_hex}")
                assert status == 200
                assert outside.read_bytes() == b"not the torrent's"

                # Usable on a phone: nothing wider than the screen.
                assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
                shot = tmp_path / "serve-ui-phone.png"
                await page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot of the serve UI on a phone: {shot}")

                # Remove: cancel once, then remove keeping the data; then the other with its data.
                await page.click(f"{up_row} .t-remove")
                await ctx.step("the remove dialog", page.wait_for_selector("#remove-dialog", state="visible",
                                                                         timeout=STEP_TIMEOUT * 1000))
                assert await page.text_content("#remove-name") == "upload.bin"
                await page.click("#remove-cancel")
                await page.wait_for_timeout(1500)  # a refresh or so: still there
                assert await page.is_visible(up_row)
                await page.click(f"{up_row} .t-remove")
                await page.click("#remove-confirm")
                await ctx.step("the row removed", page.wait_for_selector(up_row, state="detached",
                                                                        timeout=STEP_TIMEOUT * 1000))
                await page.click(f"{row} .t-remove")
                await page.check("#remove-data")
                await page.click("#remove-confirm")
                await ctx.step("the other row removed", page.wait_for_selector(row, state="detached",
                                                                              timeout=STEP_TIMEOUT * 1000))
                await ctx.step("the removal message", _wait_text(page, "#message-text", "t.includes('deleted')"))
                assert not odd.exists(), "delete data did not delete the file"
                assert await asyncio.to_thread(s.call, "GET", "/api/v1/torrents") == (200, [])
                await ctx.step("the empty list", page.wait_for_selector("#empty", state="visible",
                                                                       timeout=STEP_TIMEOUT * 1000))
                ctx.assert_no_page_errors()
            finally:
                await browser.close()
    finally:
        try:
            assert s.stop() == 0, s.logs()
        finally:
            harness.close()
