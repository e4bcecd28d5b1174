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
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import BatchFunctionError
from .heap.analyzer import heap_in_use_bytes
from .heap.monitor import MemoryLimit, PeakMemoryTracker, PressureLevel, PressureThresholds
from .worker_setup import WorkerSetup, check_accepts_state
from .sinks import NULL_LINE, encode_results, error_record, encoder_args, serialization_error

__all__ = ["BatchTask", "BatchOutcome", "RunOptions", "run_batch", "SerialExecutor", "JoblibExecutor", "make_executor"]

logger = logging.getLogger("batchmem")


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
    worker_exit: str = ""  # split == "worker_died": how the worker ended, e.g. "exit code 3", "signal SIGKILL"
    duration_s: float = 0.0
    start_rss_bytes: int = 0
    peak_bytes: int = 0  # peak RSS above start_rss_bytes during the batch
    gc_collections: int = 0
    pid: int = 0
    heap_bytes: int = 0  # malloc in-use bytes of this process when the batch started (glibc; 0 elsewhere)


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
    """Record a failed item; returns True if the batch must stop (``on_error="raise"``, or
    ``"retry"`` with ``retry_exhausted="raise"`` once the retries are used up)."""
    if opts.on_error == "raise" or (opts.on_error == "retry" and opts.retry_exhausted == "raise"):
        out.error = (index, exc)
        return True
    out.failed += 1
    out.error_records.append(error_record(index, item, exc, attempts))
    return False


def _run_items(fn: Callable[..., Any], task: BatchTask, opts: RunOptions, out: BatchOutcome, kwargs: dict[str, Any]) -> list[Any] | bytearray | None:
    """Per-item calling convention, one pass: call, then encode at once (``opts.encode``).

    Encoding each result as soon as it exists lets the result object die
    before the next item runs, so a batch holds only its encoded lines; this
    keeps the batch's memory (and page faults) small. Returns the encoded
    lines (or raw results), with ``null``/``None`` for failed items, or None
    to stop the run (``on_error="raise"``). Try blocks cost nothing until
    they catch (CPython >= 3.11).
    """
    items = task.items.to_dict("records") if hasattr(task.items, "to_dict") else task.items
    call = functools.partial(fn, **kwargs) if kwargs else fn
    attempts = 1
    if opts.on_error == "retry" and opts.max_retries > 0:
        plain = call
        call = lambda x: _call_with_retries(lambda: plain(x), opts)[0]  # noqa: E731
        attempts += opts.max_retries
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


def _ignore_sigint_in_loky_worker() -> None:
    """In a loky worker, ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the
    parent (see :mod:`batchmem.signals`) decides to finish the batches in flight, not the workers."""
    import multiprocessing
    import signal

    if (multiprocessing.current_process().name.startswith("LokyProcess")
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    _ignore_sigint_in_loky_worker()
    if opts.setup is not None:  # before the measurement: the setup's time and memory are not this batch's
        kwargs = {**kwargs, "state": opts.setup.state()}
    out = BatchOutcome(task.index, task.start, len(task), pid=os.getpid())
    out.heap_bytes = heap_in_use_bytes() or 0  # the previous batch's settled heap: what HeapAnalyzer trends
    gc_before = _gc_collections()
    t0 = time.perf_counter()
    with PeakMemoryTracker(force_sampling=opts.peak_by_sampling) as peak:
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
    elif opts.batched:
        out.payload = encode_results(results, task.start, opts.json_default)
    else:
        out.payload = results  # already encoded, one bytearray of lines
    return out


class _ExecutorBase:
    """What the run loop asks of every executor besides running batches."""

    opts: RunOptions
    in_flight: int = 1  # batches running at once
    #: The limit batches are planned against when it is not this machine's
    #: (dask: the workers' limit as the scheduler reports it); None: the local limit.
    memory_limit: MemoryLimit | None = None

    def memory_plan(
        self, outcome: BatchOutcome | None, rss_bytes: int, pressure: PressureLevel, thresholds: PressureThresholds
    ) -> tuple[int, PressureLevel, int]:
        """Baseline (bytes), pressure and batches in flight the optimizer plans with.

        In-process and loky: the local process tree's resident bytes and
        pressure as sampled (``rss_bytes``, ``pressure``), and ``in_flight``.
        ``outcome`` is the batch just finished (None before the first).
        """
        return rss_bytes, pressure, self.in_flight

    def _release_setup(self) -> None:
        """Tear down the setup state held in this process (serial and threading runs)."""
        if self.opts.setup is not None:
            self.opts.setup.release()


class SerialExecutor(_ExecutorBase):
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
        self._release_setup()


class JoblibExecutor(_ExecutorBase):
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
            active = type(joblib.parallel.get_active_backend()[0]).__name__
        # Worker recycling (process backends only; see map): replace the workers
        # every max_tasks_per_worker batches each, or when request_recycle() is called.
        self.recycles_workers = active in ("LokyBackend", "MultiprocessingBackend")
        self._is_loky = active == "LokyBackend"
        self.max_tasks_per_worker: int | None = None
        self.recycles = 0
        self.worker_deaths = 0  # worker processes found dead (loky TerminatedWorkerError)
        self.recycle_reasons: list[str] = []
        self._recycle = threading.Event()
        self._reason = ""

    def _parallel(self, **kw: Any) -> Any:
        import joblib

        return joblib.Parallel(n_jobs=self.n_jobs, backend=self.backend, batch_size=1, return_as="generator", **kw)

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Outcomes in task order. With process backends the tasks run in segments:
        a segment ends after ``max_tasks_per_worker * in_flight`` tasks or when
        :meth:`request_recycle` is called; its results are drained, the workers
        are replaced (:meth:`_recycle_workers`) and the next segment starts.
        """
        from joblib import delayed

        call = delayed(run_batch)
        deaths = _worker_death_types()
        it = iter(tasks)
        carry = None
        while True:
            budget = self.max_tasks_per_worker * self.in_flight if self.recycles_workers and self.max_tasks_per_worker else None
            seg = _Segment(it, budget, self._recycle if self.recycles_workers else None, carry)
            feed = _InFlight(seg, lambda t: call(self.fn, t, self.opts))
            try:
                for outcome in self._parallel(pre_dispatch=self.pre_dispatch)(feed):
                    feed.done()
                    yield outcome
            except deaths as exc:
                # The Parallel call is broken: every task it had taken is stranded. Stop it
                # from taking more, hand the stranded tasks back (in order) and start a new
                # Parallel call (fresh workers) on the rest of the tasks.
                stranded = feed.abandon()
                how = worker_exit(exc)
                self.worker_deaths += 1
                logger.warning("a worker process died (%s) with %d batch(es) in flight (items %s..); "
                               "retrying them in halves in fresh workers", how, len(stranded),
                               stranded[0].start if stranded else "?")
                for task in stranded:
                    # A 1-item task may be innocent: run it alone to tell; bigger ones come back
                    # to the caller as "worker_died" and are retried in halves (see run_isolated).
                    yield self.run_isolated(task) if len(task) == 1 else _died(task, how, alone=False)
                carry = seg.carry
                if seg.exhausted and carry is None:
                    return
                continue
            carry = seg.carry
            if seg.exhausted or carry is None or not self.recycles_workers:
                return
            self._recycle_workers(self._recycle.is_set() and self._reason or f"after {self.max_tasks_per_worker} batches per worker")

    def request_recycle(self, reason: str) -> None:
        """Replace the worker processes once the batches already dispatched finish (thread-safe)."""
        if self.recycles_workers and not self._recycle.is_set():
            self._reason = reason
            self._recycle.set()

    def _recycle_workers(self, reason: str) -> None:
        """Shut the worker processes down so the next segment starts fresh ones.

        loky: the reusable executor joblib shares is fetched with
        ``get_reusable_executor(reuse=True)`` and shut down (``wait=True``: the
        segment is drained, workers exit on their sentinel and run their
        atexit teardown); the next ``Parallel`` call builds a new one (loky has
        no ``max_tasks_per_child``: joblib/loky issue #373). multiprocessing:
        each ``Parallel`` call already owns its pool.
        """
        self._recycle.clear()
        if self._is_loky:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor(reuse=True).shutdown(wait=True)
        self.recycles += 1
        self.recycle_reasons.append(reason)
        logger.warning("batchmem: replaced the worker processes (%s)", reason)

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        """Run a few tasks (the halves of a split batch) at once; outcomes in order.

        If a worker dies, each task is run again on its own (:meth:`run_isolated`),
        so a ``"worker_died"`` outcome always names a task that killed its worker alone.
        """
        from joblib import delayed

        try:
            return list(self._parallel()(delayed(run_batch)(self.fn, t, self.opts) for t in tasks))
        except _worker_death_types() as exc:
            self.worker_deaths += 1
            logger.warning("a worker process died (%s) running %d split batch(es); running each alone", worker_exit(exc), len(tasks))
            return [self.run_isolated(t) for t in tasks]

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` alone in a worker (fresh ones if the last died). If that worker dies too, an
        outcome with ``split="worker_died"`` and ``worker_exit`` comes back instead of raising."""
        from joblib import delayed

        try:
            return list(self._parallel()([delayed(run_batch)(self.fn, task, self.opts)]))[0]
        except _worker_death_types() as exc:
            self.worker_deaths += 1
            return _died(task, worker_exit(exc), alone=True)

    def close(self) -> None:
        self._release_setup()  # threading: the state lives here; loky workers keep theirs


def _worker_death_types() -> tuple[type[BaseException], ...]:
    """The exceptions joblib raises when a worker process dies: loky's ``TerminatedWorkerError``
    (a ``BrokenProcessPool``) and the standard library's ``BrokenProcessPool``."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        from joblib.externals.loky.process_executor import BrokenProcessPool as LokyBroken
        from joblib.externals.loky.process_executor import TerminatedWorkerError
    except ImportError:  # pragma: no cover - joblib vendors loky
        return (BrokenProcessPool,)
    return (TerminatedWorkerError, LokyBroken, BrokenProcessPool)

_EXIT_CODES = re.compile(r"exit codes of the workers are \{([^}]*)\}")
_EXIT_ENTRY = re.compile(r"([A-Z]+)\((-?\d+)\)")


def worker_exit(exc: BaseException) -> str:
    """How the worker ended, from loky's message: ``"exit code 3"``, ``"signal SIGKILL"``
    (several joined with ``", "``), or ``"unknown exit"`` when the message does not say."""
    found = _EXIT_CODES.search(str(exc))
    if not found:
        return "unknown exit"
    parts = []
    for name, code in _EXIT_ENTRY.findall(found.group(1)):
        parts.append(f"exit code {code}" if name == "EXIT" else f"signal {name}")
    return ", ".join(dict.fromkeys(parts)) or "unknown exit"


def _died(task: BatchTask, how: str, *, alone: bool) -> BatchOutcome:
    """The outcome of a task whose worker died: to be retried in halves (``alone`` says it died on its own)."""
    out = BatchOutcome(task.index, task.start, len(task), split="worker_died")
    out.worker_exit = how + (" (alone)" if alone else "")
    return out


class _InFlight:
    """The task feed of one ``Parallel`` call: remembers the tasks joblib has taken and not yet
    returned, in order, so they can be handed back when a worker death breaks the call.

    joblib pulls from it in its callback thread too; a lock makes "take a task" and
    "abandon the feed" exclusive, so no task is taken after :meth:`abandon` and lost.
    """

    def __init__(self, tasks: Iterable[BatchTask], make_call: Callable[[BatchTask], Any]):
        self._it, self._make_call = iter(tasks), make_call
        self._taken: deque[BatchTask] = deque()
        self._lock = threading.Lock()
        self._abandoned = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._abandoned:
                raise StopIteration
            task = next(self._it)
            self._taken.append(task)
        return self._make_call(task)

    def done(self) -> None:
        """The oldest task's outcome came back."""
        self._taken.popleft()

    def abandon(self) -> list[BatchTask]:
        """Stop handing out tasks; the tasks taken and not returned, in order."""
        with self._lock:
            self._abandoned = True
            stranded = list(self._taken)
            self._taken.clear()
        return stranded


class _Segment:
    """Tasks of one worker generation: stops after ``budget`` tasks or once ``recycle`` is set.

    When it stops early it pulls the next task into ``carry`` (the next
    segment's first), so a source that ends right there is seen as
    ``exhausted`` and no workers are replaced for nothing.
    """

    def __init__(self, it: Iterator[BatchTask], budget: int | None, recycle: threading.Event | None,
                 carry: BatchTask | None = None):
        self.it, self.budget, self.recycle, self.carry = it, budget, recycle, carry
        self.count = 0
        self.exhausted = False

    def _next(self) -> BatchTask | None:
        if self.carry is not None:
            task, self.carry = self.carry, None
            return task
        try:
            return next(self.it)
        except StopIteration:
            self.exhausted = True
            return None

    def __iter__(self) -> Iterator[BatchTask]:
        while (self.budget is None or self.count < self.budget) and not (self.recycle and self.recycle.is_set()):
            task = self._next()
            if task is None:
                return
            self.count += 1
            yield task
        self.carry = self._next()


def make_executor(
    fn: Callable[..., Any], opts: RunOptions, n_jobs: int, backend: str | None, **backend_options: Any
) -> SerialExecutor | JoblibExecutor:
    """``n_jobs == 1`` and no explicit backend: in-process; ``"dask"``: a dask cluster; otherwise joblib.

    ``backend_options`` go to :class:`batchmem.dask_backend.DaskExecutor` (``client``,
    ``scheduler_address``). With ``opts.setup``, ``fn`` must accept ``state=`` (ConfigError otherwise).
    """
    if opts.setup is not None:
        check_accepts_state(fn)
    if backend == "dask":
        from .dask_backend import DaskExecutor

        return DaskExecutor(fn, opts, **backend_options)
    if n_jobs == 1 and backend in (None, "sequential"):
        return SerialExecutor(fn, opts)
    return JoblibExecutor(fn, opts, n_jobs, backend)
