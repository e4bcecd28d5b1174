"""Run one batch where it belongs (in-process or as a joblib task) and measure it there.

A batch is measured in the process that runs it, so that for process
backends (loky, dask workers) the peak resident bytes are the worker's own:
wall seconds, items, peak RSS above the pre-batch level (Linux ``VmHWM``
high-water mark, see :class:`batchmem.heap.PeakMemoryTracker`), GC
collections and failures travel back with the encoded results.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BatchFunctionError
from ..heap.gc_watch import GcWatch
from ..heap.malloc import heap_free_bytes, heap_in_use_bytes, reuse_large_blocks, trim_heap
from ..heap.monitor import PeakMemoryTracker
from ..io.sinks import NULL_LINE, encode_results, encoder_args, error_record, row_dicts, serialization_error
from .deadlines import reporting
from .item_timeout import ItemTimer, batch_deadline_s, is_item_timeout
from .loky_worker import prepare_loky_worker
from .worker_cgroups import BatchCharge
from .worker_setup import WorkerSetup

__all__ = ["BatchTask", "BatchOutcome", "RunOptions", "run_batch"]

logger = logging.getLogger("batchmem")

# A loky worker imports this module to unpickle its first batch, before the function's module: the
# earliest point to set the worker up (its SIGINT, its exit; see loky_worker.py).
_owned_worker = prepare_loky_worker()  # a process batchmem started and may tune (see own_this_process)


@dataclass(frozen=True)
class RunOptions:
    """How a worker runs a batch: calling convention, error policy, result encoding."""

    batched: bool = False
    on_error: str = "raise"  # "raise" | "skip" | "retry"
    max_retries: int = 3
    retry_exhausted: str = "skip"  # on_error="retry": "skip" or "raise" once max_retries retries failed
    encode: bool = True  # True: JSONL bytes come back; False: the raw results (Parquet sink)
    json_default: Callable[[Any], Any] | None = None
    setup: WorkerSetup | None = None  # per-worker setup; its result is passed to fn as state=
    # Batches that share a process (threading backend) cannot each reset the
    # process's VmHWM high-water mark; they measure their peak by sampling.
    peak_by_sampling: bool = False
    # The pool placed its workers in memory cgroups of their own (worker_cgroups.py): a batch's peak
    # is also read from its worker's group, whose charge holds tmpfs files and page cache.
    worker_cgroups: bool = False
    item_timeout: float | None = None  # seconds an item may run (batchmem.backends.item_timeout); None: no limit
    deadline_address: str | None = None  # where a worker process reports its batches (batchmem.backends.deadlines)


@dataclass
class BatchTask:
    """One batch: its position in the run and its items (a list or a DataFrame of rows)."""

    index: int  # batch number, 0-based
    start: int  # input index of the first item
    items: Any
    weight: float | None = None  # the batch's weight in the run's weight unit (None: its item count)
    weights: list[float] | None = None  # per-item weights when they differ (None: even)

    def __len__(self) -> int:
        return len(self.items)

    def halves(self) -> tuple[BatchTask, BatchTask]:
        """Split in two (used after a MemoryError, a failing batched call or a dead worker)."""
        mid = len(self.items) // 2
        items = self.items
        first = items.iloc[:mid] if hasattr(items, "iloc") else items[:mid]
        second = items.iloc[mid:] if hasattr(items, "iloc") else items[mid:]
        ws = self.weights
        if ws is not None:
            w1, w2, ws1, ws2 = sum(ws[:mid]), sum(ws[mid:]), ws[:mid], ws[mid:]
        else:
            total = float(len(items)) if self.weight is None else self.weight
            w1, w2, ws1, ws2 = total * mid / len(items), total * (len(items) - mid) / len(items), None, None
        return (
            BatchTask(self.index, self.start, first, w1, ws1),
            BatchTask(self.index, self.start + mid, second, w2, ws2),
        )


@dataclass
class BatchOutcome:
    """What comes back from a batch: results plus the measurement taken where it ran.

    ``split`` is set when the batch must be halved and retried by the caller
    (a ``MemoryError``, a batched function that raised, or ``"worker_died"``:
    the worker process running it died, see ``worker_exit``); then ``payload``
    and ``results`` are empty. ``error`` is ``(item index, exception)`` under
    ``on_error="raise"`` (and ``"retry"`` with ``retry_exhausted="raise"``).
    """

    index: int
    start: int
    size: int  # items
    payload: bytes | bytearray = b""  # encoded JSONL, one line per item (``null`` for failed items)
    results: Any = None  # raw results when RunOptions.encode is False
    failed: int = 0
    error_records: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, BaseException] | None = None
    split: str | None = None  # None | "memory" | "error" | "worker_died"
    timeouts: int = 0  # items recorded as failed for running past item_timeout
    worker_exit: str = ""  # split == "worker_died": how the worker ended, e.g. "exit code 3", "signal SIGKILL"
    duration_s: float = 0.0
    start_rss_bytes: int = 0
    peak_bytes: int = 0  # peak RSS above start_rss_bytes during the batch, plus free_heap_bytes (see run_batch)
    gc_collections: int = 0
    gc_pause_s: float = 0.0  # seconds in garbage collections while the function ran (its own collections)
    pid: int = 0
    heap_bytes: int = 0  # malloc in-use bytes of this process when the batch started (glibc; 0 elsewhere)
    free_heap_bytes: int = 0  # free heap counted in the peak: what the batch could reuse (see _reusable_free_heap)
    free_heap_end_bytes: int = 0  # free heap at its end that the next batch here will count (0: it will trim)
    weight: float | None = None  # the task's weight (set by the run loop; None: its item count)
    worker: str = ""  # where it ran, for remote workers (dask: the worker's address)


#: Peak (bytes, as in BatchOutcome.peak_bytes) per unit of weight of the last batch this process ran;
#: 0 before the first.
_last_peak_per_unit = 0.0
#: Whether this process reuses its heap within a batch and hands it back between batches (decided at
#: its first batch, see _reusable_free_heap); None before.
_reuse_within_batches: bool | None = None


def own_this_process() -> None:
    """Mark this process as a worker batchmem started (a process pool's worker), whose allocator
    it may tune (:func:`_reusable_free_heap`); a forked one decides again what its parent decided.
    loky workers are recognised by themselves."""
    global _owned_worker, _reuse_within_batches
    _owned_worker, _reuse_within_batches = True, None


def _reusable_free_heap(batched: bool, units: float) -> int:
    """Free heap bytes the coming batch of ``units`` (its weight, or items) may reuse without its RSS
    moving, to count in its peak.

    Per-item calls in a worker batchmem started reuse the heap within a batch: blocks up to 256 MiB
    are kept in it (:func:`~batchmem.heap.malloc.reuse_large_blocks`), so only the first item of a
    batch faults its pages in (the memory workload of benchmarks/bench_peers.py, 400 items of 40 MiB
    on 2 workers: 1.30-1.40 s in two runs against 2.24 s unmapping every block; mpire 2.13-2.64 s).
    Between batches the free heap goes back to the kernel, so the next batch's RSS growth is its
    whole peak: free heap counted in a peak is an upper bound of what the batch reused, and one that
    feeds itself (a batch needing less reads the whole free heap, the estimate per item rises,
    batches shrink and the same free heap reads dearer per item: 12 MiB per MiB of weight in
    tests/test_weights.py's shift with 2 workers, when the blocks were kept across batches).

    Elsewhere (batched calls, whose reuse is across batches; in-process runs, whose allocator is the
    user's) up to twice the last batch's peak, scaled to this batch's weight, malloc's free bytes
    (``mallinfo2().fordblks``) are kept and counted: the last batch's freed pages (at most its peak)
    plus as much again of older free heap. The next batch reuses them without page faults
    (benchmarks/bench_weighted.py, log-normal mix: trimming them after every large batch cost 1.4-1.7 s
    of page faults in a 2 s run; with 2 workers 1.88 s against 1.54 s). Scaled, since a light batch
    after a heavy one reuses no more of its pages than it needs: counted in full, they would read as the
    light batch's peak, which would keep them counted for the next one, and a run under a tight limit
    would go on in one-item batches (docs/plan.md, Accuracy). More free heap than that (or any before the
    first batch) is not recent batches' leftovers but earlier work's, pinned by live objects; counted,
    it would make every peak read that large and shrink batches to single items (300 MiB of pinned
    100 KiB blocks under a limit of RSS + 100 MiB: 199,000 one-item batches).

    Free heap that is not counted is handed back to the kernel (glibc ``malloc_trim(0)``, as
    distributed recommends for memory "not released back to the OS",
    https://distributed.dask.org/en/stable/worker-memory.html); then no free chunk holds resident
    pages, so nothing is counted and the batch's RSS growth is its whole peak.
    """
    global _reuse_within_batches
    if _reuse_within_batches is None:
        _reuse_within_batches = _owned_worker and not batched and reuse_large_blocks()
    free = heap_free_bytes() or 0
    if free <= (0 if _reuse_within_batches else 2 * _last_peak_per_unit * units):
        return free
    trim_heap()
    return 0


def _gc_collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def _call_with_retries(call: Callable[[], Any], opts: RunOptions) -> tuple[Any, int]:
    """Call ``call()``; under ``on_error="retry"`` retry with exponential backoff (tenacity).

    Returns ``(value, attempts)``. The backoff (50 ms doubling, at most 2 s) keeps
    a flaky resource from being hammered. ``MemoryError`` is never retried here:
    the caller splits the batch instead.
    """
    if opts.on_error != "retry" or opts.max_retries <= 0:
        return call(), 1
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(opts.max_retries + 1),
        wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, Exception) and not _unretried(e)),
        reraise=True,
    )
    value = retrying(call)
    return value, retrying.statistics.get("attempt_number", 1)


def _unretried(exc: BaseException) -> bool:
    """MemoryError (the batch is split instead) and an item's timeout (it would hang every attempt)."""
    return isinstance(exc, MemoryError) or is_item_timeout(exc)


def _item_failure(
    out: BatchOutcome, index: int, item: Any, exc: BaseException, attempts: int, opts: RunOptions
) -> bool:
    """Record a failed item; returns True if the batch must stop (``on_error="raise"``, or
    ``"retry"`` with ``retry_exhausted="raise"`` once the retries are used up)."""
    if is_item_timeout(exc):  # not retried: its one attempt hung
        out.timeouts, attempts = out.timeouts + 1, 1
    if opts.on_error == "raise" or (opts.on_error == "retry" and opts.retry_exhausted == "raise"):
        out.error = (index, exc)
        return True
    out.failed += 1
    out.error_records.append(error_record(index, item, exc, attempts))
    return False


def _run_items(
    fn: Callable[..., Any],
    task: BatchTask,
    opts: RunOptions,
    out: BatchOutcome,
    kwargs: dict[str, Any],
    timer: ItemTimer | None = None,
) -> list[Any] | bytearray | None:
    """Per-item calling convention, one pass: call, then encode at once (``opts.encode``).

    Encoding each result as soon as it exists lets the result object die
    before the next item runs, so a batch holds only its encoded lines; this
    keeps the batch's memory (and page faults) small. Returns the encoded
    lines (or raw results), with ``null``/``None`` for failed items, or None
    to stop the run (``on_error="raise"``). Try blocks cost nothing until
    they catch (CPython >= 3.11).
    """
    # A DataFrame batch: fn takes one row as a dict (the calling convention), converted a slice at a time.
    items = row_dicts(task.items) if hasattr(task.items, "to_dict") else task.items
    call = functools.partial(fn, **kwargs) if kwargs else fn
    attempts = 1
    if opts.on_error == "retry" and opts.max_retries > 0:
        plain = call
        call = lambda x: _call_with_retries(lambda: plain(x), opts)[0]  # noqa: E731
        attempts += opts.max_retries
    if timer is not None:  # around the retries: an item's attempts share its item_timeout
        call = timer.wrap(call, task.start)
    encode = opts.encode
    dumps, (default, option) = orjson.dumps, encoder_args(opts.json_default)
    # Encoded lines go straight into one buffer: a list of orjson outputs would
    # keep ~4 KB per line alive (orjson does not shrink its output buffer),
    # measured in benchmarks/bench_core.py (overhead) as 1.1 GB per 300k items.
    buf = bytearray()
    results: list[Any] = []
    append = results.append
    for offset, x in enumerate(items):
        try:
            r = call(x)
        except MemoryError:
            raise
        except Exception as exc:
            if _item_failure(out, task.start + offset, x, exc, attempts, opts):
                return None
            if encode:
                buf += NULL_LINE
            else:
                append(None)
            continue
        if not encode:
            append(r)
            continue
        try:
            buf += dumps(r, default=default, option=option)
        except TypeError as exc:
            raise serialization_error(r, task.start + offset, exc) from None
    return buf if encode else results


def _run_batched(
    fn: Callable[..., Any],
    task: BatchTask,
    opts: RunOptions,
    out: BatchOutcome,
    kwargs: dict[str, Any],
    timer: ItemTimer | None = None,
) -> Any:
    """Batched calling convention: ``fn(batch) -> same-length list or DataFrame``; with ``timer``
    (``item_timeout`` x items) a call that runs past it is bisected like one that raised."""
    call = lambda: _call_with_retries(lambda: fn(task.items, **kwargs), opts)  # noqa: E731
    try:
        results, _ = call() if timer is None else timer.timed(call, task.start)
    except MemoryError:
        raise
    except Exception as exc:
        if len(task) > 1:
            out.split = "error"  # bisect down to the failing item(s)
            return None
        item = task.items.iloc[0].to_dict() if hasattr(task.items, "iloc") else task.items[0]
        attempts = 1 + (opts.max_retries if opts.on_error == "retry" else 0)
        if _item_failure(out, task.start, item, exc, attempts, opts):
            return None
        return [None]
    if results is None or not hasattr(results, "__len__") or len(results) != len(task):
        got = "no sequence" if results is None or not hasattr(results, "__len__") else f"{len(results)} results"
        raise BatchFunctionError(
            f"batch {task.index} (items {task.start}..{task.start + len(task) - 1}): batched function returned "
            f"{got} for {len(task)} items; return one result per item, in order"
        )
    return results


def _item_timer(opts: RunOptions, items: int) -> ItemTimer | None:
    """The batch's :class:`ItemTimer`: ``item_timeout`` per item, or per batched call of ``items``."""
    if not opts.item_timeout or not items:
        return None
    return ItemTimer(opts.item_timeout * (items if opts.batched else 1))


def _reported(opts: RunOptions, task: BatchTask) -> contextlib.AbstractContextManager[None]:
    """The batch reported to the parent's watchdog while it runs (process workers with ``item_timeout``)."""
    if opts.deadline_address is None or not opts.item_timeout:
        return contextlib.nullcontext()
    return reporting(opts.deadline_address, task.start, len(task), batch_deadline_s(opts.item_timeout, len(task)))


def run_batch(
    fn: Callable[..., Any], task: BatchTask, opts: RunOptions, kwargs: dict[str, Any] | None = None
) -> BatchOutcome:
    """Run one batch and measure it; safe to call in a worker process.

    Returns a :class:`BatchOutcome` with wall seconds, the batch's peak RSS
    above its starting RSS (bytes, in this process), GC collections and either
    the encoded results or a request to split the batch.

    Raises :class:`~batchmem.errors.BatchFunctionError` when a batched
    function breaks its length contract and
    :class:`~batchmem.errors.SerializationError` for a result orjson cannot
    encode.
    """
    kwargs = kwargs or {}
    if opts.setup is not None:  # before the measurement: the setup's time and memory are not this batch's
        kwargs = {**kwargs, "state": opts.setup.state()}
    out = BatchOutcome(task.index, task.start, len(task), pid=os.getpid())
    out.heap_bytes = heap_in_use_bytes() or 0  # the previous batch's settled heap: what HeapAnalyzer trends
    units = task.weight if task.weight else float(len(task))
    out.free_heap_bytes = _reusable_free_heap(opts.batched, units)
    gc_before = _gc_collections()
    charge = BatchCharge.start() if opts.worker_cgroups else None  # None until this worker is placed
    t0 = time.perf_counter()
    timer = _item_timer(opts, len(task))
    with (
        GcWatch() as gc_watch,
        _reported(opts, task),
        PeakMemoryTracker(force_sampling=opts.peak_by_sampling) as peak,
        timer or contextlib.nullcontext(),
    ):
        try:
            runner = _run_batched if opts.batched else _run_items
            results = runner(fn, task, opts, out, kwargs, timer)
        except MemoryError:
            results, out.split = None, "memory"
    out.duration_s = time.perf_counter() - t0
    out.start_rss_bytes = peak.start_rss_bytes
    # Memory the batch took from malloc's free chunks does not raise RSS: an earlier batch's freed
    # pages (glibc keeps them, mallopt(3) M_TRIM_THRESHOLD) serve it without a page fault. Counting
    # the free bytes held at the start (or none after a trim) makes the peak an upper bound of what
    # the batch needed, whichever pages it reused.
    out.peak_bytes = peak.peak_delta_bytes + out.free_heap_bytes
    if charge is not None:  # the group's charge also holds what no RSS shows: tmpfs files, page cache
        out.peak_bytes = max(out.peak_bytes, charge.peak_bytes)
    global _last_peak_per_unit
    _last_peak_per_unit = out.peak_bytes / max(units, 1e-12)
    if not _reuse_within_batches:  # what the next batch here will count (it trims the rest)
        end = heap_free_bytes() or 0
        out.free_heap_end_bytes = end if end <= 2 * out.peak_bytes else 0
    out.gc_collections = _gc_collections() - gc_before
    out.gc_pause_s = gc_watch.pause_s
    if results is None or out.split:
        return out
    if not opts.encode:
        out.results = results
    elif opts.batched:
        out.payload = encode_results(results, task.start, opts.json_default)
    else:
        out.payload = results  # already encoded, one bytearray of lines
    return out
