"""Command line: argparse -> config -> run. No protocol logic here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import __version__
from .allocator import tune_malloc
from .config import PeerConfig, SessionConfig
from .create import make_info
from .errors import BridgeError, MetainfoError
from .progress import Progress, human_bytes, wait_any
from .proto.metainfo import (
    MAX_TORRENT_SIZE,
    InfoDict,
    Magnet,
    Metainfo,
    build_torrent,
    parse_hostport,
    parse_info_hash,
    parse_magnet,
    parse_torrent,
)
from .settings import LOG_FORMATS, SPECS, Settings, SettingsError, resolve, resolve_log_format
from .tracker.state import DEFAULT_INTERVAL as DEFAULT_TRACKER_INTERVAL
from .tracker.state import MAX_WS_CONNECTIONS as DEFAULT_TRACKER_MAX_CONNECTIONS

log = logging.getLogger("bridge")


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------------------ helpers


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line with time (ISO 8601, UTC), level, logger, message, and
    the exception's traceback when there is one. json.dumps escapes control characters and non-ASCII, so a
    peer's or tracker's string cannot break a line or forge another record."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


#: Characters a peer, tracker or torrent could use to forge or hide log lines on a terminal or in a log
#: file: C0 and C1 controls but tab (newlines, carriage returns, ANSI escapes ESC and CSI, backspace),
#: DEL, the Unicode line and paragraph separators and the bidirectional overrides.
_UNSAFE_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_text(text: str) -> str:
    """``text`` with every unsafe character written as a \\x or \\u escape: always one printable line."""
    return _UNSAFE_TEXT.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


class TextFormatter(logging.Formatter):
    """The text log format, one line per record: the message is escaped with escape_text, so a string from
    a peer, a tracker or a torrent's metadata cannot add lines or terminal escapes. (A traceback, which
    only a bug produces, still spans its lines.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 -- logging's name
        message = record.message
        record.message = escape_text(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


#: the format setup_logging chose; `serve` writes its status lines in it too
_log_format = "text"


def setup_logging(level: str, log_format: str = "text") -> None:
    global _log_format
    _log_format = log_format
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING), handlers=[handler])
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, logging.getLogger().level))


def status(message: str, logger: str = "bridge") -> None:
    """A line for the operator on stderr, whatever the log level: plain text, or a JSON record (level INFO)
    with --log-format json so that the whole stream stays machine-readable."""
    if _log_format == "json":
        record = logging.LogRecord(logger, logging.INFO, __file__, 0, message, None, None)
        print(JsonFormatter().format(record), file=sys.stderr, flush=True)
    else:
        print(escape_text(message), file=sys.stderr, flush=True)


def load_torrent_file(path: str) -> Metainfo:
    try:
        size = os.path.getsize(path)
        if size > MAX_TORRENT_SIZE:
            raise UsageError(f"{path}: {size} bytes is too large for a .torrent file")
        with open(path, "rb") as f:
            data = f.read(MAX_TORRENT_SIZE + 1)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    try:
        return parse_torrent(data)
    except MetainfoError as e:
        raise UsageError(f"{path}: invalid torrent: {e}") from None


def resolve_source(source: str) -> Metainfo | Magnet:
    """A .torrent path, a magnet URI or a bare info-hash (the last two fetch the metadata from peers)."""
    if source.startswith("magnet:"):
        try:
            return parse_magnet(source)
        except MetainfoError as e:
            raise UsageError(f"invalid magnet URI: {e}") from None
    if len(source) in (32, 40) and not os.path.exists(source):
        try:
            return Magnet(info_hash=parse_info_hash(source))
        except MetainfoError:
            pass
    if not os.path.exists(source):
        raise UsageError(f"{source}: no such file (expected a .torrent file, magnet URI or info-hash)")
    return load_torrent_file(source)


def parse_peers(values: list[str] | None) -> list[tuple[str, int]]:
    peers = []
    for v in values or []:
        try:
            peers.append(parse_hostport(v))
        except MetainfoError as e:
            raise UsageError(f"--peer: {e}") from None
    return peers


def check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 0 and 65535")
    return port


def session_config(args: argparse.Namespace) -> SessionConfig:
    if args.no_utp and args.no_tcp:
        raise UsageError("--no-utp and --no-tcp together leave no way to reach peers")
    cfg = SessionConfig(
        host=args.host,
        port=check_port(args.port),
        utp=not args.no_utp,
        tcp=not args.no_tcp,
        peer=PeerConfig(encryption=args.encryption),
        webrtc=not args.no_webrtc,
        ice_servers=tuple(args.ice_server or ()),
        webrtc_hosts=tuple(args.webrtc_host or ()),
    )
    from .net.rtc import RtcConfig  # aiortc is slow to import; only the commands that need it pay

    try:
        RtcConfig(ice_servers=cfg.ice_servers, host_addresses=cfg.webrtc_hosts)
    except ValueError as e:
        raise UsageError(f"WebRTC settings: {e}") from None
    return cfg


def print_stats(uploaded: int, downloaded: int) -> None:
    print(f"uploaded={uploaded} downloaded={downloaded}", file=sys.stderr, flush=True)


def _not_torrent_failure(record: logging.LogRecord) -> bool:
    return not getattr(record, "torrent_failed", False)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


# --------------------------------------------------------------------------------------- commands


def cmd_create(args: argparse.Namespace) -> int:
    progress = Progress("hashing")

    def report(done: int, total: int) -> None:
        progress.update(done, total)

    try:
        info = make_info(args.path, args.piece_length, args.name, args.private, report)
    except MetainfoError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{args.path}: {e.strerror or e}") from None
    progress.done()
    trackers = [[u] for u in args.announce or []]
    data = build_torrent(info, trackers, args.webseed or [], comment=args.comment or "",
                         created_by=f"webtorrent-bridge {__version__}")
    out = args.output or f"{info.name}.torrent"
    try:
        with open(out, "wb") as f:
            f.write(data)
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror or e}") from None
    print(f"wrote {out} ({info.num_pieces} pieces of {human_bytes(info.piece_length)}, {human_bytes(info.total_length)})",
          file=sys.stderr)
    print(parse_torrent(data).magnet())
    return 0


def save_torrent_file(info: InfoDict, trackers: list[list[str]], webseeds: tuple[str, ...], folder: str) -> str:
    """Write a fetched torrent as FOLDER/<name>.torrent (next to the data) and return the path."""
    path = os.path.join(folder, f"{info.name}.torrent")
    data = build_torrent(info, trackers, webseeds, created_by=f"webtorrent-bridge {__version__}")
    with open(path, "wb") as f:
        f.write(data)
    return path


async def _run_transfer(args: argparse.Namespace, source: Metainfo | Magnet, data_dir: str, *, seed: bool,
                        extra_trackers: list[str], peers: list[tuple[str, int]], download: bool) -> int:
    from .engine.session import Session

    session = Session(session_config(args))
    stop = asyncio.Event()
    _stop_on_signals(stop)
    # A torrent's fatal error (disk full ...) is this command's last error line: not a log line as well.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_torrent_failure)
    try:
        await session.start()
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print(f"listening on {session.listen_host}:{session.listen_port}", file=sys.stderr, flush=True)
    torrent = None
    http_server = None
    code = 0
    web_seeds = list(getattr(args, "web_seed", None) or [])
    try:
        checking = Progress("checking")

        def report(done: int, total: int) -> None:
            if total:
                checking.update(done, total)

        if isinstance(source, Magnet):
            trackers = [[t] for t in source.trackers] + [[u] for u in extra_trackers]
            waiting = Progress("fetching metadata")

            def got_metadata(info: InfoDict) -> None:
                waiting.done()
                if getattr(args, "save_torrent", False):
                    try:
                        path = save_torrent_file(info, trackers, source.webseeds, data_dir)
                    except OSError as e:  # the download goes on without it
                        log.warning("cannot save the .torrent in %s: %s", data_dir, e.strerror or e)
                        return
                    print(f"saved {escape_text(path)}", file=sys.stderr)

            fetch = asyncio.ensure_future(session.add_magnet(
                source.info_hash, data_dir, name=source.name, trackers=trackers,
                peers=[*peers, *source.peers], seed=seed, progress=report, on_metadata=got_metadata,
                web_seeds=[*source.webseeds, *web_seeds],
            ))
            stop_wait = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([fetch, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
                print("interrupted while fetching the metadata", file=sys.stderr)
                return 130
            torrent = fetch.result()
            meta = Metainfo(info=torrent.info, trackers=tuple(tuple(t) for t in trackers), url_list=source.webseeds)
        else:
            meta = source
            trackers = [list(t) for t in meta.trackers] + [[u] for u in extra_trackers]
            torrent = await session.add_torrent(
                meta.info, data_dir, trackers=trackers, peers=peers, seed=seed, progress=report,
                web_seeds=[*meta.url_list, *web_seeds],
            )
        checking.done()
        info = meta.info
        if getattr(args, "sequential", False):
            torrent.set_sequential(True)
        if getattr(args, "http_port", None) is not None:
            http_server = await _serve_http(args, session, torrent)
        if not download:
            have = len(torrent.picker.have)
            if have == 0:
                print(f"webtorrent-bridge: error: no data of {info.name!r} found under {escape_text(data_dir)}",
                      file=sys.stderr)
                return 1
            if have < info.num_pieces:
                print(f"warning: only {have} of {info.num_pieces} pieces verified; seeding those", file=sys.stderr)
            print(meta.magnet(), flush=True)
        progress = Progress("downloading" if download else "seeding")

        def tick() -> None:
            assert torrent is not None
            if download and not torrent.is_complete:
                progress.update(torrent.verified_bytes, info.total_length, torrent.down.rate, len(torrent.peers))
            elif seed and progress.tty:
                progress.label = "seeding"
                progress.update(torrent.verified_bytes, info.total_length, torrent.up.rate, len(torrent.peers))

        if download:
            await wait_any(torrent.completed, torrent.failed, stop, interval=0.25, tick=tick)
            progress.update(torrent.verified_bytes, info.total_length, torrent.down.rate, len(torrent.peers), force=True)
            progress.done()
            if torrent.failed.is_set():
                print(f"webtorrent-bridge: error: {escape_text(str(torrent.error))}; fix that and run the same "
                      "command again to resume", file=sys.stderr)
                return 1
            if not torrent.is_complete:
                print("interrupted before the download finished; run the same command again to resume",
                      file=sys.stderr)
                return 130
            print(f"complete: {escape_text(os.path.join(data_dir, info.name))}", file=sys.stderr, flush=True)
        if seed:
            await wait_any(stop, torrent.failed, interval=1.0, tick=tick)
            progress.done()
            if torrent.failed.is_set():
                print(f"webtorrent-bridge: error: {escape_text(str(torrent.error))}", file=sys.stderr)
                code = 1
        return code
    finally:
        up, down = (torrent.uploaded, torrent.downloaded) if torrent else (0, 0)
        if http_server is not None:
            await http_server.close()
        try:
            async with asyncio.timeout(10):
                await session.aclose()
        except TimeoutError:
            log.warning("shutdown took too long")
        print_stats(up, down)


async def _serve_http(args: argparse.Namespace, session: Any, torrent: Any) -> Any:
    """``--http-port``: stream the torrent's files over HTTP while they download (and be a web seed)."""
    from .server import file_url_path, start_http_server

    try:
        server = await start_http_server(session, args.http_host, args.http_port)
    except OSError as e:
        raise UsageError(f"cannot serve HTTP on {args.http_host}:{args.http_port}: {e.strerror or e}") from None
    print(f"streaming on {server.url} (web seed: {server.url}/torrents/{torrent.info_hash.hex()}/files/)",
          file=sys.stderr, flush=True)
    for entry in torrent.info.files[:20]:
        if not entry.padding:
            print(f"  {server.url}{file_url_path(torrent, entry)}", file=sys.stderr)
    return server


def cmd_download(args: argparse.Namespace) -> int:
    meta = resolve_source(args.source)
    peers = parse_peers(args.peer)
    data_dir = os.path.abspath(args.output)
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{args.output}: {e.strerror or e}") from None
    return run_async(lambda: _run_transfer(args, meta, data_dir, seed=args.seed, extra_trackers=args.announce or [],
                                           peers=peers, download=True))


def cmd_seed(args: argparse.Namespace) -> int:
    peers = parse_peers(args.peer)
    source = args.source
    extra = args.announce or []
    if os.path.isfile(source) and source.endswith(".torrent"):
        meta = load_torrent_file(source)
        data_dir = os.path.abspath(args.output or ".")
    else:
        if not os.path.exists(source):
            raise UsageError(f"{source}: no such file or folder")
        progress = Progress("hashing")
        try:
            info = make_info(source, progress=lambda d, t: progress.update(d, t))
        except MetainfoError as e:
            raise UsageError(str(e)) from None
        progress.done()
        meta = parse_torrent(build_torrent(info, [[u] for u in extra], created_by=f"webtorrent-bridge {__version__}"))
        extra = []
        data_dir = os.path.dirname(os.path.abspath(source.rstrip(os.sep)))
    return run_async(lambda: _run_transfer(args, meta, data_dir, seed=True, extra_trackers=extra, peers=peers,
                                           download=False))


def cmd_tracker(args: argparse.Namespace) -> int:
    from .tracker import run_tracker

    check_port(args.port)
    if not 10 <= args.interval <= 3600:
        raise UsageError(f"--interval must be between 10 and 3600 seconds, not {args.interval}")
    if args.max_connections < 1:
        raise UsageError(f"--max-connections must be at least 1, not {args.max_connections}")
    limit = raise_open_files(args.max_connections + TRACKER_FD_RESERVE)
    if limit < args.max_connections + TRACKER_FD_RESERVE:
        log.warning("the open-files limit is %d (its hard limit too): about %d WebSocket connections at once, "
                    "not the %d of --max-connections; raise it (ulimit -Hn, or LimitNOFILE= in a systemd unit)",
                    limit, max(0, limit - TRACKER_FD_RESERVE), args.max_connections)

    async def run() -> int:
        stop = asyncio.Event()
        _stop_on_signals(stop)

        def ready(server: Any) -> None:
            print(f"listening on {server.host}:{server.port}", file=sys.stderr, flush=True)
            print(f"WebSocket (WebTorrent): {server.ws_url}\nHTTP announce: {server.http_announce_url}\n"
                  f"UDP announce: {server.udp_announce_url}", flush=True)

        try:
            await run_tracker(args.host, args.port, stop, interval=args.interval, ready=ready,
                              max_connections=args.max_connections)
        except OSError as e:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
        return 0

    return run_async(run)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, DemoOptions, run_demo

    for port in (args.http_port, args.tracker_port, args.port):
        check_port(port)
    options = DemoOptions(
        host=args.host, http_port=args.http_port, tracker_port=args.tracker_port, port=args.port,
        workdir=args.workdir, web_seed=not args.no_web_seed, open_browser=args.open,
        webrtc_hosts=tuple(args.webrtc_host or ()), ice_servers=tuple(args.ice_server or ()),
    )

    async def run() -> int:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        try:
            return await run_demo(args.source, options, stop)
        except (DemoError, MetainfoError) as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise UsageError(f"cannot start the demo: {e.strerror or e}") from None

    return run_async(run)


def serve_settings(args: argparse.Namespace) -> Settings:
    """`serve`'s settings: the flags given on the command line > BRIDGE_* > the TOML file > defaults."""
    flags = {spec.key: getattr(args, spec.key) for spec in SPECS if getattr(args, spec.key, None) is not None}
    return resolve(flags, os.environ, config=getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import Daemon, ServeOptions

    settings: Settings = getattr(args, "settings", None) or serve_settings(args)
    options = ServeOptions(
        host=settings.host, http_port=settings.http_port, data_dir=settings.data_dir,
        state_dir=settings.state_dir, tracker=settings.tracker, tracker_port=settings.tracker_port,
        api_token=settings.api_token, recheck=settings.recheck, extra_trackers=settings.announce,
    )
    session = settings.session_config()
    if settings.config_file:
        log.info("settings from %s (flags and BRIDGE_* override it)", settings.config_file)

    async def run() -> int:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        try:
            daemon = Daemon(options, session)
        except BridgeError as e:
            raise UsageError(str(e)) from None
        try:
            await daemon.start()
        except OSError as e:
            await daemon.close()
            raise UsageError(f"cannot listen: {e.strerror or e}") from None
        assert daemon.http is not None
        status(f"listening on {daemon.session.listen_host}:{daemon.session.listen_port}")
        status(f"API, page and streams: {daemon.http.url}/  (API: {daemon.http.url}/api/v1/)")
        if daemon.tracker is not None:
            status(f"tracker: {daemon.tracker.ws_url}")
        status(f"{len(daemon.entries)} torrent(s) from {options.state_dir}")
        await stop.wait()
        status("stopping ...")
        await daemon.close()
        return 0

    return run_async(run)


def cmd_config(args: argparse.Namespace) -> int:
    if not args.print:
        raise UsageError("config: nothing to do; --print shows the effective settings of `serve`")
    settings: Settings = getattr(args, "settings", None) or serve_settings(args)
    sys.stdout.write(settings.to_toml())
    return 0


# ----------------------------------------------------------------------------------------- parser


def _add_net_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=6881, help="listen port for peers (default 6881; 0 picks any)")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--announce", action="append", metavar="URL", help="extra tracker URL (repeatable)")
    p.add_argument("--peer", action="append", metavar="HOST:PORT", help="dial this peer directly (repeatable)")
    p.add_argument("--no-webrtc", action="store_true", help="do not join the WebTorrent (browser) swarm")
    p.add_argument("--no-utp", action="store_true", help="no uTP: TCP only (by default uTP is tried first)")
    p.add_argument("--no-tcp", action="store_true", help="no TCP: uTP only")
    p.add_argument("--ice-server", action="append", metavar="URL",
                   help="STUN/TURN server for WebRTC, e.g. stun:stun.example.org:3478 or turn:user:pass@host:3478")
    p.add_argument("--webrtc-host", action="append", metavar="ADDR",
                   help="local address WebRTC gathers candidates on (default: all but loopback)")
    p.add_argument("--web-seed", action="append", metavar="URL", help="extra BEP 19 web seed URL (repeatable)")
    p.add_argument("--http-port", type=int, metavar="N",
                   help="serve the torrent's files over HTTP on this port while they download (0: any)")
    p.add_argument("--http-host", default="127.0.0.1", help="address for --http-port (default 127.0.0.1)")
    p.add_argument("--encryption", choices=["allow", "prefer", "require", "off"], default="allow",
                   help="MSE/PE: allow (default: plaintext first, encrypted when the peer wants it), prefer, "
                        "require, or off")


SETTINGS_HELP = ("Every setting also comes from the environment (BRIDGE_<KEY>, e.g. BRIDGE_HTTP_PORT; lists "
                 "comma-separated) or a TOML file (--config F or BRIDGE_CONFIG; keys as in "
                 "deploy/bridge.example.toml); flags override the environment, which overrides the file.")

#: metavars of the serve options that take a value
_SERVE_METAVARS = {"host": "ADDR", "peer_host": "ADDR", "data_dir": "D", "state_dir": "S", "api_token": "TOKEN",
                   "announce": "URL", "ice_servers": "URL", "webrtc_hosts": "ADDR", "encryption": "MODE"}


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    """The flags of `serve` (and `config --print`), one per setting. Defaults are SUPPRESS: only a flag
    actually given overrides the environment and the file."""
    p.add_argument("--config", metavar="FILE", help="TOML settings file (or BRIDGE_CONFIG)")
    for spec in SPECS:
        if spec.key == "log_format":  # a global option (every command logs)
            continue
        default = "" if spec.default in (None, ()) else f"; default {str(spec.default).lower()}"
        help_text = f"{spec.help} [{spec.key}, {spec.env}{default}]".replace("%", "%%")
        if spec.kind == "bool":
            p.add_argument(spec.flag, dest=spec.key, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        elif spec.kind == "list":
            p.add_argument(spec.flag, dest=spec.key, action="append", default=argparse.SUPPRESS,
                           metavar=_SERVE_METAVARS.get(spec.key, "VALUE"), help=help_text + " (repeatable)")
        else:
            p.add_argument(spec.flag, dest=spec.key, default=argparse.SUPPRESS,
                           metavar=_SERVE_METAVARS.get(spec.key, "N"), help=help_text)


def _sub_parser(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    class SubParser(argparse.ArgumentParser):
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw.setdefault("parents", [common])
            super().__init__(*a, **kw)
    return SubParser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webtorrent-bridge",
        description="One BitTorrent peer in both swarms: classic clients and WebTorrent browsers.",
    )
    parser.add_argument("--version", action="version", version=f"webtorrent-bridge {__version__}")
    # The logging options work before or after the command (`-v download ...` or `download -v ...`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv for debug)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=argparse.SUPPRESS,
                        help="log level")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    common.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                        help="log lines as text or JSON objects (or BRIDGE_LOG_FORMAT)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="log lines as text (default) or one JSON object per line (or BRIDGE_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_sub_parser(common))

    p = sub.add_parser("create", help="create a .torrent and print its magnet URI")
    p.add_argument("path", help="file or folder to share")
    p.add_argument("-o", "--output", metavar="OUT.torrent", help="where to write the torrent (default NAME.torrent)")
    p.add_argument("--announce", action="append", metavar="URL", help="tracker URL (repeatable; one tier each)")
    p.add_argument("--webseed", action="append", metavar="URL", help="BEP 19 web seed URL (repeatable)")
    p.add_argument("--piece-length", type=int, metavar="BYTES", help="piece size, a power of two (default: automatic)")
    p.add_argument("--name", help="torrent name (default: the file or folder name)")
    p.add_argument("--private", action="store_true", help="set the private flag (BEP 27)")
    p.add_argument("--comment", metavar="TEXT")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("download", help="download a torrent")
    p.add_argument("source", help=".torrent file, magnet URI or 40-hex info-hash")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="download directory (default .)")
    p.add_argument("--seed", action="store_true", help="keep seeding after the download completes")
    p.add_argument("--save-torrent", action="store_true",
                   help="for a magnet: save the fetched metadata as DIR/<name>.torrent")
    p.add_argument("--sequential", action="store_true", help="download pieces in order (for playing as it arrives)")
    _add_net_options(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("seed", help="seed a file, folder or .torrent until interrupted")
    p.add_argument("source", metavar="PATH|TORRENT", help="data to share, or a .torrent whose data is in -o DIR")
    p.add_argument("-o", "--output", metavar="DIR", help="where a .torrent's data lives (default .)")
    _add_net_options(p)
    p.set_defaults(func=cmd_seed)
    p = sub.add_parser("tracker", help="run the embedded tracker: WebSocket (browsers), HTTP and UDP on one port")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="port for HTTP and WebSocket, and UDP (default 8000)")
    p.add_argument("--interval", type=int, default=DEFAULT_TRACKER_INTERVAL, metavar="SECONDS",
                   help=f"announce interval given to clients, 10..3600 (default {DEFAULT_TRACKER_INTERVAL})")
    p.add_argument("--max-connections", type=int, default=DEFAULT_TRACKER_MAX_CONNECTIONS, metavar="N",
                   help=f"WebSocket connections served at once; more get HTTP 503 (default "
                        f"{DEFAULT_TRACKER_MAX_CONNECTIONS}; the open-files limit must be above it)")
    p.set_defaults(func=cmd_tracker)

    p = sub.add_parser("serve", help="run as a long-lived seedbox with a JSON API, web page and streaming",
                       description="Many torrents in one process, kept across restarts, managed over HTTP. "
                                   + SETTINGS_HELP)
    _add_serve_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="show the effective settings of `serve` (--print)",
                       description="Resolve the settings of `serve` as it would and print them as TOML, each "
                                   "with where it came from. " + SETTINGS_HELP)
    p.add_argument("--print", action="store_true", help="print the effective settings as TOML (token masked)")
    _add_serve_options(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="play a video in the browser through the bridge, all on this machine",
                       description="Seed a sample video (or SOURCE), start the embedded tracker and the HTTP "
                                   "server, and print the URL of a page that plays it through WebTorrent.")
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="a file or folder to seed, a .torrent or a magnet to download and stream "
                        "(default: a generated sample video)")
    p.add_argument("--host", default="127.0.0.1", help="address for the page, tracker and peers (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=0, help="port of the page and streams (default: any free port)")
    p.add_argument("--tracker-port", type=int, default=0, help="port of the embedded tracker (default: any)")
    p.add_argument("--port", type=int, default=0, help="peer port (default: any)")
    p.add_argument("--workdir", metavar="DIR", help="where to put the demo's files (default: a new temp folder)")
    p.add_argument("--no-web-seed", action="store_true",
                   help="leave the bridge's HTTP web seed out of the page's magnet (WebRTC only)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--webrtc-host", action="append", metavar="ADDR",
                   help="local address WebRTC gathers candidates on (default: all but loopback)")
    p.add_argument("--ice-server", action="append", metavar="URL", help="STUN/TURN server for WebRTC")
    p.set_defaults(func=cmd_demo)
    return parser


#: Open files asked for at start (the soft RLIMIT_NOFILE, raised towards the hard limit): every peer, tracker
#: and WebSocket connection is a descriptor, and a common default of 1,024 runs out with a few hundred peers.
WANTED_OPEN_FILES = 8192
#: Descriptors the tracker needs besides its WebSocket connections (listening sockets, HTTP clients).
TRACKER_FD_RESERVE = 256


def raise_open_files(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted``, never above the hard limit (no privilege needed);
    return the soft limit in force afterwards. Never lowers it."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        return soft
    return new


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    level = args.log_level or ("debug" if args.verbose >= 2 else "info" if args.verbose == 1 else "warning")
    try:
        if args.command in ("serve", "config"):
            # resolved before logging is set up: the environment or the file may choose the log format
            args.settings = serve_settings(args)
            log_format = args.settings.log_format
        else:
            log_format = resolve_log_format(args.log_format, os.environ)
    except SettingsError as e:
        print(f"webtorrent-bridge: error: {escape_text(str(e))}", file=sys.stderr)
        return 2
    setup_logging(level, log_format)
    if args.command in ("download", "seed", "serve", "tracker", "demo"):
        raise_open_files(WANTED_OPEN_FILES)
        tune_malloc()
    try:
        return int(args.func(args))
    except (UsageError, SettingsError) as e:
        print(f"webtorrent-bridge: error: {escape_text(str(e))}", file=sys.stderr)
        return 2
    except BridgeError as e:
        print(f"webtorrent-bridge: error: {escape_text(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
