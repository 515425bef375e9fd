"""The bridge as a web seed: its HTTP file URLs (``--http-port``) are a BEP 19 ``url-list`` entry that aria2
and WebTorrent in Chromium download from, with no tracker and no peer: the web seed alone."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import bencodepy
import peers
import pytest
from ports import free_port
from test_webtorrent_bridge import REPO, stop, wt_page  # noqa: F401  (wt_page is a fixture)

FILES = {"clip one.webm": 1_300_000, "sub/notes ü.txt": 70_001, "sub/deeper/data.bin": 900_000}




def make_folder(root: Path) -> dict[str, str]:
    digests = {}
    for rel, size in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def with_url_list(torrent: peers.TorrentFile, url: str, out: Path) -> peers.TorrentFile:
    top = bencodepy.decode(torrent.path.read_bytes())
    top[b"url-list"] = [url.encode()]
    out.write_bytes(bencodepy.encode(top))
    return peers.read_torrent(out)


async def test_aria2_and_webtorrent_download_from_the_bridge_web_seed_alone(tmp_path: Path, wt_page) -> None:  # noqa: F811
    src = tmp_path / "src" / "pack"
    digests = make_folder(src)
    harness = peers.Harness(tmp_path / "harness")
    plain = harness.torrent(src, piece_length=32 * 1024)  # libtorrent-made, no trackers
    port = free_port()
    seed_url = f"http://127.0.0.1:{port}/torrents/{plain.info_hash_hex}/files/"
    torrent = with_url_list(plain, seed_url, tmp_path / "pack-webseed.torrent")
    assert torrent.info_hash == plain.info_hash

    log = tmp_path / "bridge.log"
    with open(log, "wb") as logf:
        bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "seed", str(torrent.path), "-o", str(src.parent), "--port", "0",
            "--host", "127.0.0.1", "--no-webrtc", "--http-port", str(port), stdout=subprocess.DEVNULL,
            stderr=logf, cwd=str(REPO))
    try:
        async with asyncio.timeout(30):
            while "streaming on" not in log.read_text(errors="replace"):
                assert bridge.returncode is None, log.read_text()
                await asyncio.sleep(0.1)

        def context() -> str:
            return harness.describe() + "\n--- bridge\n" + log.read_text(errors="replace")[-4000:]

        aria = harness.aria2(torrent, tmp_path / "aria2")
        rc = await asyncio.to_thread(aria.wait_done, 90, context)
        assert rc == 0, context()
        for rel, digest in digests.items():
            assert peers.sha256_file(tmp_path / "aria2" / "pack" / rel) == digest, rel
        assert "GET /torrents/" in aria.log_path.read_text(errors="replace")  # it used the web seed

        try:
            async with asyncio.timeout(90):
                files = await wt_page.evaluate("([b, a]) => window.downloadTorrent(b, a)",
                                               [base64.b64encode(torrent.path.read_bytes()).decode(), []])
        except TimeoutError:
            pytest.fail("WebTorrent did not download from the web seed within 90 s\n" + context(), pytrace=False)
        assert sorted(files, key=lambda f: f["name"]) == sorted(
            ({"name": "pack/" + rel, "sha256": d} for rel, d in digests.items()), key=lambda f: f["name"])
    finally:
        harness.close()
        await stop(bridge)
