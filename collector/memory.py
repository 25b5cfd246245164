"""glibc's allocator, set so that the memory budget (README "Sizing") holds.

By default glibc gives each thread that allocates its own arena, and raises its mmap threshold to the size of
the largest block freed (up to 32 MiB). Both keep memory that Python has freed: a large history's body is read
on the event loop and its text decoded in the parse thread, so each lands in another arena, and a 30 MB body
freed below the raised threshold stays in the heap. With two refused 30 MB histories retried in turn
(``--interval 5``, 90 s), the peak RSS was 151 MB and 125 MB stayed between retries; with one arena and a
fixed 1 MiB threshold (every large body and text its own mapping, returned whole when freed) the peak is
124 MB and RSS returns to 63 MB. The collector's threads are few (the parse thread, bcrypt checks, the state
writer), so one arena costs nothing measurable.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20


def tune_allocator() -> bool:
    """Set glibc's arenas and mmap threshold; False where the C library is not glibc (nothing to set).
    Called first thing, before any thread exists: an arena made before stays."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: glibc's, with no ldconfig to run
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
