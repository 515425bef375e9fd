"""All torrents of one process: the shared listener (routing by info-hash), the peer id, HTTP client."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import string
from collections.abc import Callable, Iterable

import aiohttp

from .. import __version__
from ..config import SessionConfig
from ..errors import RemoteProtocolError
from ..net.rtc import RtcConfig
from ..net.tcp import TcpTransport, serve_tcp
from ..net.tracker_ws import WsTrackerPool
from ..proto.metainfo import InfoDict, parse_info
from ..proto.mse import req2_key
from ..storage import FileStorage, ProgressFn, default_executor
from .announcer import Announcer
from .handshake import accept
from .metadata import MetadataFetcher, OpenConnection
from .torrent import Address, Torrent
from .webrtc import WebRtcSide

log = logging.getLogger(__name__)

_ID_CHARS = (string.ascii_letters + string.digits).encode()


def make_peer_id() -> bytes:
    """Azureus-style ``-WB0100-`` + 12 random characters (WB: webtorrent-bridge, version 0.1.0)."""
    major, minor, patch = (__version__.split(".") + ["0", "0"])[:3]
    prefix = f"-WB{int(major) % 10}{int(minor) % 10}{int(patch) % 10}0-".encode()
    return prefix + bytes(secrets.choice(_ID_CHARS) for _ in range(20 - len(prefix)))


class Session:
    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        self.peer_id = make_peer_id()
        self.torrents: dict[bytes, Torrent] = {}
        self.listen_port = 0
        self.listen_host = self.config.host
        self._server: asyncio.Server | None = None
        self.http: aiohttp.ClientSession | None = None
        self.executor = default_executor()
        self._incoming: set[asyncio.Task[None]] = set()
        self.rtc_config = RtcConfig(ice_servers=self.config.ice_servers, host_addresses=self.config.webrtc_hosts)
        self.ws_pool: WsTrackerPool | None = None

    async def start(self) -> None:
        self._server = await serve_tcp(self.config.host, self.config.port, self._on_incoming)
        sock = self._server.sockets[0]
        self.listen_host, self.listen_port = sock.getsockname()[:2]
        self.ws_pool = WsTrackerPool()
        self.http = aiohttp.ClientSession(
            headers={"User-Agent": f"webtorrent-bridge/{__version__}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def add_torrent(
        self,
        info: InfoDict,
        download_dir: str | os.PathLike[str],
        *,
        trackers: Iterable[Iterable[str]] = (),
        peers: Iterable[Address] = (),
        seed: bool = False,
        progress: ProgressFn | None = None,
        announcer: Announcer | None = None,
        connections: Iterable[OpenConnection] = (),
        webrtc: WebRtcSide | None = None,
        web_seeds: Iterable[str] = (),
    ) -> Torrent:
        """Check existing data, then start the torrent."""
        if info.info_hash in self.torrents:
            raise ValueError("torrent already added")
        storage = FileStorage(info, download_dir, self.executor)
        have = await storage.recheck(progress)
        torrent = Torrent(self, info, storage, have, config=self.config.peer, trackers=trackers, seed=seed,
                          web_seeds=web_seeds)
        self.torrents[info.info_hash] = torrent
        torrent.add_peers(peers, sticky=True)
        await torrent.start(announcer, connections, webrtc)
        return torrent

    async def add_magnet(
        self,
        info_hash: bytes,
        download_dir: str | os.PathLike[str],
        *,
        name: str = "",
        trackers: Iterable[Iterable[str]] = (),
        peers: Iterable[Address] = (),
        seed: bool = False,
        progress: ProgressFn | None = None,
        on_metadata: Callable[[InfoDict], None] | None = None,
        web_seeds: Iterable[str] = (),
    ) -> Torrent:
        """Fetch the metadata from peers (BEP 9), then start the torrent on the same connections."""
        if info_hash in self.torrents:
            raise ValueError("torrent already added")
        peers = list(peers)
        tiers = [list(t) for t in trackers]
        fetcher = MetadataFetcher(self, info_hash, self.config.peer, tag=name[:24])
        fetcher.add_peers(peers)
        target: list[Torrent] = []

        def stats() -> tuple[int, int, int]:
            # Before the metadata the size is unknown; say 1 byte left so no tracker counts us as a seed.
            return target[0].stats() if target else (0, 0, 1)

        def on_peers(addresses: list[Address]) -> None:
            (target[0] if target else fetcher).add_peers(addresses)

        announcer = None
        announce_task = None
        if tiers and self.config.trackers_enabled:
            announcer = Announcer(tiers, info_hash, self.peer_id, self.listen_port, stats, on_peers, self.http)
            announce_task = asyncio.create_task(announcer.run(), name=f"announce {info_hash.hex()[:8]}")
        side: WebRtcSide | None = None
        if self.config.webrtc and self.config.trackers_enabled and self.ws_pool is not None:
            side = WebRtcSide(fetcher, self.rtc_config, self.peer_id, self.config.peer.handshake_timeout)
            if not side.join(self.ws_pool, tiers, info_hash):
                side = None
        try:
            raw, connections = await fetcher.run()
        except BaseException:
            if announcer is not None and announce_task is not None:
                await announcer.stop()
                announce_task.cancel()
            if side is not None:
                await side.aclose()
            raise
        info = parse_info(raw, expected_hash=info_hash)
        log.info("[%s] metadata verified (%d bytes, %d pieces)", info.name, len(raw), info.num_pieces)
        if on_metadata is not None:
            on_metadata(info)
        torrent = await self.add_torrent(
            info, download_dir, trackers=tiers, peers=peers, seed=seed, progress=progress,
            announcer=announcer, connections=connections, webrtc=side, web_seeds=web_seeds,
        )
        target.append(torrent)
        if announce_task is not None:
            torrent.adopt_task(announce_task)
        return torrent

    async def _on_incoming(self, transport: TcpTransport) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._incoming.add(task)
        try:
            try:
                stream, wire, handshake, pending = await accept(transport, self.config.peer, self._mse_lookup)
            except (RemoteProtocolError, OSError, TimeoutError) as e:
                log.debug("incoming %s: bad handshake: %s", transport.remote_address, e or type(e).__name__)
                transport.close()
                return
            torrent = self.torrents.get(handshake.info_hash)
            if torrent is None:
                log.debug("incoming %s: unknown info-hash", transport.remote_address)
                transport.close()
                return
            try:
                await stream.write(wire.send(torrent.our_handshake()))
            except OSError:
                transport.close()
                return
            await torrent.run_peer(stream, wire, handshake, pending)
        finally:
            self._incoming.discard(task)

    def _mse_lookup(self, req2: bytes) -> bytes | None:
        """MSE: which of our torrents an encrypted incoming connection asks for."""
        for info_hash in self.torrents:
            if req2_key(info_hash) == req2:
                return info_hash
        return None

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(t.stop() for t in self.torrents.values()), return_exceptions=True)
        for task in list(self._incoming):
            task.cancel()
        await asyncio.gather(*self._incoming, return_exceptions=True)
        if self.ws_pool is not None:
            await self.ws_pool.aclose()
        if self.http is not None:
            await self.http.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
