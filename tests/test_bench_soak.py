"""bench/soak.py runs end to end with small counts (about 30 s): every kind of peer and client connects,
data flows both over TCP and WebRTC and checks out, and the report has its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


def test_soak_quick_with_small_counts(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--quick", "--tcp-peers", "20", "--rtc-peers", "5",
         "--ws-clients", "500", "--duration", "20", "--size-mib", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=150, cwd=REPO)
    report = res.stdout + res.stderr[-4000:]
    # 0: pass; 1: a soak verdict failed. On a busy shared machine a 20 s run may see a lag spike or RSS still
    # warming up; anything else (a connection shortfall, bad data, a crash) is a real failure.
    assert res.returncode in (0, 1), report
    summary = json.loads(out.read_text())["summary"]
    for failure in summary["failures"]:
        assert any(k in failure for k in ("RSS kept growing", "event-loop lag p99", "open fds grew")), report
    peers = summary["peers"]
    assert peers["tcp"]["connected_at_start"] == 20 and peers["tcp"]["connected_end"] == 20, report
    assert peers["rtc"]["connected_at_start"] == 5 and peers["rtc"]["connected_end"] == 5, report
    assert peers["ws"]["connected_at_start"] == 500 and peers["ws"]["connected_end"] == 500, report
    assert peers["tcp"]["bytes"] > 0 and peers["rtc"]["bytes"] > 0, report
    assert peers["tcp"]["pieces_ok"] > 0 and peers["tcp"]["pieces_bad"] == 0, report
    assert peers["rtc"]["pieces_ok"] > 0 and peers["rtc"]["pieces_bad"] == 0, report
    assert peers["ws"]["replies"] > 0, report
    for name in ("bridge", "tracker"):
        p = summary["processes"][name]
        assert p["rss_end"] > 0 and p["fds_end"] > 0, report
        assert p["lag"]["p99_ms"] is not None, report
    assert summary["processes"]["tracker"]["fds_end"] >= 500, report  # one per client
    assert summary["exit_codes"] == {"bridge": 0, "tracker": 0}, report
    assert "TCP peers" in res.stdout and ("PASS" in res.stdout or "FAIL" in res.stdout), report
