"""All torrents of one process: the shared listener (routing by info-hash), the peer id, HTTP client."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import string
from collections.abc import Iterable

import aiohttp

from .. import __version__
from ..config import SessionConfig
from ..errors import RemoteProtocolError
from ..net.tcp import TcpTransport, serve_tcp
from ..proto.metainfo import InfoDict
from ..proto.wire import Wire
from ..storage import FileStorage, ProgressFn, default_executor
from .handshake import read_handshake
from .torrent import Address, Torrent

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

    async def start(self) -> None:
        self._server = await serve_tcp(self.config.host, self.config.port, self._on_incoming)
        sock = self._server.sockets[0]
        self.listen_host, self.listen_port = sock.getsockname()[:2]
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
    ) -> Torrent:
        """Check existing data, then start the torrent."""
        if info.info_hash in self.torrents:
            raise ValueError("torrent already added")
        storage = FileStorage(info, download_dir, self.executor)
        have = await storage.recheck(progress)
        torrent = Torrent(self, info, storage, have, config=self.config.peer, trackers=trackers, seed=seed)
        self.torrents[info.info_hash] = torrent
        torrent.add_peers(peers, sticky=True)
        await torrent.start()
        return torrent

    async def _on_incoming(self, transport: TcpTransport) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._incoming.add(task)
        try:
            wire = Wire()
            try:
                handshake, pending = await read_handshake(transport, wire, self.config.peer.handshake_timeout)
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
                await transport.write(wire.send(torrent.our_handshake()))
            except OSError:
                transport.close()
                return
            await torrent.run_peer(transport, wire, handshake, pending)
        finally:
            self._incoming.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(t.stop() for t in self.torrents.values()), return_exceptions=True)
        for task in list(self._incoming):
            task.cancel()
        await asyncio.gather(*self._incoming, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
