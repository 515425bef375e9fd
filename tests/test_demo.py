"""`webtorrent-bridge demo` as a newcomer runs it: one URL, a page, the video over HTTP, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import wave
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest

from bridge.demo import make_sample_tone

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "web" / "node_modules" / "webtorrent" / "dist" / "webtorrent.min.js"


async def test_demo_serves_the_page_and_the_sample_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing (run scripts/setup)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "demo", "--workdir", str(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=str(REPO))
    try:
        assert proc.stdout is not None
        url = None
        async with asyncio.timeout(120):  # ffmpeg makes the sample first
            while url is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "demo exited early: " + (await proc.stderr.read()).decode()[-3000:]  # type: ignore[union-attr]
                m = re.search(r"http://127\.0\.0\.1:\d+/\?magnet=\S+", line)
                url = m.group(0) if m else None
        magnet = unquote(parse_qs(urlsplit(url).query)["magnet"][0])
        params = parse_qs(urlsplit(magnet).query)
        assert params["tr"][0].startswith("ws://127.0.0.1:")
        web_seed = params["ws"][0]
        name = params["dn"][0]
        base = url.split("/?")[0]
        sample = next((tmp_path / "seed").iterdir())
        assert sample.name == name
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(url) as r:
                assert r.status == 200 and "<video" in await r.text()
            async with http.get(base + "/webtorrent.min.js") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
            async with http.get(base + "/package.json") as r:
                assert r.status == 404
            async with http.get(web_seed + name) as r:
                assert r.status == 200 and await r.read() == sample.read_bytes()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_demo_without_the_bundle_or_with_a_bad_source_says_why(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "bridge", "demo", str(tmp_path / "nope.mp4")], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "nope.mp4" in bad.stderr and "Traceback" not in bad.stderr
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<video></video>")
    missing = subprocess.run([sys.executable, "-m", "bridge", "demo"], capture_output=True, text=True, cwd=REPO,
                             timeout=60, env={**os.environ, "BRIDGE_WEB_ROOT": str(web)})
    assert missing.returncode == 2 and "npm install" in missing.stderr and "Traceback" not in missing.stderr


def test_the_fallback_sample_is_a_valid_wav(tmp_path: Path) -> None:
    path = make_sample_tone(str(tmp_path), seconds=2)
    with wave.open(path) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.getnframes() == 2 * 22050
