"""The disk fills up in the middle of a download, on a real (small) tmpfs.

1. `download`: exits 1 with one line naming the disk-full condition (no traceback, no second report in
   the log); the pieces it wrote still verify; once there is room, the same command resumes (only the
   missing pieces come again) and the file has the right SHA-256.
2. `serve`: the torrent turns to state "error" with the message in the API's JSON, while a seeding
   torrent keeps serving; the records and resume data in the state folder (on the same full disk) stay
   loadable and never claim a piece that is not on disk, and a call that must save state answers 507;
   after space is freed, "resume" completes it.

The tmpfs is mounted in a private mount namespace (unshare -m) held by a sleeping process, and the
programs under test run in it through nsenter; the test reaches the files through /proc/PID/root. So
nothing is ever mounted in the host's namespace, and nothing stays mounted when the test ends, however
it ends. Mounting needs root with CAP_SYS_ADMIN: without it the tests fail and say so (they never skip).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import peers
import pytest
from test_serve import TOKEN, Serve

from bridge.create import make_info
from bridge.proto.metainfo import InfoDict, build_torrent
from bridge.state import StateStore

REPO = Path(__file__).resolve().parents[2]
#: Seconds the namespace's holder lives at most (if the test process dies without cleaning up).
HOLD_SECONDS = 600
PIECE = 256 * 1024
MiB = 1024 * 1024
#: Bound on one step (a download that fails or completes, a state change seen through the API).
STEP_TIMEOUT = 45.0


class PrivateTmpfs:
    """A tmpfs of ``size`` at ``mountpoint`` in a private mount namespace, held by a sleeping process.

    :meth:`argv` runs a command inside the namespace; :meth:`path` is the host's view of a path under the
    mount point (through /proc/PID/root)."""

    def __init__(self, mountpoint: Path, size: str) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && echo mounted && exec sleep "$3"'
        try:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", size,
                 str(mountpoint), str(HOLD_SECONDS)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            pytest.fail("unshare (util-linux) is not installed: the disk-full tests need it", pytrace=False)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"mounted":
            self.proc.wait(10)
            err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
            pytest.fail(f"cannot mount a {size} tmpfs in a private mount namespace ({err or 'no message'}): "
                        "the disk-full tests need root with CAP_SYS_ADMIN (a container needs --privileged "
                        "or --cap-add SYS_ADMIN). They never skip.", pytrace=False)

    def path(self, *parts: str) -> Path:
        return Path(f"/proc/{self.proc.pid}/root").joinpath(*self.mountpoint.parts[1:], *parts)

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.proc.pid}", "--mount", f"--wd={REPO}", "--", *argv]

    def resize(self, size: str) -> None:
        subprocess.run(self.argv(["mount", "-o", f"remount,size={size}", str(self.mountpoint)]), check=True,
                       timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[PrivateTmpfs]:
    disk = PrivateTmpfs(tmp_path / "disk", "4m")
    try:
        yield disk
    finally:
        disk.close()


# ------------------------------------------------------------------------------------- shared helpers


def make_single(path: Path, size: int, piece_length: int = PIECE, seed: int = 7) -> tuple[InfoDict, Path]:
    """A random file of ``size`` bytes and its .torrent (next to it, no trackers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    info = make_info(str(path), piece_length)
    torrent = path.with_suffix(".torrent")
    torrent.write_bytes(build_torrent(info, []))
    return info, torrent


def start_seed(torrent: Path, data_parent: Path, log_dir: Path, name: str = "seed") -> tuple[peers.BridgeProcess, str]:
    """`webtorrent-bridge seed` of ``torrent`` on 127.0.0.1 (a free port); returns it and "host:port"."""
    seed = peers.BridgeProcess(["seed", str(torrent), "-o", str(data_parent), "--port", "0", "--host",
                                "127.0.0.1", "--no-webrtc"], log_dir, name=name)
    host, port = seed.wait_listening()
    deadline = time.monotonic() + STEP_TIMEOUT
    while "magnet:?" not in seed.stdout_text():  # printed once its data verified
        if not seed.running() or time.monotonic() > deadline:
            pytest.fail("the seed did not start seeding\n" + seed.log_excerpt())
        time.sleep(0.05)
    return seed, f"{host}:{port}"


def good_pieces(info: InfoDict, data: Path) -> set[int]:
    """Pieces of a single-file torrent whose bytes on disk have the right SHA-1 (hashed here, not asked)."""
    good = set()
    try:
        with open(data, "rb") as f:
            for i in range(info.num_pieces):
                f.seek(i * info.piece_length)
                if hashlib.sha1(f.read(info.piece_size(i))).digest() == info.piece_hash(i):
                    good.add(i)
    except FileNotFoundError:
        pass
    return good


def resume_claims(state_dir: Path, info: InfoDict) -> set[int] | None:
    """Pieces the resume data in ``state_dir`` lists as verified (None: there is none)."""
    path = state_dir / "resume" / f"{info.info_hash.hex()}.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_bytes())
    bits = bytes.fromhex(doc["pieces"])
    return {i for i in range(info.num_pieces) if bits[i // 8] & (0x80 >> (i % 8))}


def check_state_dir(state_dir: Path, info: InfoDict, data: Path) -> tuple[int, int]:
    """The records read back, no temporary file is left, and every piece the resume data claims really
    verifies on disk. Returns (pieces claimed, pieces good on disk)."""
    records = StateStore(str(state_dir)).records()
    assert info.info_hash.hex() in {r.info_hash for r in records}, records
    leftovers = [p.name for sub in ("torrents", "resume") for p in (state_dir / sub).iterdir()
                 if p.name.startswith(".tmp-")]
    assert not leftovers, leftovers
    good = good_pieces(info, data)
    claimed = resume_claims(state_dir, info)
    if claimed is not None:
        assert claimed <= good, f"resume data claims pieces that do not verify: {sorted(claimed - good)}"
    return (len(claimed) if claimed is not None else 0), len(good)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CommandServe(Serve):
    """`serve` as tests/test_serve.py's Serve, but started by ``command`` instead of ``python -m bridge``
    (inside a mount namespace, or with a slow disk), with ``data`` as its data folder (and, by default,
    the state folder under it)."""

    def __init__(self, command: list[str], tmp: Path, data: Path, *extra: str) -> None:
        super().__init__(tmp, *extra, token=TOKEN, command=command, data=data)


# ------------------------------------------------------------------------------------------------ tests


def test_download_on_a_full_disk_fails_with_one_line_and_resumes_once_there_is_room(
        tmp_path: Path, small_disk: PrivateTmpfs) -> None:
    info, torrent = make_single(tmp_path / "src" / "big.bin", 6 * MiB)  # 24 pieces, the disk holds 16
    seed, address = start_seed(torrent, tmp_path / "src", tmp_path / "logs")
    data = small_disk.path("big.bin")
    cmd = small_disk.argv([sys.executable, "-m", "bridge", "download", str(torrent), "-o",
                           str(small_disk.mountpoint), "--peer", address, "--port", "0", "--host", "127.0.0.1",
                           "--no-webrtc"])
    try:
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT)
        err = first.stderr
        assert first.returncode == 1, err
        assert "Traceback" not in err, err
        mentions = [line for line in err.splitlines() if "disk full" in line or "No space left" in line]
        assert len(mentions) == 1, f"one line should name the disk-full condition:\n{err}"
        assert mentions[0].startswith("webtorrent-bridge: error: disk full: cannot write "), mentions
        assert "No space left on device" in mentions[0] and "again to resume" in mentions[0], mentions
        kept = good_pieces(info, data)
        assert 0 < len(kept) < info.num_pieces, (len(kept), err)

        small_disk.resize("16m")  # room again
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT)
        assert second.returncode == 0, second.stderr
        assert "complete: " in second.stderr, second.stderr
        assert sha256(data) == sha256(tmp_path / "src" / "big.bin")
        # It resumed from the pieces the first run wrote: only the others came again.
        down = int(re.findall(r"downloaded=(\d+)", second.stderr)[-1])
        assert down <= info.total_length - (len(kept) - 2) * PIECE, (down, len(kept))
    finally:
        seed.stop()


def test_serve_on_a_full_disk_fails_that_torrent_only_and_resumes_after_space_is_freed(
        tmp_path: Path) -> None:
    disk = PrivateTmpfs(tmp_path / "disk", "8m")
    s: CommandServe | None = None
    seed: peers.BridgeProcess | None = None
    try:
        info, torrent = make_single(tmp_path / "src" / "big.bin", 6 * MiB)
        seed, address = start_seed(torrent, tmp_path / "src", tmp_path / "logs")
        filler = disk.path("filler")
        filler.write_bytes(bytes(3 * MiB))  # leaves ~5 MiB: not enough for 6 MiB
        other = tmp_path / "share" / "video.bin"
        other.parent.mkdir()
        other.write_bytes(os.urandom(300_000))
        data = disk.path("big.bin")
        state = disk.path(".webtorrent-bridge")

        # Rate-limited so that resume data can be saved part-way (TCP only: a pause closes at once).
        s = CommandServe(disk.argv([sys.executable, "-m", "bridge"]), tmp_path, disk.mountpoint,
                         "--download-rate-limit", "4000000", "--no-utp")
        status, seeding = s.call("POST", "/api/v1/torrents", {"path": str(other)})
        assert status == 201, seeding
        s.wait(seeding["infohash"], lambda t: t["state"] == "seeding", "the other torrent seeding", STEP_TIMEOUT)
        ih = info.info_hash.hex()
        status, t = s.call("POST", "/api/v1/torrents", {"torrent": base64.b64encode(torrent.read_bytes()).decode(),
                                                        "peers": [address]})
        assert status == 201, t
        # Resume data saved while there is room (pause and resume save it): what the full disk must keep.
        s.wait(ih, lambda t: t["progress"] >= 0.2, "some progress", STEP_TIMEOUT)
        assert s.call("POST", f"/api/v1/torrents/{ih}/pause")[0] == 200
        assert s.call("POST", f"/api/v1/torrents/{ih}/resume")[0] == 200

        t = s.wait(ih, lambda t: t["state"] == "error", "the disk-full error", STEP_TIMEOUT)
        assert t["error"].startswith("disk full: cannot write ") and "No space left on device" in t["error"], t
        assert 0 < t["progress"] < 1, t
        # its peers are closed at once; they leave the list as their tasks end
        t = s.wait(ih, lambda t: t["peer_list"] == [], "the failed torrent's peers to go", STEP_TIMEOUT)
        listed = {x["infohash"]: x for x in s.call("GET", "/api/v1/torrents")[1]}
        assert listed[ih]["state"] == "error" and listed[ih]["error"] == t["error"], listed
        # The other torrent goes on: still seeding, still streaming.
        shown = s.wait(seeding["infohash"], lambda t: t["state"] == "seeding", "the other torrent", 5)
        with urllib.request.urlopen(s.url + shown["files"][0]["stream_url"], timeout=10) as r:
            assert r.read() == other.read_bytes()
        log = s.log.read_text(errors="replace")  # all of it (Serve.logs() is its tail)
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "disk full" in errors[0], errors
        assert "Traceback" not in log, log
        # What the state folder (on the same full disk) says is loadable and true.
        claimed_full, good_full = check_state_dir(state, info, data)
        assert t["pieces"]["have"] <= good_full < info.num_pieces, (t["pieces"], good_full)
        assert 0 < claimed_full < t["pieces"]["have"], (claimed_full, t["pieces"])  # the older save, intact

        # The state cannot be saved either (it is on the same disk): a JSON 507, and nothing changes.
        status, err = s.call("POST", f"/api/v1/torrents/{ih}/pause")
        assert status == 507 and "No space left on device" in err["error"], (status, err)
        assert s.call("GET", f"/api/v1/torrents/{ih}")[1]["state"] == "error"

        filler.unlink()  # the user frees space, then resumes
        status, t = s.call("POST", f"/api/v1/torrents/{ih}/resume")
        assert status == 200 and t["state"] != "error", t
        s.wait(ih, lambda t: t["state"] == "seeding" and t["error"] is None, "completion after resume",
               STEP_TIMEOUT)
        assert sha256(data) == sha256(tmp_path / "src" / "big.bin")
        claimed, good = check_state_dir(state, info, data)
        assert good == info.num_pieces
        assert s.call("GET", f"/api/v1/torrents/{seeding['infohash']}")[1]["state"] == "seeding"
        print(f"serve on a full disk: {good_full}/{info.num_pieces} pieces on disk at the error, "
              f"{claimed_full} in its resume data; {claimed} claimed after completion")
    finally:
        try:
            if s is not None:
                assert s.stop() == 0, s.logs()
        finally:
            if seed is not None:
                seed.stop()
            disk.close()
