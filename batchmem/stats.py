"""Run statistics: the :class:`RunStats` summary and the per-batch record stream."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "RunStats",
    "BatchRecordWriter",
    "read_batch_records",
    "batch_records_frame",
    "items_per_second",
    "bytes_per_item",
    "write_json_atomic",
]


def items_per_second(items: float, duration_s: float) -> float:
    """Throughput, items/s: ``items`` divided by the wall-clock ``duration_s`` (seconds) of the run.

    The one definition used by :class:`RunStats`, the per-operation history
    and every report (0.0 when nothing was timed).
    """
    return items / duration_s if duration_s > 0 else 0.0


def bytes_per_item(peak_bytes_sum: float, items: float) -> float:
    """Memory cost, bytes/item: the sum over batches of each batch's peak RSS growth
    above its starting level (bytes), divided by the items of those batches.

    The one definition used by :class:`RunStats`, the per-operation history
    and every report (0.0 for no items).
    """
    return peak_bytes_sum / items if items else 0.0


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
    batches peak together). On remote workers (dask) it is the highest peak
    measured in a worker process (its RSS at the batch's start plus the batch's
    peak growth) and ``client_peak_rss_bytes`` is this machine's. ``bytes_per_item`` is the peak RSS growth of a batch
    over its starting level divided by its items, over all batches
    (:func:`bytes_per_item`); ``items_per_s`` is items over the run's wall
    seconds (:func:`items_per_second`). ``learned_batch_size`` (items) is what
    the optimizer learned (the fixed size when ``auto_optimize=False``), the
    size the next run of the operation starts at.
    """

    process_name: str
    items: int = 0
    failed: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    items_per_s: float = 0.0
    peak_rss_bytes: int = 0
    client_peak_rss_bytes: int = 0  # remote workers (dask): this process tree's own peak; peak_rss_bytes is a worker's
    bytes_per_item: float = 0.0
    memory_limit_bytes: int = 0
    limit_source: str = ""
    n_jobs: int = 1
    n_jobs_choice: str = ""  # n_jobs="auto": what was chosen and why (batchmem.backends.auto)
    backend: str = "serial"
    status: str = "running"  # "running" | "completed" | "failed" | "stopped" | "interrupted"
    stop_reason: str | None = None
    resumed_from: int = 0  # items already committed by an earlier run (resume)
    remaining: int | None = None  # items of a sized source not committed when the run stopped
    # The whole output across resumes: its committed items and failures (from its checkpoint), and one
    # record per run that wrote it (part_record(); this run last). items/failed above are this run's.
    output_items: int = 0
    output_failed: int = 0
    parts: list[dict[str, Any]] = field(default_factory=list)
    memory_errors: int = 0
    watchdog_kills: int = 0  # worker processes the OOM watchdog killed above the terminate level
    worker_deaths: int = 0  # worker processes that died during the run (their batches were retried in halves)
    # How batch peaks were measured: "rss" (resident set growth), "worker_cgroups" (each worker's own
    # memory cgroup charge, tmpfs and page cache included; batchmem/backends/worker_cgroups.py), or, in a
    # limiting cgroup without worker groups, "cgroup_delta" / "cgroup_apportioned" (the cgroup's working-set
    # gain over a batch, whole or split over the batches in flight, when above the RSS growth; run.py)
    memory_accounting: str = "rss"
    timeouts: int = 0  # items recorded as failed for running past item_timeout
    learned_batch_size: int | None = None  # items
    settings: dict[str, Any] = field(default_factory=dict)  # options advice checks (optimizer.advice.RunSettings)
    weight_unit: str = "items"  # what batches were budgeted in (batchmem.weights.weight_unit)
    weight: float = 0.0  # total weight of the committed items, weight units
    bytes_per_weight: float = 0.0  # peak bytes of a batch over its starting level per weight unit, over all batches
    gc_collections: int = 0
    gc_collected_between_batches: int = 0  # objects found unreachable by batchmem's own collections between batches
    gc_collections_by_generation: list[int] = field(default_factory=lambda: [0, 0, 0])  # this process, via gc.callbacks
    gc_pause_s: float = 0.0  # seconds spent in garbage collection in this process during the run
    gc_max_pause_s: float = 0.0  # longest single collection, seconds
    issues: list[dict[str, Any]] = field(default_factory=list)
    output_path: str | None = None
    errors_path: str | None = None
    stats_path: str | None = None
    batches_path: str | None = None
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0  # epoch seconds

    @property
    def resumes(self) -> int:
        """How many times the output was resumed: its parts after the first."""
        return max(0, len(self.parts) - 1)

    def part_record(self) -> dict[str, Any]:
        """This run as one part of its output: items, failed, batches, duration_s, status, started_at."""
        return {
            "items": self.items,
            "failed": self.failed,
            "batches": self.batches,
            "duration_s": self.duration_s,
            "status": self.status,
            "started_at": self.started_at,
        }

    def close_part(self, output_items: int, output_failed: int) -> None:
        """Add this run as the last part of its output, whose committed items and failures (its
        checkpoint's counts, every part included) are ``output_items`` and ``output_failed``."""
        self.parts.append(self.part_record())
        self.output_items, self.output_failed = output_items, output_failed

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
        """The per-batch records of this run as a typed pandas DataFrame (one row per batch).

        See :func:`batch_records_frame` for the columns and their dtypes.
        """
        return batch_records_frame(self.batches_path)


class BatchRecordWriter:
    """Streams one JSON record per batch to ``<output>.batches.jsonl`` (not kept in memory).

    Fields: index, start_time (epoch s), items (items actually cut),
    batch_size (items the batcher asked for; ``items`` is smaller for the
    source's tail or a half retried after a MemoryError), duration_s (wall s),
    peak_bytes (peak RSS growth during the batch), rss_after_bytes (tree RSS
    after it), pressure (label), failed (items), gc_collections, pid.
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


#: Columns of :func:`batch_records_frame` and their pandas dtypes (units in the names).
BATCH_COLUMNS = {
    "index": "int64",
    "start_time": "datetime64[ns, UTC]",
    "items": "int64",
    "batch_size": "int64",
    "duration_s": "float64",
    "peak_bytes": "int64",
    "rss_after_bytes": "int64",
    "pressure": "category",
    "failed": "int64",
    "gc_collections": "int64",
    "pid": "int64",
}
PRESSURE_LABELS = ("normal", "warning", "critical", "emergency")


def batch_records_frame(path: str | os.PathLike[str] | None) -> Any:
    """Read a ``.batches.jsonl`` file into a typed pandas DataFrame (one row per batch).

    Columns: index, start_time (``datetime64[ns, UTC]``), items, batch_size
    (items), duration_s (s), peak_bytes, rss_after_bytes (bytes), pressure
    (ordered category normal < warning < critical < emergency), failed,
    gc_collections, pid; extra keys follow. A missing file gives an empty
    frame with the same columns.
    """
    import pandas as pd

    rows = list(read_batch_records(path)) if path and Path(path).exists() else []
    df = pd.DataFrame(rows)
    for col in BATCH_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype="float64")
    df = df[list(BATCH_COLUMNS) + [c for c in df.columns if c not in BATCH_COLUMNS]]
    df["start_time"] = pd.to_datetime(df["start_time"], unit="s", utc=True)
    for col, dtype in BATCH_COLUMNS.items():
        if dtype == "int64":
            df[col] = pd.to_numeric(df[col]).fillna(0).astype("int64")
        elif dtype == "float64":
            df[col] = pd.to_numeric(df[col]).astype("float64")
    df["pressure"] = pd.Categorical(df["pressure"], categories=list(PRESSURE_LABELS), ordered=True)
    return df
