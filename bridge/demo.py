"""`webtorrent-bridge demo`: a self-contained swarm on this machine, no outside tracker or peer.

Creates sample data, seeds it from one session and downloads it with a second one over loopback, with a
progress bar, then keeps seeding so other clients can join. (A later version plays video in a browser.)
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time

from .config import SessionConfig
from .create import make_info
from .engine.session import Session
from .progress import Progress, human_bytes, wait_any
from .proto.metainfo import InfoDict, build_torrent, parse_torrent

#: Size of the generated sample file.
DEMO_SIZE = 64 * 1024 * 1024


def _make_sample(folder: str, size: int) -> str:
    path = os.path.join(folder, "sample.bin")
    rng = random.Random(2026)  # the same bytes every time, so every demo makes the same torrent
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            n = min(remaining, 1 << 20)
            f.write(rng.randbytes(n))
            remaining -= n
    return path


def _prepare(path: str | None, workdir: str | None) -> tuple[str, str, InfoDict, str]:
    """Blocking set-up: folders, the sample, hashing. Returns (data path, download dir, info, .torrent)."""
    base = os.path.abspath(workdir or tempfile.mkdtemp(prefix="webtorrent-bridge-demo-"))
    src_dir = os.path.join(base, "seed")
    os.makedirs(src_dir, exist_ok=True)
    if path is None:
        print(f"creating a {human_bytes(DEMO_SIZE)} sample file in {src_dir}", file=sys.stderr)
        path = _make_sample(src_dir, DEMO_SIZE)
    path = os.path.abspath(path)
    hashing = Progress("hashing")
    info = make_info(path, progress=hashing.update)
    hashing.done()
    torrent_path = os.path.join(base, f"{info.name}.torrent")
    with open(torrent_path, "wb") as f:
        f.write(build_torrent(info, created_by="webtorrent-bridge demo"))
    return path, os.path.join(base, "download"), info, torrent_path


async def run_demo(path: str | None, workdir: str | None, stop: asyncio.Event, keep_seeding: bool) -> int:
    data_path, dl_dir, info, torrent_path = await asyncio.to_thread(_prepare, path, workdir)
    meta = parse_torrent(build_torrent(info))
    seeder = Session(SessionConfig(host="127.0.0.1", port=0))
    leecher = Session(SessionConfig(host="127.0.0.1", port=0))
    try:
        await seeder.start()
        await leecher.start()
        await seeder.add_torrent(info, os.path.dirname(data_path), seed=True)
        print(f"seeding {info.name} on 127.0.0.1:{seeder.listen_port}", file=sys.stderr)
        dl = await leecher.add_torrent(info, dl_dir, peers=[("127.0.0.1", seeder.listen_port)])
        bar = Progress("downloading")
        started = time.monotonic()
        await wait_any(dl.completed, dl.failed, stop, interval=0.1,
                       tick=lambda: bar.update(dl.verified_bytes, info.total_length, dl.down.rate, len(dl.peers)))
        bar.update(dl.verified_bytes, info.total_length, dl.down.rate, len(dl.peers), force=True)
        bar.done()
        if dl.failed.is_set():
            print(f"webtorrent-bridge: error: {dl.error}", file=sys.stderr)
            return 1
        if not dl.is_complete:
            return 130
        took = max(time.monotonic() - started, 1e-6)
        print(
            f"downloaded {human_bytes(info.total_length)} in {took:.1f} s ({human_bytes(info.total_length / took)}/s) "
            f"into {dl_dir}, every piece verified",
            file=sys.stderr,
        )
        print(meta.magnet())
        if keep_seeding:
            print(
                f"still seeding; other clients can fetch it with:\n"
                f"  webtorrent-bridge download {torrent_path} --peer 127.0.0.1:{seeder.listen_port}\n"
                f"press Ctrl-C to stop",
                file=sys.stderr,
            )
            await stop.wait()
        return 0
    finally:
        await leecher.aclose()
        await seeder.aclose()
