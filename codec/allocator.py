"""glibc's allocator, set for the codec's large CPU activations.

On a Kodak image at width 0.25 one LSTM's gates are 50 MB. glibc serves every block above its mmap
threshold (at most 32 MB by default) with a fresh mapping and unmaps it when freed, so each such tensor
is page-faulted in anew: ``compress`` of a 768×512 image at 16 iterations ran about 18% slower than
with freed blocks kept for reuse (``benchmarks/eval_speed.py``). This is what tcmalloc or jemalloc
would give, without either. Process-wide, so the command line sets it, never the library on import.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(limit: int = 1 << 30) -> bool:
    """Keep freed blocks of up to ``limit`` bytes in the heap for the next allocation, rather than
    returning each to the system. Returns whether it applied (False where the C library is not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))
