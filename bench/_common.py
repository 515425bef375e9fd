"""Shared helpers for the benchmarks in bench/ (not part of the package, not tests).

Also runnable as a script: ``python bench/_common.py lt-peer ...`` is a libtorrent peer in its own process
(so its CPU time can be measured separately) that reports on stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIB = 1024
MIB = 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------- data


def make_random_file(path: str, size: int, chunk: int = 4 * MIB) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 (hex)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            block = os.urandom(min(chunk, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: str, chunk: int = 4 * MIB) -> str | None:
    """SHA-256 (hex) of a file, None if it does not exist."""
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_piece_length(size: int) -> int:
    """1 MiB pieces for 1 GiB, halved with the size (about 1024 pieces), never below 16 KiB."""
    piece = MIB
    while piece > 16 * KIB and size // piece < 1024:
        piece //= 2
    return piece


def parse_size(text: str) -> int:
    """``262144``, ``256k``, ``1m`` or ``1MiB`` -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": KIB, "m": MIB, "g": 1024 * MIB}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    return int(t) * mult


def make_torrent_with_libtorrent(data_path: str, piece_length: int) -> bytes:
    """A v1-only single-file .torrent for ``data_path``, made by libtorrent (independent of the bridge)."""
    import libtorrent as lt

    fs = lt.file_storage()
    lt.add_files(fs, data_path)
    ct = lt.create_torrent(fs, piece_length, flags=lt.create_torrent.v1_only)
    ct.set_creator("webtorrent-bridge bench (libtorrent)")
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(data_path)))
    return bytes(lt.bencode(ct.generate()))


# ------------------------------------------------------------------------------ WebSocket tracker load


def bench_id(prefix: bytes, n: int) -> str:
    """A 20-character id (info-hash, peer id or offer id as the WebSocket tracker protocol writes them):
    ``prefix`` then ``n`` as 12 digits, cut or padded with '-' to 20."""
    return (prefix + b"%012d" % n)[-20:].rjust(20, b"-").decode("latin-1")


def fake_sdp(n: int, size: int) -> str:
    """An SDP-looking text of about ``size`` characters (the tracker only forwards it; nobody parses it)."""
    head = (f"v=0\r\no=- {4611686018427387904 + n} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            "a=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
            f"a=candidate:1 1 udp 2122194687 127.0.0.1 {40000 + n % 20000} typ host generation 0\r\n")
    return (head + "a=x-pad:" + "x" * max(0, size - len(head) - 10) + "\r\n")[: max(size, len(head))]


def ws_announce(info_hash: str, peer_id: str, offer_ids: Sequence[str], sdp_bytes: int, sdp_seed: int,
                event: str | None = None, numwant: int = 50, left: int = 1000) -> str:
    """The JSON text of a WebTorrent announce with one fake offer (``fake_sdp``) per offer id."""
    d: dict[str, object] = {
        "action": "announce",
        "info_hash": info_hash,
        "peer_id": peer_id,
        "numwant": numwant,
        "uploaded": 0,
        "downloaded": 0,
        "left": left,
        "offers": [{"offer": {"type": "offer", "sdp": fake_sdp(sdp_seed + i, sdp_bytes)}, "offer_id": oid}
                   for i, oid in enumerate(offer_ids)],
    }
    if event:
        d["event"] = event
    return json.dumps(d)


# ------------------------------------------------------------------------------------------ CPU


def proc_cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of all threads of ``pid`` from /proc/<pid>/stat (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# ------------------------------------------------------------------------------------ children


@dataclass
class Line:
    t: float
    stream: str
    text: str


def lt_version() -> str:
    import libtorrent as lt

    return str(lt.__version__)


def is_json_event(ev: str) -> Callable[[Line], bool]:
    """A Child.expect predicate: a JSON line on stdout whose "ev" is ``ev`` (or "error")."""
    def pred(line: Line) -> bool:
        if line.stream != "out" or not line.text.startswith("{"):
            return False
        try:
            return json.loads(line.text).get("ev") in (ev, "error")
        except ValueError:
            return False
    return pred


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@dataclass
class Child:
    """A subprocess with both pipes drained into timestamped lines (kept for diagnostics)."""

    name: str
    proc: asyncio.subprocess.Process
    started: float
    log: deque[Line] = field(default_factory=lambda: deque(maxlen=200))
    queue: asyncio.Queue[Line | None] = field(default_factory=asyncio.Queue)
    last_cpu: float | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float | None:
        """CPU seconds so far; if the process is already gone, the last sample (taken every 0.1 s)."""
        now = proc_cpu_seconds(self.pid)
        if now is not None:
            self.last_cpu = now
        return self.last_cpu

    def tail(self, n: int = 15) -> str:
        return "\n".join(f"    [{ln.stream}] {ln.text}" for ln in list(self.log)[-n:])

    async def expect(self, pred: Callable[[Line], bool], seconds: float, what: str) -> Line:
        """Consume lines until one matches ``pred``; raise with the output tail after ``seconds`` or on exit."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: timed out after {seconds:.0f} s waiting for {what}\n{self.tail()}")
            try:
                line = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                continue
            if line is None:
                rc = await self.wait(5)
                raise BenchError(f"{self.name}: exited (rc={rc}) before {what}\n{self.tail()}")
            if pred(line):
                return line

    async def wait(self, seconds: float) -> int | None:
        """The exit code, or None if still running after ``seconds``."""
        try:
            return await asyncio.wait_for(self.proc.wait(), seconds)
        except TimeoutError:
            return None


class BenchError(Exception):
    pass


class Children:
    """Every process a benchmark starts; ``close()`` ends them all (SIGTERM to the group, then SIGKILL)."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                    cwd: str | None = None) -> Child:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd, start_new_session=True,
        )
        child = Child(name, proc, started)
        self.children.append(child)
        streams = [("out", proc.stdout), ("err", proc.stderr)]
        done = 0

        async def read(tag: str, stream: asyncio.StreamReader) -> None:
            nonlocal done
            try:
                while raw := await stream.readline():
                    line = Line(time.monotonic(), tag, raw.decode(errors="replace").rstrip("\r\n"))
                    child.log.append(line)
                    child.queue.put_nowait(line)
            finally:
                done += 1
                if done == len(streams):
                    child.queue.put_nowait(None)

        async def sample() -> None:
            while proc.returncode is None:
                child.cpu()
                await asyncio.sleep(0.1)

        for tag, stream in streams:
            assert stream is not None
            child._readers.append(asyncio.create_task(read(tag, stream)))
        child._readers.append(asyncio.create_task(sample()))
        return child

    async def stop(self, child: Child, grace: float = 5.0) -> None:
        if child.proc.returncode is None:
            _signal_group(child.pid, signal.SIGTERM)
            if await child.wait(grace) is None:
                _signal_group(child.pid, signal.SIGKILL)
                await child.wait(grace)
        else:
            _signal_group(child.pid, signal.SIGKILL)  # leftovers in its session, if any
        for r in child._readers:
            r.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*child._readers, return_exceptions=True)
        if child in self.children:
            self.children.remove(child)

    async def close(self) -> None:
        for child in list(self.children):
            await self.stop(child, grace=3.0)

    def kill_now(self) -> None:
        """Synchronous last resort (e.g. after the event loop died)."""
        for child in self.children:
            _signal_group(child.pid, signal.SIGKILL)


def bench_main(body: Callable[[], int]) -> int:
    """A benchmark's exit code: ``body()``'s, or 2 after printing a BenchError as one line, or 130 on Ctrl-C."""
    try:
        return body()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def child_env() -> dict[str, str]:
    """Environment for children: this checkout's ``bridge`` package first on the path, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -------------------------------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    right = right or [False] * len(headers)

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


# ------------------------------------------------------------------------------ libtorrent peer

# Applied on top of libtorrent's own high_performance_seed() preset, in both libtorrent processes.
LT_LOOPBACK_SETTINGS: dict[str, object] = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
}
# Shown in the benchmark output (the preset's values for these, plus our overrides).
LT_NOTABLE = ("send_buffer_watermark", "send_buffer_low_watermark", "send_buffer_watermark_factor",
              "max_out_request_queue", "max_queued_disk_bytes", "max_peer_recv_buffer_size",
              "aio_threads", "suggest_mode", "unchoke_slots_limit")


def lt_settings(preset: str = "high_performance_seed", mse: bool = True) -> dict[str, object]:
    """Settings for a loopback libtorrent session; ``mse=False`` turns MSE/PE (encryption) off both ways."""
    import libtorrent as lt

    base = dict(lt.high_performance_seed()) if preset == "high_performance_seed" else {}
    base.update(LT_LOOPBACK_SETTINGS)
    if not mse:
        base["out_enc_policy"] = base["in_enc_policy"] = int(lt.enc_policy.disabled)
    base["alert_mask"] = int(lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage)
    return base


def lt_settings_summary(preset: str = "high_performance_seed", mse: bool = True) -> str:
    s = lt_settings(preset, mse)
    notable = ", ".join(f"{k}={s[k]}" for k in LT_NOTABLE if k in s)
    enc = ("MSE/PE enabled (the default: it dials with an MSE handshake first, plaintext on retry)" if mse
           else "MSE/PE disabled (plaintext handshakes only)")
    return (f"libtorrent settings: {preset}() preset, TCP only (uTP off), DHT/LSD/UPnP/NAT-PMP off, "
            f"allow_multiple_connections_per_ip, {enc}; {notable or 'library defaults for the rest'}")


def _emit(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def lt_peer_main(argv: list[str]) -> int:
    """One libtorrent session that seeds or downloads one torrent; JSON lines on stdout."""
    import libtorrent as lt

    p = argparse.ArgumentParser(prog="_common.py lt-peer")
    p.add_argument("mode", choices=["seed", "leech"])
    p.add_argument("torrent")
    p.add_argument("save_path")
    p.add_argument("--connect", type=int, help="dial 127.0.0.1:PORT once the torrent is added")
    p.add_argument("--preset", default="high_performance_seed", choices=["high_performance_seed", "default"])
    p.add_argument("--no-mse", action="store_true", help="turn MSE/PE encryption off (plaintext only)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    ses = lt.session(lt_settings(args.preset, mse=not args.no_mse))
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.save_path
    h = ses.add_torrent(atp)
    port = ses.listen_port()
    _emit(ev="listening", port=port)
    if args.connect:
        h.connect_peer(("127.0.0.1", args.connect))
    ready = args.mode == "leech"
    if ready:
        _emit(ev="ready", port=port)
    last = 0.0
    finished_at: float | None = None
    while True:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_error_alert | lt.file_error_alert):
                _emit(ev="error", msg=a.message())
                return 1
            if isinstance(a, lt.torrent_finished_alert) and args.mode == "leech":
                # All pieces passed their hash check, but some may still sit in libtorrent's store buffer:
                # have them written out before saying "finished", as the bridge does before "complete:".
                finished_at = time.monotonic()
                h.flush_cache()
            if isinstance(a, lt.cache_flushed_alert) and finished_at is not None:
                t = os.times()  # this process's own CPU, in case it is gone before /proc is read
                _emit(ev="finished", flush_s=round(time.monotonic() - finished_at, 4), cpu=t.user + t.system)
                os._exit(0)  # the timer stops at "finished"; skip the session teardown
        st = h.status()
        if not ready and st.is_seeding and st.state == lt.torrent_status.seeding:
            ready = True
            _emit(ev="ready", port=port)
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            _emit(ev="progress", progress=round(st.progress, 4), down=st.download_rate, up=st.upload_rate,
                  peers=st.num_peers)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "lt-peer":
        raise SystemExit(lt_peer_main(sys.argv[2:]))
    print("usage: python bench/_common.py lt-peer {seed,leech} TORRENT SAVE_PATH [--connect PORT]", file=sys.stderr)
    raise SystemExit(2)
