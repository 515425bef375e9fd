"""Security review tests: what SECURITY.md promises, checked from the outside (see its "Tests" section).

Already covered elsewhere, not repeated here: FileStorage's path and symlink checks (tests/test_storage.py),
a non-loopback `serve` without a token refusing to start and the API's input validation
(tests/test_serve.py), torrent names with markup in the web UI in Chromium
(tests/browser/test_serve_ui.py), hostile input to every parser (tests/fuzz/).

1. Symlinks in the data directory, under `serve`: downloading into a symlinked folder or file, seeding
   (re-checking) data reached through a symlink, and removing a torrent with its data, never read,
   write or delete anything outside the data directory (nor another torrent's file).
2. The API: with a token, every route of the app but /api/v1/health answers 401 without it (and with a
   wrong one, and through path tricks); only literal loopback addresses count as loopback.
3. "Add by URL": only http(s), also after redirects (to file:, ftp:, gopher:, data:), at most 5 of them.
4. Logs: a torrent name, a tracker's failure reason and a peer's strings with newlines, ANSI escapes and
   other control characters never forge a line, in the text and the JSON format.
5. The web pages write no HTML from strings (no innerHTML and the like).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from test_serve import TOKEN, Serve

from bridge.cli import JsonFormatter, TextFormatter
from bridge.config import SessionConfig
from bridge.create import make_info
from bridge.daemon import Daemon, ServeOptions
from bridge.errors import BridgeError
from bridge.proto import bencode
from bridge.proto import events as ev
from bridge.proto.extension import ExtendedHandshake, encode_handshake
from bridge.proto.metainfo import build_torrent
from bridge.proto.wire import Wire, make_reserved
from bridge.server.api import OPENAPI, add_api_routes
from bridge.server.metrics import add_metrics_route

REPO = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 30.0
PIECE = 32 * 1024


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def torrent_of(path: Path) -> tuple[str, bytes]:
    """(info-hash hex, .torrent bytes) of a file or folder."""
    info = make_info(str(path), PIECE)
    return info.info_hash.hex(), build_torrent(info, [])


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under ``root`` (not following symlinks): a file's bytes, a link's target."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = ("dir", "")
    return out


def add(s: Serve, raw: bytes, peers: list[str] | None = None) -> dict[str, Any]:
    status, t = s.call("POST", "/api/v1/torrents", {"torrent": base64.b64encode(raw).decode(), "peers": peers or []})
    assert status == 201, t
    return t  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------- 1. symlinks


def test_serve_never_follows_a_symlink_out_of_the_data_directory(tmp_path: Path) -> None:
    from test_disk_faults import start_seed

    rnd = os.urandom
    src, data, outside = tmp_path / "src", tmp_path / "data", tmp_path / "outside"
    # What the torrents hold (made from real files in src/).
    write_tree(src, {"dl-folder/a.bin": rnd(70_000), "dl-folder/sub/b.bin": rnd(40_000),
                     "dl-file.bin": rnd(50_000), "seed-file.bin": rnd(60_000),
                     "seed-folder/a.bin": rnd(50_000), "seed-folder/b.bin": rnd(10_000),
                     "victim/a.bin": rnd(30_000), "victim/sub/b.bin": rnd(30_000), "victim/c.bin": rnd(30_000),
                     "other/x.bin": rnd(40_000)})
    torrents = {name: torrent_of(src / name) for name in
                ("dl-folder", "dl-file.bin", "seed-file.bin", "seed-folder", "victim", "other")}
    # Outside the data directory: an empty folder, a secret, and exact copies of two torrents' data
    # (they would verify, if they were ever read).
    (outside / "empty").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"TOP SECRET")
    shutil.copy(src / "seed-file.bin", outside / "seed-file.bin")
    shutil.copytree(src / "seed-folder", outside / "seed-folder")
    write_tree(outside, {"sub/b.bin": b"not the victim's"})
    # The data directory, as a user (or an attacker with write access to it) left it.
    data.mkdir()
    (data / "dl-folder").symlink_to(outside / "empty", target_is_directory=True)
    (data / "dl-file.bin").symlink_to(outside / "secret.txt")
    (data / "seed-file.bin").symlink_to(outside / "seed-file.bin")
    (data / "seed-folder").symlink_to(outside / "seed-folder", target_is_directory=True)
    shutil.copytree(src / "victim", data / "victim")
    shutil.copytree(src / "other", data / "other")
    before = snapshot(outside)

    dl_torrent = tmp_path / "dl-folder.torrent"
    dl_torrent.write_bytes(torrents["dl-folder"][1])
    seed, address = start_seed(dl_torrent, src, tmp_path / "logs")
    s = Serve(tmp_path)
    try:
        for name in ("dl-folder", "dl-file.bin", "seed-file.bin", "seed-folder"):
            add(s, torrents[name][1], [address])
        for name in ("victim", "other"):
            ih = add(s, torrents[name][1])["infohash"]
            s.wait(ih, lambda t: t["state"] == "seeding", f"{name} seeding", STEP_TIMEOUT)
        for name in ("dl-folder", "dl-file.bin", "seed-file.bin", "seed-folder"):
            t = s.wait(torrents[name][0], lambda t: t["state"] == "error", f"{name} refused", STEP_TIMEOUT)
            assert "outside the download directory" in t["error"] and t["progress"] == 0, t
        # The seed's data reached the bridge, and went nowhere.
        assert seed_uploaded_something(s, torrents["dl-folder"][0]), s.logs()

        # Remove-with-data of a torrent whose files were swapped for symlinks: to another torrent's file
        # inside the data directory, and (a folder) to outside.
        victim = torrents["victim"][0]
        assert s.call("POST", f"/api/v1/torrents/{victim}/pause")[0] == 200
        (data / "victim" / "a.bin").unlink()
        (data / "victim" / "a.bin").symlink_to(data / "other" / "x.bin")
        shutil.rmtree(data / "victim" / "sub")
        (data / "victim" / "sub").symlink_to(outside / "sub", target_is_directory=True)
        status, gone = s.call("DELETE", f"/api/v1/torrents/{victim}?delete_data=true")
        assert status == 200 and gone["data_deleted"], gone
        assert not (data / "victim" / "c.bin").exists()  # its own file went
        assert (data / "other" / "x.bin").read_bytes() == (src / "other" / "x.bin").read_bytes()
        assert (data / "victim" / "a.bin").is_symlink() and (data / "victim" / "sub").is_symlink()
        assert s.call("GET", f"/api/v1/torrents/{torrents['other'][0]}")[1]["state"] == "seeding"
    finally:
        assert s.stop() == 0, s.logs()
        seed.stop()
    assert snapshot(outside) == before  # nothing outside was written, created or deleted


def seed_uploaded_something(s: Serve, ih: str) -> bool:
    """The refused download did get data from its peer (so the refusal happened at a write)."""
    status, t = s.call("GET", f"/api/v1/torrents/{ih}")
    return status == 200 and t["downloaded"] > 0


# ------------------------------------------------------------------------------------------ 2. API


def _app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route `serve` registers under /api/ and /metrics."""
    app = web.Application()
    fake = SimpleNamespace(options=SimpleNamespace(api_token=TOKEN), session=None)
    add_api_routes(app, fake)  # type: ignore[arg-type]
    add_metrics_route(app, fake)
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.resource is not None and r.method != "HEAD"})


def test_every_api_route_but_health_needs_the_token(tmp_path: Path) -> None:
    routes = _app_routes()
    documented = {(m.upper(), p) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert {r for r in routes if r[1] != "/metrics"} == documented  # the OpenAPI document lists them all
    src = tmp_path / "share" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(10_000))
    s = Serve(tmp_path)
    try:
        status, t = s.call("POST", "/api/v1/torrents", {"path": str(src)})
        assert status == 201, t
        ih = t["infohash"]
        checked = 0
        for method, path in routes:
            url = path.replace("{infohash}", ih)
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
                status, body = s.call(method, url, body={} if method in ("POST", "PUT") else None, token=token)
                if path == "/api/v1/health":
                    assert status == 200, (method, url, status)
                else:
                    assert status == 401, (method, url, token, status, body)
                    assert body == {"error": "missing or wrong API token (Authorization: Bearer ...)"}
                checked += 1
        # Unknown routes and path tricks are refused too, never answered with data.
        for trick in ("/api/v1/nope", "/api/v2/torrents", "/api/v1/torrents/", "/api/v1/%74orrents",
                      "/%61pi/v1/torrents", "/api/v1/health/../torrents", "/api/v1/./torrents",
                      "/api/v1/torrents?x=/api/v1/health", "/API/v1/torrents", "//api/v1/torrents",
                      f"/api/v1/torrents/{ih.upper()}"):
            status, _ = _raw_get(s.url, trick)
            assert status in (401, 404), (trick, status)
        assert s.call("GET", "/api/v1/torrents")[1][0]["infohash"] == ih  # and the token works
        assert s.call("DELETE", f"/api/v1/torrents/{ih}", token=None)[0] == 401
        assert s.call("GET", f"/api/v1/torrents/{ih}")[0] == 200  # that DELETE did nothing
        assert checked == 4 * len(routes) and len(routes) >= 10
    finally:
        assert s.stop() == 0, s.logs()


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (urllib would normalise some of it)."""
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.1", "127.evil.example", "127.0.0.1.nip.io",
                                  "localhost.evil.example"])
def test_only_loopback_addresses_go_without_a_token(tmp_path: Path, host: str) -> None:
    for token in (None, ""):
        with pytest.raises(BridgeError, match="token"):
            Daemon(ServeOptions(host=host, api_token=token, data_dir=str(tmp_path), state_dir=str(tmp_path / "s")),
                   SessionConfig())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_addresses_go_without_a_token(tmp_path: Path, host: str) -> None:
    daemon = Daemon(ServeOptions(host=host, data_dir=str(tmp_path), state_dir=str(tmp_path / "s")), SessionConfig())
    daemon.session.executor.shutdown()


# ------------------------------------------------------------------------------------ 3. add by URL


class _Redirects(http.server.BaseHTTPRequestHandler):
    """/to?u=URL redirects there; /hops/N is N redirects in a row to /x.torrent, which serves the torrent."""

    torrent = b""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/to":
            self._redirect(urllib.parse.parse_qs(parts.query)["u"][0])
        elif parts.path.startswith("/hops/"):
            n = int(parts.path.rsplit("/", 1)[1])
            self._redirect(f"/hops/{n - 1}" if n > 1 else "/x.torrent")
        elif parts.path == "/x.torrent":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.torrent)))
            self.end_headers()
            self.wfile.write(self.torrent)
        else:
            self.send_error(404)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An HTTP server on 127.0.0.1, and the info-hash of the torrent it serves."""
    (tmp_path / "t.bin").write_bytes(os.urandom(20_000))
    ih, raw = torrent_of(tmp_path / "t.bin")
    handler = type("Handler", (_Redirects,), {"torrent": raw})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", ih
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_add_by_url_fetches_only_http_also_after_redirects(tmp_path: Path, redirector: tuple[str, str]) -> None:
    base, ih = redirector
    secret = tmp_path / "secret.torrent"
    secret.write_bytes((tmp_path / "t.bin").read_bytes())
    data_url = "data:application/x-bittorrent;base64," + base64.b64encode(
        torrent_of(tmp_path / "t.bin")[1]).decode()
    s = Serve(tmp_path)
    try:
        for url in (f"file://{secret}", f"FILE://{secret}", "ftp://127.0.0.1/x.torrent", "gopher://127.0.0.1:70/1",
                    data_url, "javascript:alert(1)", f"{base[:4]}s+x:{base[5:]}/x.torrent", "//127.0.0.1/x.torrent",
                    "/x.torrent", "127.0.0.1/x.torrent"):
            status, err = s.call("POST", "/api/v1/torrents", {"url": url})
            assert status == 400 and "http:// or https://" in err["error"], (url, status, err)
        for target in (f"file://{secret}", "ftp://127.0.0.1/x.torrent", "gopher://127.0.0.1:70/1", data_url,
                       "file:///etc/passwd"):
            status, err = s.call("POST", "/api/v1/torrents", {"url": f"{base}/to?u={urllib.parse.quote(target)}"})
            assert status == 400 and "redirect must be http:// or https://" in err["error"], (target, status, err)
        status, err = s.call("POST", "/api/v1/torrents", {"url": f"{base}/hops/6"})
        assert status == 502 and "more than 5 redirects" in err["error"], err
        assert s.call("GET", "/api/v1/torrents")[1] == []  # nothing was added
        status, t = s.call("POST", "/api/v1/torrents", {"url": f"{base}/hops/5", "paused": True})  # 5 is fine
        assert status == 201 and t["infohash"] == ih, t
    finally:
        assert s.stop() == 0, s.logs()


# ---------------------------------------------------------------------------------------- 4. logs

#: Everything a hostile string might use to forge or hide a log line.
HOSTILE = ("x\n2099-01-01 00:00:00,000 ERROR   bridge: forged\r\x1b[2J\x1b[31mred\x9b31m\x07\x08\x00"
           "\u2028\u2029\u202e\x85end")
FORBIDDEN_CHARS = set("\r\x1b\x9b\x07\x08\x00\u2028\u2029\u202e\x85")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_formatters_write_one_line_per_record_whatever_the_message(fmt: str) -> None:
    import logging

    formatter = TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s") if fmt == "text" else JsonFormatter()
    record = logging.LogRecord("bridge.engine.torrent", logging.WARNING, __file__, 1, "[%s] tracker says: %s",
                               (HOSTILE, HOSTILE), None)
    out = formatter.format(record)
    assert "\n" not in out and not FORBIDDEN_CHARS & set(out), repr(out)
    if fmt == "json":
        assert json.loads(out)["message"] == f"[{HOSTILE}] tracker says: {HOSTILE}"  # nothing lost
    else:
        assert "\\x1b[2J" in out and "\\u2028" in out and "\\x0a2099" in out
    assert record.getMessage() == f"[{HOSTILE}] tracker says: {HOSTILE}"  # the record is left as it was


class _HostileTracker(http.server.BaseHTTPRequestHandler):
    """An HTTP tracker whose every answer is a failure with HOSTILE in it."""

    announces = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).announces += 1
        body = bencode.encode({b"failure reason": f"denied {HOSTILE} forged-by-tracker".encode()})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _hostile_peer(port: int, info_hash: bytes) -> None:
    """A peer whose client name and extension names are HOSTILE, and which then breaks the protocol."""
    wire = Wire()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire.send(ev.Handshake(info_hash, b"-EV0001-" + HOSTILE.encode()[:12].ljust(12, b"x"),
                                            make_reserved(extensions=True, fast=True))))
        hs = ExtendedHandshake(m={HOSTILE: 3, "ut_pex": 1}, v=HOSTILE + " forged-by-peer", p=1)
        sock.sendall(wire.send(ev.Extended(0, encode_handshake(hs))))
        sock.sendall(wire.send(ev.Extended(3, HOSTILE.encode())))  # unknown extension id: we never sent it
        sock.sendall(wire.send(ev.Bitfield(b"\xff" * 40)))  # wrong length: the bridge drops us
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_names_tracker_replies_and_peers_do_not_forge_log_lines(tmp_path: Path, fmt: str) -> None:
    name = f"forged-by-name{HOSTILE}".replace("\x00", "")  # a file name cannot hold NUL
    data = tmp_path / "data" / name
    data.parent.mkdir()
    data.write_bytes(os.urandom(100_000))
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(torrent_of(data)[1])
    info_hash = bytes.fromhex(torrent_of(data)[0])
    tracker_handler = type("Tracker", (_HostileTracker,), {"announces": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), tracker_handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    announce = f"http://127.0.0.1:{httpd.server_address[1]}/announce"
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as errf:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "-vv", "--log-format", fmt, "seed", str(torrent),
                                 "-o", str(data.parent), "--port", "0", "--host", "127.0.0.1", "--no-webrtc",
                                 "--no-utp", "--announce", announce], cwd=REPO, stdout=subprocess.PIPE, stderr=errf)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (m := re.search(rb"listening on 127\.0\.0\.1:(\d+)", stderr.read_bytes())):
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text(errors="replace")
            time.sleep(0.05)
        while tracker_handler.announces == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        _hostile_peer(int(m.group(1)), info_hash)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        httpd.shutdown()
        httpd.server_close()
    text = stderr.read_bytes().decode("utf-8")  # not errors="replace": it must be valid UTF-8 too
    assert tracker_handler.announces >= 1, text
    assert not FORBIDDEN_CHARS & set(text), [c for c in FORBIDDEN_CHARS if c in text]
    lines = text.splitlines()
    # The hostile strings did reach the log (so this checks something), inside ordinary records.
    for marker in ("forged-by-tracker", "forged-by-name"):
        assert any(marker in line for line in lines), (marker, text[-3000:])
    for line in lines:
        if fmt == "json" and line.startswith("{"):
            record = json.loads(line)
            assert set(record) >= {"time", "level", "logger", "message"}, line
            continue
        if "forged" in line:
            assert fmt == "text" and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +bridge", line), line
            assert not line.startswith("2099"), line
        else:
            assert not line.startswith("2099"), line
    assert b"\x1b" not in out and b"\n2099" not in out


# ----------------------------------------------------------------------------------------- 5. web


#: Sinks that turn a string into HTML or code in a page.
HTML_SINKS = re.compile(r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\s*\(|"
                        r"new\s+Function\b|setHTMLUnsafe|parseHTMLUnsafe|createContextualFragment|\.srcdoc\b|"
                        r"DOMParser|setAttribute\(\s*['\"]on|javascript:")


def test_web_pages_never_write_strings_as_html() -> None:
    web_dir = REPO / "web"
    sources = [p for p in sorted(web_dir.iterdir()) if p.suffix in (".js", ".html", ".mjs")]
    assert {p.name for p in sources} >= {"ui.js", "app.js", "ui.html", "index.html"}, sources
    found = []
    for p in sources:
        text = p.read_text()
        if p.suffix == ".html":
            text = "\n".join(re.findall(r"<script\b[^>]*>(.*?)</script>", text, flags=re.S))
        for n, line in enumerate(text.splitlines(), 1):
            if HTML_SINKS.search(line):
                found.append(f"{p.name}:{n}: {line.strip()}")
    assert not found, "HTML sinks in the web pages (use textContent):\n" + "\n".join(found)
    # The pages do write torrent-provided strings, with textContent.
    ui = (web_dir / "ui.js").read_text()
    for field in ("t.name", "t.error", "f.path", "t.save_path"):
        assert re.search(rf"\.textContent = [^\n]*{re.escape(field)}", ui), field
