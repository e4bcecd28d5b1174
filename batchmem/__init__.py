"""batchmem: run large batch jobs with bounded memory.

Batches are sized from live memory use and from what past runs of the same
operation measured; results stream to JSONL instead of piling up in memory.

    >>> from batchmem import BatchProcessor
    >>> result = BatchProcessor(autoOptimize=True, progress=False).process(range(10), lambda x: x * 2)
    >>> list(result)[:3]
    [0, 2, 4]
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    BatchFunctionError,
    BatchmemError,
    ConfigError,
    ItemFailedError,
    JobFileError,
    OutputExistsError,
    SerializationError,
)
from .heap import HeapAnalyzer, MemoryMonitor, MemorySample, PeakMemoryTracker, PressureLevel
from .io.sources import read_csv, read_jsonl, read_parquet
from .optimizer import BatchOptimizer
from .processor import BatchProcessor, BatchResult
from .stats import RunStats

try:
    __version__ = version("batchmem")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
