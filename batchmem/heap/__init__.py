"""Memory readings, limits and pressure (:mod:`batchmem.heap.monitor`); leak and GC analysis
(:mod:`batchmem.heap.analyzer`)."""

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
