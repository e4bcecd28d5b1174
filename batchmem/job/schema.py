"""The job file's schema: pydantic models, one per section, that forbid unknown keys.

Each model validates what it can see alone (types, ranges, one field against
another) and raises :class:`FieldError` to name the sub-field a cross-field
problem is about; :mod:`batchmem.job.load` turns pydantic's errors into one
line. Relative paths are resolved against the job file's folder, passed in
the validation context as ``base_dir``. What a validated job *does*
(imports, sources, the processor, file checks) is :mod:`batchmem.job.actions`.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..callables import is_reference, short_repr
from ..errors import ConfigError
from ..heap.monitor import parse_size
from .actions import JobActions

__all__ = ["BatchingConfig", "ExecutionConfig", "FieldError", "Job", "OutputConfig", "SourceConfig", "unwrap_model"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*$")


#: Source types inferred from a file name (compression suffixes are stripped first).
_SOURCE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"}


class FieldError(ValueError):
    """A cross-field error raised inside a model validator, naming the sub-field it is about.

    pydantic keeps the original exception in the error's ``ctx``, so
    the loader (:mod:`batchmem.job.load`) can extend the location with ``field``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _memory_limit(value: Any) -> int | float | None:
    """Normalise ``batching.memory_limit``: None, int bytes (> 0), fraction in (0, 1], or size string -> bytes."""
    fix = (
        "use a size string like 512MB or 2GiB, an integer number of bytes, "
        "or a fraction 0 < f <= 1 of the detected limit"
    )
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory limit; {fix}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} bytes is not a memory limit; {fix}")
        return value
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{value} is not a fraction in (0, 1]; {fix}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                fraction = float(text[:-1]) / 100.0
            except ValueError:
                raise ValueError(f"{value!r} is not a percentage; {fix}") from None
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"{value!r} is not a percentage in (0, 100]; {fix}")
            return fraction
        try:
            size = parse_size(text)
        except (ConfigError, ValueError, TypeError):
            raise ValueError(f"{value!r} is not a size; {fix}") from None
        if size <= 0:
            raise ValueError(f"{value!r} is zero bytes; {fix}")
        return size
    raise ValueError(f"{short_repr(value)} ({type(value).__name__}) is not a memory limit; {fix}")


# --------------------------------------------------------------------------- paths


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Make ``path`` absolute against the job file's folder (``context["base_dir"]``), else the cwd."""
    if path is None:
        return None
    path = Path(os.path.expanduser(str(path)))
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir")
        path = (Path(base) if base is not None else Path.cwd()) / path
    return Path(os.path.normpath(path))


def _infer_source_type(path: str) -> str | None:
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return _SOURCE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def unwrap_model(annotation: Any) -> Any:
    """The model class inside ``Model | None`` (or the annotation itself)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    """Base of every job-file model: unknown keys are errors; YAML types are taken as written."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class SourceConfig(_Section):
    """``source``: where the items come from."""

    type: Literal["jsonl", "csv", "parquet", "python"] | None = Field(
        None,
        description=(
            "Kind of source. Default: inferred from the path's extension (.csv/.tsv, .jsonl/.ndjson, "
            ".parquet/.pq; a .gz/.zip/.bz2/.xz/.zst suffix is looked through). "
            "`python`: `path` is `module:callable` returning an iterable or a BatchSource."
        ),
    )
    path: str = Field(
        description=(
            "Data file (relative paths resolve against the job file's folder), "
            "or `module:callable` when `type: python` (imported with the job file's folder on sys.path)."
        ),
    )
    usecols: list[str | int] | None = Field(
        None, description="Columns to read (csv: pandas `usecols`; parquet: `columns`; not for jsonl). Default: all."
    )
    dtype: str | dict[str, str] | None = Field(
        None, description="pandas dtype for every column, or a mapping column -> dtype (csv, jsonl). Default: inferred."
    )
    parse_dates: bool | list[str] | None = Field(
        None, description="Columns to parse as datetimes (csv: `parse_dates`; jsonl: `convert_dates`). Default: none."
    )
    compression: Literal["infer", "gzip", "bz2", "zip", "xz", "zstd", "tar"] | None = Field(
        None, description="Compression of a csv/jsonl file. Default: inferred from the extension (.gz, .zip, ...)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra keyword arguments: passed to the pandas reader (csv/jsonl/parquet), "
            "or to the callable (`type: python`). Default: none."
        ),
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> SourceConfig:
        if self.type is None:
            inferred = _infer_source_type(self.path)
            if inferred is None:
                raise FieldError(
                    "type",
                    f"cannot infer the source type from {self.path!r}; set type: csv, jsonl, parquet or python",
                )
            self.type = inferred  # type: ignore[assignment]
        if self.type == "python":
            if not is_reference(self.path):
                raise FieldError(
                    "path",
                    f"with type: python, path must be 'module:callable' (e.g. 'items:generate'), got {self.path!r}",
                )
            for key in ("usecols", "dtype", "parse_dates", "compression"):
                if getattr(self, key) is not None:
                    raise FieldError(key, "applies to csv, jsonl and parquet sources only; remove it for type: python")
            return self
        if self.type == "jsonl" and self.usecols is not None:
            raise FieldError(
                "usecols",
                "is not supported for jsonl sources (pandas reads every field); "
                "remove it and select columns in the function",
            )
        if self.type == "parquet":
            for key in ("dtype", "parse_dates", "compression"):
                if getattr(self, key) is not None:
                    raise FieldError(key, "is not used by parquet sources (the file carries its types); remove it")
        resolved = _resolve(Path(self.path), info)
        self.path = str(resolved)
        return self

    def reader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pandas reader of this source (only the keys that were set)."""
        kwargs: dict[str, Any] = {}
        if self.type == "parquet":
            if self.usecols is not None:
                kwargs["columns"] = list(self.usecols)
        else:
            if self.usecols is not None:
                kwargs["usecols"] = list(self.usecols)
            if self.dtype is not None:
                kwargs["dtype"] = self.dtype
            if self.parse_dates is not None:
                kwargs["convert_dates" if self.type == "jsonl" else "parse_dates"] = self.parse_dates
            if self.compression is not None:
                kwargs["compression"] = self.compression
        kwargs.update(self.options)
        return kwargs


class BatchingConfig(_Section):
    """``batching``: batch sizes and the memory the run may use."""

    auto_optimize: bool = Field(
        True, description="Let the optimizer resize batches from live measurements and history."
    )
    batch_size: int = Field(100, gt=0, description="First batch size (or the fixed size without auto_optimize), items.")
    min_batch_size: int = Field(1, gt=0, description="Smallest batch the optimizer may choose, items.")
    max_batch_size: int = Field(1_000_000, gt=0, description="Largest batch the optimizer may choose, items.")
    memory_limit: Any = Field(
        None,
        description=(
            "Memory the run may use: a size string (`512MiB`, `2GiB`; decimal `MB`/`GB` too), an integer of bytes, "
            "or a fraction 0<f<=1 (or `50%`) of the detected limit. Default: the detected limit "
            "(cgroup, rlimit or physical RAM)."
        ),
        json_schema_extra={"type_label": "size string | int (bytes) | float (fraction) | null"},
    )
    target_batch_seconds: tuple[float, float] = Field(
        (0.2, 2.0),
        strict=False,
        description="[low, high] wall time per batch the optimizer aims for, seconds.",
    )
    memory_target_fraction: float = Field(
        0.6, gt=0.0, le=1.0, description="Share of the free memory under the limit that batches in flight may fill."
    )
    use_history: bool = Field(
        True, description="Warm-start from, and record into, the operation's run history (`batchmem stats`)."
    )
    weight: str = Field(
        "auto",
        description=(
            "Cost unit of an item, so batches are budgeted in it: `auto` (its size: characters, bytes, file size; "
            "1 for numbers), `none` (count items), or `module:callable` returning a number >= 0 per item."
        ),
    )

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: str) -> str:
        if value not in ("auto", "none") and not is_reference(value):
            raise ValueError(f"expected auto, none or 'module:callable' such as 'weights:tokens', got {value!r}")
        return value

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, value: Any) -> Any:
        return _memory_limit(value)

    @model_validator(mode="after")
    def _check(self) -> BatchingConfig:
        if self.min_batch_size > self.max_batch_size:
            raise FieldError(
                "min_batch_size",
                f"min_batch_size ({self.min_batch_size}) is larger than max_batch_size ({self.max_batch_size}); "
                "lower min_batch_size or raise max_batch_size",
            )
        if not self.min_batch_size <= self.batch_size <= self.max_batch_size:
            raise FieldError(
                "batch_size",
                f"batch_size ({self.batch_size}) must lie between min_batch_size ({self.min_batch_size}) "
                f"and max_batch_size ({self.max_batch_size}); change one of them",
            )
        low, high = self.target_batch_seconds
        if not 0.0 < low <= high:
            raise FieldError(
                "target_batch_seconds",
                f"[{low}, {high}] must be two positive numbers of seconds with low <= high, e.g. [0.2, 2.0]",
            )
        return self


class ExecutionConfig(_Section):
    """``execution``: where batches run."""

    n_jobs: int | Literal["auto"] = Field(
        1,
        description=(
            "Batches run at once: 1 runs in-process; -1 uses every CPU (joblib convention); `auto` runs in-process "
            "until an item costs more than shipping it to a worker, then uses as many workers as fit. Not 0."
        ),
    )
    backend: Literal["loky", "threading", "multiprocessing", "dask", "sequential"] | None = Field(
        None,
        description=(
            "loky, multiprocessing or threading (batchmem's own worker pools), dask, or sequential. Default: "
            "in-process for n_jobs 1, else joblib's configured backend, loky unless set "
            "(dask when scheduler_address is set)."
        ),
    )
    scheduler_address: str | None = Field(
        None,
        description=(
            "Address of a dask scheduler (`tcp://host:8786`) to connect to; implies backend dask. "
            "Default: none (dask's default client)."
        ),
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for a scheduler address that does not answer (refused fails at once)."
    )
    max_tasks_per_worker: int | None = Field(
        None, ge=1, description="Replace the worker processes after this many batches each. Default: never."
    )
    recycle_leaking_workers: bool = Field(
        True, description="Replace the worker processes when the heap analyzer flags a leak in one."
    )
    n_jobs_strict: bool = Field(
        False,
        description=(
            "Fail (exit 2) instead of starting fewer worker processes than n_jobs when only fewer fit under "
            "the memory target once each one's baseline is paid. Default: run the ones that fit, and say so."
        ),
    )
    stop_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="After SIGINT/SIGTERM, seconds the batches in flight may take before they are cancelled.",
    )
    worker_cgroups: bool = Field(
        True,
        description=(
            "Inside a memory cgroup with a limit, where the hierarchy is writable (cgroup v1, root), give each "
            "worker process a child cgroup with its share of the limit."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ExecutionConfig:
        if self.n_jobs == 0:
            raise FieldError(
                "n_jobs", "n_jobs must not be 0; use 1 to run in-process, N > 1 workers, or -1 for every CPU"
            )
        if self.scheduler_address is not None:
            if self.backend is None:
                self.backend = "dask"
            elif self.backend != "dask":
                raise FieldError(
                    "backend",
                    f"backend {self.backend!r} cannot use scheduler_address; "
                    "set backend: dask or remove scheduler_address",
                )
        return self


class ThresholdsConfig(_Section):
    """``pressure.pressure_thresholds``: utilization of the limit at which pressure escalates."""

    warning: float = Field(0.80, gt=0, le=1, description="Shrink batches and collect garbage from here.")
    critical: float = Field(0.90, gt=0, le=1, description="Pause dispatch (backpressure) from here.")
    emergency: float = Field(0.95, gt=0, le=1, description="Run cleanup callbacks and stop cleanly from here.")


class PressureConfig(_Section):
    """``pressure``: what happens as memory use nears the limit."""

    memory_monitoring: bool = Field(True, description="Sample the process tree's RSS after every batch.")
    pressure_thresholds: ThresholdsConfig = Field(
        default_factory=ThresholdsConfig,
        description="Escalation levels (mapping; see `pressure.pressure_thresholds.*`).",
    )
    adaptive_thresholds: bool | dict[str, float] = Field(
        False,
        description=(
            "true (or a mapping of warning_mb/critical_mb/emergency_mb) puts the levels at the run's starting "
            "RSS + 50/70/90 MB instead."
        ),
    )
    pressure_max_wait_s: float = Field(
        10.0, ge=0, description="Longest pause of dispatch at critical pressure, seconds; then min_batch_size."
    )
    terminate_fraction: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Share of the limit at which the OOM watchdog kills the worker process holding the most memory.",
    )


class AnalysisConfig(_Section):
    """``analysis``: heap analysis and garbage collection."""

    trace_allocations: bool = Field(
        False, description="Trace allocations (tracemalloc) so leak verdicts name source lines; 3-5x slower."
    )
    gc_max_time_fraction: float = Field(
        0.05, gt=0, le=1, description="Share of wall time garbage collection between batches may take."
    )
    force_gc_on_completion: bool = Field(False, description="Run gc.collect() once the run ends.")
    analyzer: dict[str, Any] = Field(
        default_factory=dict, description="Options of the heap analyzer (window, min_batches, min_confidence, ...)."
    )


class OutputConfig(_Section):
    """``output``: where results, failed items and stats go."""

    path: Path = Field(
        strict=False,
        description=(
            "Results file, one line (jsonl) or row (parquet) per input item, in input order; stats go to "
            "`<path>.stats.json`. Relative paths resolve against the job file's folder."
        ),
    )
    format: Literal["jsonl", "parquet"] | None = Field(
        None,
        description=(
            "`jsonl` or `parquet` (needs the parquet extra). Default: from the suffix (.parquet/.pq), else jsonl."
        ),
    )
    errors: Path | None = Field(
        None,
        strict=False,
        description="JSONL file for failed items (on_error: skip/retry). Default: the processor's default.",
    )
    overwrite: bool = Field(
        False,
        description="Replace an existing output file. Without it an existing output is an error (unless --resume).",
    )
    fsync: bool = Field(
        True,
        description=(
            "Force each batch to disk (fsync) before the checkpoint is replaced: committed batches survive a "
            "power cut, not only a kill -9. false saves about one disk sync per batch."
        ),
    )
    json_default: Literal["str"] | None = Field(
        None,
        description=(
            "Fallback for results orjson cannot encode: `str` writes `str(value)`. Default: none (such a result "
            "stops the run with an error naming its type and item index)."
        ),
    )

    @field_validator("path", "errors", mode="after")
    @classmethod
    def _resolve_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _infer_format(self) -> OutputConfig:
        if self.format is None:
            self.format = "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "jsonl"
        return self


class Job(JobActions, _Section):
    """A validated job file. Build one with :func:`load_job`; run it with :func:`run_job`."""

    name: str | None = Field(
        None,
        description=(
            "Operation name: the key of the run history and of the stats. "
            "Default: the job file's name without extension."
        ),
    )
    source: SourceConfig = Field(description="Where the items come from (mapping; see `source.*`).")
    function: str = Field(
        description=(
            "`package.module:callable` applied to each item (or each batch with `batched`), "
            "imported with the job file's folder on sys.path."
        ),
    )
    batched: bool = Field(
        False,
        description=(
            "false: fn(item) -> result. true: fn(batch) -> results of the same length "
            "(a DataFrame chunk for pandas sources)."
        ),
    )
    setup: str | None = Field(
        None,
        description=(
            "`module:callable` run once per worker process before its first batch; its return value reaches "
            "the function as the keyword argument `state` (`def fn(item, state): ...`). Default: none."
        ),
    )
    teardown: str | None = Field(
        None,
        description=(
            "`module:callable` called with the setup's state when a worker is done with it. Needs `setup`. "
            "Default: none."
        ),
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Batch sizes and memory limit (mapping; see `batching.*`)."
    )
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="Parallel execution (mapping; see `execution.*`)."
    )
    pressure: PressureConfig = Field(
        default_factory=PressureConfig, description="Memory pressure escalation (mapping; see `pressure.*`)."
    )
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig, description="Heap analysis and GC (mapping; see `analysis.*`)."
    )
    output: OutputConfig = Field(description="Where results go (mapping; see `output.*`).")
    on_error: Literal["raise", "skip", "retry"] = Field(
        "raise",
        description=(
            "raise: stop at the first failing item; skip: record it in the errors file and go on; "
            "retry: retry, then skip."
        ),
    )
    max_retries: int = Field(
        3,
        ge=0,
        description=(
            "Attempts after the first one with on_error: retry (exponential backoff from 0.05 s, at most 2 s apart)."
        ),
    )
    retry_exhausted: Literal["skip", "raise"] = Field(
        "skip",
        description=(
            "With on_error: retry, an item still failing after max_retries retries is skipped "
            "(error record, null line) or stops the run (raise)."
        ),
    )
    progress: bool = Field(True, description="Show a progress bar on the terminal (`--no-progress` turns it off).")
    detect_memory_issues: bool = Field(
        True, description="Run the heap analyzer (leaks, GC trouble, pressure) during the run."
    )
    report: Path | None = Field(
        None,
        strict=False,
        description=(
            "HTML report (plots embedded) that `batchmem run` writes after the run; see `batchmem report`. "
            "Default: none."
        ),
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not an operation name; "
                "use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("function", "setup", "teardown")
    @classmethod
    def _check_ref(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError(f"expected 'module:callable' such as 'transform:clean', got {short_repr(value)}")
        return value

    @field_validator("report", mode="after")
    @classmethod
    def _resolve_report(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _finish(self, info: ValidationInfo) -> Job:
        context = info.context or {}
        if self.teardown is not None and self.setup is None:
            raise FieldError(
                "teardown", "teardown needs a setup to tear down; add setup: module:callable or remove teardown"
            )
        if self.name is None:
            self.name = context.get("default_name") or "default"
        base = context.get("base_dir")
        if base is not None:
            self._base_dir = Path(base)
        return self
