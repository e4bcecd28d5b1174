"""Worker pools on futures batchmem owns: loky processes (``backend="loky"``), the standard library's
process pool (``"multiprocessing"``) or threads (``"threading"``).

Why not ``joblib.Parallel``: its pre-dispatch pulls the next tasks from its
callback thread as soon as a worker is free, before the main thread has
committed the batch that finished, so each new batch was sized with
feedback up to ``pre_dispatch`` batches old. Here the generator :meth:`PoolExecutor.map`
keeps ``in_flight + 1`` batches submitted (one queued behind the running ones), waits for the
oldest (outcomes stay in input order), submits one more and yields it for the commit. Every
batch is therefore sized with the measurements of every batch committed before it was cut, and
at most ``in_flight + 1`` batches are cut ahead of the commits.

Process pools are joblib's shared loky executor (``joblib.executor.get_memmapping_executor``,
the one ``joblib.Parallel(backend="loky")`` uses), so a program that also
calls joblib shares the same workers. They are guarded by the OOM watchdog
(:mod:`batchmem.backends.watchdog`) once :meth:`PoolExecutor.guard_memory` is called.

``"multiprocessing"`` is :class:`concurrent.futures.ProcessPoolExecutor` with the platform's default
start method (fork on Linux before Python 3.14, as ``multiprocessing.Pool``), since joblib's
multiprocessing backend cannot return results as a generator. The function and its options travel
once per pool, pickled with cloudpickle, not with every batch. ``"fork"`` is the same pool forked
explicitly, with the function inherited rather than pickled: ``n_jobs="auto"`` uses it when forking is
safe (:mod:`batchmem.backends.forking`), and a replacement pool forks again only while it still is. A
worker's exit code or signal is read from the pool's process table. Forked workers map the parent's
pages copy-on-write, so their resident sizes count those pages again; the watchdog confirms a reading
over its level with proportional set sizes before it kills (:mod:`batchmem.backends.watchdog`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ConfigError
from ..heap.monitor import PressureLevel, PressureThresholds
from .base import ExecutorBase
from .deadlines import DeadlineBoard
from .forking import fork_unsafe_reason, forking_allowed_threads, usable_cpus
from .inner_threads import worker_env
from .joblib_backend import _died, _worker_death_types, worker_exit
from .lifeline import parent_death_signal
from .loky_worker import start_loky_worker
from .pickling import check_picklable
from .stdlib_pool import exit_of, forks, process_pool, run_shipped
from .watchdog import OomWatchdog
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch
from .worker_cgroups import WorkerCgroups, enable_reason

__all__ = ["PoolExecutor"]

logger = logging.getLogger("batchmem")


class PoolExecutor(ExecutorBase):
    """``n_jobs`` loky worker processes (``kind="loky"``), standard-library worker processes
    (``kind="multiprocessing"``) or threads (``kind="threading"``).

    Worker death: every batch in flight is stranded; one-item batches are run again alone, larger
    ones come back as ``split="worker_died"`` (the run loop retries them in halves). Recycling:
    after ``max_tasks_per_worker`` batches per worker, or after :meth:`request_recycle`, the pool
    is drained and replaced (loky has no ``max_tasks_per_child``: joblib/loky issue #373).
    """

    def __init__(self, fn: Callable[..., Any], opts: RunOptions, n_jobs: int, kind: str = "loky"):
        super().__init__()
        self.fn, self.opts, self.kind = fn, opts, kind
        if kind == "fork":  # n_jobs="auto" gives a count; joblib is not imported for forked workers
            self.in_flight = max(1, n_jobs)
        else:
            import joblib

            self.in_flight = max(1, joblib.effective_n_jobs(n_jobs))
        self.processes = kind != "threading"
        # item_timeout: workers report their batches, so the watchdog can kill one stuck inside C
        self._deadlines = (
            DeadlineBoard() if opts.item_timeout and self.processes and DeadlineBoard.available() else None
        )
        if self._deadlines is not None:
            self.opts = dataclasses.replace(opts, deadline_address=self._deadlines.address)
        self._pool: Any = None
        self._procs: dict[int, Any] = {}  # multiprocessing: the pool's process table (pid -> Process)
        self._recycle_reason: str | None = None
        self._cancelled = False
        self.watchdog: OomWatchdog | None = None
        self.cgroups: WorkerCgroups | None = None
        self._task_opts = self.opts  # the options loky's tasks carry (worker_cgroups set once they are placed)
        self._free_heap: dict[int, int] = {}  # worker pid -> free heap at its last batch's end, bytes
        self._started: Any = None  # the future of start()'s empty batch
        self._resizing = False  # the next replacement of the pool makes it smaller (not a recycle)
        self._refit_at = -1  # the pool (count of pools started) whose first outcome refit judged

    # -- the pool
    def _get_pool(self) -> Any:
        if self._pool is None:
            if self.kind == "loky":
                from joblib import cpu_count
                from joblib.executor import get_memmapping_executor

                self._pool = get_memmapping_executor(
                    self.in_flight,
                    env=worker_env(self.in_flight, cpu_count()),
                    initializer=start_loky_worker,  # no worker outlives this process (lifeline.py)
                    initargs=(os.getpid(), parent_death_signal()),
                )
            elif self._stdlib:
                env = worker_env(self.in_flight, usable_cpus())
                self._pool = process_pool(self.in_flight, self.fn, self.opts, env, fork=self.kind == "fork")
                self._procs = self._pool._processes  # kept: shutdown() drops the pool's reference to it
            else:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.in_flight, thread_name_prefix="batchmem")
            self._pools += 1
        return self._pool

    _pools = 0  # pools started so far (a replacement of forked workers forks only while that is safe)

    def _replace_with_loky(self) -> None:
        """Make the replacement of forked workers loky's when forking is no longer safe (the watchdog's
        thread runs by now, see :func:`~batchmem.backends.forking.fork_unsafe_reason`) and the function
        can travel pickled. One that cannot is forked again, as ``multiprocessing.Pool`` replaces its
        workers."""
        why = fork_unsafe_reason()
        if why is None:
            return
        setup = self.opts.setup
        try:
            check_picklable(self.fn, ("setup", setup.setup if setup else None))
        except ConfigError:
            logger.info("forking replacement workers although %s: the function cannot be pickled", why)
            return
        logger.info("replacement workers are loky's: %s", why)
        self.kind = "loky"

    @property
    def _stdlib(self) -> bool:
        """Workers of the standard library's process pool (``"multiprocessing"``, ``"fork"``)."""
        return self.kind in ("multiprocessing", "fork")

    def _drop_pool(self, *, kill: bool) -> None:
        """Shut the pool down (``kill``: terminate the workers now; else let them finish and exit)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self.kind == "loky":
            pool.shutdown(wait=not kill, kill_workers=kill)
        elif self._stdlib:
            if kill:  # ProcessPoolExecutor has no kill_workers before Python 3.14
                for proc in list(self._procs.values()):
                    proc.kill()
            pool.shutdown(wait=not kill, cancel_futures=kill)
        else:
            pool.shutdown(wait=not kill, cancel_futures=kill)

    def _submit(self, task: BatchTask) -> Any:
        if self.processes and self._pool is None:
            if self.kind == "fork" and self._pools:
                self._replace_with_loky()
            _start_resource_trackers(self.kind)
        charged = self.cgroups is not None
        call = (run_shipped, task, charged) if self._stdlib else (run_batch, self.fn, task, self._task_opts)
        fresh = self._pool is None
        with _sigint_blocked(), forking_allowed_threads() if self.kind == "fork" else contextlib.nullcontext():
            try:
                future = self._get_pool().submit(*call)
            except _worker_death_types():  # a worker died since the last submit: the pool is broken, the task
                self._drop_pool(kill=True)  # did not run; the batches it stranded fail through their futures
                future, fresh = self._get_pool().submit(*call), True
        if fresh and self.cgroups is not None:  # the new workers exist now (a pool starts them at its first
            self.cgroups.place(self.worker_pids())  # submit) and boot: placed before their first batch
        return future

    def start(self) -> None:
        """Start the worker processes now (forked ones exist when this returns), without waiting for them;
        threads start with the first batch."""
        if self.processes:
            self._started = self._submit(BatchTask(-1, 0, []))

    def wait_started(self, timeout_s: float = 60.0) -> list[int]:
        """Wait until the workers started by :meth:`start` ran their setup; their pids (empty for threads)."""
        if self._started is not None:
            with contextlib.suppress(Exception):  # a start that failed shows at the first real batch
                self._started.result(timeout=timeout_s)
        return self.worker_pids()

    def resize(self, workers: int, reason: str) -> bool:
        """Run at most ``workers`` batches at once from now on: the pool is replaced by a smaller one once
        the batches in flight finish (fewer workers fit under the memory target, :mod:`batchmem.heap.fit`).
        False, and nothing changes, for threads or when ``workers`` is not fewer."""
        if not self.processes or workers >= self.in_flight:
            return False
        self.in_flight = max(1, workers)
        if self._pool is not None:
            self._resizing = True
            self.request_recycle(reason)
        return True

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (empty for threads)."""
        pool = self._pool
        if pool is None or not self.processes:
            return []
        processes = getattr(pool, "_processes", None) or {}  # loky's table of its workers, by pid
        return [pid for pid, proc in list(processes.items()) if proc.is_alive()]

    def guard_memory(self, limit_bytes: int, terminate_fraction: float) -> None:
        """Start the OOM watchdog over the worker processes (threads share this process: nothing to guard),
        and give each worker a memory cgroup of its own where that is possible and ``worker_cgroups``
        allows it (:mod:`batchmem.backends.worker_cgroups`): the watchdog's look at the pids places them."""
        if not self.processes or self.watchdog is not None:
            return
        pids: Callable[[], list[int]] = self.worker_pids
        if self.worker_cgroups:
            base, why = enable_reason()
            if base is None:
                logger.debug("no worker cgroups: %s", why)
            else:
                groups = self.cgroups = WorkerCgroups(base, int(limit_bytes * terminate_fraction), self.in_flight)
                pids = lambda: groups.place(self.worker_pids())  # noqa: E731
                pids()  # the workers started already, before their first batch
                self.memory_accounting = "worker_cgroups"
                self._task_opts = dataclasses.replace(self.opts, worker_cgroups=True)
        self.watchdog = OomWatchdog(pids, limit_bytes, terminate_fraction, deadlines=self._deadlines).start()

    def memory_plan(
        self, outcome: BatchOutcome | None, rss_bytes: int, pressure: PressureLevel, thresholds: PressureThresholds
    ) -> tuple[int, PressureLevel, int]:
        """As :meth:`ExecutorBase.memory_plan`, less the free heap of every live worker, not only the last
        one's: each worker counts its own free heap into its next batch's peak, so the baseline (the
        tree's RSS, which holds it too) must leave all of them out, or each is counted twice."""
        if not self.processes:
            return super().memory_plan(outcome, rss_bytes, pressure, thresholds)
        if outcome is not None and outcome.pid:
            self._free_heap[outcome.pid] = outcome.free_heap_end_bytes
        live = set(self.worker_pids())
        self._free_heap = {pid: b for pid, b in self._free_heap.items() if pid in live}
        return max(0, rss_bytes - sum(self._free_heap.values())), pressure, self.in_flight

    @property
    def watchdog_kills(self) -> int:  # type: ignore[override]
        """Workers the OOM watchdog killed (count)."""
        return self.watchdog.kills if self.watchdog is not None else 0

    # -- running
    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Outcomes in task order, with at most ``in_flight + 1`` batches cut ahead of the commits.

        The next batch is submitted when an outcome comes back, before it is yielded for the commit:
        outcomes are taken in order, so a worker that finished out of order has often taken the
        queued batch already, and waiting for the commit (two fsyncs and a memory sample, ~3 ms)
        left it idle: 0.03-0.06 s a worker over the 2 s CPU workload of benchmarks/bench_peers.py.
        """
        it = iter(tasks)
        window: deque[tuple[BatchTask, Any]] = deque()
        exhausted = False
        submitted = 0  # batches given to this generation of workers

        def top_up() -> None:
            nonlocal exhausted, submitted
            budget = self.max_tasks_per_worker * self.in_flight if self.max_tasks_per_worker else None
            while (
                not exhausted
                and len(window) < self.in_flight + 1
                and self._recycle_reason is None
                and (budget is None or submitted < budget)
            ):
                task = next(it, None)
                if task is None:
                    exhausted = True
                    return
                window.append((task, self._submit(task)))
                submitted += 1

        while not self._cancelled:
            top_up()
            if not window:
                carry = None if exhausted else next(it, None)  # a source that ends here needs no new workers
                if carry is None:
                    return
                self._recycle(self._recycle_reason or f"after {self.max_tasks_per_worker} batches per worker")
                window.append((carry, self._submit(carry)))
                submitted = 1
                continue
            task, future = window.popleft()
            try:
                outcome = future.result()
            except Exception as exc:
                if self._cancelled:  # the pool was terminated on purpose: no outcome for these
                    return
                if not isinstance(exc, _worker_death_types()):
                    raise
                stranded = [task] + [t for t, _ in window]
                window.clear()
                submitted = 0
                yield from self._after_death(stranded, exc)
                continue
            if self.refit is not None and outcome.size and self._refit_at != self._pools and self.in_flight > 1:
                self._refit_at = self._pools  # once per pool: a smaller one is judged again on its own first batch
                workers = self.refit(outcome)
                if workers is not None:
                    self.resize(workers, f"{workers} of {self.in_flight} workers fit under the memory target")
            top_up()
            yield outcome

    def _after_death(self, stranded: list[BatchTask], exc: BaseException) -> Iterator[BatchOutcome]:
        how = self._death(exc)
        logger.warning(
            "a worker process died (%s) with %d batch(es) in flight (items %s..); retrying them "
            "in halves in fresh workers",
            how,
            len(stranded),
            stranded[0].start,
        )
        for task in stranded:  # a 1-item task may be innocent: run it alone to tell
            yield self.run_isolated(task) if len(task) == 1 else _died(task, how)

    def _death(self, exc: BaseException) -> str:
        """Count a worker death, replace the broken pool; how the worker ended (see :meth:`_exit_reason`)."""
        how = self._exit_reason(exc)
        self.worker_deaths += 1
        self._drop_pool(kill=True)
        return how

    def _exit_reason(self, exc: BaseException) -> str:
        """The watchdog's reason when it killed a worker since the last death, else the exit code or
        signal: from loky's message, or from the standard library pool's process table."""
        if self.cgroups is not None and (reason := self.cgroups.oom_kill_reason()) is not None:
            return reason
        if self.watchdog is not None and self.watchdog.kills + self.watchdog.timeouts > self._kills_seen:
            self._kills_seen = self.watchdog.kills + self.watchdog.timeouts
            return self.watchdog.last_reason() or worker_exit(exc)
        if self._stdlib:
            return exit_of(self._procs)
        return worker_exit(exc)

    _kills_seen = 0

    def _recycle(self, reason: str) -> None:
        """Replace the workers: those of the drained pool exit (running their atexit teardown)."""
        self._recycle_reason = None
        self._drop_pool(kill=False)
        if self._resizing:  # fewer workers fit: said once where it was decided, not a recycle
            self._resizing = False
            return
        self.recycles += 1
        self.recycle_reasons.append(reason)
        logger.warning("batchmem: replaced the worker processes (%s)", reason)

    def request_recycle(self, reason: str) -> bool:
        """Replace the worker processes once the batches in flight finish (thread-safe); False for threads."""
        if self.processes and self._recycle_reason is None:
            self._recycle_reason = reason
        return self.processes

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        """Run a few tasks (the halves of a split batch) at once; outcomes in order. If a worker
        dies, each is run again alone, so a ``"worker_died"`` outcome names a task that killed it alone."""
        futures = [self._submit(t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except _worker_death_types() as exc:
            logger.warning(
                "a worker process died (%s) running %d split batch(es); running each alone",
                self._death(exc),
                len(tasks),
            )
            return [self.run_isolated(t) for t in tasks]

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` alone; if its worker dies, a ``split="worker_died"`` outcome with the exit reason."""
        try:
            return self._submit(task).result()
        except _worker_death_types() as exc:
            return _died(task, self._death(exc))

    def cancel(self) -> None:
        """Abandon the batches in flight: terminate the worker processes; ``map`` ends without them."""
        self._cancelled = True
        self._drop_pool(kill=True)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self._deadlines is not None:
            self._deadlines.close()
        if self.kind != "loky":  # threads, and standard-library workers (which tear their setup state down)
            self._drop_pool(kill=False)
        if self.cgroups is not None:  # loky's workers live on for the next run: back to the run's group
            self.cgroups.close(self.worker_pids())
        self._release_setup()  # threading: the state lives here; loky workers keep theirs while they live


def _start_resource_trackers(kind: str) -> None:
    """Start the standard library's and loky's resource tracker processes if they are not running.

    A submit that starts workers also starts these trackers on first use, and the standard library's
    launch ends by unblocking SIGINT and SIGTERM in the calling thread instead of restoring its mask
    (``Lib/multiprocessing/resource_tracker.py``, ``ensure_running``): inside ``_sigint_blocked`` the
    workers spawned next would then take a Ctrl-C meant for the parent. Called before a pool is
    created, outside the block; a tracker already up is only probed (one pipe write)."""
    if kind == "fork" or (kind == "multiprocessing" and forks()):  # forked workers share no named semaphores
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    if kind == "loky":
        from joblib.externals.loky.backend import resource_tracker as loky_tracker

        loky_tracker.ensure_running()


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while a submit may start worker processes (and loky's manager thread,
    which starts the replacements). The mask is inherited through fork and exec, so a worker never sees
    a Ctrl-C meant for the parent, not even while it imports before batchmem's code can ignore it (a
    KeyboardInterrupt traceback from joblib's import reached the terminal); a SIGINT that arrives
    meanwhile is delivered to this process when the block ends (pthread_sigmask(2), signal(7)). The
    resource trackers block it around their own spawn too (bpo-33613), but the standard library's
    then unblocks it: they are started before this block (:func:`_start_resource_trackers`)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
