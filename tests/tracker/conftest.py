"""Fixtures shared by the embedded tracker's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridge.tracker import TrackerServer, start_tracker


@pytest.fixture
async def tracker() -> AsyncIterator[TrackerServer]:
    """An embedded tracker on 127.0.0.1, a free port, a 60 s interval; closed after the test."""
    t = await start_tracker("127.0.0.1", 0, interval=60)
    try:
        yield t
    finally:
        await asyncio.wait_for(t.close(), 10)
