"""Web to classic: a WebTorrent page in Chromium seeds a file; the bridge takes it over WebRTC and serves it
to aria2 (which finds the bridge through the embedded tracker's HTTP announce) and to libtorrent (which
dials the bridge) over TCP. Neither classic client can reach the browser, so every byte comes through
the bridge."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import peers
from test_webtorrent_bridge import REPO, stop, wt_page  # noqa: F401  (wt_page is a fixture)


async def _line(proc: asyncio.subprocess.Process, pattern: str, seen: list[str], timeout: float = 20) -> re.Match[str]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"no line matching {pattern!r}; got {seen}")
            seen.append(raw.decode(errors="replace"))
            m = re.search(pattern, seen[-1])
            if m:
                return m


async def test_browser_seed_reaches_aria2_and_libtorrent_through_the_bridge(tmp_path: Path, wt_page) -> None:  # noqa: F811
    tracker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "tracker", "--host", "127.0.0.1", "--port", "0", "--interval", "10",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO))
    bridge = None
    harness = peers.Harness(tmp_path / "harness")
    bridge_log = tmp_path / "bridge.log"
    try:
        lines: list[str] = []
        ws_url = (await _line(tracker, r"ws://\S+", lines)).group(0)
        http_url = (await _line(tracker, r"http://\S+/announce", lines)).group(0)

        data = os.urandom(3 * 1024 * 1024 + 4321)
        digest = hashlib.sha256(data).hexdigest()
        magnet = await wt_page.evaluate("([n, b, a]) => window.seed(n, b, a)",
                                        ["from-the-web.bin", base64.b64encode(data).decode(), [ws_url]])
        out = tmp_path / "bridge"
        with open(bridge_log, "wb") as logf:
            bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-v", "download", magnet, "-o", str(out), "--seed",
                "--save-torrent", "--announce", http_url, "--port", "0", "--host", "127.0.0.1",
                "--webrtc-host", "127.0.0.1", stdout=subprocess.DEVNULL, stderr=logf, cwd=str(REPO))

        def log_tail() -> str:
            return bridge_log.read_text(errors="replace")[-5000:]

        async with asyncio.timeout(90):
            while "complete:" not in bridge_log.read_text(errors="replace"):
                assert bridge.returncode is None, log_tail()
                await asyncio.sleep(0.2)
        assert hashlib.sha256((out / "from-the-web.bin").read_bytes()).hexdigest() == digest
        assert "connected (webrtc" in log_tail(), log_tail()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", bridge_log.read_text())[1])  # type: ignore[index]

        # The torrent WebTorrent made (info dict from the browser), saved by the bridge with the trackers.
        torrent = peers.read_torrent(out / "from-the-web.bin.torrent")
        aria = harness.aria2(torrent, tmp_path / "aria2")
        lt = harness.libtorrent(name="lt-leech")
        handle = lt.add(torrent, tmp_path / "lt")
        await asyncio.to_thread(lt.wait_complete, handle, 90, [f"127.0.0.1:{port}"],
                                lambda: harness.describe() + "\n--- bridge\n" + log_tail())
        rc = await asyncio.to_thread(aria.wait_done, 90, lambda: harness.describe() + "\n--- bridge\n" + log_tail())
        assert rc == 0, harness.describe()
        assert peers.sha256_file(tmp_path / "aria2" / "from-the-web.bin") == digest
        assert peers.sha256_file(tmp_path / "lt" / "from-the-web.bin") == digest
    finally:
        harness.close()
        if bridge is not None:
            await stop(bridge)
        await stop(tracker)
