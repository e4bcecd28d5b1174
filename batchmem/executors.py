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
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import BatchFunctionError
from .heap.monitor import PeakMemoryTracker
from .sinks import NULL_LINE, encode_results, error_record

__all__ = ["BatchTask", "BatchOutcome", "RunOptions", "run_batch", "SerialExecutor", "JoblibExecutor", "make_executor"]


@dataclass(frozen=True)
class RunOptions:
    """How a worker runs a batch: calling convention, error policy, result encoding."""

    batched: bool = False
    on_error: str = "raise"  # "raise" | "skip" | "retry"
    max_retries: int = 3
    encode: bool = True  # True: JSONL bytes come back; False: the raw results (Parquet sink)
    json_default: Callable[[Any], Any] | None = None


@dataclass
class BatchTask:
    """One batch: its position in the run and its items (a list or a DataFrame of rows)."""

    index: int  # batch number, 0-based
    start: int  # input index of the first item
    items: Any

    def __len__(self) -> int:
        return len(self.items)

    def halves(self) -> tuple[BatchTask, BatchTask]:
        """Split in two (used after a MemoryError or a failing batched call)."""
        mid = len(self.items) // 2
        items = self.items
        first = items.iloc[:mid] if hasattr(items, "iloc") else items[:mid]
        second = items.iloc[mid:] if hasattr(items, "iloc") else items[mid:]
        return BatchTask(self.index, self.start, first), BatchTask(self.index, self.start + mid, second)


@dataclass
class BatchOutcome:
    """What comes back from a batch: results plus the measurement taken where it ran.

    ``split`` is set when the batch must be halved and retried by the caller
    (a ``MemoryError``, or a batched function that raised); then ``payload``
    and ``results`` are empty. ``error`` is ``(item index, exception)`` under
    ``on_error="raise"``.
    """

    index: int
    start: int
    size: int  # items
    payload: bytes = b""  # encoded JSONL, one line per item (``null`` for failed items)
    results: Any = None  # raw results when RunOptions.encode is False
    failed: int = 0
    error_records: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, BaseException] | None = None
    split: str | None = None  # None | "memory" | "error"
    duration_s: float = 0.0
    start_rss_bytes: int = 0
    peak_bytes: int = 0  # peak RSS above start_rss_bytes during the batch
    gc_collections: int = 0
    pid: int = 0


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
        retry=tenacity.retry_if_not_exception_type(MemoryError),
        reraise=True,
    )
    value = retrying(call)
    return value, retrying.statistics.get("attempt_number", 1)


def _item_failure(out: BatchOutcome, index: int, item: Any, exc: BaseException, attempts: int, opts: RunOptions) -> bool:
    """Record a failed item; returns True if the batch must stop (``on_error="raise"``)."""
    if opts.on_error == "raise":
        out.error = (index, exc)
        return True
    out.failed += 1
    out.error_records.append(error_record(index, item, exc, attempts))
    return False


def _run_items(fn: Callable[..., Any], task: BatchTask, opts: RunOptions, out: BatchOutcome, kwargs: dict[str, Any]) -> list[Any] | None:
    """Per-item calling convention; returns the results (``None`` for failed items), or None to stop the run.

    The loop has no per-item ``try``: an exception leaves it, is recorded
    against the item at ``len(results)``, and the loop resumes after it.
    """
    items = task.items.to_dict("records") if hasattr(task.items, "to_dict") else task.items
    call = functools.partial(fn, **kwargs) if kwargs else fn
    attempts = 1
    if opts.on_error == "retry" and opts.max_retries > 0:
        plain = call
        call = lambda x: _call_with_retries(lambda: plain(x), opts)[0]  # noqa: E731
        attempts += opts.max_retries
    results: list[Any] = []
    append = results.append
    n = len(items)
    while len(results) < n:
        try:
            for x in itertools.islice(items, len(results), None):
                append(call(x))
        except MemoryError:
            raise
        except Exception as exc:
            i = len(results)
            if _item_failure(out, task.start + i, items[i], exc, attempts, opts):
                return None
            append(None)
    return results


def _run_batched(fn: Callable[..., Any], task: BatchTask, opts: RunOptions, out: BatchOutcome, kwargs: dict[str, Any]) -> Any:
    """Batched calling convention: ``fn(batch) -> same-length list or DataFrame``."""
    try:
        results, _ = _call_with_retries(lambda: fn(task.items, **kwargs), opts)
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


def run_batch(fn: Callable[..., Any], task: BatchTask, opts: RunOptions, kwargs: dict[str, Any] | None = None) -> BatchOutcome:
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
    out = BatchOutcome(task.index, task.start, len(task), pid=os.getpid())
    gc_before = _gc_collections()
    t0 = time.perf_counter()
    with PeakMemoryTracker() as peak:
        try:
            runner = _run_batched if opts.batched else _run_items
            results = runner(fn, task, opts, out, kwargs)
        except MemoryError:
            results, out.split = None, "memory"
    out.duration_s = time.perf_counter() - t0
    out.start_rss_bytes = peak.start_rss_bytes
    out.peak_bytes = peak.peak_delta_bytes
    out.gc_collections = _gc_collections() - gc_before
    if results is None or out.split:
        return out
    if not opts.encode:
        out.results = results
    elif out.failed and not opts.batched:
        out.payload = b"".join(
            NULL_LINE if r is None else encode_results([r], task.start + i, opts.json_default) for i, r in enumerate(results)
        )
    else:
        out.payload = encode_results(results, task.start, opts.json_default)
    return out


class SerialExecutor:
    """Runs every batch in this process, one after another (``n_jobs=1``)."""

    in_flight = 1

    def __init__(self, fn: Callable[..., Any], opts: RunOptions):
        self.fn, self.opts = fn, opts

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Outcomes in task order; tasks are pulled one at a time."""
        for task in tasks:
            yield run_batch(self.fn, task, self.opts)

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        """Run a few tasks (the halves of a split batch) and return their outcomes in order."""
        return [run_batch(self.fn, t, self.opts) for t in tasks]

    def close(self) -> None:
        pass


class JoblibExecutor:
    """Runs batches as joblib tasks: loky processes, threads, or any backend
    named by :func:`joblib.parallel_config` (e.g. joblib's ``"dask"`` backend).

    Each joblib task is one whole batch (``batch_size=1``); tasks are
    generated lazily, ``pre_dispatch`` (default ``2*n_jobs``) at most ahead of
    the results, so the optimizer's next size is asked as late as joblib
    allows. Results come back in task order (``return_as="generator"``).
    """

    def __init__(self, fn: Callable[..., Any], opts: RunOptions, n_jobs: int, backend: str | None, pre_dispatch: str = "2*n_jobs"):
        import joblib

        self.fn, self.opts = fn, opts
        self.n_jobs, self.backend, self.pre_dispatch = n_jobs, backend, pre_dispatch
        with joblib.parallel_config(backend=backend) if backend else contextlib.nullcontext():
            self.in_flight = max(1, joblib.effective_n_jobs(n_jobs))

    def _parallel(self, **kw: Any) -> Any:
        import joblib

        return joblib.Parallel(n_jobs=self.n_jobs, backend=self.backend, batch_size=1, return_as="generator", **kw)

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        from joblib import delayed

        call = delayed(run_batch)
        yield from self._parallel(pre_dispatch=self.pre_dispatch)(call(self.fn, t, self.opts) for t in tasks)

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        from joblib import delayed

        return list(self._parallel()(delayed(run_batch)(self.fn, t, self.opts) for t in tasks))

    def close(self) -> None:
        pass


def make_executor(fn: Callable[..., Any], opts: RunOptions, n_jobs: int, backend: str | None) -> SerialExecutor | JoblibExecutor:
    """``n_jobs == 1`` and no explicit backend: in-process; otherwise joblib."""
    if n_jobs == 1 and backend in (None, "sequential"):
        return SerialExecutor(fn, opts)
    return JoblibExecutor(fn, opts, n_jobs, backend)
