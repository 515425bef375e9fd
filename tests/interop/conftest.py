"""Fixtures for the interop tests: shared random data and a per-test ``Harness`` of real peers.

* ``payload`` (session): ``peers.Payload`` with a >= 32 MiB nested multi-file tree and a
  single file, plus their SHA-256 digests.
* ``harness`` (function): ``peers.Harness`` rooted at the test's tmp_path; starts trackers,
  libtorrent sessions, Transmission, aria2 and bridge processes, and stops all of them when the
  test ends. When a test fails, the tail of every log it produced (the bridge's first) is added
  to the report as a section.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from peers import Harness, Payload, make_payload, tail


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Payload:
    return make_payload(tmp_path_factory.mktemp("payload"))


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    request.node.interop_harness = h
    try:
        yield h
    finally:
        h.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    h: Harness | None = getattr(item, "interop_harness", None)
    if h is not None and report.failed:
        logs = sorted(h.log_files(), key=lambda nl: not nl[0].startswith("bridge"))
        for name, path in logs:
            if path.exists() and path.stat().st_size:
                report.sections.append((f"{name} ({path})", tail(path, max_lines=300, max_chars=60_000)))
    return report
