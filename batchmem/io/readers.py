"""Chunked pandas sources: CSV, JSON Lines and Parquet read lazily in DataFrame chunks.

Each reader is a ``BatchSource`` (see ``batchmem.io.sources``): the processor asks the
optimizer for a row count ``n`` just before each chunk and calls ``take(n)``, so the
chunk size can change from one batch to the next. Nothing is materialised beyond the
chunk being handed out plus, for Parquet, at most one Arrow record batch
(``batch_rows`` rows) carried over between calls.

* ``read_csv(path, **pandas_kwargs)`` -- ``pandas.read_csv(..., iterator=True)`` and
  ``TextFileReader.get_chunk(n)``, which takes a different ``n`` on every call.
* ``read_jsonl(path, **pandas_kwargs)`` -- ``pandas.read_json(..., lines=True,
  chunksize=...)``. ``JsonReader`` has no ``get_chunk``; its ``__next__`` reads
  ``self.chunksize`` lines on each call (pandas 2.x and 3.x), so the reader sets that
  attribute before each pull. A carry-over buffer keeps ``take(n)`` exact even if a
  pandas version ignored the hint.
* ``read_parquet(path, columns=None, **kw)`` -- ``pyarrow.parquet.ParquetFile.iter_batches``
  with a fixed ``batch_rows`` per iterator and a carry-over buffer of Arrow batches,
  sliced zero-copy so ``take(n)`` returns exactly ``n`` rows (:mod:`.parquet_source`).

Rows keep their position in the file as the index (``RangeIndex(position, position+len)``)
unless the reader options build another index (e.g. ``index_col``), so chunks
concatenate back to the frame a whole-file read gives.

Compression (``.gz``, ``.bz2``, ``.zip``, ``.xz``, ``.zst``) is inferred from the file
name by pandas (``compression="infer"``) for CSV and JSONL; Parquet compresses inside
the file. Zip archives are opened by batchmem as a decompressing stream, because pandas
3.x reads a whole zip member into memory on open (GH#59279).
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, one_line
from .inflate import open_member
from .source_base import SourceBase

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["CsvSource", "JsonlSource", "read_csv", "read_jsonl"]

logger = logging.getLogger("batchmem")

#: Rows read and discarded per step by ``skip(n)`` on CSV/JSONL, and the default Arrow
#: record batch length for Parquet (rows). 64 Ki rows of a few dozen columns is a few
#: MiB: large enough to amortise per-call overhead, small against any useful limit.
DEFAULT_BATCH_ROWS = 65_536
#: File bytes over which a frame source's bytes per row is measured (pandas' C parser reads 256 KiB at a
#: time, so a smaller window would see the read-ahead rather than the rows).
RATE_WINDOW_BYTES = 1 << 20


def _check_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a ``Path``; ``ConfigError`` if it is not an existing file."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise ConfigError(
            f"source.path: file not found: {p}; fix the path (relative paths resolve against the current folder, or "
            "the job file's folder in a job)"
        )
    if p.is_dir():
        raise ConfigError(f"source.path: {p} is a folder, not a file; fix the path to name one file")
    return p


#: Read-buffer size for a zip member stream (bytes). ``ZipExtFile`` reads small pieces;
#: a 256 KiB BufferedReader in front (the C parser reads 256 KiB at a time) keeps reads cheap.
ZIP_BUFFER_BYTES = 1 << 18


def _is_zip(path: Path, compression: Any) -> bool:
    """Whether pandas would treat ``path`` as a zip archive under ``compression``."""
    if isinstance(compression, dict):
        compression = compression.get("method")
    if compression == "infer":
        return path.suffix.lower() == ".zip"
    return compression == "zip"


class _ZipMember:
    """A streaming reader of the single file inside a zip archive.

    pandas (3.x, GH#59279) reads a whole zip member into a ``BytesIO`` when it opens
    it -- the full uncompressed file in memory before the first row. batchmem opens
    the member itself (a decompressing stream, :func:`batchmem.io.inflate.open_member`) and
    hands pandas the stream instead, so memory stays at one chunk.
    """

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path)
        try:
            members = [info for info in self._zip.infolist() if not info.is_dir()]
            names = [info.filename for info in members]
            if len(names) != 1:
                what = (
                    "no files"
                    if not names
                    else f"{len(names)} files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                )
                raise ConfigError(
                    f"source.path: zip archive {path} holds {what}; batchmem reads a zip holding exactly one file -- "
                    "fix the archive or unzip it"
                )
            self.name = names[0]
            self.stream = io.BufferedReader(open_member(self._zip, members[0]), buffer_size=ZIP_BUFFER_BYTES)
        except BaseException:
            self._zip.close()
            raise

    def close(self) -> None:
        self.stream.close()
        self._zip.close()


def _open_input(path: Path, options: dict[str, Any]) -> tuple[Any, dict[str, Any], _ZipMember | None]:
    """What to hand the pandas reader: (path or stream, options, zip member to close)."""
    if not _is_zip(path, options.get("compression", "infer")):
        return path, options, None
    try:
        member = _ZipMember(path)
    except zipfile.BadZipFile as exc:
        raise ConfigError(
            f"source.path: {path} is not a valid zip archive ({one_line(exc)}); fix the file or its extension"
        ) from exc
    return member.stream, {**options, "compression": None}, member


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"take(n): n must be a positive int of rows, got {n!r}; fix the batch size")
    return n


def _check_kwargs(kwargs: dict[str, Any], func: Callable[..., Any], what: str, reserved: tuple[str, ...]) -> None:
    """Reject options ``func`` does not take, and options batchmem sets itself."""
    for key in reserved:
        if key in kwargs:
            raise ConfigError(
                f"source.{key}: set by batchmem for {what} (chunks are sized by the optimizer); remove it"
            )
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"source.{key}: not an option of {what}; fix the name or remove it")


class _FrameSource(SourceBase):
    """Base of the pandas-backed sources: exact ``take(n)`` over a reader of any chunk length.

    Subclasses implement ``_pull(hint)`` -> the next DataFrame chunk (ideally ``hint``
    rows, any length accepted) or ``None`` at the end, and ``_close_reader()``.
    """

    kind = "frame"
    chunked = True

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Rows of the file, if known without reading it (items); None otherwise.
        self.total: int | None = None
        #: Rows handed out by ``take`` or passed over by ``skip`` so far (items).
        self.position = 0
        self._carry: pd.DataFrame | None = None  # rows read but not handed out yet
        self._exhausted = False
        self._closed = False
        self._rows_read = 0  # rows the pandas reader produced so far
        self._marks: deque[tuple[int, int]] = deque()  # (file offset, rows read) after each read

    def bytes_per_row(self) -> float | None:
        """Bytes of the file (text, after decompression) per row over the latest reads: the reader's
        offset over the rows it produced, in a window of the last :data:`RATE_WINDOW_BYTES` of the file
        (since the start before that much was read), so rows that grow mid-file change the rate within
        a window instead of being averaged with every row before them. None before the first read or
        where pandas keeps no handle. The weight of a chunk is its rows times this (see
        :mod:`batchmem.weights`)."""
        if not self._marks:
            return None
        pos, rows = self._marks[-1]
        start_pos, start_rows = 0, 0
        for p0, r0 in reversed(self._marks):
            if pos - p0 >= RATE_WINDOW_BYTES:
                start_pos, start_rows = p0, r0
                break
        return (pos - start_pos) / (rows - start_rows) if rows > start_rows else None

    def _tell(self) -> int | None:
        handles = getattr(self._reader, "handles", None) if hasattr(self, "_reader") else None
        handle = getattr(handles, "handle", None)
        if handle is None:
            return None
        try:
            return handle.tell()
        except (OSError, ValueError):
            return None

    def _mark(self) -> None:
        """Remember (file offset, rows produced) after a read; keep one mark older than the window."""
        pos = self._tell()
        if pos is None:
            return
        self._marks.append((pos, self._rows_read))
        while len(self._marks) > 2 and pos - self._marks[1][0] >= RATE_WINDOW_BYTES:
            self._marks.popleft()

    # -- subclass hooks -------------------------------------------------------
    def _pull(self, hint: int) -> pd.DataFrame | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_reader(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- BatchSource ----------------------------------------------------------
    def take(self, n: int) -> pd.DataFrame | None:
        import pandas as pd  # lazy: importing batchmem (and its CLI) must not pay for pandas

        """Return the next at most ``n`` rows as a DataFrame, or ``None`` when exhausted.

        Exactly ``n`` rows unless the file ends first. Memory: the returned chunk plus
        whatever the reader read past it (zero for CSV/JSONL with pandas 2.x/3.x).
        """
        _check_n(n)
        if self._closed:
            raise ConfigError(f"source: {self.path.name} is closed; create a new reader to read it again")
        pieces: list[pd.DataFrame] = []
        have = 0
        if self._carry is not None:
            pieces.append(self._carry)
            have = len(self._carry)
            self._carry = None
        while have < n and not self._exhausted:
            chunk = self._read_or_wrap(n - have)
            if chunk is None:
                self._exhausted = True
                break
            if len(chunk) == 0:
                continue
            pieces.append(chunk)
            have += len(chunk)
        if not pieces:
            return None
        frame = pieces[0] if len(pieces) == 1 else pd.concat(pieces)
        if len(frame) > n:
            self._carry = frame.iloc[n:]
            frame = frame.iloc[:n]
        self.position += len(frame)
        return frame

    def skip(self, n: int) -> int:
        """Pass over the next ``n`` rows (resume) reading at most ``DEFAULT_BATCH_ROWS`` at a time.

        Returns the rows actually skipped (fewer than ``n`` only at the end of the file);
        ``position`` advances by the same count.
        """
        if n <= 0:
            return 0
        skipped = 0
        while skipped < n:
            chunk = self.take(min(DEFAULT_BATCH_ROWS, n - skipped))
            if chunk is None:
                break
            skipped += len(chunk)
        return skipped

    def _read_or_wrap(self, hint: int) -> pd.DataFrame | None:
        try:
            chunk = self._pull(hint)
            self._rows_read += len(chunk) if chunk is not None else 0
            if chunk is not None and len(chunk):
                self._mark()
            return chunk
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"source: reading {self.kind} rows from row {self.position} of {self.path} failed: "
                f"{one_line(exc)}; fix the reader options (dtype, usecols, ...) or the data"
            ) from exc

    def close(self) -> None:
        """Close the underlying file; idempotent."""
        if not self._closed:
            self._closed = True
            self._carry = None
            self._close_reader()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, position={self.position}, total={self.total})"


class CsvSource(_FrameSource):
    """A CSV file (plain or compressed) read in DataFrame chunks; see ``read_csv``."""

    kind = "CSV"

    def __init__(self, path: str | os.PathLike[str], **pandas_kwargs: Any) -> None:
        import pandas as pd  # lazy: importing batchmem (and its CLI) must not pay for pandas

        p = _check_path(path)
        _check_kwargs(pandas_kwargs, pd.read_csv, "pandas.read_csv", ("chunksize", "iterator"))
        if pandas_kwargs.get("engine") == "pyarrow":
            raise ConfigError(
                "source.engine: 'pyarrow' cannot read CSV in chunks; use engine 'c' (the default) or 'python'"
            )
        super().__init__(p)
        self.options = dict(pandas_kwargs)
        target, options, self._zip = _open_input(p, self.options)
        try:
            # Reads the header (one parser buffer) to learn the columns; no data rows.
            self._reader = pd.read_csv(target, iterator=True, **options)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            if self._zip is not None:
                self._zip.close()
            raise ConfigError(
                f"source: cannot read {p} as CSV: {one_line(exc)}; fix the reader options (usecols, dtype, ...)"
            ) from exc

    def _pull(self, hint: int) -> pd.DataFrame | None:
        try:
            return self._reader.get_chunk(hint)
        except StopIteration:
            return None

    def _close_reader(self) -> None:
        self._reader.close()
        if self._zip is not None:
            self._zip.close()


class JsonlSource(_FrameSource):
    """A JSON Lines file (plain or compressed) read in DataFrame chunks; see ``read_jsonl``."""

    kind = "JSONL"

    def __init__(self, path: str | os.PathLike[str], **pandas_kwargs: Any) -> None:
        import pandas as pd  # lazy: importing batchmem (and its CLI) must not pay for pandas

        p = _check_path(path)
        _check_kwargs(pandas_kwargs, pd.read_json, "pandas.read_json", ("chunksize", "lines"))
        if pandas_kwargs.get("engine") == "pyarrow":
            raise ConfigError(
                "source.engine: 'pyarrow' cannot read JSON Lines in chunks; use engine 'ujson' (the default)"
            )
        super().__init__(p)
        self.options = dict(pandas_kwargs)
        target, options, self._zip = _open_input(p, self.options)
        try:
            # Opens the file handle only; lines are read on demand.
            self._reader = pd.read_json(target, lines=True, chunksize=DEFAULT_BATCH_ROWS, **options)
        except (ValueError, TypeError) as exc:
            if self._zip is not None:
                self._zip.close()
            raise ConfigError(
                f"source: cannot read {p} as JSON Lines: {one_line(exc)}; fix the reader options"
            ) from exc

    def _pull(self, hint: int) -> pd.DataFrame | None:
        # JsonReader.__next__ reads ``self.chunksize`` lines per call; set it per call so
        # the chunk has ``hint`` rows. The base class's carry-over keeps take(n) exact
        # if a pandas version reads a different number.
        self._reader.chunksize = hint
        try:
            return next(self._reader)
        except StopIteration:
            return None

    def _close_reader(self) -> None:
        self._reader.close()
        if self._zip is not None:
            self._zip.close()


def read_csv(path: str | os.PathLike[str], **pandas_kwargs: Any) -> CsvSource:
    """A lazy CSV source: DataFrame chunks of the row count the optimizer asks for.

    ``path``: a CSV file; ``.gz``/``.bz2``/``.zip``/``.xz``/``.zst`` are decompressed on
    the fly (pandas ``compression="infer"``). ``pandas_kwargs`` go to ``pandas.read_csv``
    (``usecols``, ``dtype``, ``parse_dates``, ``sep``, ``nrows``, ...) except
    ``chunksize``/``iterator``, which batchmem sets. Construction checks the file and
    reads the header only. ``total`` is None (counting rows would read the file).

    Give ``dtype`` for columns that may be all-missing or all-integer in some chunks
    (pandas infers dtypes per chunk), so every chunk has the same dtypes.
    """
    return CsvSource(path, **pandas_kwargs)


def read_jsonl(path: str | os.PathLike[str], **pandas_kwargs: Any) -> JsonlSource:
    """A lazy JSON Lines source (one JSON object per line) read in DataFrame chunks.

    ``path``: a ``.jsonl``/``.ndjson`` file, optionally compressed (inferred from the
    name). ``pandas_kwargs`` go to ``pandas.read_json`` (``dtype``, ``convert_dates``,
    ``nrows``, ...) except ``lines``/``chunksize``, which batchmem sets. Construction
    opens the file and reads nothing. ``total`` is None.
    """
    return JsonlSource(path, **pandas_kwargs)


def __getattr__(name: str) -> Any:
    """``ParquetSource`` and ``read_parquet`` live in :mod:`.parquet_source`, which builds on this module."""
    if name in ("ParquetSource", "read_parquet"):
        from . import parquet_source

        return getattr(parquet_source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
