"""Weigh a whole source before a run, as cheaply as the source allows, and fetch sample items from it.

* a sized sequence (list, tuple, anything with ``len()`` and indexing): the run's own weigher over every
  item (``len()`` of texts, ``nbytes`` of arrays, a user callable; see :mod:`batchmem.weights`), or 1 per
  item when batches are counted in items;
* a CSV or JSON Lines file (:func:`batchmem.read_csv`, :func:`batchmem.read_jsonl`): one pass over its
  bytes (decompressed when the name says ``.gz``/``.bz2``/``.xz``/``.zip``) finding the line ends with
  numpy; a row weighs its bytes in the file, the unit the run budgets chunks in. A quoted field holding
  a newline splits a row in two here (the forecast is then a little off, not wrong in kind);
* a Parquet file: the footer's row groups (compressed bytes over rows), no data read;
* anything else (a generator, a custom source): consumed once, weighing every item and keeping a
  reservoir of :data:`RESERVOIR` items (Vitter's algorithm R, seeded) plus the heaviest, from which the
  sample batches are drawn. The items are gone afterwards; the plan says so.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.inflate import open_member
from ..io.parquet_source import ParquetSource
from ..io.readers import CsvSource, JsonlSource
from ..io.source_base import SourceBase

__all__ = ["RESERVOIR", "Weighed", "is_file_source", "run_unit", "weigh_source"]

#: Items a consumed iterable keeps as sample candidates (besides the heaviest).
RESERVOIR = 4096
_CHUNK = 4096
_BLOCK = 8 << 20  # bytes read per step when finding line ends


@dataclass
class Weighed:
    """A source's weights and a way to fetch sample items.

    ``weights``: one per candidate item (every item, or the reservoir of a consumed iterable);
    ``index``: the input index of each candidate; ``total_weight``/``items``/``max_weight``/``heaviest``
    describe the whole source (``items`` None when unknown); ``fetch(positions)`` returns the batch of
    those candidates (a list, or a DataFrame of rows) and the seconds a run would spend reading it (for a
    file: reading and parsing its rows, not seeking to them); ``contiguous``: rows are read in runs;
    ``how``: one line saying how the source was weighed; ``consumed``: the source cannot be read again.
    """

    weights: np.ndarray
    index: np.ndarray
    fetch: Callable[[Sequence[int]], Any]
    how: str
    items: int | None
    total_weight: float
    heaviest: int
    max_weight: float
    median_weight: float
    contiguous: bool = False
    consumed: bool = False
    file_bytes: float = 0.0  # bytes of the source file on disk (0: not a file)
    #: Remove what weighing left behind (a decompressed copy); call once done with ``fetch``.
    close: Callable[[], None] = lambda: None
    #: ``prefetch(runs)``: read these runs of positions in one pass before they are fetched (files).
    prefetch: Callable[[list[Sequence[int]]], None] | None = None


def _whole(weights: np.ndarray, fetch: Callable, how: str, *, contiguous: bool = False) -> Weighed:
    top = int(np.argmax(weights)) if len(weights) else 0
    return Weighed(
        weights,
        np.arange(len(weights)),
        fetch,
        how,
        len(weights),
        float(weights.sum()),
        top,
        float(weights[top]) if len(weights) else 0.0,
        float(np.median(weights)) if len(weights) else 0.0,
        contiguous,
    )


def _weights_of(items: Sequence[Any], weigh: Callable | None) -> np.ndarray:
    ws = weigh(items) if weigh is not None and len(items) else None
    return np.ones(len(items)) if ws is None else np.asarray(ws, dtype=float)


def _sequence(seq: Sequence[Any], weigh: Callable | None) -> Weighed:
    parts = [_weights_of(seq[i : i + _CHUNK], weigh) for i in range(0, len(seq), _CHUNK)]
    weights = np.concatenate(parts) if parts else np.zeros(0)
    return _whole(weights, lambda pos: ([seq[i] for i in pos], 0.0), f"weighed all {len(seq):,} items (len())")


def _consume(source: Any, weigh: Callable | None) -> Weighed:
    """One pass over an iterable or a BatchSource: every weight, a reservoir of items, the heaviest."""
    rng = random.Random(0)
    take = source.take if isinstance(source, SourceBase) else None
    it = None if take else iter(source)
    pool: list[tuple[int, Any, float]] = []
    all_w: list[np.ndarray] = []
    top: tuple[int, Any, float] = (0, None, -1.0)
    seen = 0
    while True:
        chunk = take(_CHUNK) if take else list(itertools.islice(it, _CHUNK))
        if chunk is None or len(chunk) == 0:
            break
        chunk = list(chunk)
        ws = _weights_of(chunk, weigh)
        all_w.append(ws)
        j = int(np.argmax(ws))
        if ws[j] > top[2]:
            top = (seen + j, chunk[j], float(ws[j]))
        for i, (item, w) in enumerate(zip(chunk, ws, strict=True)):  # Vitter's algorithm R
            n = seen + i
            slot = n if n < RESERVOIR else rng.randrange(n + 1)
            if slot < RESERVOIR:
                entry = (n, item, float(w))
                pool.append(entry) if n < RESERVOIR else pool.__setitem__(slot, entry)
        seen += len(chunk)
    weights = np.concatenate(all_w) if all_w else np.zeros(0)
    if top[2] >= 0 and all(n != top[0] for n, _, _ in pool):
        pool.append(top)
    pool.sort(key=lambda e: e[0])
    items = [e[1] for e in pool]
    w = Weighed(
        np.array([e[2] for e in pool], dtype=float),
        np.array([e[0] for e in pool], dtype=int),
        lambda pos: ([items[i] for i in pos], 0.0),
        f"consumed the source once to weigh its {seen:,} items (they are not kept: pass a list to run them)",
        seen,
        float(weights.sum()),
        top[0],
        max(0.0, top[2]),
        float(np.median(weights)) if len(weights) else 0.0,
        consumed=True,
    )
    return w


def _opener(path: Path) -> Callable[[], Any]:
    suffix = path.suffix.lower()
    if suffix == ".zip":

        def open_zip() -> Any:
            with zipfile.ZipFile(path) as archive:  # the member keeps the file open (zipfile counts users)
                return open_member(archive, next(i for i in archive.infolist() if not i.is_dir()))

        return open_zip
    return {".gz": lambda: gzip.open(path), ".bz2": lambda: bz2.open(path), ".xz": lambda: lzma.open(path)}.get(
        suffix, lambda: open(path, "rb")
    )


def _line_ends(open_stream: Callable[[], Any], copy: Any = None) -> tuple[np.ndarray, float]:
    """Offsets (bytes, exclusive) of every line's end, the last line's even without a newline, and the
    seconds reading (decompressing) took per byte; the bytes are also written to ``copy`` if given."""
    ends, pos, last, read_s = [], 0, b"\n", 0.0
    with open_stream() as fh:
        while True:
            t0 = time.perf_counter()
            block = fh.read(_BLOCK)
            read_s += time.perf_counter() - t0
            if not block:
                break
            if copy is not None:
                copy.write(block)
            ends.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + pos + 1)
            pos += len(block)
            last = block[-1:]
    if last != b"\n":
        ends.append(np.array([pos]))
    return (np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)), read_s / max(1, pos)


def _stream(path: Path, copy: bool) -> tuple[Callable[[], Any], np.ndarray, float, Callable[[], None]]:
    """``(open, line ends, read seconds per byte, close)`` of a text file. A compressed file is
    decompressed once, into a temporary copy (removed by ``close``) that the sample rows are read from,
    unless ``copy`` is False (weights only)."""
    opener = _opener(path)
    if not copy or path.suffix.lower() not in (".zip", ".gz", ".bz2", ".xz"):
        ends, per_byte = _line_ends(opener)
        return opener, ends, per_byte, lambda: None
    with tempfile.NamedTemporaryFile(prefix=".batchmem-plan-", delete=False) as copy:
        try:
            ends, per_byte = _line_ends(opener, copy)
        except BaseException:
            os.unlink(copy.name)
            raise
    return (lambda: open(copy.name, "rb")), ends, per_byte, lambda: os.unlink(copy.name)


def _text_file(source: Any, copy: bool) -> Weighed:
    """A CSV or JSON Lines source: rows weigh their bytes; sample rows parsed from their byte ranges,
    read in one forward pass (a compressed file is decompressed once)."""
    import pandas as pd

    options = {k: v for k, v in source.options.items() if k != "compression"}
    open_stream, ends, per_byte, close = _stream(source.path, copy)
    starts = np.concatenate([[0], ends[:-1]])
    header = source.kind == "CSV" and options.get("header", "infer") is not None
    first = 1 if header and len(ends) else 0
    weights = (ends - starts)[first:].astype(float)
    starts, ends = starts[first:], ends[first:]
    cache: dict[str, Any] = {"runs": [], "head": b""}

    def prefetch(runs: list[Sequence[int]]) -> None:
        spans: list[list[int]] = []
        for lo, hi in sorted((int(starts[r[0]]), int(ends[r[-1]])) for r in runs):
            if spans and lo <= spans[-1][1]:  # overlapping runs are read as one
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        with open_stream() as fh:
            cache["head"] = fh.readline() if header else b""
            for lo, hi in spans:
                fh.seek(lo)
                cache["runs"].append((lo, fh.read(hi - lo)))

    def fetch(pos: Sequence[int]) -> Any:
        lo, hi = int(starts[pos[0]]), int(ends[pos[-1]])
        data = next((buf[lo - at : hi - at] for at, buf in cache["runs"] if at <= lo and hi <= at + len(buf)), None)
        if data is None:
            prefetch([pos])
            return fetch(pos)
        t0 = time.perf_counter()
        if source.kind == "CSV":
            frame = pd.read_csv(io.BytesIO(cache["head"] + data), **options)
        else:
            frame = pd.read_json(io.BytesIO(data), lines=True, **options)
        frame.index = pd.RangeIndex(int(pos[0]), int(pos[0]) + len(frame))
        return frame, time.perf_counter() - t0 + len(data) * per_byte

    how = f"found the {len(weights):,} rows' byte offsets in {source.path.name}"
    w = _whole(weights, fetch, how, contiguous=True)
    w.prefetch, w.close = prefetch, close
    return w


def _parquet(source: Any) -> Weighed:
    """A Parquet source: each row weighs its row group's compressed bytes over its rows (footer only)."""
    meta = source._file.metadata
    sizes, groups = [], []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        nbytes = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        sizes.append(np.full(rg.num_rows, nbytes / max(1, rg.num_rows)))
        groups.append(rg.num_rows)
    weights = np.concatenate(sizes) if sizes else np.zeros(0)
    bounds = np.cumsum([0, *groups])

    def fetch(pos: Sequence[int]) -> Any:
        lo, hi = int(pos[0]), int(pos[-1]) + 1
        t0 = time.perf_counter()
        first, last = int(np.searchsorted(bounds, lo, "right") - 1), int(np.searchsorted(bounds, hi, "left"))
        table = source._file.read_row_groups(list(range(first, last)), columns=source.columns, use_pandas_metadata=True)
        frame = table.slice(lo - int(bounds[first]), hi - lo).to_pandas()
        frame.index = range(lo, hi)
        return frame, time.perf_counter() - t0

    return _whole(weights, fetch, f"read the row groups of {source.path.name} from its footer", contiguous=True)


def weigh_source(items: Any, weigh: Callable | None, *, frames: bool, sample: bool = True) -> Weighed:
    """Weigh ``items`` (see the module docstring); ``weigh`` is the run's weigher (None: 1 per item),
    ``frames``: rows of a file weigh their bytes (the run's ``weight`` is not None); ``sample``: False
    when only the weights are needed (no copy of a compressed file is kept for fetching rows).
    Call ``close()`` on the result when done."""
    if isinstance(items, (CsvSource, JsonlSource)):
        w = _text_file(items, sample)
    elif isinstance(items, ParquetSource):
        w = _parquet(items)
    elif is_sequence(items):
        return _sequence(items, weigh)
    else:
        return _consume(items, weigh)
    w.file_bytes = float(items.path.stat().st_size)
    if not frames:  # chunks counted in rows
        w.weights = np.ones(len(w.weights))
        w.total_weight, w.max_weight, w.median_weight = float(len(w.weights)), 1.0, 1.0
    return w


def is_file_source(items: Any) -> bool:
    """Whether ``items`` is a chunked CSV/JSONL/Parquet reader (rows weigh their bytes in the file)."""
    return isinstance(items, (CsvSource, JsonlSource, ParquetSource))


def is_sequence(items: Any) -> bool:
    """Whether ``items`` is a plain sized sequence (a list, a tuple, a range), weighed item by item."""
    return isinstance(items, Sequence) and not isinstance(items, (str, bytes, SourceBase))


def run_unit(batching: Any, items: Any, all_one: bool) -> str:
    """The weight unit a run of ``items`` budgets in, as :class:`batchmem.run.Run` decides it: items when
    batches are counted or fixed (or ``weight="auto"`` over items that all weigh 1), else the weight's name."""
    frames = isinstance(items, SourceBase) and items.chunked
    b = batching
    if b.weight is None or not b.auto_optimize or (b.weight == "auto" and all_one and not frames):
        return "items"
    from ..weights import weight_unit

    return weight_unit(b.weight, frames)
