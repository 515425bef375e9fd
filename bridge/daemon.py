"""`webtorrent-bridge serve`: one long-running process with many torrents, persistent across restarts.

The Daemon owns the session (peers on TCP, uTP and WebRTC), the optional embedded tracker, the HTTP server
(JSON API, streaming, the web page) and the state directory (bridge/state.py). Torrents are added through
the API; each one's record and metainfo are saved before it starts, and its resume data every
RESUME_INTERVAL seconds and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import stat
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .config import SessionConfig
from .create import make_info
from .engine.session import Session
from .engine.torrent import Torrent
from .errors import BridgeError, MetainfoError, StorageError
from .looplag import LoopLagMonitor
from .proto.metainfo import (
    MAX_TORRENT_SIZE,
    InfoDict,
    Magnet,
    Metainfo,
    build_torrent,
    parse_hostport,
    parse_magnet,
    parse_torrent,
)
from .server import HttpServer
from .state import StateStore, TorrentRecord
from .tracker import TrackerServer, start_tracker

log = logging.getLogger(__name__)

__all__ = ["ServeOptions", "Daemon", "ApiError"]

#: Kinds of peer, as the API and metrics count them.
PEER_KINDS = ("tcp", "utp", "webrtc", "webseed")
#: Seconds between two saves of resume data (also saved at shutdown and when a torrent completes).
RESUME_INTERVAL = 30.0
#: Torrents one serve process takes (each costs memory and file descriptors).
MAX_TORRENTS = 5000
#: Peers one "add" request may list to dial.
MAX_ADD_PEERS = 50
#: Seconds an "add by URL" waits for the .torrent.
URL_FETCH_TIMEOUT = 30.0
#: Redirects an "add by URL" follows (each one to http:// or https:// only).
MAX_URL_REDIRECTS = 5
#: Seconds the shutdown may take before the rest is abandoned (SIGTERM must exit within 10 s).
SHUTDOWN_BUDGET = 8.0


@dataclass(frozen=True)
class ServeOptions:
    #: address of the HTTP server (API, page, streams); anything but loopback requires api_token
    host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: str = "."
    state_dir: str = ".webtorrent-bridge"
    #: run the embedded tracker too, on tracker_port, and announce every torrent to it
    tracker: bool = False
    tracker_port: int = 8000
    #: bearer token for the API (None: only allowed on a loopback host)
    api_token: str | None = None
    #: hash every torrent's data at start instead of trusting resume data that passes the fast check
    recheck: bool = False
    #: tracker URLs added to every torrent
    extra_trackers: tuple[str, ...] = ()


class ApiError(BridgeError):
    """A request the daemon refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Only a literal loopback address or "localhost": a name like "127.example.org" may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Entry:
    """One torrent the daemon knows: its record, and the running torrent when it runs."""

    def __init__(self, record: TorrentRecord) -> None:
        self.record = record
        self.torrent: Torrent | None = None
        self.task: asyncio.Task[None] | None = None
        self.info: InfoDict | None = None
        self.state = "paused" if record.paused else "starting"
        self.error: str | None = None
        self.saved_pieces = -1
        #: the torrent failed (disk full ...) and was stopped; kept for its figures until resumed or removed
        self.halted = False

    @property
    def info_hash(self) -> str:
        return self.record.info_hash


class Daemon:
    def __init__(self, options: ServeOptions, session_config: SessionConfig) -> None:
        if not is_loopback(options.host) and not options.api_token:
            raise BridgeError(f"the API would listen on {options.host}, beyond this machine: give it a token "
                              "(--api-token or BRIDGE_API_TOKEN), or use --host 127.0.0.1")
        self.options = options
        #: where torrents' data goes (each under its name, as with `download -o`)
        self.data_dir = os.path.abspath(options.data_dir)
        self.session = Session(session_config)
        self.store = StateStore(options.state_dir)
        self.entries: dict[str, Entry] = {}
        self.tracker: TrackerServer | None = None
        self.http: HttpServer | None = None
        self.started_at = time.time()
        #: how late this process's event loop runs timers (on /metrics)
        self.loop_lag = LoopLagMonitor(name="serve event loop")
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        #: counters of removed torrents, so the metrics' totals never go down
        self.retired: dict[str, Counter[str]] = {"down": Counter(), "up": Counter(), "relayed": Counter(),
                                                 "hash_failures": Counter()}

    # ---------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        from .server.app import start_api_server

        os.makedirs(self.options.data_dir, exist_ok=True)
        self.loop_lag.start()
        if self.options.tracker:
            self.tracker = await start_tracker(self.options.host, self.options.tracker_port)
        await self.session.start()
        self.http = await start_api_server(self, self.options.host, self.options.http_port)
        for record in self.store.records():
            entry = Entry(record)
            self.entries[record.info_hash] = entry
            if not record.paused:
                self._launch(entry)
        self._spawn(self._resume_loop(), "resume saver")

    async def close(self) -> None:
        """Stop accepting, save resume data, announce stopped, close everything (within SHUTDOWN_BUDGET)."""
        self._closing = True
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET):
                if self.http is not None:
                    await self.http.close()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await self._save_all_resume()  # first, in case stopping takes the rest of the budget
                # Each torrent stops (announcing stopped), then its resume data is saved again.
                await asyncio.gather(*(self._stop(entry) for entry in list(self.entries.values())))
                await self.session.aclose()
        except TimeoutError:
            log.warning("shutdown took longer than %g s; exiting anyway", SHUTDOWN_BUDGET)
        finally:
            if self.tracker is not None:
                await self.tracker.close()
            await self.loop_lag.stop()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------------------------- adding
    async def add(self, *, magnet: str | None = None, torrent: bytes | None = None, url: str | None = None,
                  path: str | None = None, peers: list[str] | None = None, paused: bool = False) -> Entry:
        given = [x for x in (magnet, torrent, url, path) if x is not None]
        if len(given) != 1:
            raise ApiError(400, "give exactly one of magnet, torrent, url or path")
        if len(self.entries) >= MAX_TORRENTS:
            raise ApiError(507, f"this bridge already has {MAX_TORRENTS} torrents")
        peer_list = list(peers or [])
        if len(peer_list) > MAX_ADD_PEERS:
            raise ApiError(400, f"more than {MAX_ADD_PEERS} peers")
        for p in peer_list:
            try:
                parse_hostport(p)
            except (MetainfoError, ValueError) as e:
                raise ApiError(400, f"peer {p[:60]!r}: {e}") from None
        raw: bytes | None = None
        save_path = self.data_dir
        source = "torrent"
        mag: Magnet | None = None
        if magnet is not None:
            try:
                mag = parse_magnet(magnet)
            except MetainfoError as e:
                raise ApiError(400, f"invalid magnet: {e}") from None
            source = "magnet"
            info_hash, name = mag.info_hash.hex(), mag.name
            peer_list += [f"{h}:{port}" if ":" not in h else f"[{h}]:{port}" for h, port in mag.peers]
        else:
            if url is not None:
                raw = await self._fetch_url(url)
                source = "url"
            elif path is not None:
                raw, save_path = await self._create_from_path(path)
                source = "path"
            else:
                raw = torrent
            assert raw is not None
            try:
                meta = parse_torrent(raw)
            except MetainfoError as e:
                raise ApiError(400, f"invalid torrent: {e}") from None
            info_hash, name = meta.info.info_hash.hex(), meta.info.name
        if info_hash in self.entries:
            raise ApiError(409, "this torrent is already added")
        record = TorrentRecord(info_hash=info_hash, name=name, source=source, magnet=magnet, save_path=save_path,
                               paused=paused, added_at=time.time(), peers=peer_list)
        try:
            if raw is not None:
                await asyncio.to_thread(self.store.save_metainfo, info_hash, raw)
            await asyncio.to_thread(self.store.save_record, record)
        except OSError as e:
            raise self._state_error(e) from None
        entry = Entry(record)
        self.entries[info_hash] = entry
        if not paused:
            self._launch(entry)
        log.info("added %s (%s)", name or info_hash, source)
        return entry

    async def _fetch_url(self, url: str) -> bytes:
        """GET an http(s) URL, following at most MAX_URL_REDIRECTS redirects, each checked to be http(s)
        too (never file:, ftp:, data: ...), within URL_FETCH_TIMEOUT seconds in all."""
        _check_http_url(url, "url")
        http = self.session.http
        assert http is not None
        try:
            async with asyncio.timeout(URL_FETCH_TIMEOUT):
                for _ in range(MAX_URL_REDIRECTS + 1):
                    async with http.get(url, allow_redirects=False) as resp:
                        if resp.status in (301, 302, 303, 307, 308):
                            target = resp.headers.get("Location", "")
                            url = urllib.parse.urljoin(url, target)
                            _check_http_url(url, "a redirect")
                            continue
                        if resp.status != 200:
                            raise ApiError(502, f"fetching the torrent: HTTP {resp.status}")
                        if resp.content_length is not None and resp.content_length > MAX_TORRENT_SIZE:
                            raise ApiError(400, "the .torrent at that URL is too large")
                        data = await resp.content.read(MAX_TORRENT_SIZE + 1)
                        break
                else:
                    raise ApiError(502, f"fetching the torrent: more than {MAX_URL_REDIRECTS} redirects")
        except ApiError:
            raise
        except (OSError, TimeoutError, Exception) as e:  # aiohttp errors, bad URLs
            raise ApiError(502, f"fetching the torrent failed: {type(e).__name__}: {e}") from None
        if len(data) > MAX_TORRENT_SIZE:
            raise ApiError(400, "the .torrent at that URL is too large")
        return data

    async def _create_from_path(self, path: str) -> tuple[bytes, str]:
        real = await asyncio.to_thread(os.path.abspath, path)
        if not await asyncio.to_thread(os.path.exists, real):
            raise ApiError(400, f"{path}: no such file or folder on the server")
        try:
            info = await asyncio.to_thread(make_info, real)
        except (OSError, BridgeError) as e:
            raise ApiError(400, f"cannot create a torrent of {path}: {e}") from None
        raw = build_torrent(info, [[u] for u in self._extra_trackers()], created_by="webtorrent-bridge serve")
        return raw, os.path.dirname(real)

    def _extra_trackers(self) -> list[str]:
        urls = list(self.options.extra_trackers)
        if self.tracker is not None:
            urls += [self.tracker.ws_url, self.tracker.http_announce_url]
        return urls

    # --------------------------------------------------------------------------------- running
    def _launch(self, entry: Entry) -> None:
        entry.state = "starting"
        entry.error = None
        entry.task = self._spawn(self._run(entry), f"torrent {entry.info_hash[:8]}")

    async def _run(self, entry: Entry) -> None:
        record = entry.record
        extra = [[u] for u in self._extra_trackers()]
        try:
            peers = [parse_hostport(p) for p in record.peers]
            raw = await asyncio.to_thread(self.store.metainfo, record.info_hash)
            if raw is None:
                if record.magnet is None:
                    raise BridgeError("neither metainfo nor a magnet is saved for this torrent")
                mag = parse_magnet(record.magnet)
                entry.state = "metadata"

                def got_metadata(info: InfoDict) -> None:
                    entry.info = info
                    tiers = [[t] for t in mag.trackers] + extra
                    data = build_torrent(info, tiers, mag.webseeds, created_by="webtorrent-bridge serve")
                    self.store.save_metainfo(record.info_hash, data)
                    record.name = info.name
                    self.store.save_record(record)

                entry.torrent = await self.session.add_magnet(
                    mag.info_hash, record.save_path, name=mag.name, trackers=[[t] for t in mag.trackers] + extra,
                    peers=peers, seed=record.seed, on_metadata=got_metadata, web_seeds=mag.webseeds)
                entry.torrent.set_file_priorities(record.priorities)
            else:
                meta = parse_torrent(raw)
                entry.info = meta.info
                have = None
                if not self.options.recheck:
                    have = await asyncio.to_thread(self.store.load_resume, meta.info, record.save_path)
                entry.state = "checking"
                entry.torrent = await self.session.add_torrent(
                    meta.info, record.save_path, trackers=[*map(list, meta.trackers), *extra], peers=peers,
                    seed=record.seed, web_seeds=meta.url_list, have=have, priorities=record.priorities)
            torrent = entry.torrent
            def completed() -> None:
                self._spawn(self._save_resume(entry), "resume on complete")

            torrent.on_complete = completed
            entry.state = "running"
            await torrent.failed.wait()
            entry.error = torrent.error
            entry.state = "error"
            # Stop it (peers, trackers, files; the other torrents go on), then record what is verified:
            # every piece in ``have`` was written whole before it got there.
            self.session.torrents.pop(torrent.info_hash, None)
            entry.halted = True
            await torrent.stop()
            await torrent.storage.drain()
            await self._save_resume(entry, force=True)
        except asyncio.CancelledError:
            raise
        except (BridgeError, OSError, ValueError) as e:
            entry.error = str(e)
            entry.state = "error"
            log.error("[%s] %s", record.name or record.info_hash[:8], e)

    def _state_error(self, e: OSError) -> ApiError:
        """An ApiError for a state file that cannot be written (507 when the disk is full)."""
        full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        return ApiError(507 if full else 500, f"cannot save the state in {self.store.root}: {e.strerror or e}")

    async def _save_record(self, record: TorrentRecord) -> None:
        try:
            await asyncio.to_thread(self.store.save_record, record)
        except OSError as e:
            raise self._state_error(e) from None

    async def pause(self, entry: Entry) -> None:
        if entry.record.paused:
            return
        entry.record.paused = True
        try:
            await self._save_record(entry.record)
        except ApiError:
            entry.record.paused = False
            raise
        await self._stop(entry)
        entry.state = "paused"

    async def resume(self, entry: Entry) -> None:
        """Start a paused torrent, or restart one that stopped on an error (after the disk was freed, say)."""
        if not entry.record.paused and entry.task is not None and not entry.task.done():
            return
        was_paused = entry.record.paused
        entry.record.paused = False
        try:
            await self._save_record(entry.record)
        except ApiError:
            entry.record.paused = was_paused
            raise
        await self._stop(entry)  # a torrent that failed is still known to the session: forget it first
        self._launch(entry)

    async def remove(self, entry: Entry, delete_data: bool) -> None:
        t = entry.torrent
        if t is not None:
            self.retired["down"].update(t.downloaded_by_kind)
            self.retired["up"].update(t.uploaded_by_kind)
            self.retired["relayed"].update(t.relayed)
            self.retired["hash_failures"]["total"] += t.pieces_failed
        await self._stop(entry)
        self.entries.pop(entry.info_hash, None)
        info = entry.info
        await asyncio.to_thread(self.store.remove, entry.info_hash)
        if delete_data and info is not None:
            await asyncio.to_thread(_delete_data, info, entry.record.save_path)

    async def set_priorities(self, entry: Entry, priorities: list[int]) -> None:
        if entry.info is not None and len(priorities) != len(entry.info.files):
            raise ApiError(400, f"give one priority per file ({len(entry.info.files)})")
        if any(not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 7 for p in priorities):
            raise ApiError(400, "priorities are integers from 0 (skip) to 7")
        old = entry.record.priorities
        entry.record.priorities = list(priorities)
        try:
            await self._save_record(entry.record)
        except ApiError:
            entry.record.priorities = old
            raise
        if entry.torrent is not None:
            entry.torrent.set_file_priorities(priorities)

    async def _stop(self, entry: Entry) -> None:
        """Stop the torrent, wait for its last writes, then save its resume data: no write comes after the
        files' mtimes are recorded, so the fast check passes at the next start."""
        torrent = entry.torrent
        if torrent is not None:
            if self.session.torrents.get(torrent.info_hash) is torrent:
                del self.session.torrents[torrent.info_hash]
            if not entry.halted:
                with contextlib.suppress(Exception):
                    await torrent.stop()
            await torrent.storage.drain()
            # A complete torrent writes nothing: its resume data saved at completion still holds.
            await self._save_resume(entry, force=not torrent.is_complete)
        if entry.task is not None:
            entry.task.cancel()
            await asyncio.gather(entry.task, return_exceptions=True)
        entry.torrent = None
        entry.task = None
        entry.halted = False

    # ---------------------------------------------------------------------------------- resume data
    async def _resume_loop(self) -> None:
        while True:
            await asyncio.sleep(RESUME_INTERVAL)
            await self._save_all_resume()

    async def _save_all_resume(self) -> None:
        for entry in list(self.entries.values()):
            await self._save_resume(entry)

    async def _save_resume(self, entry: Entry, force: bool = False) -> None:
        """Save the torrent's resume data if it has new pieces (or ``force``: after it stopped, so that the
        files' mtimes are the final ones)."""
        torrent = entry.torrent
        if torrent is None:
            return
        have = torrent.picker.have
        if len(have) == entry.saved_pieces and not force:
            return
        try:
            # The pieces first, then fsync, then the files' sizes and mtimes: what the record lists is on
            # the disk, and any write after the stamps makes the fast check fail at the next start.
            snapshot = type(have).from_bytes(have.to_bytes(), torrent.info.num_pieces)
            await asyncio.to_thread(torrent.storage.sync)
            await asyncio.to_thread(self.store.save_resume, torrent.info, entry.record.save_path, snapshot)
            entry.saved_pieces = len(snapshot)
        except (OSError, StorageError) as e:
            log.warning("[%s] cannot save resume data: %s", torrent.tag, e)

    # ----------------------------------------------------------------------------------- views
    def get(self, info_hash: str) -> Entry:
        entry = self.entries.get(info_hash.lower())
        if entry is None:
            raise ApiError(404, "no such torrent")
        return entry

    @staticmethod
    def state_of(entry: Entry) -> str:
        t = entry.torrent
        if entry.state == "running" and t is not None:
            return "seeding" if t.is_complete else "downloading"
        return entry.state

    def torrent_json(self, entry: Entry, detail: bool = False) -> dict[str, Any]:
        t = entry.torrent
        info = entry.info
        kinds = dict.fromkeys(PEER_KINDS, 0)
        if t is not None:
            kinds.update(t.peers_by_kind())
        state = self.state_of(entry)
        size = info.total_length if info is not None else None
        verified = t.verified_bytes if t is not None else 0
        out: dict[str, Any] = {
            "infohash": entry.info_hash,
            "name": entry.record.name or (info.name if info else ""),
            "state": state,
            "progress": round(verified / size, 6) if size else (1.0 if size == 0 else 0.0),
            "size": size,
            "downloaded": t.downloaded if t else 0,
            "uploaded": t.uploaded if t else 0,
            "download_rate": round(t.down.rate) if t else 0,
            "upload_rate": round(t.up.rate) if t else 0,
            "peers": kinds,
            "added_at": entry.record.added_at,
            "error": entry.error,
        }
        if detail:
            files = []
            if info is not None:
                from .server.stream import file_url_path

                prios = entry.record.priorities
                for i, f in enumerate(info.files):
                    files.append({"index": i, "path": "/".join(f.path), "size": f.length,
                                  "priority": prios[i] if i < len(prios) else 1, "padding": f.padding,
                                  "stream_url": None if (t is None or f.padding) else file_url_path(t, f)})
            out["files"] = files
            out["pieces"] = {"total": info.num_pieces if info else None,
                             "have": len(t.picker.have) if t else None,
                             "length": info.piece_length if info else None}
            out["peer_list"] = [{"address": f"{p.address[0]}:{p.address[1]}", "kind": p.kind,
                                 "download_rate": round(p.down.rate), "upload_rate": round(p.up.rate)}
                                for p in (t.peers if t else ())]
            out["save_path"] = entry.record.save_path
            out["magnet"] = (Metainfo(info=info).magnet() if info is not None else entry.record.magnet)
        return out

    def stats_json(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        totals = {"download_rate": 0, "upload_rate": 0, "downloaded": 0, "uploaded": 0}
        peers = dict.fromkeys(PEER_KINDS, 0)
        for entry in self.entries.values():
            j = self.torrent_json(entry)
            states[j["state"]] = states.get(j["state"], 0) + 1
            for k in totals:
                totals[k] += j[k]
            for k, n in j["peers"].items():
                peers[k] = peers.get(k, 0) + n
        return {"torrents": len(self.entries), "states": states, **totals, "peers": peers,
                "uptime": round(time.time() - self.started_at, 1), "peer_port": self.session.listen_port,
                "tracker": self.tracker.ws_url if self.tracker is not None else None}


def _check_http_url(url: str, what: str) -> None:
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ApiError(400, f"{what} must be http:// or https://, not {url[:80]!r}")


def _delete_data(info: InfoDict, save_path: str) -> None:
    """Delete a removed torrent's files: only regular files at the torrent's own paths, reached without a
    symlink (a symlink is never followed, so nothing outside save_path nor another torrent's file goes)."""
    root = os.path.realpath(save_path)

    def direct(path: str) -> bool:  # no symlink between root and path, path included
        return os.path.realpath(path) == path

    for f in info.files:
        path = os.path.join(root, *f.path)
        if f.padding or not os.path.lexists(path):
            continue
        try:
            if direct(path) and stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
            else:
                log.info("not deleting %s: not a regular file reached without a symlink", path)
        except OSError as e:
            log.warning("cannot delete %s: %s", path, e.strerror or e)
    if len(info.files) > 1:
        top = os.path.join(root, info.files[0].path[0])
        if direct(top) and os.path.isdir(top):
            # Only now-empty folders of the torrent go (os.walk does not descend into symlinks).
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
