"""glibc's count of heap bytes in use (``mallinfo2``): a leak baseline steadier than RSS.

RSS moves with the allocator's free pages; ``mallinfo2().uordblks + hblkhd`` counts the bytes
malloc has handed out and not taken back (mallinfo(3), glibc >= 2.33). Workers read it at the start
of every batch, so this module is small and imports nothing heavy.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["heap_free_bytes", "heap_in_use_bytes", "reuse_large_blocks", "trim_heap"]


class _Mallinfo2(ctypes.Structure):
    """``struct mallinfo2`` (glibc >= 2.33, mallinfo(3)): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc(name: str) -> Any:
    """The C library's function ``name``, or None where it has none (not glibc, or too old)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _load_mallinfo2() -> Any:
    fn = _glibc("mallinfo2")  # glibc >= 2.33
    if fn is not None:
        fn.restype = _Mallinfo2
        fn.argtypes = []
    return fn


#: glibc's mallinfo2, malloc_trim and mallopt, resolved once at import (None where unavailable); read-only.
_MALLINFO2 = _load_mallinfo2()
_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")


def heap_in_use_bytes() -> int | None:
    """Bytes malloc has handed out and not had back in this process, or None off glibc.

    ``uordblks + hblkhd`` of glibc's ``mallinfo2()`` (mallinfo(3)): allocated
    heap chunks plus mmapped blocks (CPython's pymalloc arenas are mmapped, so
    small objects count too). Unlike RSS it excludes freed memory the
    allocator keeps for reuse, so allocate-and-free work of varying sizes
    leaves it flat while RSS ratchets up by megabytes (measured in
    benchmarks/bench_leaks.py). Cost ~10 us.
    """
    if _MALLINFO2 is None:
        return None
    m = _MALLINFO2()
    return int(m.uordblks + m.hblkhd)


def heap_free_bytes() -> int | None:
    """Bytes malloc holds free for reuse in this process (``mallinfo2().fordblks``), or None off glibc.

    Free chunks of every arena plus the top chunk (mallinfo(3)). The next allocations are served
    from them before the heap grows, so a block of work can use up to this many bytes without its
    resident size moving: :func:`batchmem.backends.worker.run_batch` counts them into a batch's
    peak. An upper bound of what is resident: chunks that ``malloc_trim`` gave back with
    ``madvise`` stay counted. Cost ~10 us.
    """
    if _MALLINFO2 is None:
        return None
    return int(_MALLINFO2().fordblks)


def reuse_large_blocks(limit: int = 256 << 20) -> bool:
    """Serve blocks up to ``limit`` bytes from the heap and keep up to ``limit`` free at its top, in
    this process (mallopt(3) ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``); False where glibc's
    ``mallopt`` is unavailable or refuses.

    glibc's own threshold moves up to 32 MiB at most (its ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit,
    mallopt(3)), so a larger block, a 40 MiB array, is mapped and unmapped every time and every use
    faults its pages in again: 3.47 ms against 1.42 ms an item for ``np.ones(40 MiB)`` with the pages
    kept (the memory workload of benchmarks/bench_peers.py). Setting either value turns glibc's
    dynamic threshold off for good, so this is for processes batchmem owns (its workers), once.
    """
    if _MALLOPT is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(_MALLOPT(m_mmap_threshold, limit)) and bool(_MALLOPT(m_trim_threshold, limit))


def trim_heap() -> None:
    """Hand the free heap's pages back to the kernel (glibc ``malloc_trim(0)``; nothing elsewhere).

    About 0.15 ms for a fragmented heap of small free chunks, 2.3 ms for a freed 40 MiB block."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
