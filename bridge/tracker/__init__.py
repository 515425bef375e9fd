"""The embedded tracker: HTTP (BEP 3/7/23/48), UDP (BEP 15) and WebSocket signalling (WebTorrent) on one port.

* :mod:`bridge.tracker.state`: the swarm registry, sans-IO (no asyncio, no clock, injectable random source).
* :mod:`bridge.tracker.codec`: server-side HTTP query / bencoded reply and BEP 15 datagram codecs, sans-IO.
* :mod:`bridge.tracker.server`: the aiohttp application and the UDP endpoint that drive them.

The server names are loaded lazily, so that ``import bridge.tracker.state`` (or ``.codec``) does not pull in
asyncio and aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import TrackerServer, run_tracker, start_tracker

__all__ = ["TrackerServer", "run_tracker", "start_tracker"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
