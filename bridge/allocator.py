"""glibc malloc settings for the long-running commands (tracker, seed, download, serve, demo).

By default glibc gives freed memory at the top of its heap back to the kernel as soon as more than 128 KiB
is free there (``M_TRIM_THRESHOLD``), and takes it back with ``brk`` on the next burst of allocations. Every
page taken back costs a page fault and a zeroed page. A busy server allocates and frees in bursts all the
time: under bench/tracker_load.py the embedded tracker called ``brk`` about 500 times a second, and `perf`
put 16% of its CPU in page faults. Keeping up to ``TRIM_THRESHOLD`` free at the top of the heap ends that
churn (about 20k -> 26k announces per CPU-second in that bench).

Setting the trim threshold also turns off glibc's sliding mmap threshold, which would otherwise have moved
up to the size of the buffers we free (pieces, upload batches) so that they come from the heap; without it
every block of 128 KiB or more would be mmapped and faulted in afresh. ``MMAP_THRESHOLD`` keeps buffers up
to 4 MiB in the heap, as the sliding threshold would have (pieces over 4 MiB, which only very large torrents
use, get a mapping of their own each time).

Nothing is done when the C library is not glibc, or when the user has set either threshold, the top pad or
the mmap count themselves (``MALLOC_TRIM_THRESHOLD_`` and the like, or the same in ``GLIBC_TUNABLES``):
their choice wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

#: Bytes glibc may keep free at the top of the heap before it returns them to the kernel.
TRIM_THRESHOLD = 16 * 1024 * 1024
#: Allocations of this size and larger get their own mapping; smaller ones come from the heap.
MMAP_THRESHOLD = 4 * 1024 * 1024

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


#: What a user may have set already: the environment variables, and the same as GLIBC_TUNABLES names.
_USER_SETTINGS = ("trim_threshold", "mmap_threshold", "top_pad", "mmap_max")


def _user_chose(environ: Mapping[str, str]) -> bool:
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(f"MALLOC_{name.upper()}_" in environ or f"glibc.malloc.{name}" in tunables
               for name in _USER_SETTINGS)


def tune_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Apply TRIM_THRESHOLD and MMAP_THRESHOLD with mallopt(3). Returns whether they were applied."""
    environ = os.environ if environ is None else environ
    if _user_chose(environ):
        log.debug("malloc: left as the environment sets it")
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    log.debug("malloc: trim threshold %d, mmap threshold %d: %s", TRIM_THRESHOLD, MMAP_THRESHOLD,
              "set" if ok else "refused")
    return ok
