"""The run loop: cut -> dispatch -> commit, one batch at a time.

::

    source ──items──▶ cut (size from the optimizer) ──task──▶ executor.map
                                                                  │ outcome (results + measurement)
    optimizer ◀── feed ◀── guards ◀── checkpoint ◀── record ◀── write ◀┘

:class:`Run` owns one call of :meth:`batchmem.BatchProcessor.process`: it
hands the batches its :class:`~batchmem.batcher.Batcher` cuts to the executor,
has outcomes that must be split (a ``MemoryError``, a dead worker) resolved
into final ones (:class:`~batchmem.splits.Splits`), and commits each final
outcome in named steps (:meth:`Run.commit`). Files are
:class:`batchmem.io.output.RunFiles`'s job, sizing is
:class:`batchmem.BatchOptimizer`'s, execution the executor's
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
from .batcher import Batcher
from .errors import ItemFailedError, one_line
from .heap.analyzer import Issue
from .heap.gc_watch import ThrottledCollector
from .heap.leak_guard import LeakGuard
from .heap.monitor import MemoryMonitor, MemorySample, PressureLevel, current_rss_bytes, resolve_memory_limit
from .heap.pressure import ChargeWatch, PressureCallbacks, PressureGuard, adaptive_thresholds
from .io.output import RunFiles
from .optimizer import BatchOptimizer
from .optimizer.advice import RunSettings
from .optimizer.control import BatchMeasurement
from .optimizer.summary import RunSummary
from .options import RunConfig
from .splits import Splits
from .stats import RunStats, bytes_per_item, items_per_second, write_json_atomic
from .units import format_bytes

__all__ = ["Run"]

logger = logging.getLogger("batchmem")


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
        self.cancelled = False
        self._grace_timer: threading.Timer | None = None
        self._saved_thresholds = monitor.thresholds
        self.last_sample = monitor.sample()
        self._working_set = self.last_sample.working_set_bytes  # the limiting cgroup's, at the last commit
        self._apportioned = False
        self._adopt_executor_limit()
        self._guards(callbacks)
        self.batcher = Batcher(
            source,
            config.batching,
            optimizer=optimizer,
            lock=self.lock,
            executor=executor,
            before_dispatch=self.pressure.before_dispatch,
            stop_requested=stop_requested,
            on_weighting=self._start_weighting,
        )
        self.fixed_size = self.batcher.fixed_size
        self.splits = Splits(executor, stats, config.errors.on_error, self._memory_error, config.execution.item_timeout)
        baseline, _, in_flight = executor.memory_plan(
            None, self.last_sample.used_bytes, self.last_sample.pressure, monitor.thresholds
        )
        self._plan = (baseline, in_flight)
        stats.settings = RunSettings.of_config(config).to_dict()
        self._start_optimizer()
        self.peak_bytes_sum = 0
        self.t0 = time.perf_counter()
        self.bar = self._progress_bar()

    def _adopt_executor_limit(self) -> None:
        """Plan against the executor's memory limit when it has its own (dask: the workers', not this
        machine's), and start its OOM watchdog against the limit planned with."""
        ex, optimizer = self.executor, self.optimizer
        if ex.memory_limit is not None:
            limit = resolve_memory_limit(self.config.pressure.memory_limit, detected=ex.memory_limit)
            optimizer.memory_limit_bytes = limit.bytes
            self.stats.memory_limit_bytes, self.stats.limit_source = limit.bytes, limit.source
        if optimizer.memory_limit_bytes:
            ex.guard_memory(optimizer.memory_limit_bytes, self.config.pressure.terminate_fraction)

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

    def _start_optimizer(self) -> None:
        """(Re)start the optimizer's run in the batcher's weight unit, from the memory plan at the start."""
        baseline, in_flight = self._plan
        self.stats.weight_unit = self.batcher.weight_unit
        self.optimizer.start_run(
            self.config.process_name, baseline_bytes=baseline, in_flight=in_flight, weight_unit=self.stats.weight_unit
        )

    def _start_weighting(self) -> None:
        """The first batch of a ``weight="auto"`` run showed items of different sizes: budget in weight."""
        with self.lock:
            self._start_optimizer()

    def _memory_error(self, task: BatchTask) -> None:
        """``task`` did not fit in memory and its halves did: tell the optimizer its size (or weight)."""
        with self.lock:
            self.optimizer.on_memory_error(task.weight if self.batcher.weighted and task.weight else len(task))

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

    # ------------------------------------------------------------------ dispatch
    def loop(self) -> None:
        """Run every batch and commit it; returns when the source is exhausted or a stop was asked."""
        pending: dict[int, BatchTask] = {}

        def remember(tasks: Iterator[BatchTask]) -> Iterator[BatchTask]:
            for t in tasks:
                pending[t.start] = t
                yield t

        tasks = self.batcher.tasks(self.files.ckpt.batches, self.files.ckpt.items)
        for outcome in self.executor.map(remember(tasks)):
            if self.cancelled:
                break
            task = pending.pop(outcome.start)
            for final in self.splits.resolve(task, outcome):
                self.commit(final)
        self.stopped = self.stop_requested()
        if self.batcher.source_error is not None and not self.cancelled:
            raise self.batcher.source_error

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
                "batch_size": self.batcher.asked.pop(o.start, o.size),
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
                    peak_bytes=self._charged_peak(o, r),
                    failed=o.failed,
                    weight=o.weight if self.batcher.weighted else None,
                ),
                baseline_bytes=plan_bytes,
                pressure=plan_pressure,
                in_flight=in_flight,
            )
            target = self.config.batching.memory_target_fraction * (self.optimizer.memory_limit_bytes or 0)
            self.charge.observe(r.sample, self.optimizer.controller.last_decision.reason, target)

    def _charged_peak(self, o: BatchOutcome, r: _Reading) -> int:
        """The batch's peak for the optimizer, bytes: its own measurement, and inside a limiting memory
        cgroup whose workers have no cgroup of their own, at least its share of what the cgroup's working
        set gained since the last commit (tmpfs files, shared memory: charged, in no RSS), the gain split
        evenly over the batches in flight."""
        before = self._working_set
        self._working_set = now = r.sample.working_set_bytes if r.sample is not None else None
        if now is None or before is None or self.executor.memory_accounting != "rss":
            return o.peak_bytes
        self._apportioned = True
        return max(o.peak_bytes, max(0, now - before) // max(1, self.executor.in_flight))

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
        st.memory_accounting = self.executor.memory_accounting
        if self._apportioned:  # see _charged_peak
            st.memory_accounting = "cgroup_delta" if self.executor.in_flight == 1 else "cgroup_apportioned"
        info = self.executor.describe()
        st.backend, st.n_jobs, st.n_jobs_choice = info.backend, info.n_jobs, info.choice
        self.files.close()
        self._final_figures()
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

    def _final_figures(self) -> None:
        """Duration, throughput, bytes per item (and per weight unit) and the batch size learned."""
        st = self.stats
        st.duration_s = time.perf_counter() - self.t0
        st.finished_at = time.time()
        st.items_per_s = items_per_second(st.items, st.duration_s)
        st.bytes_per_item = bytes_per_item(self.peak_bytes_sum, st.items)
        st.bytes_per_weight = bytes_per_item(self.peak_bytes_sum, st.weight)
        if st.batches:
            learned = self.fixed_size if self.fixed_size is not None else self.optimizer.learned_batch_size()
            st.learned_batch_size = learned

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
            **self.executor.history_extras(),
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
