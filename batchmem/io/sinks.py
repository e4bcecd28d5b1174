"""JSONL results files written a whole batch at a time (the ``jsonl`` format of :mod:`batchmem.io.formats`).

Results are encoded with orjson in the process that produced them (so process
workers send back one ``bytes`` object per batch instead of pickled objects)
and appended by the parent in input order. A DataFrame of results is encoded a
column at a time (:mod:`batchmem.io.frame_json`), to the same bytes as one
``orjson.dumps`` per row dict would give. A failed item under
``on_error="skip"`` is written as ``null`` so the output keeps exactly one line
per input item; its details go to the error sink.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import SerializationError

__all__ = ["JsonlSink", "encode_results", "error_record", "iter_jsonl", "row_dicts"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
NULL_LINE = b"null\n"


def _default(obj: Any) -> Any:
    """orjson fallback for the pandas/numpy scalars DataFrames hand out (Timestamp, NaT, NA, np.generic)."""
    import numpy as np
    import pandas as pd

    if obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, pd.Timedelta):
        return obj.total_seconds()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError


def row_dicts(frame: Any, rows_per_slice: int = 4096) -> Iterator[dict[Any, Any]]:
    """Yield the rows of a DataFrame as ``to_dict("records")`` dicts, converting a slice at a time.

    Converting a whole chunk at once would hold every row as a dict (hundreds of
    MB for a 40k-row chunk of the flights example); slices of ``rows_per_slice``
    rows bound that. Used where a dict per row is the point: the per-item calling
    convention (``batched=False``) and naming the culprit of an encoding error.
    """
    for lo in range(0, len(frame), rows_per_slice):
        yield from frame.iloc[lo : lo + rows_per_slice].to_dict("records")


def _is_frame(results: Any) -> bool:
    pd = sys.modules.get("pandas")  # not imported: results cannot be a DataFrame (keeps pandas out of startup)
    return pd is not None and isinstance(results, pd.DataFrame)


def _records(results: Any) -> Iterator[Any]:
    """Yield the results one by one; a DataFrame yields its rows as dicts (:func:`row_dicts`)."""
    if _is_frame(results):
        yield from row_dicts(results)
    else:
        yield from results


def encoder_args(fallback: Callable[[Any], Any] | None = None) -> tuple[Callable[[Any], Any], int]:
    """``(default, option)`` for ``orjson.dumps(result, default=default, option=option)``: one JSONL line.

    pandas/numpy scalars (Timestamp, NaT, NA, ``np.generic``) are handled;
    ``fallback`` (e.g. ``str``) is used for any other object orjson cannot
    encode. Without it such a result raises ``TypeError``. Hot loops call
    ``orjson.dumps`` with these directly (a wrapper function costs ~10% of a
    trivial item: benchmarks/bench_core.py overhead).
    """

    def default(obj: Any) -> Any:
        try:
            return _default(obj)
        except TypeError:
            if fallback is None:
                raise
            return fallback(obj)

    return default, _OPTS | orjson.OPT_APPEND_NEWLINE


def serialization_error(result: Any, index: int, exc: BaseException) -> SerializationError:
    """The error for a result of item ``index`` that orjson could not encode."""
    return SerializationError(
        f"result of item {index} is not JSON-serialisable ({type(result).__name__}: {exc}); "
        "return dicts/lists/str/numbers, or set a fallback",
        python_fix=": json_default=str",
        cli_fix=": output.json_default: str in the job file (or --set output.json_default=str)",
    )


def encode_results(results: Any, start_index: int, fallback: Callable[[Any], Any] | None = None) -> bytes:
    """Encode one batch of results as JSONL bytes, one line per result.

    ``results`` is a sequence of JSON-able objects or a pandas DataFrame (one
    line per row). ``start_index`` is the input index of the first result and
    only names the culprit in errors. Raises :class:`SerializationError`
    naming the type and item index of a result that cannot be encoded.
    """
    dumps, (default, option) = orjson.dumps, encoder_args(fallback)
    if _is_frame(results):
        from .frame_json import encode_frame

        try:
            return encode_frame(results, default)  # columnar, no dict per row
        except TypeError:
            pass  # a value orjson cannot encode: the row path below names its item (or encodes it)
    buf = bytearray()  # not a list of lines: orjson's small outputs each keep a ~4 KB buffer while alive
    try:
        for r in _records(results):
            buf += dumps(r, default=default, option=option)
        return bytes(buf)
    except TypeError:
        pass
    for offset, r in enumerate(_records(results)):  # slow path: find the culprit
        try:
            dumps(r, default=default, option=option)
        except TypeError as exc:
            raise serialization_error(r, start_index + offset, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover


def error_record(index: int, item: Any, exc: BaseException, attempts: int, max_repr: int = 500) -> dict[str, Any]:
    """The error sink's record of one failed item: index, truncated repr, type, message, traceback, attempts."""
    text = repr(item)
    return {
        "index": index,
        "item": text if len(text) <= max_repr else text[: max_repr - 3] + "...",
        "error_type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "attempts": attempts,
    }


class JsonlSink:
    """Append-only JSONL file written one encoded batch at a time.

    ``mode`` is ``"wb"`` (new file) or ``"ab"`` (resume). ``fsync=True`` forces
    each batch to disk before :meth:`write` returns (crash safety costs one
    ``fsync`` per batch).
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "wb", fsync: bool = False):
        self.path = Path(path)
        self._f = open(self.path, mode)
        self._fsync = fsync
        self.size_bytes = self._f.tell()  # bytes in the file, counted as they are written (no stat per batch)

    def write(self, payload: bytes) -> int:
        """Append already-encoded JSONL bytes; returns the number of bytes written."""
        self._f.write(payload)
        self.size_bytes += len(payload)
        return len(payload)

    def write_batch(self, batch: Any, start_index: int) -> int:
        """Append one batch: JSONL bytes a worker encoded, as they are, or results (a sequence or a
        DataFrame), encoded here; returns bytes written."""
        payload = batch if isinstance(batch, (bytes, bytearray)) else encode_results(batch, start_index)
        return self.write(payload)

    def flush(self) -> None:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Read a JSONL file back lazily, one decoded object per line."""
    with open(path, "rb") as f:
        for line in f:
            yield orjson.loads(line)
