"""Pressure escalation for a run: callbacks per level, backpressure, emergency stop.

Four levels by utilization of the memory limit, applied after every batch
from a memory sample (the same steps as distributed's worker memory manager,
``distributed/worker_memory.py``: target, spill, pause, terminate):

* **warning** -- the optimizer shrinks the next batch (its control law);
  here: registered warning callbacks run and garbage is collected, throttled
  to ``gc_max_time_fraction`` of wall time (:class:`ThrottledCollector`).
  Then the free heap goes back to the kernel (glibc ``malloc_trim(0)``,
  :func:`~batchmem.heap.malloc.trim_heap`, as distributed recommends for
  memory "not released back to the OS",
  https://distributed.dask.org/en/stable/worker-memory.html): glibc serves a
  large block from free chunks of its heap when one fits, and a block freed
  there stays resident, so a cache a callback clears would not lower the RSS
  (80 of 120 MiB stayed in a test process whose heap held 193 MiB free).
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
measured baseline (:func:`adaptive_thresholds`: baseline + 50 / 70 / 90 MB).

:class:`ChargeWatch` tells the user when the memory cgroup's charge outside any process's RSS
(tmpfs files, shared memory) set the size of most batches.

Not covered here: leak verdicts and worker recycling (:mod:`batchmem.heap.leak_guard`),
the kill of a worker process above the terminate level (:mod:`batchmem.backends.watchdog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchmem.errors import ConfigError
from batchmem.heap.analyzer import Issue
from batchmem.heap.gc_watch import ThrottledCollector
from batchmem.heap.malloc import trim_heap
from batchmem.heap.monitor import MemorySample, PressureLevel, PressureThresholds
from batchmem.units import format_bytes

__all__ = ["adaptive_thresholds", "parse_level", "ChargeWatch", "PressureCallbacks", "PressureGuard"]

logger = logging.getLogger("batchmem")

_MB = 1_000_000  # decimal megabytes, as the option names (warning_mb) say


def adaptive_thresholds(
    baseline_bytes: int, limit_bytes: int, *, warning_mb: float = 50, critical_mb: float = 70, emergency_mb: float = 90
) -> PressureThresholds:
    """Thresholds at ``baseline + N MB`` (decimal MB), as fractions of ``limit_bytes``.

    Defaults: warning +50 MB, critical +70 MB, emergency +90 MB above the
    baseline measured when the run starts. Fractions are capped so that
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
            raise ConfigError(
                f"on_pressure: callback {callback!r} is not callable; pass a function such as cache.clear"
            )
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


class PressureGuard:
    """The escalation of one run: callbacks, garbage collection, backpressure, emergency stop.

    The run loop calls :meth:`after_batch` with each batch's memory sample and
    :meth:`before_dispatch` before it cuts a batch. Memory is read only
    through ``sample`` (a callable returning a :class:`MemorySample`, normally
    :meth:`MemoryMonitor.sample`), so tests drive the escalation with fake
    samples, as distributed's tests replace ``get_process_memory``.

    ``stop(reason)`` asks the run to stop cleanly; ``stopped()`` says whether it was asked to.
    """

    poll_s = 0.05  # seconds between samples while dispatch is paused

    def __init__(
        self,
        thresholds: PressureThresholds,
        sample: Callable[[], MemorySample],
        *,
        collector: ThrottledCollector,
        stop: Callable[[str], None],
        stopped: Callable[[], bool],
        callbacks: PressureCallbacks | None = None,
        min_batch_size: int = 1,
        max_wait_s: float = 10.0,
        first_utilization: float = 0.0,
    ) -> None:
        self.thresholds, self.sample, self.collector = thresholds, sample, collector
        self._stop, self._stopped = stop, stopped
        self.callbacks = callbacks if callbacks is not None else PressureCallbacks()
        self.min_batch_size, self.max_wait_s = min_batch_size, max_wait_s
        self.last_pressure = thresholds.level(first_utilization)
        self.max_utilization = first_utilization
        self.level_batches = [0, 0, 0, 0]
        self.callbacks_run = 0
        self.collected = 0  # objects found by collections between batches
        self.pauses = 0
        self.pause_timeouts = 0
        self.paused_s = 0.0
        self._gave_up = False

    def after_batch(self, sample: MemorySample, items_written: int) -> None:
        """Escalate for the level of ``sample``: warning and up run callbacks and collect garbage;
        emergency stops the run (``items_written`` goes in the reason)."""
        level = sample.pressure
        self.last_pressure = level
        self.max_utilization = max(self.max_utilization, sample.utilization)
        self.level_batches[int(level)] += 1
        if level < PressureLevel.WARNING:
            return
        self.callbacks_run += self.callbacks.fire(level)
        found = self.collector.collect()
        if found is not None:
            self.collected += found
        trim_heap()
        if level == PressureLevel.EMERGENCY and not self._stopped():
            self._emergency_stop(sample, items_written)

    def _emergency_stop(self, sample: MemorySample, items_written: int) -> None:
        thr = self.thresholds.emergency
        rss = format_bytes(sample.rss_bytes)
        what = f"process tree RSS {rss}"
        if sample.used_bytes > sample.rss_bytes:
            what = f"memory cgroup working set {format_bytes(sample.used_bytes)} (tree RSS {rss})"
        reason = (
            f"memory pressure emergency: {what} is "
            f"{sample.utilization:.0%} of the {format_bytes(sample.limit_bytes)} limit ({sample.limit_source}; "
            f"emergency at {thr:.0%}); ran {self.callbacks_run} cleanup callbacks and stopped after "
            f"{items_written} items: every finished batch is written and checkpointed"
        )
        # The run's summary repeats the reason with how to continue: a command line shows it there only.
        logger.error("batchmem: %s", reason, extra={"in_summary": True})
        self.emergency = Issue(
            kind="emergency_stop",
            severity="critical",
            message=reason,
            evidence={
                "rss_bytes": sample.rss_bytes,
                "working_set_bytes": sample.working_set_bytes,
                "limit_bytes": sample.limit_bytes,
                "utilization": sample.utilization,
                "emergency_threshold": thr,
                "items_written": items_written,
            },
            recommendation=(
                "Lower memory_target_fraction or max_batch_size, free caches with "
                "on_pressure('warning', ...) callbacks, or raise memory_limit"
            ),
        )
        self._stop(reason)

    emergency: Issue | None = None

    def before_dispatch(self, size: int) -> int:
        """Pause while pressure is critical or above (backpressure); returns the size to cut (items)."""
        if self.last_pressure < PressureLevel.CRITICAL:
            self._gave_up = False
            return size
        if self._gave_up or self._stopped():
            return min(size, self.min_batch_size)
        self.pauses += 1
        t0 = time.monotonic()
        logger.warning(
            "batchmem: memory pressure %s; pausing dispatch until it is back under warning (at most %.1f s)",
            self.last_pressure.label,
            self.max_wait_s,
        )
        self.collector.collect()
        trim_heap()
        while time.monotonic() - t0 < self.max_wait_s and not self._stopped():
            sample = self.sample()
            if sample.pressure < PressureLevel.WARNING:
                waited = time.monotonic() - t0
                self.paused_s += waited
                self.last_pressure = sample.pressure
                logger.info(
                    "batchmem: memory pressure back to %s after %.2f s; dispatch resumed", sample.pressure.label, waited
                )
                return size
            time.sleep(self.poll_s)
        self.paused_s += time.monotonic() - t0
        if self._stopped():
            return min(size, self.min_batch_size)
        self.pause_timeouts += 1
        self._gave_up = True
        logger.warning(
            "batchmem: memory pressure still %s after %.1f s; going on at min_batch_size=%d",
            self.last_pressure.label,
            self.max_wait_s,
            self.min_batch_size,
        )
        return min(size, self.min_batch_size)

    def issues(self) -> list[Issue]:
        """What the escalation did, as analyzer issues (empty when pressure stayed normal)."""
        found = [self.emergency] if self.emergency is not None else []
        lb = self.level_batches
        if not (lb[1] or lb[2] or lb[3]):
            return found
        worst = max(i for i, n in enumerate(lb) if n)
        found.append(
            Issue(
                kind="pressure",
                severity=("info", "warning", "warning", "critical")[worst],
                message=(
                    f"memory pressure reached {PressureLevel(worst).label} (peak {self.max_utilization:.0%} of "
                    f"the limit): {lb[1]} batches at warning, {lb[2]} at critical, {lb[3]} at emergency; "
                    f"dispatch paused {self.pauses} times for {self.paused_s:.2f} s; {self.callbacks_run} "
                    f"callbacks run; {self.collector.runs} collections between batches"
                ),
                evidence={
                    "max_utilization": self.max_utilization,
                    "warning_batches": lb[1],
                    "critical_batches": lb[2],
                    "emergency_batches": lb[3],
                    "pauses": self.pauses,
                    "paused_s": self.paused_s,
                    "pause_timeouts": self.pause_timeouts,
                    "callbacks_run": self.callbacks_run,
                    "gc_between_batches": self.collector.runs,
                    "gc_between_batches_s": self.collector.time_s,
                },
                recommendation="Register on_pressure callbacks that free caches, or lower memory_target_fraction",
            )
        )
        return found


class ChargeWatch:
    """Counts the batches whose size the cgroup's charge outside RSS set, and says so once.

    After each batch, :meth:`observe` gets its memory sample, the control law's reason for the next
    size ("memory", "pressure", ...) and the memory target in bytes (``memory_target_fraction`` x
    limit). A batch counts when the law cut for memory and the charge outside RSS
    (:attr:`MemorySample.charge_outside_rss_bytes`) took at least half of the room the tree's RSS
    alone left under the target, so that the size was at most half of what RSS alone allowed; or
    when it cut for pressure and RSS alone would have been at a lower level.
    """

    def __init__(self, thresholds: PressureThresholds) -> None:
        self.thresholds = thresholds
        self.batches = 0
        self.bound = 0
        self.worst: MemorySample | None = None

    def observe(self, sample: MemorySample | None, reason: str, target_bytes: float) -> None:
        """Record one batch (bytes throughout)."""
        self.batches += 1
        if sample is None or sample.working_set_bytes is None or sample.charge_outside_rss_bytes <= 0:
            return
        if self.worst is None or sample.charge_outside_rss_bytes > self.worst.charge_outside_rss_bytes:
            self.worst = sample
        room_rss = target_bytes - sample.rss_bytes
        by_memory = reason == "memory" and room_rss > 0 and sample.charge_outside_rss_bytes * 2 >= room_rss
        rss_level = self.thresholds.level(sample.rss_bytes / sample.limit_bytes)
        by_pressure = reason == "pressure" and rss_level < self.thresholds.level(sample.utilization)
        self.bound += by_memory or by_pressure

    def issue(self) -> Issue | None:
        """A "cgroup_charge" warning when the charge set the size of at least half the batches (of 3
        or more), with the largest charge outside RSS seen and its likely cause; else None."""
        w = self.worst
        if w is None or self.batches < 3 or self.bound * 2 < self.batches:
            return None
        extra = w.charge_outside_rss_bytes
        return Issue(
            kind="cgroup_charge",
            severity="warning",
            message=(
                f"the memory cgroup charged up to {format_bytes(extra)} that no process's RSS shows (working set "
                f"{format_bytes(w.used_bytes)} against a tree RSS of {format_bytes(w.rss_bytes)}, limit "
                f"{format_bytes(w.limit_bytes)}), and this set the size of {self.bound} of {self.batches} batches: "
                "likely files on a tmpfs ($TMPDIR, /dev/shm, an emptyDir with medium Memory) or shared memory"
            ),
            evidence={
                "charge_outside_rss_bytes": extra,
                "working_set_bytes": w.used_bytes,
                "rss_bytes": w.rss_bytes,
                "limit_bytes": w.limit_bytes,
                "bound_batches": self.bound,
                "batches": self.batches,
            },
            recommendation=(
                "Stage files on a disk-backed directory (set TMPDIR) or delete them inside the batch; "
                "or raise the container's memory limit"
            ),
        )
