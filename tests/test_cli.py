"""The command line as a user runs it: subprocesses, exit codes, stderr, files created."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bridge.proto import bencode
from bridge.proto.metainfo import parse_torrent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bridge(*args: str, timeout: float = 60, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd or REPO,
    )


def listing(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in files + dirs}


def assert_clean_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture
def sample(tmp_path):
    d = tmp_path / "share"
    (d / "sub").mkdir(parents=True)
    (d / "one.bin").write_bytes(os.urandom(300_000))
    (d / "sub" / "two.bin").write_bytes(os.urandom(123_457))
    return d


def test_create_prints_magnet_last(sample, tmp_path):
    out = tmp_path / "x.torrent"
    res = bridge("create", str(sample), "-o", str(out), "--announce", "http://127.0.0.1:1/announce",
                 "--webseed", "http://127.0.0.1:1/", "--comment", "hi")
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    meta = parse_torrent(out.read_bytes())
    assert last.startswith("magnet:?xt=urn:btih:" + meta.info_hash.hex())
    assert meta.trackers == (("http://127.0.0.1:1/announce",),)
    assert meta.url_list == ("http://127.0.0.1:1/",)
    assert [f.path for f in meta.info.files] == [("share", "one.bin"), ("share", "sub", "two.bin")]


def test_download_missing_source(tmp_path):
    res = bridge("download", str(tmp_path / "nope.torrent"), "-o", str(tmp_path / "out"))
    assert_clean_error(res, "no such file")
    assert not (tmp_path / "out").exists()


def test_download_garbage_torrent(tmp_path):
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"d4:infoi3ee")
    res = bridge("download", str(bad), "-o", str(tmp_path / "out"))
    assert_clean_error(res, "invalid torrent")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", [[b"..", b"escape.txt"], [b"/etc", b"passwd"], [b"a", b""], [b"a\x00b"]])
def test_hostile_torrent_creates_nothing(tmp_path, path):
    info = {b"name": b"t", b"piece length": 16384, b"pieces": b"\x00" * 20,
            b"files": [{b"length": 10, b"path": path}]}
    t = tmp_path / "evil.torrent"
    t.write_bytes(bencode.encode({b"info": info}))
    before = listing(tmp_path)
    res = bridge("download", str(t), "-o", str(tmp_path / "out"))
    assert_clean_error(res, "info.files[0].path")
    assert listing(tmp_path) == before


def test_bad_peer_argument(sample, tmp_path):
    t = tmp_path / "x.torrent"
    assert bridge("create", str(sample), "-o", str(t)).returncode == 0
    res = bridge("download", str(t), "--peer", "nonsense", "-o", str(tmp_path / "out"))
    assert_clean_error(res, "--peer")


def test_tracker_bad_max_connections():
    assert_clean_error(bridge("tracker", "--port", "0", "--max-connections", "0"), "--max-connections")


def test_seed_download_roundtrip_and_clean_shutdown(sample, tmp_path):
    t = tmp_path / "x.torrent"
    assert bridge("create", str(sample), "-o", str(t)).returncode == 0
    seed = subprocess.Popen(
        [sys.executable, "-m", "bridge", "seed", str(t), "-o", str(sample.parent), "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = seed.stderr.readline()
            m = re.search(r"listening on (\S+):(\d+)", line)
            if m:
                port = m.group(2)
        assert port, "the seed never printed its port"
        assert seed.stdout.readline().startswith("magnet:?")
        res = bridge("download", str(t), "-o", str(tmp_path / "dl"), "--peer", f"127.0.0.1:{port}",
                     "--port", "0", "--host", "127.0.0.1")
        assert res.returncode == 0, res.stderr
        assert re.search(r"uploaded=\d+ downloaded=\d+", res.stderr)
        for rel in ("one.bin", "sub/two.bin"):
            a = hashlib.sha256((sample / rel).read_bytes()).digest()
            b = hashlib.sha256((tmp_path / "dl" / "share" / rel).read_bytes()).digest()
            assert a == b
    finally:
        seed.send_signal(signal.SIGINT)
        try:
            _, err = seed.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            seed.kill()
            raise
    assert seed.returncode == 0, err
    m = re.search(r"uploaded=(\d+)", err)
    assert m and int(m.group(1)) >= 423_457


def test_seed_path_without_data(tmp_path, sample):
    t = tmp_path / "x.torrent"
    assert bridge("create", str(sample), "-o", str(t)).returncode == 0
    res = bridge("seed", str(t), "-o", str(tmp_path / "elsewhere"), "--port", "0", "--host", "127.0.0.1")
    assert res.returncode == 1
    assert "no data" in res.stderr and "Traceback" not in res.stderr


def test_open_files_limit_is_raised_towards_the_hard_limit_never_above(monkeypatch) -> None:
    import resource

    from bridge import cli

    state = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (state["soft"], state["hard"]))

    def setrlimit(which, limits):
        soft, hard = limits
        assert which == resource.RLIMIT_NOFILE and hard == state["hard"] and soft <= hard
        state["soft"] = soft

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert cli.raise_open_files(2000) == 2000 and state["soft"] == 2000
    assert cli.raise_open_files(1500) == 2000  # never lowered
    assert cli.raise_open_files(10_256) == 4096 and state["soft"] == 4096  # capped at the hard limit
    state.update(soft=1024, hard=1024)
    assert cli.raise_open_files(10_256) == 1024


def test_tracker_warns_when_the_open_files_limit_is_below_its_connections(tmp_path) -> None:
    # the hard limit of the child is 300: 10,000 connections can not be served; the tracker says so and runs
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300)); "
              "from bridge.cli import main; sys.argv[0] = 'webtorrent-bridge'; "
              "sys.exit(main(['tracker', '--host', '127.0.0.1', '--port', '0']))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    try:
        while not any("listening on" in line for line in lines):  # bounded by the process: it exits or listens
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert "open-files limit is 300" in err and "about 44 WebSocket connections" in err, err
    assert proc.returncode == 0, err
