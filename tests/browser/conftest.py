"""Fixtures for the browser tests: headless Debian Chromium (playwright) with the WebRTC test page.

These tests never skip. If Chromium or playwright cannot run, they fail and say why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from chromium_rtc import BrowserUnavailable, RtcPage, rtc_page

from bridge.net import rtc


@pytest.fixture
async def page() -> AsyncIterator[RtcPage]:
    try:
        manager = rtc_page()
        opened = await manager.__aenter__()
    except BrowserUnavailable as exc:
        pytest.fail(f"the browser tests need Chromium and playwright: {exc}", pytrace=False)
    try:
        yield opened
    finally:
        await manager.__aexit__(None, None, None)
        async with asyncio.timeout(30):
            await rtc.wait_closing()
