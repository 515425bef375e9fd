"""kill -9 in the middle of writing, and what a crash leaves behind.

1. `serve` downloads 128 pieces from a seed (rate-limited so that it is mid-transfer), and is killed with
   SIGKILL at random points of the transfer (the seed of the random choice is printed), three times
   while it writes and once while paused just after saving its resume data. After each kill the test
   hashes every piece on disk itself; every piece the resume data claims must be among them. After each
   restart, every piece the bridge claims to peers (its opening bitfield, read over the wire) and in the
   API must have the right bytes on disk, and no piece that was on disk is lost. Then it completes with
   the right SHA-256. A restart must re-check the files exactly when they changed after the resume data
   was saved (their sizes and mtimes differ from those it recorded), and at least one of the first three
   must; the last one must trust the resume data (it was saved paused, after the last write).
2. Storage: a write still running in a thread when its torrent stops lands in its own file, never in a
   file that reused the closed descriptor.
3. State files: a damaged resume file means "check the files", a damaged record is skipped, and the
   temporary file of a save cut short by a crash is removed at the next start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from test_disk_faults import PIECE, CommandServe, good_pieces, make_single, resume_claims, sha256, start_seed

from bridge.proto import events as ev
from bridge.proto.metainfo import InfoDict, build_info
from bridge.proto.wire import BLOCK_SIZE, Wire, make_reserved
from bridge.state import StateStore, TorrentRecord, file_stamps
from bridge.storage import FileStorage
from bridge.swarm.bitfield import Bitfield

MiB = 1024 * 1024
#: 128 pieces; at RATE a whole transfer takes about 3 s, so kills land mid-transfer.
SIZE = 32 * MiB
RATE = 10_000_000
STEP_TIMEOUT = 45.0
CHECK_MESSAGES = ("files changed since the resume data was saved", "resume data unusable")
#: A slow disk: `serve` with every pwrite delayed by SLOW_WRITE seconds (a 256 KiB piece is 16 block
#: writes), so that most of the time some piece is half-written and a kill lands in the middle of one.
SLOW_WRITE = 0.005
SLOW_DISK = f"""
import os, sys, time
_pwrite = os.pwrite
def pwrite(fd, data, offset):
    time.sleep({SLOW_WRITE})
    return _pwrite(fd, data, offset)
os.pwrite = pwrite
from bridge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def claimed_to_peers(serve_log: str, info: InfoDict) -> set[int]:
    """The pieces the running bridge tells a new peer it has: its opening message, read over TCP."""
    m = re.findall(r"listening on 127\.0\.0\.1:(\d+)", serve_log)
    assert m, serve_log
    wire = Wire()
    ours = ev.Handshake(info.info_hash, b"-TT0000-" + os.urandom(6).hex().encode(),
                        make_reserved(extensions=False, fast=True))
    with socket.create_connection(("127.0.0.1", int(m[-1])), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(wire.send(ours))
        while True:
            data = sock.recv(65536)
            assert data, "the bridge closed the connection before saying what it has"
            for e in wire.receive_data(data):
                if isinstance(e, ev.Handshake):
                    assert e.info_hash == info.info_hash
                elif isinstance(e, ev.HaveAll):
                    return set(range(info.num_pieces))
                elif isinstance(e, ev.HaveNone):
                    return set()
                elif isinstance(e, ev.Bitfield):
                    return set(Bitfield.from_bytes(e.bits, info.num_pieces))
                else:
                    pytest.fail(f"expected the bitfield first, got {e!r}")


def torn_pieces(info: InfoDict, data: Path, payload: bytes, good: set[int]) -> set[int]:
    """Pieces that do not verify but hold some of their right bytes: caught in the middle of writing."""
    torn = set()
    with open(data, "rb") as f:
        for i in set(range(info.num_pieces)) - good:
            f.seek(i * info.piece_length)
            disk = f.read(info.piece_size(i))
            start = i * info.piece_length
            if any(disk[b : b + BLOCK_SIZE] == payload[start + b : start + b + BLOCK_SIZE]
                   for b in range(0, len(disk), BLOCK_SIZE)):
                torn.add(i)
    return torn


def start_serve(tmp: Path) -> CommandServe:
    return CommandServe([sys.executable, "-c", SLOW_DISK], tmp, tmp / "data", "--state-dir", str(tmp / "state"),
                        "--download-rate-limit", str(RATE), "--no-utp")  # TCP: a pause closes at once


def test_kill_9_mid_write_never_leaves_a_piece_claimed_that_is_not_on_disk(tmp_path: Path) -> None:
    rng_seed = random.randrange(1 << 32)
    rng = random.Random(rng_seed)
    src = tmp_path / "src" / "big.bin"
    info, torrent = make_single(src, SIZE)
    payload = src.read_bytes()
    ih = info.info_hash.hex()
    data = tmp_path / "data" / "big.bin"
    state = tmp_path / "state"
    seed, address = start_seed(torrent, src.parent, tmp_path / "logs")
    figures: list[str] = []
    began = time.monotonic()
    torn_before: set[int] = set()
    torn_total = 0
    s: CommandServe | None = None

    def context() -> str:
        return f"(random seed {rng_seed}; {figures})\n" + (s.logs() if s is not None else "")

    def at_least(target: float, what: str) -> dict:
        assert s is not None
        return s.wait(ih, lambda t: t["progress"] >= target or t["state"] == "seeding", what, STEP_TIMEOUT)

    def written_since_resume() -> bool:
        """Whether the files changed after the resume data was saved (or there is none): the restart must
        re-check them then. A save stamps the files after it fsyncs, so pieces written while it ran are on
        disk, not claimed, and older than the stamps; only a later write makes the data stale."""
        path = state / "resume" / f"{ih}.json"
        return not path.exists() or json.loads(path.read_bytes())["files"] != file_stamps(info, str(data.parent))

    def after_kill(label: str) -> tuple[set[int], set[int] | None]:
        """What the killed bridge left: the good pieces on disk, and that the resume data claims no other."""
        nonlocal torn_total, torn_before
        good = good_pieces(info, data)
        claimed = resume_claims(state, info)
        if claimed is not None:
            assert claimed <= good, f"{label}: resume data claims {sorted(claimed - good)} {context()}"
        torn = torn_pieces(info, data, payload, good)
        new = len(torn - torn_before)  # the others were left half-written by an earlier kill
        torn_total += new
        torn_before = torn
        figures.append(f"{label} at {time.monotonic() - began:.1f} s: {len(good)} good, {new} half-written, "
                       f"{len(claimed) if claimed is not None else 'no'} in resume data")
        return good, claimed

    def after_restart(label: str, good_before: set[int], recheck: bool) -> float:
        """The restarted bridge claims only good pieces (to peers, in the API), and lost none."""
        assert s is not None
        t = s.wait(ih, lambda t: t["state"] in ("downloading", "seeding"), f"{label}: restart", STEP_TIMEOUT)
        log = s.log.read_text(errors="replace")  # the whole log (Serve.logs() is its tail)
        to_peers = claimed_to_peers(log, info)
        api_have = t["pieces"]["have"]
        good = good_pieces(info, data)  # hashed after the claims were read: pieces only get added
        assert to_peers <= good, f"{label}: claims {sorted(to_peers - good)} to peers {context()}"
        assert api_have <= len(good), (label, api_have, len(good), context())
        checked = any(m in log for m in CHECK_MESSAGES) or resume_claims(state, info) is None
        assert checked == recheck, f"{label}: re-checked {checked}, expected {recheck} {context()}"
        if recheck:
            assert good_before <= to_peers, f"{label}: lost {sorted(good_before - to_peers)} {context()}"
        assert not [p for sub in ("torrents", "resume") for p in (state / sub).iterdir()
                    if p.name.startswith(".tmp-")], context()
        figures.append(f"{label}: claims {len(to_peers)} to peers, all verified")
        return float(t["progress"])

    try:
        s = start_serve(tmp_path)
        status, t = s.call("POST", "/api/v1/torrents", {"torrent": base64.b64encode(torrent.read_bytes()).decode(),
                                                        "peers": [address]})
        assert status == 201, t
        # Kill 1: resume data saved part-way (pause and resume save it), then more writes, then SIGKILL.
        first = rng.uniform(0.08, 0.2)
        at_least(first, "first part")
        assert s.call("POST", f"/api/v1/torrents/{ih}/pause")[0] == 200
        assert s.call("POST", f"/api/v1/torrents/{ih}/resume")[0] == 200
        progress = at_least(first + rng.uniform(0.05, 0.15), "more after the save")["progress"]
        s.stop(signal.SIGKILL)
        good, _ = after_kill("kill 1")
        assert good and resume_claims(state, info), context()  # the resume data exists and is tested

        # Kills 2 and 3: right in the transfer, at random points.
        rechecks = 0
        for n in (2, 3):
            stale = written_since_resume()
            rechecks += stale
            s = start_serve(tmp_path)
            progress = after_restart(f"restart {n - 1}", good, recheck=stale)
            at_least(min(0.92, progress + rng.uniform(0.05, 0.2)), f"progress before kill {n}")
            s.stop(signal.SIGKILL)
            good, _ = after_kill(f"kill {n}")
        # The kills did land in the middle of writing a piece (the point of this test).
        assert torn_total >= 1, f"no kill caught a piece half-written {context()}"

        # Kill 4: paused (its resume data saved after the last write), so the restart trusts it.
        stale = written_since_resume()
        rechecks += stale
        assert rechecks >= 1, f"no restart had files changed since the resume data {context()}"
        s = start_serve(tmp_path)
        progress = after_restart("restart 3", good, recheck=stale)
        if progress < 1:
            at_least(min(0.97, progress + 0.02), "progress before pausing")
        status, t = s.call("POST", f"/api/v1/torrents/{ih}/pause")
        assert status == 200 and t["state"] == "paused", t
        s.stop(signal.SIGKILL)
        good, claimed = after_kill("kill 4 (paused)")
        assert not written_since_resume(), f"kill 4: files written after the paused save {context()}"
        s = start_serve(tmp_path)
        listed = s.call("GET", "/api/v1/torrents")[1]
        assert [x["state"] for x in listed] == ["paused"], listed
        assert s.call("POST", f"/api/v1/torrents/{ih}/resume")[0] == 200
        after_restart("restart 4", good, recheck=False)

        s.wait(ih, lambda t: t["state"] == "seeding", "completion", STEP_TIMEOUT)
        assert sha256(data) == hashlib.sha256(payload).hexdigest()
        assert s.stop() == 0, s.logs()
        s = None
        assert resume_claims(state, info) == set(range(info.num_pieces)) == good_pieces(info, data)
        print(f"kill -9 (random seed {rng_seed}): " + "; ".join(figures))
    finally:
        if s is not None:
            s.stop(signal.SIGKILL)
        seed.stop()


# ------------------------------------------------------------------------------------ storage and state


def _small_torrent(tmp_path: Path) -> tuple[InfoDict, bytes]:
    data = random.Random(5).randbytes(4 * PIECE)
    hashes = b"".join(hashlib.sha1(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE))
    return build_info("one.bin", len(data), PIECE, hashes), data


def _blocks(data: bytes, index: int) -> list[bytes]:
    piece = data[index * PIECE : (index + 1) * PIECE]
    return [piece[i : i + BLOCK_SIZE] for i in range(0, len(piece), BLOCK_SIZE)]


async def test_a_write_running_when_the_torrent_stops_lands_in_its_own_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info, data = _small_torrent(tmp_path)
    store = FileStorage(info, tmp_path / "dl")
    other_path = tmp_path / "other.json"
    assert await store.verify_and_write(0, _blocks(data, 0))  # the file is open now
    started, release = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, chunk: bytes, offset: int) -> int:
        started.set()
        assert release.wait(10)
        return real_pwrite(fd, chunk, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    write = asyncio.ensure_future(store.verify_and_write(1, _blocks(data, 1)))
    assert await asyncio.to_thread(started.wait, 10)
    store.close()  # the torrent stops while the write runs in its thread
    # The next file opened gets the lowest free descriptor: the closed one, had close() closed it.
    other = os.open(other_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        release.set()
        assert await write
        assert await store.drain(5)
    finally:
        os.close(other)
        monkeypatch.undo()
    assert other_path.read_bytes() == b""
    on_disk = (tmp_path / "dl" / "one.bin").read_bytes()
    assert on_disk[: 2 * PIECE] == data[: 2 * PIECE]
    assert store._fds == {}  # closed once the write was done


def test_damaged_state_files_mean_recheck_or_skip_never_a_crash(tmp_path: Path) -> None:
    info, _ = _small_torrent(tmp_path)
    ih = info.info_hash.hex()
    store = StateStore(str(tmp_path / "state"))
    store.save_record(TorrentRecord(info_hash=ih, name="one.bin", save_path=str(tmp_path)))
    have = Bitfield(info.num_pieces)
    have.add(0)
    store.save_resume(info, str(tmp_path), have)
    assert store.load_resume(info, str(tmp_path)) is not None  # the fast check passes as it is
    resume = tmp_path / "state" / "resume" / f"{ih}.json"
    good = json.loads(resume.read_bytes())
    for damaged in (b"", b"{", b"[]", b"null", json.dumps({**good, "pieces": "00ff"}).encode(),
                    json.dumps({**good, "pieces": "zz"}).encode(), json.dumps({**good, "pieces": 5}).encode(),
                    json.dumps({**good, "files": "x"}).encode(), json.dumps({**good, "num_pieces": 9}).encode()):
        resume.write_bytes(damaged)
        assert store.load_resume(info, str(tmp_path)) is None, damaged  # -> the files are hashed again

    record = tmp_path / "state" / "torrents" / f"{ih}.json"
    fine = json.loads(record.read_bytes())
    for damaged in (b"[1]", b"\"x\"", json.dumps({**fine, "peers": [1]}).encode(),
                    json.dumps({**fine, "priorities": ["a"]}).encode(), json.dumps({**fine, "paused": "no"}).encode(),
                    json.dumps({**fine, "save_path": None}).encode(), json.dumps({**fine, "magnet": 3}).encode()):
        record.write_bytes(damaged)
        assert store.records() == [], damaged
    record.write_bytes(json.dumps(fine).encode())
    assert [r.info_hash for r in store.records()] == [ih]

    # A crash in the middle of a save leaves the old file and a temporary one; the next start removes it.
    leftover = tmp_path / "state" / "resume" / ".tmp-abc123"
    leftover.write_bytes(b'{"info_hash": "')
    StateStore(str(tmp_path / "state"))
    assert not leftover.exists()
    assert [r.info_hash for r in StateStore(str(tmp_path / "state")).records()] == [ih]


def test_resume_data_is_fsynced_before_it_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FileStorage.sync reaches every file of the torrent on disk, open or not (the daemon calls it before
    it saves resume data); a failing fsync is a StorageError, so the resume data is not saved."""
    info, data = _small_torrent(tmp_path)
    store = FileStorage(info, tmp_path / "dl")
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    store.sync()
    assert synced == []  # nothing on disk yet
    asyncio.run(store.verify_and_write(0, _blocks(data, 0)))
    store.close()
    store.sync()
    assert len(synced) == 1

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    from bridge.errors import StorageError

    with pytest.raises(StorageError, match="Input/output error"):
        store.sync()
    store.close()
