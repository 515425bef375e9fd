"""libtorrent 2.1 and the bridge trade a torrent over WebRTC (WebTorrent), through the embedded tracker.

libtorrent 2.1 speaks WebTorrent itself (ws:// trackers, WebRTC data channels through libdatachannel).
Its ICE agent (libjuice) never gathers candidates on 127/8, so each run happens inside a private
network namespace holding only a veth pair (``netns.py``): ``netns_webrtc.py`` is run there with
``unshare -n``; it starts ``bridge tracker`` and the bridge (``seed`` or ``download``) as
subprocesses and libtorrent in its own process, and reports one JSON line. Nothing leaves the
namespace. Where namespaces cannot be made (not root, no ``unshare``/``ip``, no veth) the tests
fail, saying why; they are never skipped.

WebRTC is the only way between the two: the torrent names only the ws:// tracker, libtorrent has TCP
and uTP off both ways and no DHT/LSD/PEX, and it is never given an address of the bridge, whose TCP
listener is on the namespace's 127.0.0.1 (``bridge_tcp="loopback"``) or on a veth address
(``"veth"``, an ordinary setup). Each test checks both sides' records of the connection (the bridge
logs ``connected (webrtc, ...)``; libtorrent's peer_connect_alert ends with ``(RTC)``), the
bridge's ``uploaded=/downloaded=`` totals and the SHA-256 of every file.

Directions: the bridge seeds a torrent made by ``bridge create`` and libtorrent downloads it (the
bridge answers libtorrent's offer); libtorrent seeds a torrent made by libtorrent and the bridge
downloads it from the .torrent, or from a magnet link (metadata over the data channel, BEP 9); there
libtorrent answers the bridge's offer. About 2-5 s per test on an idle 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from netns import namespace_command, namespace_unavailable
from peers import require_libtorrent, tail, tree_sha256

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "netns_webrtc.py"
REPO_ROOT = HERE.parents[1]
#: The driver's own bound for one run (start-up, transfer, shutdown); it then reports what it has.
DRIVER_DEADLINE = 100.0
#: Bound for the driver process itself, after which its whole process group is killed.
RUN_TIMEOUT = DRIVER_DEADLINE + 40.0


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def network_namespaces() -> None:
    why = namespace_unavailable()
    if why is not None:
        fail(f"these tests run libtorrent's WebRTC in a private network namespace, which cannot be made "
             f"here: {why}")
    require_libtorrent()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    # The driver's children share its process group: leave none of them behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _diagnostics(workdir: Path, driver_stderr: str, result: dict[str, Any] | None) -> str:
    parts = []
    if result is not None:
        brief = {k: v for k, v in result.items() if k not in ("expected", "actual")}
        parts.append("driver result: " + json.dumps(brief, indent=1))
    parts.append("--- driver stderr (tail):\n" + ("\n".join(driver_stderr.splitlines()[-40:]) or "(empty)"))
    logs = workdir / "logs"
    if logs.is_dir():
        for path in sorted(logs.iterdir(), key=lambda p: (not p.name.startswith("bridge"), p.name)):
            if path.stat().st_size:
                parts.append(f"--- {path.name} (tail):\n{tail(path, max_lines=60, max_chars=8000)}")
    return "\n".join(parts)


def run_driver(direction: str, workdir: Path, bridge_tcp: str) -> dict[str, Any]:
    """Run the driver in a fresh network namespace; return its JSON result (fails the test if there is
    none, or if it reports a failure)."""
    cmd = namespace_command([sys.executable, str(DRIVER), direction, str(workdir),
                             "--bridge-tcp", bridge_tcp, "--deadline", str(DRIVER_DEADLINE)])
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc)
    stderr = err.decode(errors="replace")
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    result: dict[str, Any] | None = None
    with contextlib.suppress(ValueError, IndexError):
        result = json.loads(lines[-1])
    if timed_out:
        fail(f"the driver ran over {RUN_TIMEOUT:.0f} s and was killed\n" + _diagnostics(workdir, stderr, result))
    if result is None:
        fail(f"the driver (exit code {proc.returncode}) printed no JSON result: `{' '.join(cmd)}`\n"
             + _diagnostics(workdir, stderr, None))
    assert result is not None
    if not result.get("ok"):
        fail(f"{direction}: {result.get('error')}\n" + _diagnostics(workdir, stderr, result))
    result["_diagnostics"] = lambda: _diagnostics(workdir, stderr, result)
    return result


CASES = [
    pytest.param("bridge-seeds", "loopback", id="bridge-seeds"),
    pytest.param("libtorrent-seeds", "loopback", id="libtorrent-seeds"),
    pytest.param("libtorrent-seeds-magnet", "loopback", id="libtorrent-seeds-magnet"),
    pytest.param("bridge-seeds", "veth", id="bridge-seeds-tcp-on-veth"),
    pytest.param("libtorrent-seeds", "veth", id="libtorrent-seeds-tcp-on-veth"),
]


@pytest.mark.parametrize(("direction", "bridge_tcp"), CASES)
def test_webrtc_transfer_with_libtorrent(network_namespaces: None, tmp_path: Path, direction: str,
                                         bridge_tcp: str) -> None:
    result = run_driver(direction, tmp_path / "run", bridge_tcp)
    context = result.pop("_diagnostics")
    total = result["total_size"]

    # The data: every file, checked here again from disk rather than trusting the driver's digests.
    source, downloaded = tree_sha256(Path(result["source_dir"])), tree_sha256(Path(result["download_dir"]))
    assert len(source) == 3 and source == result["expected"], "the source data changed under the test"
    assert downloaded == source, f"SHA-256 mismatch: {downloaded} != {source}\n{context()}"

    # WebRTC and nothing else, as both sides saw it.
    bridge_conns = result["bridge_connections"]
    assert bridge_conns, f"the bridge logged no peer connection\n{context()}"
    assert all(c.startswith("webrtc ") for c in bridge_conns), f"non-WebRTC peers at the bridge: {bridge_conns}"
    lt_conns = result["libtorrent_connections"]
    assert lt_conns, f"libtorrent reported no peer connection\n{context()}"
    assert all(c["socket"] == "RTC" for c in lt_conns), f"non-WebRTC peers at libtorrent: {lt_conns}"

    # Payload totals, as each side counted them.
    bridge_stats, lt_totals = result["bridge_stats"], result["libtorrent_totals"]
    if direction == "bridge-seeds":
        assert bridge_stats["uploaded"] >= total, (bridge_stats, total)
        assert lt_totals["downloaded"] >= total, (lt_totals, total)
        assert bridge_stats["downloaded"] == 0, bridge_stats
    else:
        assert bridge_stats["downloaded"] >= total, (bridge_stats, total)
        assert lt_totals["uploaded"] >= total, (lt_totals, total)
        assert bridge_stats["uploaded"] == 0, bridge_stats
