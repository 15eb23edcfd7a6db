"""Process-level tuning for the store's data path (called by ``gearkv store``, never by a library).

Every chunk moves through a few fresh 1-4 MiB buffers (gRPC messages, the joined Redis value). With
glibc's defaults those come from ``mmap`` or from heap memory that ``free`` trims straight back to
the kernel, so each MiB costs ~256 page faults and page clearing: measured, 0.5-0.7 ms of store CPU per
MiB moved (15-20 %). Keeping freed memory in the heap (trim threshold 512 MiB, mmap only above
32 MiB) reuses the same pages; the price is that the process keeps its peak heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("gearkv.store")
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep and reuse freed big buffers; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    log.debug("malloc tuning %s", "applied" if ok else "refused")
    return ok
