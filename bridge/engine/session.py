"""All torrents of one process: the shared listener (routing by info-hash), the peer id, HTTP client."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import string
import time
from collections.abc import Callable, Iterable

import aiohttp

from .. import __version__
from ..config import PeerConfig, SessionConfig
from ..errors import RemoteProtocolError
from ..net.rtc import RtcConfig
from ..net.tcp import serve_tcp
from ..net.tracker_ws import WsTrackerOptions, WsTrackerPool
from ..net.transport import PeerTransport
from ..net.utp import UtpSocket, open_utp_socket
from ..proto import events as ev
from ..proto.metainfo import InfoDict, parse_info
from ..proto.mse import req2_key
from ..storage import FileStorage, ProgressFn, default_executor
from ..swarm.bitfield import Bitfield
from ..swarm.ratelimit import TokenBucket
from .announcer import Announcer
from .handshake import Opened, accept, dial
from .metadata import MetadataFetcher, OpenConnection
from .torrent import Address, Torrent
from .webrtc import WebRtcSide

log = logging.getLogger(__name__)

_ID_CHARS = (string.ascii_letters + string.digits).encode()
#: Tries at binding TCP and UDP to one free port number (port 0: the UDP side of the port the kernel gave
#: TCP may be taken).
PORT_ATTEMPTS = 5
#: Seconds a uTP connection attempt gets before the dialler falls back to TCP. A uTP peer answers the
#: SYN within one round trip; one that does not speak uTP never answers.
UTP_CONNECT_TIMEOUT = 4.0
#: Seconds uTP has to open a connection before TCP is tried as well (the first to finish wins). A peer
#: without uTP then costs half a second, not UTP_CONNECT_TIMEOUT.
UTP_HEAD_START = 0.5
#: Addresses remembered as not answering uTP (dialled over TCP only for NO_UTP_TTL seconds).
MAX_NO_UTP = 4096
NO_UTP_TTL = 1800.0


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
        #: the UDP side of the listen port: uTP connections (None with utp off)
        self.utp: UtpSocket | None = None
        #: addresses whose uTP SYN went unanswered -> when to try uTP again
        self._no_utp: dict[tuple[str, int], float] = {}
        #: process-wide rate limits (bytes/s, 0 unlimited), shared by every peer of every torrent
        now = time.monotonic()
        self.upload_limit = TokenBucket(self.config.upload_rate_limit, now)
        self.download_limit = TokenBucket(self.config.download_rate_limit, now)

    async def start(self) -> None:
        cfg = self.config
        if not (cfg.tcp or cfg.utp):
            raise ValueError("TCP and uTP are both turned off: no way to reach peers")
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self._listen(cfg.port)
                break
            except OSError:
                # Port 0: the TCP port the kernel picked may be taken on UDP. Pick another.
                if cfg.port != 0 or attempt == PORT_ATTEMPTS - 1:
                    raise
        self.ws_pool = WsTrackerPool(WsTrackerOptions(backoff_cap=cfg.tracker_retry_max))
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
        have: Bitfield | None = None,
        priorities: Iterable[int] = (),
    ) -> Torrent:
        """Check existing data (or trust ``have``: resume data that passed its fast check), then start
        the torrent. ``priorities`` are per-file (0 skips a file)."""
        if info.info_hash in self.torrents:
            raise ValueError("torrent already added")
        storage = FileStorage(info, download_dir, self.executor)
        if have is None:
            have = await storage.recheck(progress)
        torrent = Torrent(self, info, storage, have, config=self.config.peer, trackers=trackers, seed=seed,
                          web_seeds=web_seeds)
        torrent.set_file_priorities(list(priorities))
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
            announcer = Announcer(tiers, info_hash, self.peer_id, self.listen_port, stats, on_peers, self.http,
                                  udp=self.utp, backoff_max=self.config.tracker_retry_max)
            announce_task = asyncio.create_task(announcer.run(), name=f"announce {info_hash.hex()[:8]}")
        side: WebRtcSide | None = None
        if self.config.webrtc and self.config.trackers_enabled and self.ws_pool is not None:
            side = WebRtcSide(fetcher, self.rtc_config, self.peer_id, self.config.peer.handshake_timeout)
            if not side.join(self.ws_pool, tiers, info_hash):
                side = None
        connections: list[OpenConnection] = []
        try:
            raw, connections = await fetcher.run()
            info = parse_info(raw, expected_hash=info_hash)
            log.info("[%s] metadata verified (%d bytes, %d pieces)", info.name, len(raw), info.num_pieces)
            if on_metadata is not None:
                on_metadata(info)  # the caller saves it, for one: a full disk ends the magnet here
            torrent = await self.add_torrent(
                info, download_dir, trackers=tiers, peers=peers, seed=seed, progress=progress,
                announcer=announcer, connections=connections, webrtc=side, web_seeds=web_seeds,
            )
        except BaseException:
            # Nothing adopted them: the peers the metadata came from, the announcer and the WebRTC side.
            for conn in connections:
                conn.transport.close()
            if announcer is not None and announce_task is not None:
                await announcer.stop()
                announce_task.cancel()
            if side is not None:
                await side.aclose()
            raise
        target.append(torrent)
        if announce_task is not None:
            torrent.adopt_task(announce_task)
        return torrent

    async def _listen(self, port: int) -> None:
        """TCP and UDP (uTP) on the same port number."""
        cfg = self.config
        if cfg.tcp:
            self._server = await serve_tcp(cfg.host, port, self._on_incoming)
            sock = self._server.sockets[0]
            self.listen_host, self.listen_port = sock.getsockname()[:2]
            port = self.listen_port
        if cfg.utp:
            try:
                self.utp = await open_utp_socket(cfg.host, port, on_incoming=self._on_incoming)
            except OSError:
                if self._server is not None:
                    self._server.close()
                    self._server = None
                raise
            self.listen_host, self.listen_port = self.utp.local_address

    async def dial(self, host: str, port: int, ours: ev.Handshake, cfg: PeerConfig) -> Opened:
        """Open a peer connection, uTP first (most classic swarms prefer it): TCP starts too if uTP has not
        finished the handshakes within UTP_HEAD_START seconds, and the first to finish wins."""
        expiry = self._no_utp.get((host, port))
        if expiry is not None and expiry < time.monotonic():
            del self._no_utp[(host, port)]
            expiry = None
        # Without TCP, uTP is always tried: a peer that was silent once may answer now.
        use_utp = self.config.utp and self.utp is not None and (expiry is None or not self.config.tcp)
        if not use_utp:
            if not self.config.tcp:
                raise ConnectionError("uTP is unavailable for this peer and TCP is off")
            return await dial(host, port, ours, cfg)
        utp = self.utp
        assert utp is not None

        async def open_utp(h: str, p: int, timeout: float) -> PeerTransport:
            return await utp.connect((h, p), min(timeout, UTP_CONNECT_TIMEOUT))

        attempts: dict[asyncio.Task[Opened], str] = {
            asyncio.ensure_future(dial(host, port, ours, cfg, open_utp)): "uTP"}
        errors: list[str] = []
        winner: Opened | None = None
        try:
            done, _ = await asyncio.wait(attempts, timeout=UTP_HEAD_START)
            if not done and self.config.tcp:
                attempts[asyncio.ensure_future(dial(host, port, ours, cfg))] = "TCP"
            pending = set(attempts)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        winner = task.result()
                        return winner
                    if attempts[task] == "uTP":
                        # Only silence means "no uTP here": a peer that answered (even by closing,
                        # as one whose torrent is not started yet does) speaks it.
                        if isinstance(exc, TimeoutError) and len(self._no_utp) < MAX_NO_UTP:
                            self._no_utp[(host, port)] = time.monotonic() + NO_UTP_TTL
                        if self.config.tcp and len(attempts) == 1:
                            tcp = asyncio.ensure_future(dial(host, port, ours, cfg))
                            attempts[tcp] = "TCP"
                            pending.add(tcp)
                    errors.append(f"{attempts[task]}: {exc or type(exc).__name__}")
            raise ConnectionError("; ".join(errors))
        finally:
            for task in attempts:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
            for task in attempts:
                # Both made it at once: keep only the winner.
                if not task.cancelled() and task.exception() is None and task.result() is not winner:
                    task.result().transport.close()

    async def _on_incoming(self, transport: PeerTransport) -> None:
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
        if self.utp is not None:
            self.utp.close()
            self.utp = None
        self.executor.shutdown(wait=False, cancel_futures=True)
