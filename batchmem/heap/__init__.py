"""Memory readings, limits and pressure (:mod:`batchmem.heap.monitor`); leak and GC analysis
(:mod:`batchmem.heap.analyzer`)."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): a worker reads memory through batchmem.heap.malloc and
# batchmem.heap.monitor without importing the analyzer and numpy.
_LAZY = {
    "HeapAnalyzer": "batchmem.heap.analyzer",
    "Issue": "batchmem.heap.analyzer",
    **dict.fromkeys(
        (
            "MemoryLimit",
            "MemoryMonitor",
            "MemorySample",
            "PeakMemoryTracker",
            "PressureLevel",
            "PressureThresholds",
            "current_rss_bytes",
            "detect_memory_limit",
            "parse_size",
            "resolve_memory_limit",
        ),
        "batchmem.heap.monitor",
    ),
}

if TYPE_CHECKING:
    from batchmem.heap.analyzer import HeapAnalyzer, Issue
    from batchmem.heap.monitor import (
        MemoryLimit,
        MemoryMonitor,
        MemorySample,
        PeakMemoryTracker,
        PressureLevel,
        PressureThresholds,
        current_rss_bytes,
        detect_memory_limit,
        parse_size,
        resolve_memory_limit,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchmem.heap' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "HeapAnalyzer",
    "Issue",
    "MemoryLimit",
    "MemoryMonitor",
    "MemorySample",
    "PeakMemoryTracker",
    "PressureLevel",
    "PressureThresholds",
    "current_rss_bytes",
    "detect_memory_limit",
    "parse_size",
    "resolve_memory_limit",
]
