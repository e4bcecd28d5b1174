"""The run loop: cut -> dispatch -> commit, one batch at a time.

::

    source ──items──▶ cut (size from the optimizer) ──task──▶ executor.map
                                                                  │ outcome (results + measurement)
    optimizer ◀── feed ◀── guards ◀── checkpoint ◀── record ◀── write ◀┘

:class:`Run` owns one call of :meth:`batchmem.BatchProcessor.process`: it
cuts batches lazily, asking the optimizer for each size just before the
cut; resolves outcomes that must be split (a ``MemoryError``, a dead
worker) into final ones; and commits each final outcome in named steps
(:meth:`Run.commit`). Files are :class:`batchmem.io.output.RunFiles`'s job,
sizing is :class:`batchmem.BatchOptimizer`'s, execution the executor's
(:mod:`batchmem.backends`), escalation the guards' (:mod:`batchmem.heap`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .backends import BatchOutcome, BatchTask, Executor
from .backends.auto import AutoExecutor
from .backends.item_timeout import OVERDUE, item_timeout_error
from .errors import BatchmemError, ItemFailedError, SourceFailedError, WorkerDiedError, one_line
from .heap.analyzer import Issue
from .heap.gc_watch import ThrottledCollector
from .heap.leak_guard import LeakGuard
from .heap.monitor import MemoryMonitor, MemorySample, PressureLevel, current_rss_bytes, resolve_memory_limit
from .heap.pressure import ChargeWatch, PressureCallbacks, PressureGuard, adaptive_thresholds
from .io.output import RunFiles
from .io.sinks import NULL_LINE, error_record
from .io.sources import take_weighted
from .optimizer import BatchOptimizer
from .optimizer.advice import RunSettings
from .optimizer.control import BatchMeasurement
from .optimizer.summary import RunSummary
from .options import RunConfig
from .stats import RunStats, bytes_per_item, items_per_second, write_json_atomic
from .units import format_bytes
from .weights import make_weigher, weight_unit

__all__ = ["Run"]

logger = logging.getLogger("batchmem")


#: Shortest batch the tail balance cuts (seconds of work, from the run's seconds per item): the
#: last worker to finish idles at most about this long. Shrinking on to single items added ~24
#: round trips of ~1-3 ms for the last ~300 items of the CPU workload of benchmarks/bench_peers.py.
TAIL_MIN_BATCH_S = 0.01


@dataclass
class _Reading:
    """Memory after a committed batch: the sample (None without monitoring), tree RSS, pressure, and
    what the limit is compared with (RSS, or the limiting cgroup's working set when larger)."""

    sample: MemorySample | None
    rss_bytes: int
    pressure: PressureLevel
    used_bytes: int


class Run:
    """One run: the source, the executor, the files, the optimizer and the guards, wired together.

    ``stop_requested`` is a callable the loop polls before each cut (the processor's stop flag);
    ``request_stop(reason)`` asks for a stop from inside (an emergency). Call :meth:`loop`, then
    always :meth:`finish` (also after an error), which writes the stats.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        source: Any,
        executor: Executor,
        files: RunFiles,
        stats: RunStats,
        optimizer: BatchOptimizer,
        monitor: MemoryMonitor,
        callbacks: PressureCallbacks,
        stop_requested: Callable[[], bool],
        request_stop: Callable[[], None],
    ):
        self.config, self.source, self.executor, self.files, self.stats = config, source, executor, files, stats
        self.optimizer, self.monitor = optimizer, monitor
        self.stop_requested, self._request_stop = stop_requested, request_stop
        self.lock = threading.Lock()
        self.stopped = False
        self.stop: Any = None  # a stopped run: the RunStopped error the processor made of it
        self.source_error: Exception | None = None  # the source raised at a cut
        self.cancelled = False
        self._grace_timer: threading.Timer | None = None
        self._saved_thresholds = monitor.thresholds
        self.last_sample = monitor.sample()
        if executor.memory_limit is not None:  # dask: plan against the workers' limit, not this machine's
            limit = resolve_memory_limit(config.pressure.memory_limit, detected=executor.memory_limit)
            optimizer.memory_limit_bytes = limit.bytes
            stats.memory_limit_bytes, stats.limit_source = limit.bytes, limit.source
        if config.execution.backend == "dask":
            stats.n_jobs = executor.in_flight  # worker threads of the cluster
        if optimizer.memory_limit_bytes:
            executor.guard_memory(optimizer.memory_limit_bytes, config.pressure.terminate_fraction)
        self._guards(callbacks)
        baseline, _, in_flight = executor.memory_plan(
            None, self.last_sample.used_bytes, self.last_sample.pressure, monitor.thresholds
        )
        b = config.batching
        self.weigher = make_weigher(b.weight)
        frames = callable(getattr(source, "bytes_per_row", None))
        self.weighted = b.auto_optimize and (self.weigher is not None or (frames and b.weight is not None))
        # weight="auto" over items that all weigh 1 (numbers) is counting: decided on the first batch.
        self._probe = self.weighted and b.weight == "auto" and not frames
        self.weighted = self.weighted and not self._probe
        self._plan = (baseline, in_flight)
        stats.weight_unit = weight_unit(b.weight, frames) if self.weighted else "items"
        stats.settings = RunSettings.of_config(config).to_dict()
        optimizer.start_run(
            config.process_name, baseline_bytes=baseline, in_flight=in_flight, weight_unit=stats.weight_unit
        )
        self.fixed_size = None if b.auto_optimize else b.batch_size
        self.asked: dict[int, int] = {}  # input index of a batch's first item -> size asked at the cut (items)
        self.peak_bytes_sum = 0
        self.t0 = time.perf_counter()
        self.bar = self._progress_bar()

    def _guards(self, callbacks: PressureCallbacks) -> None:
        p, a = self.config.pressure, self.config.analysis
        if p.adaptive_thresholds:
            opts = dict(p.adaptive_thresholds) if not isinstance(p.adaptive_thresholds, bool) else {}
            self.monitor.thresholds = adaptive_thresholds(self.last_sample.used_bytes, self.monitor.limit.bytes, **opts)
            logger.info(
                "adaptive pressure thresholds from a %s baseline: %s",
                format_bytes(self.last_sample.used_bytes),
                self.monitor.thresholds,
            )
        collector = ThrottledCollector(a.gc_max_time_fraction)
        recycle = self.executor.request_recycle if self.config.execution.recycle_leaking_workers else None
        self.leaks = LeakGuard(
            self.monitor,
            collector,
            analyze=a.detect_memory_issues,
            trace_allocations=a.trace_allocations,
            recycle=recycle,
            analyzer_options=a.analyzer,
        )
        self.pressure = PressureGuard(
            self.monitor.thresholds,
            self.monitor.sample,
            collector=collector,
            stop=self._emergency_stop,
            stopped=self.stop_requested,
            callbacks=callbacks,
            min_batch_size=self.config.batching.min_batch_size,
            max_wait_s=p.pressure_max_wait_s,
            first_utilization=self.last_sample.utilization,
        )
        self.charge = ChargeWatch(self.monitor.thresholds)

    def _emergency_stop(self, reason: str) -> None:
        self.stats.stop_reason = reason
        self._request_stop()

    def _progress_bar(self) -> Any:
        if not self.config.output.progress:
            return _NoBar()
        from tqdm.auto import tqdm

        total = self.source.total
        if total is not None:
            total -= self.stats.resumed_from
        return tqdm(
            total=total,
            unit="item",
            desc=self.config.process_name,
            dynamic_ncols=True,
        )

    # ------------------------------------------------------------------ stops
    def stop_with_grace(self) -> None:
        """A stop from a signal: no new batch is cut; batches in flight get ``stop_grace_seconds`` to
        finish, then the executor cancels them (the checkpoint stays at the last committed batch)."""
        grace = self.config.execution.stop_grace_seconds
        if self._grace_timer is None:
            self._grace_timer = threading.Timer(grace, self._cancel)
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def _cancel(self) -> None:
        self.cancelled = True
        logger.warning(
            "batchmem: batches in flight did not finish within stop_grace_seconds=%s; cancelling them",
            self.config.execution.stop_grace_seconds,
        )
        self.executor.cancel()

    # ------------------------------------------------------------------ cut
    def _next_size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        with self.lock:
            return self.optimizer.next_batch_size()

    def _balanced(self, size: int, start: int) -> int:
        """Cap ``size`` so the tail of a sized source is shared by every worker.

        With ``W`` batches in flight and ``R`` items left, no batch takes more than
        ``ceil(R / (2 W))`` items, so the last batches shrink geometrically instead of
        one worker running a full-size last batch while the others idle (measured in
        benchmarks/bench_core.py parallel: speedup 1.71 -> 1.81). They stop shrinking at
        :data:`TAIL_MIN_BATCH_S` of work. Serial runs, fixed batch sizes and sources of unknown
        length are not capped.
        """
        total, width = self.source.total, self.executor.in_flight
        if total is None or width <= 1 or self.fixed_size is not None:
            return size
        left = total - start
        with self.lock:
            per_item = None if self.weighted else self.optimizer.seconds_per_unit
        floor = int(TAIL_MIN_BATCH_S / per_item) if per_item else 1
        return max(1, min(size, max(floor, -(-left // (2 * width)))))

    def tasks(self) -> Iterator[BatchTask]:
        """Cut batches lazily, asking the optimizer for each size (or weight budget) just before the cut."""
        index, start = self.files.ckpt.batches, self.files.ckpt.items
        while not self.stop_requested():
            budget = self._next_budget()
            size = self._next_size() if budget is None else self.config.batching.max_batch_size
            size, budget = self._within_seconds(size, budget)
            asked = self.pressure.before_dispatch(self._balanced(size, start))  # backpressure, tail balance
            if self.stop_requested():
                return
            task = self._cut(index, start, asked, budget)
            if task is None:
                return
            self.asked[start] = asked if budget is None else len(task)
            yield task
            index += 1
            start += len(task)

    def _within_seconds(self, size: int, budget: float | None) -> tuple[int, float | None]:
        """Cap the next batch (items, or weight budget) at the executor's ``batch_seconds_cap``,
        predicted from the optimizer's seconds per item (or per weight unit). Unchanged without a
        cap, an estimate, or when the size is fixed or the first weighted batch is cut by items."""
        cap_s = self.executor.batch_seconds_cap
        if cap_s is None or self.fixed_size is not None or (self.weighted and budget is None):
            return size, budget
        with self.lock:
            per_unit = self.optimizer.seconds_per_unit
        if not per_unit:
            return size, budget
        if budget is not None:
            return size, min(budget, cap_s / per_unit)
        return min(size, max(1, int(cap_s / per_unit))), None

    def _next_budget(self) -> float | None:
        if not self.weighted:
            return None
        with self.lock:
            return self.optimizer.next_batch_budget()

    def _cut(self, index: int, start: int, asked: int, budget: float | None) -> BatchTask | None:
        """The next task, or None at the end of the source or when it raised (``source_error``)."""
        try:
            batch, weight, weights = self._take(asked, budget)
        except Exception as exc:  # the batches cut before are committed first; loop() raises it then
            self.source_error = exc if isinstance(exc, BatchmemError) else SourceFailedError.at(start, exc)
            return None
        if batch is None or len(batch) == 0:
            return None
        return BatchTask(index, start, batch, weight=weight, weights=weights)

    def _take(self, asked: int, budget: float | None) -> tuple[Any, float, list[float] | None]:
        """Weighted: items up to ``budget`` weight units, at most ``asked`` items. Otherwise (and for
        the first weighted batch, whose weight seeds the budget): ``asked`` items."""
        if budget is not None:
            b = self.config.batching
            warm = self._first_rows(asked)  # a warm start: the rows the last run's batches held
            return take_weighted(
                self.source,
                budget,
                self.weigher,
                min_items=warm or min(b.min_batch_size, asked),
                max_items=warm or asked,
            )
        batch = self.source.take(asked)
        weight, weights = float(len(batch)) if batch is not None else 0.0, None
        if self._probe and batch is not None and len(batch):
            self._start_weighting(batch)
        if self.weighted and batch is not None and len(batch):
            weight, weights = self._weigh(batch)
        return batch, weight, weights

    def _first_rows(self, asked: int) -> int | None:
        """The first cut of a warm-started weighted run takes the items the last run's batches held at
        this budget (at most ``asked``): a CSV reader weighs rows only after its first read, and an
        iterable pulls items by count until it has seen their mean weight. None when not warm."""
        with self.lock:
            learned = self.optimizer.take_warm_items()
        return min(asked, learned) if learned else None

    def _start_weighting(self, batch: Any) -> None:
        """First batch of a ``weight="auto"`` run: budget in weight units if its items differ in size."""
        self._probe = False
        if self.weigher is None or self.weigher(batch) is None:
            return
        self.weighted = True
        self.stats.weight_unit = "auto"
        baseline, in_flight = self._plan
        with self.lock:
            self.optimizer.start_run(
                self.config.process_name, baseline_bytes=baseline, in_flight=in_flight, weight_unit="auto"
            )

    def _weigh(self, batch: Any) -> tuple[float, list[float] | None]:
        """Weight of a batch cut by count: its items' weights, or rows x bytes per row for a DataFrame chunk."""
        per_row = getattr(self.source, "bytes_per_row", None)
        if callable(per_row):
            return len(batch) * (per_row() or 1.0), None
        ws = self.weigher(batch) if self.weigher is not None else None
        return (float(sum(ws)), ws) if ws is not None else (float(len(batch)), None)

    # ------------------------------------------------------------------ dispatch
    def loop(self) -> None:
        """Run every batch and commit it; returns when the source is exhausted or a stop was asked."""
        pending: dict[int, BatchTask] = {}

        def remember(tasks: Iterator[BatchTask]) -> Iterator[BatchTask]:
            for t in tasks:
                pending[t.start] = t
                yield t

        for outcome in self.executor.map(remember(self.tasks())):
            if self.cancelled:
                break
            task = pending.pop(outcome.start)
            for final in self._resolve(task, outcome):
                self.commit(final)
        self.stopped = self.stop_requested()
        if self.source_error is not None and not self.cancelled:
            raise self.source_error

    def _resolve(self, task: BatchTask, outcome: BatchOutcome) -> Iterator[BatchOutcome]:
        """Yield final outcomes in order, halving batches that hit MemoryError, a failing batched
        call or a dead worker; a single item that does so on its own is that item's failure."""
        outcome.weight = task.weight
        if not outcome.split:
            yield outcome
            return
        if len(task) == 1:
            yield self._single_item_failure(task, outcome)
            return
        if outcome.split == "memory":
            self.stats.memory_errors += 1
            logger.warning(
                "MemoryError in a batch of %d items (items %d..); retrying it in halves", len(task), task.start
            )
        elif outcome.split == "worker_died":
            logger.warning(
                "worker died (%s) running a batch of %d items (items %d..); retrying it in halves in fresh workers",
                outcome.worker_exit,
                len(task),
                task.start,
            )
        halves = task.halves()
        if outcome.split == "worker_died":  # each half alone in a worker: a death names its half
            subs = [self.executor.run_isolated(h) for h in halves]
        else:
            subs = self.executor.run_now(list(halves))
        # SIGKILL (the kernel's OOM killer) or the watchdog's kill: out of memory
        out_of_memory = outcome.split == "memory" or "SIGKILL" in outcome.worker_exit or "OOM" in outcome.worker_exit
        if out_of_memory and not any(sub.split for sub in subs):
            # The batch did not fit and its halves did: a property of the batch size, not of one item.
            with self.lock:
                self.optimizer.on_memory_error(task.weight if self.weighted and task.weight else len(task))
        for half, sub in zip(halves, subs, strict=True):
            yield from self._resolve(half, sub)

    def _single_item_failure(self, task: BatchTask, outcome: BatchOutcome) -> BatchOutcome:
        """The outcome of one item that raised MemoryError or killed its worker on its own."""
        timed_out = outcome.split == "worker_died" and outcome.worker_exit.startswith(OVERDUE)
        if timed_out:  # stuck past item_timeout on its own (inside C: the in-place timer could not stop it)
            err: BaseException = item_timeout_error(task.start, self.config.execution.item_timeout or 0.0)
            logger.warning("item %d alone: %s; recorded as failed", task.start, outcome.worker_exit)
        elif outcome.split == "worker_died":
            how = outcome.worker_exit
            if how.startswith("killed by"):  # the OOM watchdog, or the kernel at a worker cgroup's limit
                err = WorkerDiedError(f"item {task.start} alone: worker {how}")
            else:
                err = WorkerDiedError(
                    f"worker died ({how}) while running item {task.start} on its own (os._exit, a signal such as "
                    "the OOM killer's SIGKILL, or a crash in a C extension)"
                )
            logger.warning("item %d killed its worker on its own (%s); recorded as failed", task.start, how)
        elif outcome.split == "memory":
            self.stats.memory_errors += 1
            err = MemoryError(f"item {task.start} raised MemoryError on its own")
        else:
            err = RuntimeError(f"item {task.start} failed on its own")
        out = BatchOutcome(task.index, task.start, 1, duration_s=outcome.duration_s, timeouts=int(timed_out))
        if self.config.errors.on_error == "raise":
            out.error = (task.start, err)
        else:
            out.failed, out.payload, out.results = 1, NULL_LINE, [None]
            out.error_records.append(error_record(task.start, task.items[0], err, 1))
        return out

    # ------------------------------------------------------------------ commit
    def commit(self, o: BatchOutcome) -> None:
        """Commit one final outcome: write, record, checkpoint, account, feed the optimizer, guard, tick."""
        self._raise_if_failed(o)
        self._write(o)
        reading = self._read_memory()
        self._record(o, reading)
        self.files.checkpoint(o.size, o.start + o.size, o.failed)
        self._account(o, reading)
        self._feed_optimizer(o, reading)
        self._guard(o, reading)
        self._tick(o, reading)

    def _raise_if_failed(self, o: BatchOutcome) -> None:
        if o.error is None:
            return
        index, exc = o.error
        if self.config.errors.on_error == "retry":
            attempts = 1 + self.config.errors.max_retries
            stops = f" after {attempts} attempts; retrying with retry_exhausted raise stops the run"
            python_fix = " (use retry_exhausted='skip' to record failures and go on)"
            cli_fix = " (set retry_exhausted: skip, or --set retry_exhausted=skip, to record failures and go on)"
        else:
            stops = "; on_error raise stops the run"
            python_fix = " (use on_error='skip' to record failures and go on)"
            cli_fix = " (set on_error: skip, or --set on_error=skip, to record failures and go on)"
        message = f"item {index} failed: {type(exc).__name__}: {one_line(exc)}{stops}"
        raise ItemFailedError(message, index, python_fix=python_fix, cli_fix=cli_fix) from exc

    def _write(self, o: BatchOutcome) -> None:
        self.files.write_results(o.payload, o.results, o.start)
        # Drop the written results now: the loop variable keeps this outcome alive while the
        # next batch runs, which held two batches of results at once (streaming benchmark).
        o.payload, o.results = b"", None
        if o.error_records:
            self.files.write_errors(o.error_records, o.start)

    def _read_memory(self) -> _Reading:
        if not self.config.pressure.memory_monitoring:
            rss = current_rss_bytes()
            return _Reading(None, rss, PressureLevel.NORMAL, rss)
        sample = self.monitor.sample()
        return _Reading(sample, sample.rss_bytes, sample.pressure, sample.used_bytes)

    def _record(self, o: BatchOutcome, r: _Reading) -> None:
        self.files.write_record(
            {
                "index": self.stats.batches,
                "start_time": time.time() - o.duration_s,
                "items": o.size,
                "batch_size": self.asked.pop(o.start, o.size),
                "duration_s": o.duration_s,
                "peak_bytes": o.peak_bytes,
                "rss_after_bytes": r.rss_bytes,
                "pressure": r.pressure.label,
                "failed": o.failed,
                "gc_collections": o.gc_collections,
                "pid": o.pid,
                "weight": o.weight,
                **({"worker": o.worker, "worker_peak_bytes": o.start_rss_bytes + o.peak_bytes} if o.worker else {}),
            }
        )

    def _account(self, o: BatchOutcome, r: _Reading) -> None:
        st = self.stats
        st.items += o.size
        st.failed += o.failed
        st.timeouts += o.timeouts
        st.batches += 1
        st.batch_sizes.append(o.size)
        st.gc_collections += o.gc_collections
        st.weight += o.weight if o.weight is not None else o.size
        self.peak_bytes_sum += o.peak_bytes
        if self.executor.local_memory:
            base = self.last_sample.rss_bytes if self.last_sample else o.start_rss_bytes
            st.peak_rss_bytes = max(st.peak_rss_bytes, base + o.peak_bytes, r.rss_bytes)
        else:  # remote workers: the highest peak measured in a worker; this machine's apart
            st.peak_rss_bytes = max(st.peak_rss_bytes, o.start_rss_bytes + o.peak_bytes)
            st.client_peak_rss_bytes = max(st.client_peak_rss_bytes, r.rss_bytes)
        if r.sample:
            self.last_sample = r.sample

    def _feed_optimizer(self, o: BatchOutcome, r: _Reading) -> None:
        plan_bytes, plan_pressure, in_flight = self.executor.memory_plan(
            o, r.used_bytes, r.pressure, self.monitor.thresholds
        )
        with self.lock:
            self.optimizer.observe(
                BatchMeasurement(
                    size=o.size,
                    duration_s=o.duration_s,
                    peak_bytes=o.peak_bytes,
                    failed=o.failed,
                    weight=o.weight if self.weighted else None,
                ),
                baseline_bytes=plan_bytes,
                pressure=plan_pressure,
                in_flight=in_flight,
            )
            target = self.config.batching.memory_target_fraction * (self.optimizer.memory_limit_bytes or 0)
            self.charge.observe(r.sample, self.optimizer.controller.last_decision.reason, target)

    def _guard(self, o: BatchOutcome, r: _Reading) -> None:
        self.leaks.after_batch(o, r.rss_bytes)
        if r.sample is not None:
            self.pressure.after_batch(r.sample, self.stats.items)

    def _tick(self, o: BatchOutcome, r: _Reading) -> None:
        self.bar.update(o.size)
        if self.config.output.progress:
            self.bar.set_postfix_str(
                f"batch={o.size} rss={format_bytes(r.rss_bytes)} {r.pressure.label}", refresh=False
            )

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Close files and the executor, write the stats (also after an error), record history."""
        st = self.stats
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self.bar.close()
        self.executor.close()
        st.worker_deaths = self.executor.worker_deaths
        st.watchdog_kills = self.executor.watchdog_kills
        st.memory_accounting = getattr(self.executor, "memory_accounting", "rss")
        if isinstance(self.executor, AutoExecutor):
            st.n_jobs, st.n_jobs_choice = self.executor.in_flight, f"{self.executor.choice}: {self.executor.reason}"
        elif self.executor.fit_note:
            st.n_jobs, st.n_jobs_choice = self.executor.in_flight, self.executor.fit_note
        self.files.close()
        st.duration_s = time.perf_counter() - self.t0
        st.finished_at = time.time()
        st.items_per_s = items_per_second(st.items, st.duration_s)
        st.bytes_per_item = bytes_per_item(self.peak_bytes_sum, st.items)
        st.bytes_per_weight = bytes_per_item(self.peak_bytes_sum, st.weight)
        if st.batches:
            learned = self.fixed_size if self.fixed_size is not None else self.optimizer.learned_batch_size()
            st.learned_batch_size = learned
        if st.failed or self.files.ckpt.failed:
            st.errors_path = str(self.files.errors_path)
        if st.status == "completed":
            self.files.mark_complete()
        if self.config.analysis.force_gc_on_completion:
            gc.collect()
        self._collect_issues()
        st.close_part(self.files.ckpt.items, self.files.ckpt.failed)
        self.monitor.thresholds = self._saved_thresholds
        try:
            write_json_atomic(st.stats_path, st.to_dict())
        except OSError as exc:  # e.g. the disk is full: the run's own error (if any) is the one to report
            logger.warning("writing the stats %s failed: %s", st.stats_path, exc)
        if self.config.batching.use_history and st.items:  # fixed-size runs are recorded too
            self.optimizer.finish_run(self._summary())

    def _summary(self) -> RunSummary:
        """What the history keeps of this run (the optimizer adds what it learned)."""
        st = self.stats
        return RunSummary(
            learned_batch_size=st.learned_batch_size,
            items=st.items,
            duration_s=st.duration_s,
            items_per_s=st.items_per_s,
            peak_rss_bytes=st.peak_rss_bytes,
            bytes_per_item=st.bytes_per_item,
            batches=st.batches,
            failed=st.failed,
            timeouts=st.timeouts,
            leaks=sum(1 for i in st.issues if i.get("kind") == "leak"),
            finished_at=st.finished_at,
            memory_errors=st.memory_errors,
            resumed=int(st.resumed_from > 0),  # this run continued an output
            limit_source=st.limit_source,
            settings=st.settings,
            auto_workers=self.executor.chosen_workers if isinstance(self.executor, AutoExecutor) else None,
        )

    def _collect_issues(self) -> None:
        """Issues of the analyzer, the pressure escalation and worker recycling, and GC figures, into the stats."""
        st, ex = self.stats, self.executor
        found = [*self.leaks.finish(), *self.pressure.issues()]
        bound = self.optimizer.memory_bound() if self.fixed_size is None else None
        if bound:  # e.g. what the process tree holds before any batch already fills the memory target
            found.append(Issue(kind="memory_bound", severity="warning", message=bound))
        charge = self.charge.issue() if self.fixed_size is None and ex.local_memory else None
        found += [charge] if charge is not None else []
        if ex.recycles:
            found.append(
                Issue(
                    kind="worker_recycling",
                    severity="info",
                    message=f"worker processes were replaced {ex.recycles} times ({'; '.join(ex.recycle_reasons[:3])})",
                    evidence={"recycles": ex.recycles, "max_tasks_per_worker": ex.max_tasks_per_worker},
                    recommendation="Fix the leak in the function, or keep max_tasks_per_worker to bound worker memory",
                )
            )
        issues = [i.to_dict() if hasattr(i, "to_dict") else i for i in found]
        st.issues.extend(issues)
        for i in issues:
            if i["kind"] in ("leak", "emergency_stop"):
                continue  # logged when found
            log = logger.warning if i["severity"] != "info" else logger.info
            log("batchmem issue [%s/%s]: %s", i["kind"], i["severity"], i["message"], extra={"in_summary": True})
        st.gc_collected_between_batches += self.leaks.collected + self.pressure.collected
        w = self.leaks.gc_watch
        st.gc_collections_by_generation = list(w.collections)
        st.gc_pause_s, st.gc_max_pause_s = w.pause_s, w.max_pause_s


class _NoBar:
    """The progress bar with ``progress=False``: tqdm's import (~0.1 s, asyncio with it) is not paid."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
