"""`webtorrent-bridge demo`: everything on this machine, one URL to open.

With no argument it makes a short sample video (with ffmpeg when it is installed; otherwise a generated
audio tone, which the page's player also plays), seeds it, starts the embedded tracker and the HTTP
server, and prints the page's URL. The page plays the video through WebTorrent, from the bridge. With a
FILE or FOLDER it seeds that instead; with a MAGNET or a .torrent it downloads the torrent from its
swarm while serving it to the browser as it arrives. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import webbrowser
from dataclasses import dataclass

from .config import SessionConfig
from .create import make_info
from .engine.session import Session
from .engine.torrent import Torrent
from .errors import BridgeError
from .progress import Progress, human_bytes, wait_any
from .proto.metainfo import Magnet, Metainfo, build_torrent, parse_magnet, parse_torrent
from .server import HttpServer, start_http_server
from .server.app import bundle_path, default_web_root
from .tracker import TrackerServer, start_tracker

log = logging.getLogger(__name__)

#: Length of the generated sample, in seconds: long enough to watch it stream and seek.
SAMPLE_SECONDS = 30
#: ffmpeg gets this long to make the sample before the demo gives up on it.
FFMPEG_TIMEOUT = 120.0
#: Seconds between two status lines while the demo runs.
STATUS_INTERVAL = 5.0


@dataclass(frozen=True)
class DemoOptions:
    #: Address for the peer listener, the tracker and the HTTP server. 127.0.0.1 keeps it on this machine.
    host: str = "127.0.0.1"
    #: HTTP port of the page and streams (0: any free port).
    http_port: int = 0
    #: Port of the embedded tracker (WebSocket, HTTP and UDP; 0: any).
    tracker_port: int = 0
    #: Peer port (TCP; 0: any).
    port: int = 0
    #: Where the sample, downloads and .torrent go (None: a new temporary folder).
    workdir: str | None = None
    #: Add the bridge's HTTP web seed to the page's magnet, so the video plays even where WebRTC cannot
    #: connect (the page shows which kind of peer each byte came from).
    web_seed: bool = True
    #: Open the page in the default browser.
    open_browser: bool = False
    #: Local addresses WebRTC gathers on (empty: every interface but loopback, as browsers need).
    webrtc_hosts: tuple[str, ...] = ()
    ice_servers: tuple[str, ...] = ()


class DemoError(BridgeError):
    pass


# ------------------------------------------------------------------------------------------- samples


def make_sample_video(folder: str, seconds: int = SAMPLE_SECONDS) -> str:
    """A WebM (VP8 + Opus) test pattern with a tone, made by ffmpeg; a WAV tone when ffmpeg is missing
    or fails. Returns the path."""
    os.makedirs(folder, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is not None:
        path = os.path.join(folder, "sample.webm")
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=440:beep_factor=4:duration={seconds}",
               "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M", "-g", "50",
               "-c:a", "libopus", "-b:a", "64k", "-shortest", path]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("ffmpeg could not make the sample video (%s); using an audio tone", e)
        else:
            if done.returncode == 0 and os.path.getsize(path) > 0:
                return path
            log.warning("ffmpeg failed (%s); using an audio tone instead",
                        done.stderr.decode(errors="replace").strip()[-300:])
    return make_sample_tone(folder, seconds)


def make_sample_tone(folder: str, seconds: int = SAMPLE_SECONDS) -> str:
    """A WAV file (16-bit mono PCM, a rising scale) that a <video> element plays as audio."""
    rate = 22050
    path = os.path.join(folder, "sample-tone.wav")
    notes = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25]
    frames = bytearray()
    for n in range(rate * seconds):
        freq = notes[(n // (rate // 2)) % len(notes)]
        frames += struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * n / rate)))
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(frames), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(frames))
    with open(path, "wb") as f:
        f.write(header + frames)
    return path


# ---------------------------------------------------------------------------------------------- run


def _classify(source: str | None) -> str:
    if source is None:
        return "sample"
    if source.startswith("magnet:"):
        return "magnet"
    if source.endswith(".torrent") and os.path.isfile(source):
        return "torrent"
    if os.path.exists(source):
        return "path"
    raise DemoError(f"{source}: not a magnet link, a .torrent file, or a file or folder that exists")


def page_magnet(info_hash: bytes, name: str, tracker: TrackerServer, http: HttpServer, web_seed: bool) -> str:
    webseeds = (f"{http.url}/torrents/{info_hash.hex()}/files/",) if web_seed else ()
    return Magnet(info_hash, name, trackers=(tracker.ws_url,), webseeds=webseeds).to_uri()


def _peer_kinds(t: Torrent) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(t.peers_by_kind().items()) if n) or "no peers"


def _prepare(source: str | None, kind: str, workdir: str | None, extra: list[list[str]]
             ) -> tuple[str, Metainfo | None, str]:
    """Blocking set-up, in a thread: the work folder, then the torrent to seed (made from the sample or
    the user's file, and saved as a .torrent) or read. Returns (base folder, metainfo, data folder)."""
    base = os.path.abspath(workdir or tempfile.mkdtemp(prefix="webtorrent-bridge-demo-"))
    os.makedirs(base, exist_ok=True)
    download = os.path.join(base, "download")
    if kind == "magnet":
        return base, None, download
    if kind == "torrent":
        assert source is not None
        with open(source, "rb") as f:
            return base, parse_torrent(f.read()), download
    if source is None:
        folder = os.path.join(base, "seed")
        what = "a sample video with ffmpeg" if shutil.which("ffmpeg") else "a sample tone (install ffmpeg for a video)"
        print(f"making {what} in {folder}", file=sys.stderr, flush=True)
        path = make_sample_video(folder)
    else:
        path = os.path.abspath(source)
    hashing = Progress("hashing")
    info = make_info(path, progress=lambda d, t: hashing.update(d, t))
    hashing.done()
    raw = build_torrent(info, extra, created_by="webtorrent-bridge demo")
    torrent_path = os.path.join(base, f"{info.name}.torrent")
    with open(torrent_path, "wb") as f:
        f.write(raw)
    print(f"torrent file: {torrent_path}", file=sys.stderr, flush=True)
    return base, parse_torrent(raw), os.path.dirname(path)


async def run_demo(source: str | None, options: DemoOptions, stop: asyncio.Event) -> int:
    kind = _classify(source)
    web_root = default_web_root()
    if web_root is None or not bundle_path(web_root).is_file():
        where = web_root or "web/"
        raise DemoError(f"the demo page needs WebTorrent's browser bundle in {where}/node_modules: run "
                        "`scripts/setup` (or `npm install --ignore-scripts` in web/) first")
    magnet = parse_magnet(source) if kind == "magnet" and source is not None else None

    tracker = await start_tracker(options.host, options.tracker_port)
    session = Session(SessionConfig(host=options.host, port=options.port, webrtc_hosts=options.webrtc_hosts,
                                    ice_servers=options.ice_servers))
    http: HttpServer | None = None
    try:
        extra = [[tracker.ws_url], [tracker.http_announce_url]]
        base, meta, data_dir = await asyncio.to_thread(_prepare, source, kind, options.workdir, extra)
        await session.start()
        http = await start_http_server(session, options.host, options.http_port, web_root=web_root)
        torrent: Torrent | None = None
        if meta is not None:
            # The demo's own tracker, unless the torrent it made already lists it.
            trackers = [*map(list, meta.trackers), *(t for t in extra if tuple(t) not in meta.trackers)]
            torrent = await session.add_torrent(meta.info, data_dir, trackers=trackers, seed=True,
                                                web_seeds=meta.url_list,
                                                progress=Progress("checking").update)
            info_hash, name = meta.info.info_hash, meta.info.name
            print(f"seeding {name} ({human_bytes(meta.info.total_length)})" if torrent.is_complete
                  else f"downloading {name} ({human_bytes(meta.info.total_length)})", file=sys.stderr)
        else:
            assert magnet is not None
            info_hash, name = magnet.info_hash, magnet.name
        url = f"{http.url}/?magnet={_quote(page_magnet(info_hash, name, tracker, http, options.web_seed))}"
        print(f"\n  open this page in Chromium or Firefox:\n\n    {url}\n", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)
        if options.open_browser:
            webbrowser.open(url)
        if torrent is None:
            assert magnet is not None
            torrent = await _join_magnet(session, magnet, data_dir, extra, stop)
            if torrent is None:
                return 130
        await _status_loop(torrent, stop)
        return 0
    finally:
        if http is not None:
            await http.close()
        await session.aclose()
        await tracker.close()


def _quote(magnet: str) -> str:
    from urllib.parse import quote

    return quote(magnet, safe="")


async def _join_magnet(session: Session, magnet: Magnet, download: str, extra: list[list[str]],
                       stop: asyncio.Event) -> Torrent | None:
    print("fetching the torrent's metadata from its swarm ...", file=sys.stderr, flush=True)
    task = asyncio.create_task(session.add_magnet(
        magnet.info_hash, download, name=magnet.name,
        trackers=[[t] for t in magnet.trackers] + extra, peers=magnet.peers, seed=True,
        web_seeds=magnet.webseeds))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _status_loop(torrent: Torrent, stop: asyncio.Event) -> None:
    last = 0.0

    def tick() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < STATUS_INTERVAL:
            return
        last = now
        done = torrent.verified_bytes / max(1, torrent.info.total_length)
        print(f"[{torrent.info.name[:30]}] {done:6.1%}  down {human_bytes(torrent.down.rate)}/s  "
              f"up {human_bytes(torrent.up.rate)}/s  {_peer_kinds(torrent)}  "
              f"sent {human_bytes(torrent.uploaded)}", file=sys.stderr, flush=True)

    await wait_any(torrent.failed, stop, interval=0.5, tick=tick)
    if torrent.failed.is_set():
        raise DemoError(torrent.error or "the torrent failed")
