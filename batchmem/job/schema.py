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
    create_model,
    field_validator,
    model_validator,
)

from ..callables import is_reference, short_repr
from ..options import RunConfig
from .actions import JobActions
from .derive import FieldError, run_config, section_fields, thresholds_model

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


class _OutputFiles(_Section):
    """``output``: where results, failed items and stats go (its options are added from :mod:`batchmem.options`)."""

    path: Path = Field(
        strict=False,
        description=(
            "Results file, one line (jsonl) or row (parquet) per input item, in input order; stats go to "
            "`<path>.stats.json`. Relative paths resolve against the job file's folder."
        ),
    )
    format: str | None = Field(
        None,
        description=(
            "`jsonl`, `parquet` (needs the parquet extra) or a format registered by an installed package "
            "(see docs/extending.md). Default: from the suffix (.parquet/.pq), else jsonl."
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

    @field_validator("path", "errors", mode="after")
    @classmethod
    def _resolve_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @field_validator("format")
    @classmethod
    def _registered(cls, value: str | None) -> str | None:
        from ..io.formats import format_names

        if value is not None and value not in (names := format_names()):
            raise ValueError(f"{value!r} is not a registered format; use one of {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _infer_format(self) -> _OutputFiles:
        from ..io.formats import resolve_format

        self.format = resolve_format(self.path, self.format).name
        return self


class _JobFile(JobActions, _Section):
    """The keys of a job file that are not options of :mod:`batchmem.options` (those are derived)."""

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
    report: Path | None = Field(
        None,
        strict=False,
        description=(
            "HTML report (plots embedded) that `batchmem run` writes after the run; see `batchmem report`. "
            "Default: none."
        ),
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _config: RunConfig = PrivateAttr(default_factory=RunConfig)
    _function: Any = PrivateAttr(default=None)  # imported once (JobActions.load_function)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not an operation name; "
                "use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @field_validator("function")
    @classmethod
    def _check_ref(cls, value: str) -> str:
        if not is_reference(value):
            raise ValueError(f"expected 'module:callable' such as 'transform:clean', got {short_repr(value)}")
        return value

    @field_validator("report", mode="after")
    @classmethod
    def _resolve_report(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _finish(self, info: ValidationInfo) -> _JobFile:
        context = info.context or {}
        if self.name is None:
            self.name = context.get("default_name") or "default"
        base = context.get("base_dir")
        if base is not None:
            self._base_dir = Path(base)
        self._config = run_config(self)  # the checks between options, naming the job-file key
        return self


# --------------------------------------------------------------------------- derived from batchmem.options


def _section(section: str, doc: str, base: type[BaseModel] = _Section, **nested: type[BaseModel]) -> Any:
    """The model of a job-file section: ``base``'s keys plus the options whose job key lies in ``section``."""
    name = f"{section.capitalize()}Config"
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **section_fields(section, nested))


ThresholdsConfig = thresholds_model(_Section)
BatchingConfig = _section("batching", "``batching``: batch sizes and the memory the run may use.")
ExecutionConfig = _section("execution", "``execution``: where batches run.")
PressureConfig = _section(
    "pressure", "``pressure``: what happens as memory use nears the limit.", pressure_thresholds=ThresholdsConfig
)
AnalysisConfig = _section("analysis", "``analysis``: heap analysis and garbage collection.")
OutputConfig = _section("output", _OutputFiles.__doc__ or "", _OutputFiles)


def _sub(model: Any, what: str, section: str) -> Any:
    return (model, Field(default_factory=model, description=f"{what} (mapping; see `{section}.*`)."))


Job = create_model(
    "Job",
    __base__=_JobFile,
    __doc__="A validated job file. Build one with :func:`load_job`; run it with :func:`run_job`.",
    __module__=__name__,
    batching=_sub(BatchingConfig, "Batch sizes and memory limit", "batching"),
    execution=_sub(ExecutionConfig, "Parallel execution", "execution"),
    pressure=_sub(PressureConfig, "Memory pressure escalation", "pressure"),
    analysis=_sub(AnalysisConfig, "Heap analysis and GC", "analysis"),
    output=(OutputConfig, Field(description="Where results go (mapping; see `output.*`).")),
    **section_fields(""),  # after the sections: pydantic reports errors in field order
)
