"""Pressure escalation for a run: callbacks per level, backpressure, emergency stop.

The seeds' four levels (DESIGN.md, "Memory, measured the way the platform
allows"), applied after every batch from the monitor's sample:

* **warning** -- the optimizer shrinks the next batch (its control law);
  here: registered warning callbacks run and garbage is collected, throttled
  to ``gc_max_time_fraction`` of wall time (:class:`ThrottledCollector`).
* **critical** -- also: critical callbacks; dispatch pauses before the next
  batch is cut until pressure is back under warning (backpressure), sampling
  every ``poll_s`` seconds for at most ``pressure_max_wait_s``, after which
  batches go on at ``min_batch_size`` until pressure falls below critical.
* **emergency** -- also: emergency (cleanup) callbacks, then the run stops
  cleanly through :meth:`BatchProcessor.stop`: batches already finished are
  written and checkpointed, ``RunStats.status`` is ``"stopped"`` and
  ``RunStats.stop_reason`` says why.

Callbacks registered for a level run at that level and every level above it,
each at most once per its cooldown (seconds). Thresholds are fractions of the
limit (:class:`PressureThresholds`, 0.80 / 0.90 / 0.95) or adaptive from the
measured baseline (:func:`adaptive_thresholds`: baseline + 50 / 70 / 90 MB,
the seeds' "Warning: Baseline + 50MB, Critical: Baseline + 70MB").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchmem.errors import ConfigError
from batchmem.heap.analyzer import HeapAnalyzer, Issue, _fmt_bytes
from batchmem.heap.gc_watch import GcWatch, ThrottledCollector
from batchmem.heap.monitor import MemorySample, PressureLevel, PressureThresholds

__all__ = ["adaptive_thresholds", "parse_level", "PressureCallbacks", "RunGuard"]

logger = logging.getLogger("batchmem")

_MB = 1_000_000  # the seeds' "MB" (decimal, like parse_size("50MB"))


def adaptive_thresholds(baseline_bytes: int, limit_bytes: int, *, warning_mb: float = 50,
                        critical_mb: float = 70, emergency_mb: float = 90) -> PressureThresholds:
    """Thresholds at ``baseline + N MB`` (decimal MB), as fractions of ``limit_bytes``.

    Defaults are the seeds' adaptive thresholds (warning +50 MB, critical
    +70 MB) with emergency at +90 MB. Fractions are capped so that
    ``warning < critical < emergency <= 1`` (a limit closer to the baseline
    squeezes them under it, 0.5 % apart).

    Raises:
        ConfigError: for non-positive or non-increasing offsets.
    """
    if not 0 < warning_mb < critical_mb < emergency_mb:
        raise ConfigError(
            f"adaptive_thresholds: need 0 < warning_mb ({warning_mb}) < critical_mb ({critical_mb}) "
            f"< emergency_mb ({emergency_mb}); e.g. warning_mb=50, critical_mb=70, emergency_mb=90"
        )
    if limit_bytes <= 0:
        raise ConfigError(f"adaptive_thresholds: limit_bytes={limit_bytes} must be positive")
    frac = [(baseline_bytes + mb * _MB) / limit_bytes for mb in (warning_mb, critical_mb, emergency_mb)]
    e = min(frac[2], 1.0)
    c = min(frac[1], e - 0.005)
    w = max(min(frac[0], c - 0.005), 0.001)
    return PressureThresholds(warning=w, critical=c, emergency=e)


def parse_level(level: PressureLevel | str | int) -> PressureLevel:
    """``"warning"`` / ``PressureLevel.WARNING`` / ``1`` -> ``PressureLevel.WARNING`` (not NORMAL)."""
    try:
        lvl = PressureLevel[level.upper()] if isinstance(level, str) else PressureLevel(level)
    except (KeyError, ValueError):
        lvl = None
    if lvl is None or lvl == PressureLevel.NORMAL:
        raise ConfigError(f"on_pressure: level {level!r} must be one of 'warning', 'critical', 'emergency'")
    return lvl


@dataclass
class _Callback:
    level: PressureLevel
    fn: Callable[[], Any]
    cooldown_s: float
    last_run: float = float("-inf")  # time.monotonic() seconds
    runs: int = 0


class PressureCallbacks:
    """Callbacks per pressure level, each with a cooldown (seconds)."""

    def __init__(self) -> None:
        self._callbacks: list[_Callback] = []

    def __len__(self) -> int:
        return len(self._callbacks)

    def register(self, level: PressureLevel | str | int, callback: Callable[[], Any], cooldown_s: float = 10.0) -> None:
        """Run ``callback()`` when pressure reaches ``level`` or above, at most once per ``cooldown_s`` seconds."""
        if not callable(callback):
            raise ConfigError(f"on_pressure: callback {callback!r} is not callable; pass a function such as cache.clear")
        if cooldown_s < 0:
            raise ConfigError(f"on_pressure: cooldown_s={cooldown_s!r} must be >= 0 seconds")
        self._callbacks.append(_Callback(parse_level(level), callback, float(cooldown_s)))

    def fire(self, level: PressureLevel) -> int:
        """Run the callbacks due at ``level`` (registered at or below it, out of cooldown); returns how many ran.

        A callback that raises is logged and does not stop the run.
        """
        ran = 0
        now = time.monotonic()
        for cb in self._callbacks:
            if cb.level > level or now - cb.last_run < cb.cooldown_s:
                continue
            cb.last_run, cb.runs = now, cb.runs + 1
            ran += 1
            try:
                cb.fn()
            except Exception:  # a cleanup hook must not kill the run
                logger.exception("on_pressure(%s) callback %r raised", cb.level.label, cb.fn)
        return ran


class RunGuard:
    """Heap analysis, GC control, pressure escalation and worker recycling for one run.

    Built by the processor's run loop: :meth:`after_batch` after every
    committed batch, :meth:`before_dispatch` before each batch is cut,
    :meth:`finish` once at the end (puts issues and GC figures in the stats).
    """

    poll_s = 0.05  # seconds between samples while dispatch is paused

    def __init__(self, monitor: Any, stats: Any, executor: Any, first_sample: MemorySample, *,
                 callbacks: PressureCallbacks | None = None, stop: Callable[[], None] | None = None,
                 stopped: Callable[[], bool] | None = None, detect_memory_issues: bool = True,
                 trace_allocations: bool = False, adaptive: dict[str, float] | bool | None = None,
                 min_batch_size: int = 1, max_wait_s: float = 10.0, gc_max_time_fraction: float = 0.05,
                 recycle_leaking_workers: bool = True, cycle_check_every: int = 10,
                 analyzer_options: dict[str, Any] | None = None) -> None:
        self.monitor, self.stats, self.executor = monitor, stats, executor
        self.callbacks = callbacks or PressureCallbacks()
        self._stop = stop or (lambda: None)
        self._stopped = stopped or (lambda: False)
        self.min_batch_size, self.max_wait_s = min_batch_size, max_wait_s
        self.recycle_leaking_workers = recycle_leaking_workers
        self.cycle_check_every = cycle_check_every
        self._saved_thresholds = monitor.thresholds
        if adaptive:
            opts = adaptive if isinstance(adaptive, dict) else {}
            monitor.thresholds = adaptive_thresholds(first_sample.rss_bytes, monitor.limit.bytes, **opts)
            logger.info("adaptive pressure thresholds from a %s baseline: %s", _fmt_bytes(first_sample.rss_bytes), monitor.thresholds)
        self.gc_watch = GcWatch().install()
        self.collector = ThrottledCollector(gc_max_time_fraction)
        self.analyzer: HeapAnalyzer | None = None
        if detect_memory_issues or trace_allocations:
            self.analyzer = HeapAnalyzer(monitor, trace_allocations=trace_allocations, gc_watch=self.gc_watch,
                                         **(analyzer_options or {})).start()
        self.last_pressure = monitor.thresholds.level(first_sample.utilization)
        self.max_utilization = first_sample.utilization
        self.level_batches = [0, 0, 0, 0]
        self.callbacks_run = 0
        self.pauses = 0
        self.pause_timeouts = 0
        self.paused_s = 0.0
        self._gave_up = False
        self._items_by_pid: dict[int, int] = {}
        self._items_since_check = 0
        self._batches = 0
        self._recycled_pids: set[int] = set()
        self._finished = False

    @classmethod
    def from_processor(cls, proc: Any, executor: Any, stats: Any, first_sample: MemorySample) -> RunGuard:
        """Read the options off a :class:`~batchmem.BatchProcessor` (missing ones take their defaults)."""
        g = lambda name, default: getattr(proc, name, default)  # noqa: E731
        return cls(
            proc.monitor, stats, executor, first_sample,
            callbacks=g("pressure_callbacks", None), stop=proc.stop, stopped=proc._stop.is_set,
            detect_memory_issues=g("detect_memory_issues", True), trace_allocations=g("trace_allocations", False),
            adaptive=g("adaptive_thresholds", None), min_batch_size=proc.control_config.min_batch_size,
            max_wait_s=g("pressure_max_wait_s", 10.0), gc_max_time_fraction=g("gc_max_time_fraction", 0.05),
            recycle_leaking_workers=g("recycle_leaking_workers", True), analyzer_options=g("analyzer_options", None),
        )

    # -- after each batch (main thread)
    def after_batch(self, outcome: Any, sample: MemorySample | None, rss_now: int) -> None:
        """Feed the analyzer, run the checks and the escalation for the level of ``sample``."""
        self._batches += 1
        pid = outcome.pid or os.getpid()
        own = pid == os.getpid()
        done = self._items_by_pid.get(pid, 0)
        self._items_by_pid[pid] = done + outcome.size
        if self.analyzer is not None and pid not in self._recycled_pids:
            heap = getattr(outcome, "heap_bytes", 0)
            base, metric = (None, "") if own else (heap, "malloc in-use bytes") if heap else (outcome.start_rss_bytes, "resident bytes")
            for issue in self.analyzer.observe_batch(pid=pid, items=outcome.size, baseline_bytes=base, metric=metric,
                                                     tree_rss_bytes=rss_now):
                if issue.kind == "leak" and not own:
                    self._recycle(pid)
        if own:
            self._items_since_check += outcome.size
            if self.analyzer is not None and self._batches % self.cycle_check_every == 0:
                found = self.collector.collect()
                if found is not None:
                    self.analyzer.record_cycle_check(found, self._items_since_check)
                    self.stats.gc_collected_between_batches += found
                    self._items_since_check = 0
        if sample is None:
            return
        level = sample.pressure
        self.last_pressure = level
        self.max_utilization = max(self.max_utilization, sample.utilization)
        self.level_batches[int(level)] += 1
        if level < PressureLevel.WARNING:
            return
        self.callbacks_run += self.callbacks.fire(level)
        found = self.collector.collect()
        if found is not None:
            self.stats.gc_collected_between_batches += found
        if level == PressureLevel.EMERGENCY and not self._stopped():
            self._emergency_stop(sample)

    def _recycle(self, pid: int) -> None:
        request = getattr(self.executor, "request_recycle", None)
        if not self.recycle_leaking_workers or request is None or not getattr(self.executor, "recycles_workers", False):
            return
        self._recycled_pids.add(pid)
        self.analyzer.forget(pid)
        request(f"leak flagged in worker {pid}")

    def _emergency_stop(self, sample: MemorySample) -> None:
        st = self.stats
        thr = self.monitor.thresholds.emergency
        reason = (
            f"memory pressure emergency: process tree RSS {_fmt_bytes(sample.rss_bytes)} is {sample.utilization:.0%} "
            f"of the {_fmt_bytes(sample.limit_bytes)} limit ({sample.limit_source}; emergency at {thr:.0%}); "
            f"ran {self.callbacks_run} cleanup callbacks and stopped after {st.items} items: every finished batch "
            f"is written and checkpointed, rerun with resume=True to continue"
        )
        st.stop_reason = reason
        logger.error("batchmem: %s", reason)
        if self.analyzer is not None:
            self.analyzer.issues.append(Issue(
                kind="emergency_stop", severity="critical", message=reason,
                evidence={"rss_bytes": sample.rss_bytes, "limit_bytes": sample.limit_bytes,
                          "utilization": sample.utilization, "emergency_threshold": thr, "items_written": st.items},
                recommendation=("Lower memory_target_fraction or max_batch_size, free caches with "
                                "on_pressure('warning', ...) callbacks, or raise memory_limit"),
            ))
        self._stop()

    # -- before each batch is cut (the dispatching thread)
    def before_dispatch(self, size: int) -> int:
        """Pause while pressure is critical or above (backpressure); returns the size to cut (items)."""
        if self.last_pressure < PressureLevel.CRITICAL:
            self._gave_up = False
            return size
        if self._gave_up or self._stopped():
            return min(size, self.min_batch_size)
        self.pauses += 1
        t0 = time.monotonic()
        logger.warning("batchmem: memory pressure %s; pausing dispatch until it is back under warning (at most %.1f s)",
                       self.last_pressure.label, self.max_wait_s)
        self.collector.collect()
        while time.monotonic() - t0 < self.max_wait_s and not self._stopped():
            sample = self.monitor.sample()
            if sample.pressure < PressureLevel.WARNING:
                waited = time.monotonic() - t0
                self.paused_s += waited
                self.last_pressure = sample.pressure
                logger.info("batchmem: memory pressure back to %s after %.2f s; dispatch resumed", sample.pressure.label, waited)
                return size
            time.sleep(self.poll_s)
        waited = time.monotonic() - t0
        self.paused_s += waited
        if self._stopped():
            return min(size, self.min_batch_size)
        self.pause_timeouts += 1
        self._gave_up = True
        logger.warning("batchmem: memory pressure still %s after %.1f s; going on at min_batch_size=%d",
                       self.last_pressure.label, waited, self.min_batch_size)
        return min(size, self.min_batch_size)

    # -- end of run
    def finish(self) -> None:
        """Remove the GC hooks, stop tracing, and put issues and GC figures into the stats (idempotent)."""
        if self._finished:
            return
        self._finished = True
        st = self.stats
        self.gc_watch.remove()
        issues: list[dict[str, Any]] = []
        if self.analyzer is not None:
            self.analyzer.stop()
            issues = self.analyzer.analyze_heap()["issues"]
        if self.level_batches[1] or self.level_batches[2] or self.level_batches[3]:
            worst = max(i for i, n in enumerate(self.level_batches) if n)
            issues.append(Issue(
                kind="pressure", severity=("info", "warning", "warning", "critical")[worst],
                message=(f"memory pressure reached {PressureLevel(worst).label} (peak {self.max_utilization:.0%} of the limit): "
                         f"{self.level_batches[1]} batches at warning, {self.level_batches[2]} at critical, "
                         f"{self.level_batches[3]} at emergency; dispatch paused {self.pauses} times for {self.paused_s:.2f} s; "
                         f"{self.callbacks_run} callbacks run; {self.collector.runs} collections between batches"),
                evidence={"max_utilization": self.max_utilization, "warning_batches": self.level_batches[1],
                          "critical_batches": self.level_batches[2], "emergency_batches": self.level_batches[3],
                          "pauses": self.pauses, "paused_s": self.paused_s, "pause_timeouts": self.pause_timeouts,
                          "callbacks_run": self.callbacks_run, "gc_between_batches": self.collector.runs,
                          "gc_between_batches_s": self.collector.time_s},
                recommendation="Register on_pressure callbacks that free caches, or lower memory_target_fraction",
            ).to_dict())
        recycles = getattr(self.executor, "recycles", 0)
        if recycles:
            issues.append(Issue(
                kind="worker_recycling", severity="info",
                message=f"worker processes were replaced {recycles} times ({'; '.join(getattr(self.executor, 'recycle_reasons', [])[:3])})",
                evidence={"recycles": recycles, "max_tasks_per_worker": getattr(self.executor, "max_tasks_per_worker", None)},
                recommendation="Fix the leak in the function, or keep max_tasks_per_worker to bound worker memory",
            ).to_dict())
        st.issues.extend(issues)
        for i in issues:
            log = logger.warning if i["severity"] != "info" else logger.info
            log("batchmem issue [%s/%s]: %s", i["kind"], i["severity"], i["message"])
        w = self.gc_watch
        for name, value in (("gc_collections_by_generation", list(w.collections)), ("gc_pause_s", w.pause_s),
                            ("gc_max_pause_s", w.max_pause_s)):
            if hasattr(st, name):
                setattr(st, name, value)
        self.monitor.thresholds = self._saved_thresholds
