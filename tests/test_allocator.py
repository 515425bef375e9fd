"""bridge.allocator: the glibc malloc settings that stop the heap's trim-and-fault churn."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

from bridge.allocator import tune_malloc

# Allocate 4 MiB in 4 KiB objects (too big for Python's own small-object allocator, so they come from
# malloc), free them all, and do it again: count the page faults of the rounds after the first.
CHURN = textwrap.dedent("""
    import resource, sys
    from bridge.allocator import tune_malloc
    applied = tune_malloc({}) if sys.argv[1] == "tuned" else False
    def churn():
        blocks = [bytes(4096) for _ in range(1024)]
        del blocks
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        churn()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=60, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_tuned_heap_stops_faulting_on_reuse() -> None:
    assert platform.libc_ver()[0] == "glibc", (
        f"this test needs glibc (the C library here is {platform.libc_ver()[0] or 'unknown'}); "
        "tune_malloc does nothing elsewhere")
    applied, tuned = _faults("tuned")
    assert applied
    _, stock = _faults("stock")
    # Stock glibc trims the 4 MiB after each round and faults it back in: about 1,000 faults a round.
    assert stock > 10_000, f"stock glibc faulted only {stock} times: the test no longer shows the churn"
    assert tuned < stock / 10, f"tuned heap still faults: {tuned} faults against {stock} stock"


def test_user_settings_win() -> None:
    assert tune_malloc({"MALLOC_TRIM_THRESHOLD_": "131072"}) is False
    assert tune_malloc({"MALLOC_TOP_PAD_": "0"}) is False
    assert tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) is False
    assert tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is (platform.libc_ver()[0] == "glibc")
