"""Classic to web, as a user sees it: libtorrent seeds a video over TCP only; `webtorrent-bridge demo MAGNET`
joins from the magnet; the demo page in headless Chromium, with only the page's magnet (the bridge's ws
tracker, no web seed), plays the video through WebTorrent. Then a seek to 80% resumes quickly.

The figures (page load to first timeupdate, seek to resume) are printed, for the issue notes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import peers
import pytest
from chromium_rtc import CHROMIUM, CHROMIUM_FLAGS
from test_webtorrent_bridge import REPO, stop

BUNDLE = REPO / "web" / "node_modules" / "webtorrent" / "dist" / "webtorrent.min.js"
#: Seconds of video generated; long enough that 80% is well past what plays in the first seconds.
VIDEO_SECONDS = 30
#: Bound on: demo start, metadata, first frames, 2 s of playback.
PLAY_TIMEOUT = 90.0
#: The issue's bar: after a seek, playback resumes within this many seconds.
SEEK_RESUME = 3.0


def make_video(folder: Path) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg (Debian package ffmpeg) is needed to make the test video; run scripts/setup")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clip.webm"
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size=480x270:rate=25:duration={VIDEO_SECONDS}",
           "-f", "lavfi", "-i", f"sine=frequency=300:duration={VIDEO_SECONDS}",
           "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "800k", "-g", "25",
           "-c:a", "libopus", "-b:a", "48k", "-shortest", str(path)]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return path


async def _page(pw: Any) -> tuple[Any, Any]:
    browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                       args=[*CHROMIUM_FLAGS, "--autoplay-policy=no-user-gesture-required"])
    context = await browser.new_context(permissions=["microphone"])
    return browser, await context.new_page()


async def test_libtorrent_video_plays_in_the_browser_through_the_bridge_and_seeks(tmp_path: Path) -> None:
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing (run scripts/setup, which installs WebTorrent from npm)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        pytest.fail(f"playwright (PyPI) is needed: {e}")
    video = make_video(tmp_path / "src")
    harness = peers.Harness(tmp_path / "harness")
    demo = None
    try:
        torrent = harness.torrent(video, piece_length=64 * 1024)  # made by libtorrent, no trackers
        seed = harness.libtorrent(name="lt-seed")  # TCP only: no uTP, no WebTorrent (no ws:// tracker)
        await asyncio.to_thread(seed.add_seed, torrent, video.parent)
        magnet = f"magnet:?xt=urn:btih:{torrent.info_hash_hex}&dn=clip.webm&x.pe={quote(seed.address, safe='')}"

        demo_log = tmp_path / "demo.log"
        with open(demo_log, "wb") as logf:
            demo = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-v", "demo", magnet, "--no-web-seed", "--webrtc-host", "127.0.0.1",
                "--workdir", str(tmp_path / "demo"), stdout=subprocess.PIPE, stderr=logf, cwd=str(REPO))

        def context() -> str:
            return "--- demo log\n" + demo_log.read_text(errors="replace")[-6000:] + "\n" + harness.describe()

        assert demo.stdout is not None
        url = None
        async with asyncio.timeout(60):
            while url is None:
                line = (await demo.stdout.readline()).decode()
                assert line, "demo exited before printing its URL\n" + context()
                m = re.search(r"http://127\.0\.0\.1:\d+/\?magnet=\S+", line)
                url = m.group(0) if m else None
        assert "ws%253A%252F%252F127.0.0.1" in url and "%26ws%3D" not in url, url  # tracker, no web seed

        async with async_playwright() as pw:
            browser, page = await _page(pw)
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            try:
                t0 = time.monotonic()
                await page.goto(url)
                try:
                    await page.wait_for_function(
                        "() => window.demo && window.demo.state === 'error' || "
                        "(document.querySelector('video') && document.querySelector('video').currentTime > 2)",
                        timeout=PLAY_TIMEOUT * 1000, polling=200)
                except Exception as e:
                    pytest.fail(f"the video did not play 2 s within {PLAY_TIMEOUT:.0f} s: {e}\n"
                                f"page: {json.dumps(await page.evaluate('window.demo'))}\n"
                                f"console: {console[-30:]}\n{context()}", pytrace=False)
                state = await page.evaluate("window.demo")
                played = time.monotonic() - t0
                assert state["state"] != "error", f"{state}\n{console[-30:]}\n{context()}"
                assert state["peers"]["bridge"] >= 1 and state["peers"]["webseed"] == 0, state
                assert state["fromBridge"] > 0, state
                assert state["videoFile"] == "clip.webm", state

                # Seek to 80% and time until playback passes the new position.
                resume = await page.evaluate("""(limit) => new Promise(resolve => {
                    const v = document.querySelector('video')
                    const target = v.duration * 0.8
                    const t0 = performance.now()
                    const check = () => {
                      if (v.currentTime > target + 0.25 && !v.paused) { resolve({ms: performance.now() - t0, target}) }
                      else if (performance.now() - t0 > limit) { resolve({ms: null, target, at: v.currentTime,
                                                                         rs: v.readyState}) }
                      else setTimeout(check, 50)
                    }
                    v.currentTime = target
                    check()
                })""", 20_000)
                assert resume["ms"] is not None, f"no playback after the seek: {resume}\n{console[-30:]}"
                print(f"\nfigures: page load -> first timeupdate {state['firstTimeupdateMs']:.0f} ms; "
                      f"2 s played after {played:.1f} s; seek to 80% -> playing {resume['ms']:.0f} ms; "
                      f"from the bridge {state['fromBridge']} bytes")
                assert resume["ms"] <= SEEK_RESUME * 1000, f"seek took {resume['ms']:.0f} ms: {resume}"
            finally:
                await browser.close()
    finally:
        harness.close()
        if demo is not None:
            await stop(demo)
