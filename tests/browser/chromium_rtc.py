"""Headless Debian Chromium driven by Python playwright, with a static WebRTC test page served over HTTP.

Used by tests/browser (through conftest.py) and by bench/rtc_raw.py. Everything stays on 127.0.0.1: the
page server binds port 0, our side gathers only on 127.0.0.1, and :func:`loopback_only` drops the
browser's other candidates from its SDP (Chromium offers every interface address once the microphone
permission is granted; without the grant it offers only ``<uuid>.local`` mDNS names).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

CHROMIUM = "/usr/bin/chromium"
STATIC = Path(__file__).resolve().parent / "static"
#: BROWSER.md's flags (headless, as root, loopback only). No --disable-features: Chromium keeps only the
#: last one given, which would replace playwright's own list.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
]
#: Bound on launching the browser and loading the page.
LAUNCH_TIMEOUT = 60.0

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ (\S+) \d+ (\S+) \d+ typ \S+")


def loopback_only(sdp: str) -> str:
    """``sdp`` without the ICE candidates that are not UDP on 127.0.0.1 (keeps traffic on loopback)."""
    kept = []
    for line in sdp.split("\r\n"):
        m = _CANDIDATE.match(line)
        if m and (m.group(1).lower() != "udp" or m.group(2) != "127.0.0.1"):
            continue
        kept.append(line)
    return "\r\n".join(kept)


def candidates(sdp: str) -> list[str]:
    return [line for line in sdp.split("\r\n") if line.startswith("a=candidate:")]


class BrowserUnavailable(RuntimeError):
    """Chromium or playwright cannot run here; the message says why."""


@dataclass
class RtcPage:
    """The test page in a fresh Chromium context; ``call`` runs one of its window functions."""

    page: Any
    url: str

    async def call(self, function: str, *args: Any, timeout: float = 60.0) -> Any:
        arglist = ", ".join(f"a[{i}]" for i in range(len(args)))
        async with asyncio.timeout(timeout):
            return await self.page.evaluate(f"(a) => window.{function}({arglist})", list(args))


@contextlib.asynccontextmanager
async def serve_static() -> AsyncIterator[str]:
    """An aiohttp server for STATIC on 127.0.0.1, port 0; yields its base URL."""
    app = web.Application()
    app.router.add_static("/static/", STATIC)

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "rtc.html")

    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def rtc_page() -> AsyncIterator[RtcPage]:
    """Chromium with the test page loaded and ready. Raises BrowserUnavailable saying why it cannot."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise BrowserUnavailable(f"Python playwright is not installed ({exc}); run `pip install playwright`") from exc
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserUnavailable(f"{CHROMIUM} is missing; install Debian's chromium package")
    async with serve_static() as url, contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(LAUNCH_TIMEOUT):
                pw = await stack.enter_async_context(async_playwright())
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                stack.push_async_callback(browser.close)
                context = await browser.new_context(permissions=["microphone"])
                page = await context.new_page()
                page.set_default_timeout(LAUNCH_TIMEOUT * 1000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(url)
                await page.wait_for_function("window.rtcReady === true")
        except Exception as exc:
            raise BrowserUnavailable(f"Chromium could not be started through playwright: {type(exc).__name__}: {exc}") from exc
        yield RtcPage(page, url)
        if errors:
            raise AssertionError(f"errors in the page: {errors}")
