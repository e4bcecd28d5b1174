"""Parquet files read lazily in DataFrame chunks, through Arrow record batches.

``pyarrow.parquet.ParquetFile.iter_batches`` with a fixed ``batch_rows`` per iterator
and a carry-over buffer of Arrow batches, sliced zero-copy so ``take(n)`` returns
exactly ``n`` rows. The CSV and JSON Lines readers are in :mod:`.readers`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, one_line
from .readers import DEFAULT_BATCH_ROWS, _check_kwargs, _check_n, _check_path
from .source_base import SourceBase

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow

__all__ = ["ParquetSource", "read_parquet"]


def _import_pyarrow_parquet():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            "source.type: parquet needs pyarrow, which is not installed; fix: pip install 'batchmem[parquet]'"
        ) from exc
    return pq


class ParquetSource(SourceBase):
    """A Parquet file read in DataFrame chunks via Arrow record batches; see ``read_parquet``.

    ``total`` is the file's row count from its footer metadata (no data read).
    """

    kind = "Parquet"
    chunked = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: list[str] | None = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        **parquet_kwargs: Any,
    ) -> None:
        p = _check_path(path)
        pq = _import_pyarrow_parquet()
        _check_kwargs(parquet_kwargs, pq.ParquetFile.__init__, "pyarrow.parquet.ParquetFile", ())
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ConfigError(f"source.batch_rows: must be a positive int of rows, got {batch_rows!r}")
        self.path = p
        self.columns = list(columns) if columns is not None else None
        self.batch_rows = batch_rows
        self.position = 0
        try:
            # Reads the footer metadata only.
            self._file = pq.ParquetFile(p, **parquet_kwargs)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"source: cannot read {p} as Parquet: {one_line(exc)}; fix the path or the file") from exc
        meta = self._file.metadata
        #: Rows in the file, from its footer metadata (items).
        self.total: int | None = meta.num_rows
        if self.columns is not None:
            names = set(self._file.schema_arrow.names)
            for col in self.columns:
                if col not in names:
                    avail = ", ".join(self._file.schema_arrow.names)
                    raise ConfigError(f"source.columns: no column {col!r} in {p.name}; fix the name (columns: {avail})")
        self._bytes_per_row = os.path.getsize(p) / meta.num_rows if meta.num_rows else None
        self._batches: Any = None  # iterator of pyarrow.RecordBatch, started on first take
        self._carry: list[pyarrow.RecordBatch] = []
        self._carry_rows = 0
        self._start_row = 0  # absolute row the first take starts at (moved by skip)
        self._closed = False

    def _start(self) -> None:
        """Open the batch iterator at ``_start_row``: skip whole row groups, then slice."""
        meta = self._file.metadata
        group, row = 0, 0
        while group < meta.num_row_groups and row + meta.row_group(group).num_rows <= self._start_row:
            row += meta.row_group(group).num_rows
            group += 1
        self._batches = self._file.iter_batches(
            batch_size=self.batch_rows,
            row_groups=list(range(group, meta.num_row_groups)),
            columns=self.columns,
            use_pandas_metadata=True,
        )
        drop = self._start_row - row
        while drop > 0:
            batch = next(self._batches, None)
            if batch is None:
                break
            if batch.num_rows > drop:
                self._carry.append(batch.slice(drop))
                self._carry_rows += batch.num_rows - drop
                break
            drop -= batch.num_rows

    def bytes_per_row(self) -> float | None:
        """Bytes of the file per row (file size over the footer's row count), the weight of one row."""
        return self._bytes_per_row

    def take(self, n: int) -> pd.DataFrame | None:
        import pandas as pd  # lazy: importing batchmem (and its CLI) must not pay for pandas

        """Return the next at most ``n`` rows as a DataFrame, or ``None`` when exhausted.

        Exactly ``n`` rows unless the file ends first. Memory: the chunk plus at most one
        Arrow record batch (``batch_rows`` rows) carried over to the next call.
        """
        import pyarrow as pa

        _check_n(n)
        if self._closed:
            raise ConfigError(f"source: {self.path.name} is closed; create a new reader to read it again")
        if self._batches is None:
            self._start()
        while self._carry_rows < n:
            batch = next(self._batches, None)
            if batch is None:
                break
            if batch.num_rows:
                self._carry.append(batch)
                self._carry_rows += batch.num_rows
        if self._carry_rows == 0:
            return None
        table = pa.Table.from_batches(self._carry)
        out = table.slice(0, n)
        rest = table.slice(n)
        self._carry = rest.to_batches() if rest.num_rows else []
        self._carry_rows = rest.num_rows
        frame = out.to_pandas()
        if isinstance(frame.index, pd.RangeIndex):
            frame.index = pd.RangeIndex(self.position, self.position + len(frame))
        self.position += len(frame)
        return frame

    def skip(self, n: int) -> int:
        """Pass over the next ``n`` rows; returns the rows skipped.

        Before the first ``take``, whole row groups are skipped using the footer metadata
        without reading them; afterwards rows are read and discarded ``batch_rows`` at a time.
        """
        if n <= 0:
            return 0
        if self._batches is None and not self._closed:
            target = min(self._start_row + n, self._file.metadata.num_rows)
            skipped = target - self._start_row
            self._start_row = target
            self.position = target
            return skipped
        skipped = 0
        while skipped < n:
            chunk = self.take(min(self.batch_rows, n - skipped))
            if chunk is None:
                break
            skipped += len(chunk)
        return skipped

    def close(self) -> None:
        """Close the file; idempotent."""
        if not self._closed:
            self._closed = True
            self._carry = []
            self._carry_rows = 0
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ParquetSource({str(self.path)!r}, position={self.position}, total={self.total})"


def read_parquet(
    path: str | os.PathLike[str],
    columns: list[str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    **parquet_kwargs: Any,
) -> ParquetSource:
    """A lazy Parquet source read through ``pyarrow.parquet.ParquetFile.iter_batches``.

    ``columns``: the columns to read (default all). ``batch_rows``: rows per Arrow record
    batch read from disk (default 65,536); ``take(n)`` concatenates and slices them so
    it returns exactly ``n`` rows. ``parquet_kwargs`` go to ``pyarrow.parquet.ParquetFile``
    (``memory_map``, ``buffer_size``, ``pre_buffer``, ...). Construction reads the footer
    only; ``total`` is the file's row count. Needs the ``parquet`` extra (pyarrow).
    """
    return ParquetSource(path, columns, batch_rows=batch_rows, **parquet_kwargs)
