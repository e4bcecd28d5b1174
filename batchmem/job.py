"""Job files: a YAML document that describes one batch run, validated into a :class:`Job`.

A job file names a source of items, a function to apply, how to batch and
execute, and where the results go::

    name: flights_clean                 # operation name: history + stats key
    source:
      type: csv                         # jsonl | csv | parquet | python
      path: data/flights.csv.zip        # relative to this file's folder
      usecols: [year, month, day, dep_time, carrier]
    function: transform:clean           # module:callable, imported with this folder on sys.path
    batched: true                       # fn(DataFrame chunk) -> DataFrame | list
    batching:
      memory_limit: 2GiB                # size string, int bytes, or a fraction 0<f<=1 of the detected limit
    output:
      path: out/flights.jsonl

The file is read with :func:`yaml.safe_load` and validated by pydantic models
that forbid unknown keys. Every problem a user can cause is reported as one
:class:`~batchmem.errors.JobFileError` whose message is a single line naming
the field as a dotted path (``batching.min_batch_size``) and the fix.

Public names: :func:`load_job`, :class:`Job`, :func:`run_job`,
:func:`import_callable`, :func:`job_reference_markdown`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .backends.worker_setup import accepts_state
from .callables import REF_RE, import_callable
from .errors import ConfigError, JobFileError, one_line

__all__ = [
    "BatchingConfig",
    "ExecutionConfig",
    "Job",
    "OutputConfig",
    "SourceConfig",
    "import_callable",
    "job_reference_markdown",
    "load_job",
    "run_job",
]

logger = logging.getLogger("batchmem")

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


# --------------------------------------------------------------------------- errors


class _FieldError(ValueError):
    """A cross-field error raised inside a model validator, naming the sub-field it is about.

    pydantic keeps the original exception in the error's ``ctx``, so
    :func:`_one_line_validation_error` can extend the location with ``field``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field




def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- sizes


def _parse_size(value: str | int) -> int:
    """Bytes from a size string (``"512MB"``, ``"2GiB"``) or an int, via the monitor's parser.

    ``batchmem.heap.monitor.parse_size`` is the single parser of the project;
    until it is importable this falls back to :class:`pydantic.ByteSize`,
    which it is built on (decimal ``MB``/``GB``, binary ``MiB``/``GiB``).
    """
    try:
        from .heap.monitor import parse_size
    except ImportError:  # monitor not importable yet: same semantics, straight from pydantic
        from pydantic import ByteSize, TypeAdapter

        try:
            return int(TypeAdapter(ByteSize).validate_python(value))
        except ValidationError as exc:
            raise ConfigError(f"bad size {value!r}") from exc
    return int(parse_size(value))


def _memory_limit(value: Any) -> int | float | None:
    """Normalise ``batching.memory_limit``: None, int bytes (> 0), fraction in (0, 1], or size string -> bytes."""
    fix = "use a size string like 512MB or 2GiB, an integer number of bytes, or a fraction 0 < f <= 1 of the detected limit"
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
            size = _parse_size(text)
        except (ConfigError, ValueError, TypeError):
            raise ValueError(f"{value!r} is not a size; {fix}") from None
        if size <= 0:
            raise ValueError(f"{value!r} is zero bytes; {fix}")
        return size
    raise ValueError(f"{_short_repr(value)} ({type(value).__name__}) is not a memory limit; {fix}")


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


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    """Base of every job-file model: unknown keys are errors; YAML types are taken as written."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class SourceConfig(_Section):
    """``source``: where the items come from."""

    type: Optional[Literal["jsonl", "csv", "parquet", "python"]] = Field(
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
    usecols: Optional[list[Union[str, int]]] = Field(
        None, description="Columns to read (csv: pandas `usecols`; parquet: `columns`; not for jsonl). Default: all."
    )
    dtype: Optional[Union[str, dict[str, str]]] = Field(
        None, description="pandas dtype for every column, or a mapping column -> dtype (csv, jsonl). Default: inferred."
    )
    parse_dates: Optional[Union[bool, list[str]]] = Field(
        None, description="Columns to parse as datetimes (csv: `parse_dates`; jsonl: `convert_dates`). Default: none."
    )
    compression: Optional[Literal["infer", "gzip", "bz2", "zip", "xz", "zstd", "tar"]] = Field(
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
    def _check(self, info: ValidationInfo) -> "SourceConfig":
        if self.type is None:
            inferred = _infer_source_type(self.path)
            if inferred is None:
                raise _FieldError(
                    "type",
                    f"cannot infer the source type from {self.path!r}; set type: csv, jsonl, parquet or python",
                )
            self.type = inferred  # type: ignore[assignment]
        if self.type == "python":
            if not REF_RE.match(self.path):
                raise _FieldError(
                    "path",
                    f"with type: python, path must be 'module:callable' (e.g. 'items:generate'), got {self.path!r}",
                )
            for key in ("usecols", "dtype", "parse_dates", "compression"):
                if getattr(self, key) is not None:
                    raise _FieldError(key, "applies to csv, jsonl and parquet sources only; remove it for type: python")
            return self
        if self.type == "jsonl" and self.usecols is not None:
            raise _FieldError("usecols", "is not supported for jsonl sources (pandas reads every field); remove it and select columns in the function")
        if self.type == "parquet":
            for key in ("dtype", "parse_dates", "compression"):
                if getattr(self, key) is not None:
                    raise _FieldError(key, "is not used by parquet sources (the file carries its types); remove it")
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

    auto_optimize: bool = Field(True, description="Let the optimizer resize batches from live measurements and history.")
    batch_size: int = Field(100, gt=0, description="First batch size (or the fixed size without auto_optimize), items.")
    min_batch_size: int = Field(1, gt=0, description="Smallest batch the optimizer may choose, items.")
    max_batch_size: int = Field(1_000_000, gt=0, description="Largest batch the optimizer may choose, items.")
    memory_limit: Any = Field(
        None,
        description=(
            "Memory the run may use: a size string (`512MB`, `2GiB`), an integer of bytes, "
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

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, value: Any) -> Any:
        return _memory_limit(value)

    @model_validator(mode="after")
    def _check(self) -> "BatchingConfig":
        if self.min_batch_size > self.max_batch_size:
            raise _FieldError(
                "min_batch_size",
                f"min_batch_size ({self.min_batch_size}) is larger than max_batch_size ({self.max_batch_size}); "
                "lower min_batch_size or raise max_batch_size",
            )
        if not self.min_batch_size <= self.batch_size <= self.max_batch_size:
            raise _FieldError(
                "batch_size",
                f"batch_size ({self.batch_size}) must lie between min_batch_size ({self.min_batch_size}) "
                f"and max_batch_size ({self.max_batch_size}); change one of them",
            )
        low, high = self.target_batch_seconds
        if not 0.0 < low <= high:
            raise _FieldError(
                "target_batch_seconds",
                f"[{low}, {high}] must be two positive numbers of seconds with low <= high, e.g. [0.2, 2.0]",
            )
        return self


class ExecutionConfig(_Section):
    """``execution``: where batches run."""

    n_jobs: int = Field(
        1, description="Batches run at once: 1 runs in-process; -1 uses every CPU (joblib convention). Not 0."
    )
    backend: Optional[Literal["loky", "threading", "multiprocessing", "dask", "sequential"]] = Field(
        None,
        description="joblib backend. Default: joblib's configured backend, else loky (dask when scheduler_address is set).",
    )
    scheduler_address: Optional[str] = Field(
        None,
        description="Address of a dask scheduler (`tcp://host:8786`) to connect to; implies backend dask. Default: none (dask's default client).",
    )

    @model_validator(mode="after")
    def _check(self) -> "ExecutionConfig":
        if self.n_jobs == 0:
            raise _FieldError("n_jobs", "n_jobs must not be 0; use 1 to run in-process, N > 1 workers, or -1 for every CPU")
        if self.scheduler_address is not None:
            if self.backend is None:
                self.backend = "dask"
            elif self.backend != "dask":
                raise _FieldError(
                    "backend",
                    f"backend {self.backend!r} cannot use scheduler_address; set backend: dask or remove scheduler_address",
                )
        return self


class OutputConfig(_Section):
    """``output``: where results, failed items and stats go."""

    path: Path = Field(
        strict=False,
        description=(
            "Results file, one line (jsonl) or row (parquet) per input item, in input order; stats go to "
            "`<path>.stats.json`. Relative paths resolve against the job file's folder."
        ),
    )
    format: Optional[Literal["jsonl", "parquet"]] = Field(
        None, description="`jsonl` or `parquet` (needs the parquet extra). Default: from the suffix (.parquet/.pq), else jsonl."
    )
    errors: Optional[Path] = Field(
        None, strict=False, description="JSONL file for failed items (on_error: skip/retry). Default: the processor's default."
    )
    overwrite: bool = Field(False, description="Replace an existing output file. Without it an existing output is an error (unless --resume).")
    fsync: bool = Field(
        True,
        description=(
            "Force each batch to disk (fsync) before the checkpoint is replaced: committed batches survive a power cut, "
            "not only a kill -9. false saves about one disk sync per batch."
        ),
    )
    json_default: Optional[Literal["str"]] = Field(
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
    def _infer_format(self) -> "OutputConfig":
        if self.format is None:
            self.format = "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "jsonl"
        return self


class Job(_Section):
    """A validated job file. Build one with :func:`load_job`; run it with :func:`run_job`."""

    name: Optional[str] = Field(
        None,
        description="Operation name: the key of the run history and of the stats. Default: the job file's name without extension.",
    )
    source: SourceConfig = Field(description="Where the items come from (mapping; see `source.*`).")
    function: str = Field(
        description=(
            "`package.module:callable` applied to each item (or each batch with `batched`), "
            "imported with the job file's folder on sys.path."
        ),
    )
    batched: bool = Field(False, description="false: fn(item) -> result. true: fn(batch) -> results of the same length (a DataFrame chunk for pandas sources).")
    setup: Optional[str] = Field(
        None,
        description=(
            "`module:callable` run once per worker process before its first batch; its return value reaches "
            "the function as the keyword argument `state` (`def fn(item, state): ...`). Default: none."
        ),
    )
    teardown: Optional[str] = Field(
        None, description="`module:callable` called with the setup's state when a worker is done with it. Needs `setup`. Default: none."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Batch sizes and memory limit (mapping; see `batching.*`).")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Parallel execution (mapping; see `execution.*`).")
    output: OutputConfig = Field(description="Where results go (mapping; see `output.*`).")
    on_error: Literal["raise", "skip", "retry"] = Field(
        "raise", description="raise: stop at the first failing item; skip: record it in the errors file and go on; retry: retry, then skip."
    )
    max_retries: int = Field(3, ge=0, description="Attempts after the first one with on_error: retry (exponential backoff from 0.05 s, at most 2 s apart).")
    retry_exhausted: Literal["skip", "raise"] = Field(
        "skip", description="With on_error: retry, an item still failing after max_retries retries is skipped (error record, null line) or stops the run (raise)."
    )
    progress: bool = Field(True, description="Show a progress bar on the terminal (`--no-progress` turns it off).")
    detect_memory_issues: bool = Field(True, description="Run the heap analyzer (leaks, GC trouble, pressure) during the run.")
    report: Optional[Path] = Field(None, strict=False, description="HTML report (plots embedded) that `batchmem run` writes after the run; see `batchmem report`. Default: none.")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not an operation name; use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("function", "setup", "teardown")
    @classmethod
    def _check_ref(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not REF_RE.match(value):
            raise ValueError(f"expected 'module:callable' such as 'transform:clean', got {_short_repr(value)}")
        return value

    @field_validator("report", mode="after")
    @classmethod
    def _resolve_report(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _finish(self, info: ValidationInfo) -> "Job":
        context = info.context or {}
        if self.teardown is not None and self.setup is None:
            raise _FieldError("teardown", "teardown needs a setup to tear down; add setup: module:callable or remove teardown")
        if self.name is None:
            self.name = context.get("default_name") or "default"
        base = context.get("base_dir")
        if base is not None:
            self._base_dir = Path(base)
        return self

    # ----------------------------------------------------------------- accessors

    @property
    def base_dir(self) -> Path:
        """Folder of the job file: relative paths were resolved against it; it goes on sys.path for imports."""
        return self._base_dir

    def load_function(self) -> Any:
        """Import ``function`` (job folder on sys.path) and return the callable; JobFileError naming ``function``."""
        return import_callable(self.function, field="function", base_dir=self.base_dir, error=JobFileError)

    def build_source(self) -> Any:
        """The items to process: a lazy pandas reader for csv/jsonl/parquet, the callable's return value for python."""
        src = self.source
        if src.type == "python":
            factory = import_callable(src.path, field="source.path", base_dir=self.base_dir, error=JobFileError)
            try:
                return factory(**src.options)
            except TypeError as exc:
                raise JobFileError(
                    f"source.options: calling {src.path} failed: {one_line(exc)}; match the options to its parameters"
                ) from exc
        from .io import readers

        reader = {"csv": readers.read_csv, "jsonl": readers.read_jsonl, "parquet": readers.read_parquet}[src.type]  # type: ignore[index]
        try:
            return reader(src.path, **src.reader_kwargs())
        except TypeError as exc:
            raise JobFileError(
                f"source.options: the {src.type} reader rejected the options: {one_line(exc)}; remove or rename the option"
            ) from exc

    def processor_kwargs(self, progress: bool | None = None) -> dict[str, Any]:
        """Keyword arguments of :class:`~batchmem.processor.BatchProcessor` for this job."""
        b, e = self.batching, self.execution
        return dict(
            batch_size=b.batch_size,
            auto_optimize=b.auto_optimize,
            memory_limit=b.memory_limit,
            detect_memory_issues=self.detect_memory_issues,
            process_name=self.name,
            n_jobs=e.n_jobs,
            backend=e.backend,
            batched=self.batched,
            on_error=self.on_error,
            max_retries=self.max_retries,
            retry_exhausted=self.retry_exhausted,
            fsync=self.output.fsync,
            json_default=str if self.output.json_default == "str" else None,
            progress=self.progress if progress is None else progress,
            min_batch_size=b.min_batch_size,
            max_batch_size=b.max_batch_size,
            target_batch_seconds=tuple(b.target_batch_seconds),
            memory_target_fraction=b.memory_target_fraction,
            setup=self.setup,
            teardown=self.teardown,
            scheduler_address=e.scheduler_address,
        )

    def build_processor(self, progress: bool | None = None) -> Any:
        """A :class:`~batchmem.processor.BatchProcessor` configured from this job (``progress`` overrides the file)."""
        from .processor import BatchProcessor

        kwargs = self.processor_kwargs(progress)
        for key in ("setup", "teardown"):  # imported here: job folder on sys.path, errors naming the key
            if kwargs[key] is not None:
                kwargs[key] = import_callable(kwargs[key], field=key, base_dir=self.base_dir, error=JobFileError)
        try:
            return BatchProcessor(**kwargs)
        except JobFileError:
            raise
        except ConfigError as exc:  # the processor names its own option; say it is about this job
            raise JobFileError(one_line(exc)) from exc

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that decide what the output lines hold, for the resume check.

        ``batchmem run --resume`` refuses (unless ``--force-resume``) to continue an
        output whose checkpoint was written with different values: the function and
        setup references, ``batched``, the source (type, path, reader options and the
        file's size in bytes) and the output encoding (format, json_default). Batch
        sizes, memory limits, execution and ``on_error`` may change between runs.
        """
        src = self.source
        fields: dict[str, Any] = {"function": self.function, "setup": self.setup, "batched": self.batched}
        for key, value in src.model_dump(mode="json").items():
            fields[f"source.{key}"] = value
        if src.type != "python":
            try:
                fields["source.size_bytes"] = Path(src.path).stat().st_size
            except OSError:
                fields["source.size_bytes"] = None
        fields["output.format"] = self.output.format
        fields["output.json_default"] = self.output.json_default
        return fields

    # ----------------------------------------------------------------- checks

    def check_files(self, *, resume: bool = False) -> None:
        """Check what validation cannot: the source file is readable, the output folders are writable,
        an existing output has ``overwrite: true`` (or ``resume``). Raises JobFileError naming the field."""
        src = self.source
        if src.type != "python":
            path = Path(src.path)
            if not path.exists():
                raise JobFileError(
                    f"source.path: file not found: {path}; fix the path (relative paths resolve against {self.base_dir})"
                )
            if not path.is_file():
                raise JobFileError(f"source.path: {path} is not a file; point source.path at a {src.type} file")
            if not os.access(path, os.R_OK):
                raise JobFileError(f"source.path: {path} is not readable; fix its permissions")
        _check_writable_folder(self.output.path, "output.path")
        if self.output.errors is not None:
            _check_writable_folder(self.output.errors, "output.errors")
        if self.report is not None:
            _check_writable_folder(self.report, "report")
        out = self.output.path
        if out.is_dir():
            raise JobFileError(f"output.path: {out} is a folder; name a file such as {out / 'results.jsonl'}")
        if out.exists() and not self.output.overwrite and not resume:
            raise JobFileError(
                f"output.path: {out} already exists; set output.overwrite: true (or --set output.overwrite=true) "
                "to replace it, or run with --resume to continue it"
            )

    def check_source(self) -> None:
        """Open a csv/jsonl/parquet source and close it again (reads the header or footer only),
        so bad reader options (``usecols`` naming a missing column, ...) show up before a run."""
        if self.source.type == "python":
            return
        try:
            source = self.build_source()
        except JobFileError:
            raise
        except ConfigError as exc:
            message = one_line(exc)
            for key in self.source.options:  # the readers name options as source.<key>; say where they are set
                if message.startswith(f"source.{key}:"):
                    message = f"source.options.{key}:" + message[len(f"source.{key}:"):]
            raise JobFileError(message) from exc
        close = getattr(source, "close", None)
        if close is not None:
            close()

    def check_imports(self) -> None:
        """Import ``function`` (and a python source's callable) to prove they exist and are callable."""
        if self.source.type == "python":
            import_callable(self.source.path, field="source.path", base_dir=self.base_dir, error=JobFileError)
        fn = self.load_function()
        for key in ("setup", "teardown"):
            ref = getattr(self, key)
            if ref is not None:
                import_callable(ref, field=key, base_dir=self.base_dir, error=JobFileError)
        if self.setup is not None and not accepts_state(fn):
            raise JobFileError(
                f"function: with setup, {self.function} must accept the keyword argument state "
                "(def fn(item, state): ...); add it or remove setup"
            )


def _check_writable_folder(path: Path, field: str) -> None:
    """The folder of ``path`` (or its nearest existing parent: missing folders are created) must be writable."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise JobFileError(f"{field}: {folder} is not a folder; change {field}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JobFileError(f"{field}: folder {folder} is not writable; fix its permissions or change {field}")


# --------------------------------------------------------------------------- imports


# --------------------------------------------------------------------------- validation errors


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``Optional[Model]`` (or the annotation itself)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


def _model_at(path: Sequence[str]) -> type[BaseModel] | None:
    """The model class that holds the keys at ``path`` (``()`` -> Job), or None past a leaf."""
    model: Any = Job
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_path(loc: Sequence[Any]) -> tuple[list[str], str]:
    """Split a pydantic ``loc`` into (field names, suffix such as ``[1]`` or ``.colname``).

    Union-member tags that pydantic inserts (``'dict[str,str]'``, ``'function-after[...]'``) are dropped.
    """
    names: list[str] = []
    model: Any = Job
    rest = list(loc)
    while rest:
        part = rest[0]
        if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(part, str) and (
            part in model.model_fields or (model.model_config.get("extra") == "forbid")
        ):
            names.append(part)
            rest.pop(0)
            model = _unwrap(model.model_fields[part].annotation) if part in model.model_fields else None
            continue
        break
    suffix = ""
    for part in rest:
        if isinstance(part, int):
            suffix += f"[{part}]"
            break
    return names, suffix


def _expected(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    return _type_label(field)


def _one_line_validation_error(exc: ValidationError, where: str) -> JobFileError:
    """The first error of ``exc`` as one JobFileError line naming the dotted field, plus "(and N more)"."""
    # An unknown key is usually a misspelt known one, which then also shows up as
    # "missing": report the unknown key (with its suggestion) first.
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    seen: list[str] = []
    first_msg = ""
    for err in errors:
        names, suffix = _field_path(err["loc"])
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            names = names + [ctx_err.field]
        dotted = ".".join(names) + suffix or "(top level)"
        if dotted in seen:
            continue
        seen.append(dotted)
        if first_msg:
            continue
        first_msg = _describe(err, names, dotted)
    more = f" (and {len(seen) - 1} more)" if len(seen) > 1 else ""
    return JobFileError(one_line(f"{where}{first_msg}{more}"))


_SELF_EXPLAINING = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
    "too_short", "too_long", "string_pattern_mismatch",
}


def _describe(err: Mapping[str, Any], names: list[str], dotted: str) -> str:
    kind = err["type"]
    parent = _model_at(names[:-1]) if names else Job
    field = parent.model_fields.get(names[-1]) if parent is not None and names else None
    if kind == "extra_forbidden":
        valid = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(names[-1], valid, n=1, cutoff=0.5) if names else []
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{dotted}: unknown key; {hint} (valid keys here: {', '.join(valid)})"
    if kind == "missing" and isinstance(err["loc"][-1], int):  # a tuple given too few values
        base = dotted.split("[")[0]
        return f"{base}: too few values; expected {_expected(field)}"
    if kind == "missing":
        what = (field.description or "").split(". ")[0].rstrip(".") if field is not None else ""
        return f"{dotted}: required key is missing; add it ({what})" if what else f"{dotted}: required key is missing; add it"
    ctx_err = (err.get("ctx") or {}).get("error")
    if ctx_err is not None and kind == "value_error":
        return f"{dotted}: {ctx_err}"
    msg = err["msg"]
    got = f", got {_short_repr(err.get('input'))}" if "input" in err else ""
    # Constraint and choice messages already say what is allowed; type errors get the expected type.
    expected = "" if kind in _SELF_EXPLAINING else _expected(field)
    fix = f"; expected {expected}" if expected else ""
    return f"{dotted}: {msg}{got}{fix}"


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"job file {path}: not found; check the path") from None
    except IsADirectoryError:
        raise JobFileError(f"job file {path}: is a folder; pass the path of a .yaml job file") from None
    except UnicodeDecodeError as exc:
        raise JobFileError(f"job file {path}: not UTF-8 text ({one_line(exc.reason)}); save it as UTF-8") from None
    except OSError as exc:
        raise JobFileError(f"job file {path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise JobFileError(f"job file {path}: invalid YAML{at}: {one_line(problem)}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"job file {path}: invalid YAML: {one_line(exc)}; fix the syntax") from None
    if data is None:
        raise JobFileError(
            f"job file {path}: is empty; it needs at least source, function and output (see `batchmem validate --help`)"
        )
    if not isinstance(data, dict):
        raise JobFileError(
            f"job file {path}: the top level must be a mapping of keys (name, source, function, output, ...), "
            f"got a {type(data).__name__}; write one key: value per line"
        )
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override to the raw job dict (value parsed as YAML)."""
    where = f"--set {item}"
    key, sep, raw_value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise JobFileError(f"{where}: expected KEY=VALUE such as batching.memory_limit=1GB")
    parts = key.split(".")
    if any(not p for p in parts):
        raise JobFileError(f"{where}: {key!r} is not a dotted key; write it like batching.memory_limit")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise JobFileError(f"{where}: the value is not valid YAML ({one_line(getattr(exc, 'problem', exc))}); quote it") from None
    model: Any = Job
    node = data
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if model is None:  # beneath a free mapping (source.options, source.dtype): anything goes
            pass
        elif isinstance(model, type) and issubclass(model, BaseModel):
            if part not in model.model_fields:
                valid = sorted(model.model_fields)
                close = difflib.get_close_matches(part, valid, n=1, cutoff=0.5)
                hint = f"did you mean {'.'.join(parts[:i] + [close[0]])!r}?" if close else "remove it"
                raise JobFileError(f"{where}: unknown key {dotted!r}; {hint} (valid keys here: {', '.join(valid)})")
            annotation = model.model_fields[part].annotation
            inner = _unwrap(annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
            elif _is_mapping_type(annotation):
                model = None
            elif not last:
                raise JobFileError(f"{where}: {dotted!r} is a single value, not a mapping; set {dotted}=VALUE")
            else:
                model = None
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def _is_mapping_type(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (dict, Mapping):
        return True
    if origin in (Union, types.UnionType):
        return any(_is_mapping_type(a) for a in typing.get_args(annotation))
    return False


def load_job(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    resume: bool = False,
    check: bool = True,
) -> Job:
    """Read, override, validate and check a job file; return the :class:`Job` with every path absolute.

    ``overrides`` are ``"dotted.key=value"`` strings (``--set`` on the command
    line) applied to the raw mapping before validation; values are parsed
    with :func:`yaml.safe_load` so ``execution.n_jobs=2`` sets an int.
    With ``check`` (the default) the source file (opened; its header read),
    the output folders, an existing output (refused without
    ``overwrite: true`` unless ``resume``) and the imports of ``function``
    are checked too.
    Every problem raises a one-line :class:`~batchmem.errors.JobFileError`.
    """
    job_path = Path(path)
    data = _read_yaml(job_path)
    for item in overrides:
        _apply_override(data, item)
    base_dir = job_path.resolve().parent
    default_name = re.sub(r"[^\w.-]", "_", job_path.name.split(".")[0]) or "default"
    try:
        job = Job.model_validate(data, context={"base_dir": base_dir, "default_name": default_name})
    except ValidationError as exc:
        raise _one_line_validation_error(exc, f"{job_path}: ") from None
    if check:
        try:
            job.check_files(resume=resume)
            job.check_source()
            job.check_imports()
        except JobFileError as exc:
            raise JobFileError(f"{job_path}: {exc}") from exc.__cause__
    return job


# --------------------------------------------------------------------------- running


def run_job(job: Job, resume: bool | str = False, *, progress: bool | None = None) -> Any:
    """Run ``job`` and return the processor's BatchResult.

    Checks the files again (the output may have appeared since loading),
    imports the function, builds the source and the processor, and calls
    ``processor.process(source, fn, output=..., output_format=...,
    errors_output=..., overwrite=..., resume=..., fingerprint=...)``; the
    fingerprint is :meth:`Job.fingerprint_fields`, so resuming a changed job is
    refused unless ``resume="force"``. Errors the user can cause raise
    :class:`~batchmem.errors.BatchmemError` subclasses; an item failing under
    ``on_error: raise`` raises :class:`~batchmem.errors.ItemFailedError`.
    """
    job.check_files(resume=bool(resume))
    fn = job.load_function()
    processor = job.build_processor(progress=progress)
    source = job.build_source()
    kwargs = dict(
        output=job.output.path,
        output_format=job.output.format,
        errors_output=job.output.errors,
        overwrite=job.output.overwrite,
        resume=resume,
        fingerprint=job.fingerprint_fields(),
    )
    return processor.process(source, fn, **kwargs)


# --------------------------------------------------------------------------- reference


def _type_label(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "type_label" in extra:
        return str(extra["type_label"])
    return _annotation_label(field.annotation)


def _annotation_label(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_annotation_label(a) for a in args)
    if origin is list:
        return f"list of {_annotation_label(args[0])}" if args else "list"
    if origin is tuple:
        return f"[{', '.join(_annotation_label(a) for a in args)}]"
    if origin is dict:
        return f"mapping {_annotation_label(args[0])} -> {_annotation_label(args[1])}" if args else "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default_label(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{value!r}`" if value != {} else "`{}`"
    value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`[{', '.join(str(v) for v in value)}]`"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value}`"
    return f"`{value}`"


def job_reference_markdown() -> str:
    """The job file reference as a Markdown table: every key (dotted), type, default and description.

    Generated from the pydantic models, so the README stays in step with the schema.
    """
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            desc = one_line(field.description or "").replace("|", "\\|")
            kind = _type_label(field).replace("|", "\\|")
            rows.append(f"| `{key}` | {kind} | {_default_label(field)} | {desc} |")
            inner = _unwrap(field.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{key}.")

    walk(Job, "")
    return "\n".join(rows) + "\n"
