"""Parquet output: one row group per batch, written through ``pyarrow.parquet.ParquetWriter``.

A :class:`batchmem.io.formats.Sink` (``write_batch(results, start_index) -> bytes``,
``flush()``, ``close()``, ``path``), the ``parquet`` format of :mod:`batchmem.io.formats`.
The schema comes from the first non-empty batch; later batches are cast to it, and a column that does not fit raises
``SerializationError`` naming the column and the item index range.

The file is written to a hidden sibling ``.<name>.partial`` and renamed to ``path`` by
``close()``, so ``path`` only ever holds a complete Parquet file (a Parquet file is
unreadable until its footer is written). Appending to an existing Parquet file is not
possible, so a resumed run cannot continue a Parquet output; use JSONL for resumable runs.

Needs the ``parquet`` extra (pyarrow).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import ConfigError, SerializationError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["ParquetSink"]

logger = logging.getLogger("batchmem")


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            "output.format: parquet needs pyarrow, which is not installed; fix: pip install 'batchmem[parquet]' or "
            "use format jsonl"
        ) from exc
    return pa, pq


class ParquetSink:
    """Write batches of results as row groups of one Parquet file.

    ``path``: the final file (its folder must exist). ``compression``: Parquet codec
    (default ``"snappy"``). ``writer_kwargs`` go to ``pyarrow.parquet.ParquetWriter``.

    Attributes: ``path`` (Path), ``rows`` (rows written, items), ``row_groups``
    (row groups written), ``bytes_written`` (bytes in the file so far).
    """

    def __init__(self, path: str | os.PathLike[str], *, compression: str = "snappy", **writer_kwargs: Any) -> None:
        self._pa, self._pq = _import_pyarrow()
        self.path = Path(os.fspath(path))
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._compression = compression
        self._writer_kwargs = writer_kwargs
        self._fh: Any = None
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self._closed = False
        self.rows = 0
        self.row_groups = 0
        self.bytes_written = 0

    # -- conversion -----------------------------------------------------------
    def _to_table(self, results: pd.DataFrame | Sequence[Any], start_index: int) -> tuple[pa.Table, bool]:
        """Results -> Arrow table; returns (table, from_records). Records: dicts; ``None`` is a null row."""
        pa = self._pa
        n = len(results)
        span = f"{start_index}-{start_index + n - 1}" if n else f"{start_index}-{start_index}"
        if isinstance(results, pd.DataFrame):
            try:
                return pa.Table.from_pandas(results, preserve_index=False), False
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                col = _failing_column(results, pa)
                where = f"column {col!r} of " if col else ""
                raise SerializationError(
                    f"output: {where}items {span} cannot be written as Parquet: {one_line(exc)}; fix: give the "
                    "column one type (e.g. astype) or use format jsonl"
                ) from exc
        records = []
        for offset, item in enumerate(results):
            if item is None:
                records.append({})
            elif isinstance(item, Mapping):
                records.append(item)
            else:
                raise SerializationError(
                    f"output: item {start_index + offset} is {type(item).__name__}, but Parquet output needs a dict "
                    "(one row) per item; fix: return a dict or use format jsonl"
                )
        try:
            return pa.Table.from_pylist(records), True
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SerializationError(
                f"output: items {span} cannot be written as Parquet: {one_line(exc)}; fix: give each key one type or "
                "use format jsonl"
            ) from exc

    def _conform(self, table: pa.Table, from_records: bool, start_index: int) -> pa.Table:
        """Cast ``table`` to the file schema (set by the first batch)."""
        pa = self._pa
        schema = self._schema
        assert schema is not None
        span = f"{start_index}-{start_index + table.num_rows - 1}"
        names = table.column_names
        for name in names:
            if name not in schema.names:
                raise SerializationError(
                    f"output: column {name!r} of items {span} is not in the Parquet schema set by the first batch "
                    f"({', '.join(schema.names)}); fix: return the same columns in every batch or use format jsonl"
                )
        arrays = []
        for field in schema:
            if field.name not in names:
                if not from_records:
                    raise SerializationError(
                        f"output: column {field.name!r} is missing from items {span} (the first batch had it); fix: "
                        "return the same columns in every batch or use format jsonl"
                    )
                arrays.append(pa.nulls(table.num_rows, field.type))
                continue
            col = table.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    hint = " (it was all-null in the first batch)" if pa.types.is_null(field.type) else ""
                    raise SerializationError(
                        f"output: column {field.name!r} of items {span} is {col.type}, which does not convert to "
                        f"{field.type} in the Parquet schema set by the first batch{hint}; "
                        "fix: give the column one dtype (e.g. astype) or use format jsonl"
                    ) from exc
            arrays.append(col)
        return pa.Table.from_arrays(arrays, schema=schema)

    # -- Sink interface -------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        """Bytes written so far (a Parquet output is not resumed, so nothing is cut back to it)."""
        return self.bytes_written

    def write_batch(self, results: pd.DataFrame | Sequence[Any], start_index: int) -> int:
        """Write one batch as one row group; returns the bytes added to the file.

        ``results``: a DataFrame (rows become Parquet rows; the index is dropped) or a
        list with one dict per item (``None`` -> a row of nulls). ``start_index``: input
        index of the first item, used in error messages.
        """
        if self._closed:
            raise ConfigError(f"output.path: {self.path} is closed; create a new sink to write again")
        table, from_records = self._to_table(results, start_index)
        if self._schema is None:
            if table.num_rows == 0:
                if not from_records and table.num_columns:
                    self._schema = table.schema  # an empty DataFrame still fixes the schema
                return 0
            self._schema = table.schema
        elif table.num_rows == 0:
            return 0
        else:
            table = self._conform(table, from_records, start_index)
        if self._writer is None:
            self._open()
        before = self._fh.tell()
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._fh.flush()
        written = self._fh.tell() - before
        self.rows += table.num_rows
        self.row_groups += 1
        self.bytes_written += written
        return written

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._partial, "wb")  # noqa: SIM115 - closed in close()
        self._writer = self._pq.ParquetWriter(
            self._fh, self._schema, compression=self._compression, **self._writer_kwargs
        )

    def flush(self) -> None:
        """Push written row groups to the OS. The file is readable only after ``close()``."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Write the footer and move the file to ``path``; idempotent.

        With no rows written, writes a valid Parquet file with no rows (and the schema of
        an empty DataFrame batch, if one was seen).
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is None:
            if self._schema is None:
                self._schema = self._pa.schema([])
            self._open()
        self._writer.close()
        self._fh.flush()
        self.bytes_written = self._fh.tell()
        self._fh.close()
        os.replace(self._partial, self.path)
        logger.debug(
            "parquet sink: %d rows in %d row groups, %d bytes -> %s",
            self.rows,
            self.row_groups,
            self.bytes_written,
            self.path,
        )

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _failing_column(frame: pd.DataFrame, pa: Any) -> str | None:
    """The first column of ``frame`` that Arrow cannot convert, or None."""
    for name in frame.columns:
        try:
            pa.Array.from_pandas(frame[name])
        except Exception:  # noqa: BLE001 - any failure names the column
            return str(name)
    return None
