"""``n_jobs="auto"``: run in this process until measurements say that worker processes pay.

The first batches run in-process; after each of them the choice is made
from what was measured:

* **stay in-process** while the cost of an item is below the cost of
  shipping it to a worker and back: pickling the batch's items here,
  measured (the worker unpickles them; taken as twice the pickling time),
  the encoded results travelling back at :data:`COPY_BYTES_PER_S`, the
  parent's own cost per item (:data:`SHIP_PER_ITEM_S`) and the round trip of
  one task (:data:`TASK_OVERHEAD_S`) spread over the batch. Two or more
  workers save at least half of an item's time in this process, so workers
  pay once shipping costs less than half the compute;
* **use workers** otherwise, as many as the cores allow and the memory
  target holds: ``workers x (peak bytes of a batch at the time aim)`` must fit
  under ``memory_target_fraction x limit - baseline`` (a per-item function's
  peak does not grow with its batch, only the results it keeps do), and the
  function must pickle.

Where forking is safe (:mod:`batchmem.backends.forking`: Linux, no other
Python thread, no OpenMP runtime), the workers are forked before the first
batch, which takes milliseconds, and run the batches from the first on: the
choice is made from their first outcomes, and if the run should stay
in-process the batches in flight come back and the workers are shut down.
Otherwise, when workers pay, loky workers are started in the background
while batches go on in-process, and take over once they are up: their
start-up is off the critical path, and a run that stays in-process never
pays for it. The choice and its reason are reported
(``RunStats.n_jobs_choice``: "2 forked workers: ...", "2 workers: ...").
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ConfigError
from .base import Executor, ExecutorBase, ExecutorInfo
from .fit import batch_peak_at_aim
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch

__all__ = ["AutoExecutor"]

logger = logging.getLogger("batchmem")

#: Round trip of one batch through an idle loky worker, seconds; rounded up from
#: benchmarks/bench_peers.py (tiny workload), so a close call stays in-process. Figures: docs/internals.md.
TASK_OVERHEAD_S = 1e-3
#: Bytes per second a result travels through a pipe between processes (memcpy-bound; 1 GB/s is conservative).
COPY_BYTES_PER_S = 1e9
#: Parent-side cost of every item handed to workers and back (queueing, unpickling, bookkeeping),
#: seconds, from benchmarks/bench_peers.py (tiny workload). Figures: docs/internals.md.
SHIP_PER_ITEM_S = 1e-6
#: ``sys.setswitchinterval`` while workers start, seconds (Python's default is 5 ms): loky's start-up
#: threads in this process wait for the GIL while a batch of pure Python runs here
#: (https://docs.python.org/3/library/sys.html#sys.setswitchinterval). Restored once they are up.
WARMUP_SWITCH_INTERVAL_S = 5e-4
#: Longest in-process batch while the workers start, seconds: they take over between two in-process
#: batches, so a long one keeps them idle once they are up (benchmarks/bench_peers.py, CPU and memory
#: workloads; figures in docs/internals.md).
WARMUP_BATCH_S = 0.05
#: Batches measured before settling in-process (loky path; the first ones are the smallest and noisiest), or
#: before either choice with forked workers, which run the probes anyway (the cheaper per item is used).
PROBE_BATCHES = 2


class AutoExecutor(ExecutorBase):
    """In-process first, then ``parallel(workers)`` when it pays (see the module docstring).

    ``parallel(workers)`` builds the worker executor; ``cores()`` is the most workers to use;
    ``memory_room()`` returns the bytes the batches in flight may still fill (target minus
    baseline; None without a limit); ``aim_s`` is the batch duration the optimizer aims for, seconds;
    ``check_picklable()`` raises :class:`~batchmem.errors.ConfigError` when the function cannot travel
    to a worker (the run then stays in-process). ``cores`` and ``check_picklable`` are called only once
    workers look worth it, so a run that stays in-process never imports joblib or cloudpickle.
    ``workers_hint``: the workers this operation's last run chose (its history); above 1 they are
    started before the first batch instead of after the probes.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        opts: RunOptions,
        *,
        parallel: Callable[[int], Executor],
        cores: Callable[[], int],
        memory_room: Callable[[], float | None],
        aim_s: float,
        check_picklable: Callable[[], None],
        workers_hint: int | None = None,
        forked: Executor | None = None,
    ):
        super().__init__()
        self.fn, self.opts = fn, opts
        self._parallel_factory, self.cores, self.memory_room, self.aim_s = parallel, cores, memory_room, aim_s
        self.check_picklable = check_picklable
        self.workers_hint = workers_hint
        self.active: Executor | None = None  # the worker executor once it is up
        self._forked = forked  # workers forked before the run (see batchmem.backends.forking), idle until chosen
        self._starting: Executor | None = None
        self._warm: threading.Thread | None = None
        self.choice = "in-process"
        self.reason = "deciding"

    @property
    def in_flight(self) -> int:  # type: ignore[override]
        return self.active.in_flight if self.active is not None else 1

    @property
    def batch_seconds_cap(self) -> float | None:  # type: ignore[override]
        """:data:`WARMUP_BATCH_S` from the start of the workers until they take over, else None."""
        starting = self._warm is not None and (self._warm.is_alive() or self._starting is not None)
        return WARMUP_BATCH_S if starting and self.active is None else None

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """The workers' outcomes once they pay (forked: from the first batch on), in-process ones otherwise."""
        it = iter(tasks)
        if self._forked is not None:
            yield from self._map_forked(it)
            return
        probes, workers = 0, self._hinted_workers()
        if workers is not None:
            self._start_workers(workers)
        for task in it:
            ship_s = self._ship_seconds(task) if workers is None else 0.0
            out = run_batch(self.fn, task, self.opts)
            yield out
            probes += 1
            if workers is None and _measurable(out):
                workers = self._workers(out, ship_s)
                if workers == 1 and probes < PROBE_BATCHES:
                    workers = None  # one more measurement before settling in-process
                elif workers is not None and workers > 1:
                    self._start_workers(workers)
            if workers == 1:
                logger.info("n_jobs='auto': staying in-process: %s", self.reason)
                break
            if self._warm is not None and not self._warm.is_alive():
                self.active = self._starting
                if self.active is not None:
                    self.choice = f"{self.active.in_flight} workers"
                    logger.info("n_jobs='auto': %s: %s", self.choice, self.reason)
                break
        if self.active is not None:
            yield from self.active.map(it)
            return
        for task in it:
            yield run_batch(self.fn, task, self.opts)
        if self._warm is not None:  # workers were worth starting, but the batches ran out first
            self.reason += "; the run ended before they were up"

    def _map_forked(self, it: Iterator[BatchTask]) -> Iterator[BatchOutcome]:
        """Batches go to the forked workers from the first on, and the choice is made from their first
        outcomes (compute measured in the worker, shipping measured here): the cheaper per item of
        :data:`PROBE_BATCHES` batches, a worker's first batch left out (it pays the copy-on-write faults
        of every page it touches, which made 100 trivial items look costly enough for workers). If the
        run should stay in-process, no new batch goes out: those in flight come back, the workers are
        shut down and the rest runs here. Probing in a worker keeps the other workers busy meanwhile,
        which an in-process probe of 100 items (0.3 s at 3 ms an item) did not."""
        forked = self.active = self._starting = self._forked
        assert forked is not None
        if self._guard is not None:
            forked.worker_cgroups = self.worker_cgroups
            forked.guard_memory(*self._guard)
        workers = self._hinted_workers()
        if workers is not None:
            self._settle(forked, workers)
        ship: dict[int, float] = {}  # first item's index -> shipping seconds measured here, while deciding
        probes: list[tuple[BatchOutcome, float]] = []  # (outcome, shipping seconds) of warm workers' batches
        warm: set[int] = set()  # workers whose first batch came back

        def feed() -> Iterator[BatchTask]:
            while self.active is forked:
                task = next(it, None)
                if task is None:
                    return
                if workers is None:
                    ship[task.start] = self._ship_seconds(task)
                yield task

        for out in forked.map(feed()):
            yield out
            cold = out.pid not in warm
            warm.add(out.pid)
            if workers is None and out.start in ship and _measurable(out) and not cold:
                probes.append((out, ship.pop(out.start)))
                if len(probes) < PROBE_BATCHES:
                    continue
                # the least disturbed probe: noise on a shared machine only adds time
                workers = self._workers(*min(probes, key=lambda p: p[0].duration_s / p[0].size))
                if workers == 1:
                    logger.info("n_jobs='auto': staying in-process: %s", self.reason)
                    self.active = self._starting = None  # feed() stops; the batches in flight drain
                elif workers is not None:
                    self._settle(forked, workers)
        if self.active is None:
            self._close_forked()
            for task in it:
                yield run_batch(self.fn, task, self.opts)

    def _settle(self, forked: Executor, workers: int) -> None:
        forked.in_flight = min(workers, forked.in_flight)  # the others stay idle
        self.choice = f"{forked.in_flight} forked workers"
        logger.info("n_jobs='auto': %s: %s", self.choice, self.reason)

    def _close_forked(self) -> None:
        if self._forked is not None and self._forked is not self._starting:
            self._forked.close()
            self._forked = None

    @property
    def chosen_workers(self) -> int | None:
        """Workers the run settled on (1: in-process), None while still deciding; kept in history."""
        if self.active is not None or self._starting is not None:
            return (self.active or self._starting).in_flight
        return 1 if self.choice == "in-process" and self.reason != "deciding" else None

    def describe(self) -> ExecutorInfo:
        """``backend="auto"``, the workers in use (1: in-process) and the choice with its reason."""
        return ExecutorInfo("auto", self.in_flight, f"{self.choice}: {self.reason}")

    def history_extras(self) -> dict[str, Any]:
        """The workers chosen (:attr:`chosen_workers`), which the next run of the operation starts with."""
        return {"auto_workers": self.chosen_workers}

    def _hinted_workers(self) -> int | None:
        if not self.workers_hint or self.workers_hint < 2:
            return None
        try:
            if self._forked is None:  # forked workers inherit the function
                self.check_picklable()
        except ConfigError:
            return None
        self.reason = f"{self.workers_hint} workers paid in this operation's last run (history)"
        return self.workers_hint

    def _ship_seconds(self, task: BatchTask) -> float:
        t0 = time.perf_counter()
        pickle.dumps(task.items, protocol=pickle.HIGHEST_PROTOCOL)
        return 2 * (time.perf_counter() - t0)

    def _workers(self, out: BatchOutcome, ship_s: float) -> int | None:
        """Workers that pay for batches like the one of ``out`` (1: stay in-process); None when unsure yet."""
        n, compute_s = out.size, out.duration_s
        ship_s += len(out.payload) / COPY_BYTES_PER_S + TASK_OVERHEAD_S + n * SHIP_PER_ITEM_S
        if compute_s <= 0:
            return None
        # With w >= 2 workers a batch saves compute_s * (1 - 1/w) >= compute_s / 2 of this process's time.
        if compute_s / 2 <= ship_s:
            self.reason = (
                f"an item takes {compute_s / n * 1e6:.2f} us here, below twice the {ship_s / n * 1e6:.2f} us "
                "of shipping it to a worker and back"
            )
            return 1
        workers = self._forked.in_flight if self._forked is not None else self.cores()
        if workers == 1:
            self.reason = "one CPU available"
            return 1
        room, peak = self.memory_room(), batch_peak_at_aim(out, self.aim_s, self.opts.batched)
        if room is not None and peak > 0:
            workers = max(1, min(workers, int(room // peak)))
        if workers == 1:
            self.reason = "one batch at the time aim needs the whole memory target; a second worker would not fit"
            return 1
        try:
            if self._forked is None:  # forked workers inherit the function
                self.check_picklable()
        except ConfigError as exc:
            self.reason = str(exc).split(";")[0]
            return 1
        self.reason = (
            f"an item takes {compute_s / n * 1e6:.1f} us, above twice the {ship_s / n * 1e6:.2f} us of "
            f"shipping it; {workers} workers fit under the memory target"
        )
        return workers

    def _start_workers(self, workers: int) -> None:
        """Build the worker executor and run an empty batch through it, so its processes exist
        before the first real batch is handed over; batches go on in-process meanwhile."""

        def start() -> None:
            try:
                with _switch_interval(WARMUP_SWITCH_INTERVAL_S):
                    executor = self._parallel_factory(min(workers, self.cores()))
                    executor.max_tasks_per_worker = self.max_tasks_per_worker
                    executor.worker_cgroups = self.worker_cgroups
                    executor.run_isolated(BatchTask(-1, 0, []))
                    if self._guard is not None:
                        executor.guard_memory(*self._guard)
                    self._starting = executor
            except Exception:  # the run goes on in-process
                logger.warning("n_jobs='auto': starting worker processes failed; staying in-process", exc_info=True)

        self._warm = threading.Thread(target=start, name="batchmem-start-workers", daemon=True)
        self._warm.start()

    # the rest of the contract: delegated once the workers are up
    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        if self.active is not None:
            return self.active.run_now(tasks)
        return [run_batch(self.fn, t, self.opts) for t in tasks]

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        if self.active is not None:
            return self.active.run_isolated(task)
        return run_batch(self.fn, task, self.opts)

    def memory_plan(self, outcome: BatchOutcome | None, rss_bytes: int, pressure: Any, thresholds: Any) -> Any:
        if self.active is not None:
            return self.active.memory_plan(outcome, rss_bytes, pressure, thresholds)
        return super().memory_plan(outcome, rss_bytes, pressure, thresholds)

    def request_recycle(self, reason: str) -> bool:
        return self.active.request_recycle(reason) if self.active is not None else False

    def worker_pids(self) -> list[int]:
        return self.active.worker_pids() if self.active is not None else []

    def cancel(self) -> None:
        if self.active is not None:
            self.active.cancel()

    def guard_memory(self, limit_bytes: int, terminate_fraction: float) -> None:
        self._guard = (limit_bytes, terminate_fraction)

    @property
    def watchdog_kills(self) -> int:  # type: ignore[override]
        return self.active.watchdog_kills if self.active is not None else 0

    _guard: tuple[int, float] | None = None

    def close(self) -> None:
        # Workers still starting when the run ended are left to finish starting (joblib's shared
        # executor keeps them for the next run); waiting for them would only add their start-up.
        self._close_forked()
        used = self.active or self._starting
        if used is not None:
            used.close()
            self.worker_deaths = used.worker_deaths
            self.recycles, self.recycle_reasons = used.recycles, used.recycle_reasons
            self.memory_accounting = used.memory_accounting
        self._release_setup()


def _measurable(out: BatchOutcome) -> bool:
    """A batch whose duration tells the cost of an item: it ran whole, without error, on 2+ items."""
    return not (out.split or out.error is not None or out.size < 2)


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """``sys.setswitchinterval(seconds)`` for the block (a process-wide setting, restored after)."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)
