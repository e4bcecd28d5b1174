"""batchmem: run large batch jobs with bounded memory.

Batches are sized from live memory use and from what past runs of the same
operation measured; results stream to JSONL instead of piling up in memory.

    >>> from batchmem import BatchProcessor
    >>> result = BatchProcessor(autoOptimize=True, progress=False).process(range(10), lambda x: x * 2)
    >>> list(result)[:3]
    [0, 2, 4]
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    BatchFunctionError,
    BatchmemError,
    ConfigError,
    ItemFailedError,
    JobFileError,
    OutputExistsError,
    SerializationError,
)

# The rest is imported on first use (PEP 562 module __getattr__), so that a worker process, which
# imports batchmem.backends.worker to run a batch, does not import the processor, the heap
# analyzer and numpy with it.
_LAZY = {
    "HeapAnalyzer": ".heap.analyzer",
    "MemoryMonitor": ".heap.monitor",
    "MemorySample": ".heap.monitor",
    "PeakMemoryTracker": ".heap.monitor",
    "PressureLevel": ".heap.monitor",
    "read_csv": ".io.sources",
    "read_jsonl": ".io.sources",
    "read_parquet": ".io.sources",
    "BatchOptimizer": ".optimizer",
    "BatchProcessor": ".processor",
    "BatchResult": ".result",
    "RunStats": ".stats",
}

if TYPE_CHECKING:
    from .heap.analyzer import HeapAnalyzer
    from .heap.monitor import MemoryMonitor, MemorySample, PeakMemoryTracker, PressureLevel
    from .io.sources import read_csv, read_jsonl, read_parquet
    from .optimizer import BatchOptimizer
    from .processor import BatchProcessor
    from .result import BatchResult
    from .stats import RunStats


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata costs ~30 ms to import: not paid by workers
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("batchmem")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0.0.0"
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchmem' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = [
    "BatchProcessor",
    "BatchResult",
    "BatchOptimizer",
    "HeapAnalyzer",
    "MemoryMonitor",
    "MemorySample",
    "PeakMemoryTracker",
    "PressureLevel",
    "RunStats",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "BatchmemError",
    "ConfigError",
    "JobFileError",
    "SerializationError",
    "BatchFunctionError",
    "OutputExistsError",
    "ItemFailedError",
    "__version__",
]
