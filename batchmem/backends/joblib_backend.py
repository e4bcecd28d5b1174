"""joblib execution: loky processes, threads, or any backend joblib.parallel_config names."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .base import ExecutorBase
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch

__all__ = ["JoblibExecutor", "worker_exit"]

logger = logging.getLogger("batchmem")


class JoblibExecutor(ExecutorBase):
    """Runs batches as joblib tasks: loky processes, threads, or any backend
    named by :func:`joblib.parallel_config` (e.g. joblib's ``"dask"`` backend).

    Each joblib task is one whole batch (``batch_size=1``); tasks are
    generated lazily, ``pre_dispatch`` (default ``2*n_jobs``) at most ahead of
    the results, so the optimizer's next size is asked as late as joblib
    allows. Results come back in task order (``return_as="generator"``).
    """

    def __init__(
        self, fn: Callable[..., Any], opts: RunOptions, n_jobs: int, backend: str | None, pre_dispatch: str = "2*n_jobs"
    ):
        import joblib

        super().__init__()
        self.fn, self.opts = fn, opts
        self.n_jobs, self.backend, self.pre_dispatch = n_jobs, backend, pre_dispatch
        with joblib.parallel_config(backend=backend) if backend else contextlib.nullcontext():
            self.in_flight = max(1, joblib.effective_n_jobs(n_jobs))
            active = type(joblib.parallel.get_active_backend()[0]).__name__
        # Worker recycling (process backends only; see map): replace the workers
        # every max_tasks_per_worker batches each, or when request_recycle() is called.
        self.recycles_workers = active in ("LokyBackend", "MultiprocessingBackend")
        self._is_loky = active == "LokyBackend"
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
            budget = (
                self.max_tasks_per_worker * self.in_flight
                if self.recycles_workers and self.max_tasks_per_worker
                else None
            )
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
                logger.warning(
                    "a worker process died (%s) with %d batch(es) in flight (items %s..); "
                    "retrying them in halves in fresh workers",
                    how,
                    len(stranded),
                    stranded[0].start if stranded else "?",
                )
                for task in stranded:
                    # A 1-item task may be innocent: run it alone to tell; bigger ones come back
                    # to the caller as "worker_died" and are retried in halves (see run_isolated).
                    yield self.run_isolated(task) if len(task) == 1 else _died(task, how)
                carry = seg.carry
                if seg.exhausted and carry is None:
                    return
                continue
            carry = seg.carry
            if seg.exhausted or carry is None or not self.recycles_workers:
                return
            self._recycle_workers(
                self._recycle.is_set() and self._reason or f"after {self.max_tasks_per_worker} batches per worker"
            )

    def request_recycle(self, reason: str) -> bool:
        """Replace the worker processes once the batches already dispatched finish (thread-safe).

        Returns False for backends whose workers are not processes (threading)."""
        if self.recycles_workers and not self._recycle.is_set():
            self._reason = reason
            self._recycle.set()
        return self.recycles_workers

    def worker_pids(self) -> list[int]:
        """Pids of loky's live worker processes (empty for other joblib backends)."""
        if not self._is_loky:
            return []
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        processes = getattr(executor, "_processes", None) or {}
        return [p.pid for p in list(processes.values()) if p.is_alive()]

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
            logger.warning(
                "a worker process died (%s) running %d split batch(es); running each alone",
                worker_exit(exc),
                len(tasks),
            )
            return [self.run_isolated(t) for t in tasks]

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` alone in a worker (fresh ones if the last died). If that worker dies too, an
        outcome with ``split="worker_died"`` and ``worker_exit`` comes back instead of raising."""
        from joblib import delayed

        try:
            return list(self._parallel()([delayed(run_batch)(self.fn, task, self.opts)]))[0]
        except _worker_death_types() as exc:
            self.worker_deaths += 1
            return _died(task, worker_exit(exc))


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


def _died(task: BatchTask, how: str) -> BatchOutcome:
    """The outcome of a task whose worker died (``how``: exit code or signal): to be retried in halves."""
    out = BatchOutcome(task.index, task.start, len(task), split="worker_died")
    out.worker_exit = how
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

    def __init__(
        self,
        it: Iterator[BatchTask],
        budget: int | None,
        recycle: threading.Event | None,
        carry: BatchTask | None = None,
    ):
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
