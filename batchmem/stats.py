"""Run statistics: the :class:`RunStats` summary and the per-batch record stream."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["RunStats", "BatchRecordWriter", "read_batch_records", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


@dataclass
class RunStats:
    """What one run cost. Sizes in bytes, durations in seconds, counts in items.

    ``peak_rss_bytes`` is the largest resident set size of the process tree
    seen during the run: sampled between batches plus the high-water mark of
    each batch measured where it ran (exact for serial runs; for parallel runs
    the settled tree RSS plus the batch's own peak, a lower bound when several
    batches peak together). ``bytes_per_item`` is the peak RSS growth of a batch
    over its starting level divided by its items, over all batches.
    """

    process_name: str
    items: int = 0
    failed: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    items_per_s: float = 0.0
    peak_rss_bytes: int = 0
    bytes_per_item: float = 0.0
    memory_limit_bytes: int = 0
    limit_source: str = ""
    n_jobs: int = 1
    backend: str = "serial"
    status: str = "running"  # "running" | "completed" | "failed" | "stopped" | "interrupted"
    stop_reason: str | None = None
    resumed_from: int = 0  # items already committed by an earlier run (resume)
    memory_errors: int = 0
    gc_collections: int = 0
    gc_collected_between_batches: int = 0
    issues: list[dict[str, Any]] = field(default_factory=list)
    output_path: str | None = None
    errors_path: str | None = None
    stats_path: str | None = None
    batches_path: str | None = None
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0  # epoch seconds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunStats:
        """Read a ``<output>.stats.json`` file."""
        return cls.from_dict(orjson.loads(Path(path).read_bytes()))

    def to_dataframe(self) -> Any:
        """The per-batch records of this run as a pandas DataFrame (one row per batch)."""
        import pandas as pd

        if not self.batches_path or not Path(self.batches_path).exists():
            return pd.DataFrame()
        return pd.DataFrame(list(read_batch_records(self.batches_path)))


class BatchRecordWriter:
    """Streams one JSON record per batch to ``<output>.batches.jsonl`` (not kept in memory).

    Fields: index, start_time (epoch s), items, batch_size (items asked for),
    duration_s, peak_bytes, rss_after_bytes, pressure, failed, gc_collections, pid.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "wb"):
        self.path = Path(path)
        self._f = open(self.path, mode)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_batch_records(path: str | os.PathLike[str]) -> Any:
    """Iterate the per-batch records of a ``.batches.jsonl`` file."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)
