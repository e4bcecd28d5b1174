"""Output formats: one registry that decides, for the API and job files alike, how results are written.

An :class:`OutputFormat` says which file suffixes it claims, whether workers
encode the results (JSONL: the worker sends one ``bytes`` object per batch) or
send them as they are (Parquet: the sink builds Arrow tables), whether an
unfinished output can be resumed (cut back to its checkpoint and appended to),
how to open its :class:`Sink` and how to read the results back.
:func:`resolve_format` is the one place that turns an output path and an
optional format name into a format; :class:`batchmem.BatchProcessor` and the
job schema both call it.

A format is added with :func:`register_format` (one module plus that line), or
by an installed package in the ``batchmem.formats`` entry-point group, loaded
the first time a name or suffix is not found (see docs/extending.md).

Not here: what a run writes beside the output (stats, batch records, errors,
checkpoint: :mod:`batchmem.io.output`) and how JSON lines are encoded
(:mod:`batchmem.io.sinks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from .sinks import JsonlSink, iter_jsonl

__all__ = [
    "ENTRY_POINT_GROUP",
    "FORMATS",
    "OutputFormat",
    "Sink",
    "format_for",
    "format_names",
    "get_format",
    "register_format",
    "resolve_format",
]

#: The entry-point group an installed package declares its formats in (``name = "module:FORMAT"``).
ENTRY_POINT_GROUP = "batchmem.formats"


@runtime_checkable
class Sink(Protocol):
    """An open output file that batches of results are appended to, in input order.

    Attributes:
        path: the output file.
        size_bytes: bytes committed so far; a resumable format's checkpoint records it and a resume
            cuts the file back to it.
    """

    path: Path
    size_bytes: int

    def write_batch(self, batch: Any, start_index: int) -> int:
        """Append one batch and return the bytes added: the worker's encoded bytes when the format
        ``encodes``, else the results themselves (a list, one per item, or a DataFrame).
        ``start_index`` (the input index of the first item) names the culprit in errors."""
        ...

    def flush(self) -> None:
        """Hand what was written to the operating system (and to the disk when asked to fsync)."""
        ...

    def close(self) -> None:
        """Finish the file; idempotent."""
        ...


@dataclass(frozen=True)
class OutputFormat:
    """One output format.

    Attributes:
        name: the value of ``output_format=`` and of a job file's ``output.format``.
        suffixes: file suffixes (lower case, with the dot) that select this format when no name is given.
        open: ``open(path, append, fsync) -> Sink``; ``append`` continues a resumed output.
        read: ``read(path) -> results``, lazily, one per input item (``BatchResult`` iteration).
        encodes: workers send JSONL bytes (True) or the raw results (False).
        resumable: an unfinished output can be continued (``resume``); False refuses a resume.
    """

    name: str
    suffixes: tuple[str, ...]
    open: Callable[[Path, bool, bool], Sink]
    read: Callable[[Path], Iterator[Any]]
    encodes: bool = False
    resumable: bool = False


def _open_jsonl(path: Path, append: bool, fsync: bool) -> Sink:
    return JsonlSink(path, mode="ab" if append else "wb", fsync=fsync)


def _open_parquet(path: Path, append: bool, fsync: bool) -> Sink:
    from .parquet_sink import ParquetSink

    return ParquetSink(path)


def _read_parquet(path: Path) -> Iterator[Any]:
    from .parquet_sink import _import_pyarrow

    _, pq = _import_pyarrow()
    for batch in pq.ParquetFile(path).iter_batches():
        yield from batch.to_pylist()


JSONL = OutputFormat("jsonl", (".jsonl",), _open_jsonl, iter_jsonl, encodes=True, resumable=True)
#: Parquet (the ``parquet`` extra): one row group per batch, renamed into place when complete.
PARQUET = OutputFormat("parquet", (".parquet", ".pq"), _open_parquet, _read_parquet)

#: Format name -> format.
FORMATS: dict[str, OutputFormat] = {}


def register_format(fmt: OutputFormat) -> None:
    """Make ``fmt`` selectable by its name and suffixes; registering a name again replaces it."""
    FORMATS[fmt.name] = fmt


register_format(JSONL)
register_format(PARQUET)


def _load_entry_points() -> None:
    """Register the formats installed in :data:`ENTRY_POINT_GROUP` that are not registered yet."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in FORMATS:
            register_format(ep.load())


def format_names() -> list[str]:
    """Every format an output may name, installed entry points included, sorted."""
    _load_entry_points()
    return sorted(FORMATS)


def get_format(name: str) -> OutputFormat:
    """The format called ``name``; :class:`~batchmem.errors.ConfigError` listing the names otherwise."""
    if name not in FORMATS:
        _load_entry_points()
    if name not in FORMATS:
        raise ConfigError(
            f"output.format: {name!r} is not a registered format; use one of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[name]


def _by_suffix(suffix: str) -> OutputFormat | None:
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def format_for(path: Path) -> OutputFormat:
    """The format whose suffixes hold ``path``'s (case-insensitive); JSONL for any other suffix."""
    suffix = path.suffix.lower()
    found = _by_suffix(suffix)
    if found is None and suffix:
        _load_entry_points()
        found = _by_suffix(suffix)
    return found or JSONL


def resolve_format(path: Path, name: str | None = None) -> OutputFormat:
    """The format of an output: the one ``name``\\ d, else the one its suffix selects (JSONL by default).

    Raises :class:`~batchmem.errors.ConfigError` for a name that is not registered.
    """
    return get_format(name) if name is not None else format_for(path)
