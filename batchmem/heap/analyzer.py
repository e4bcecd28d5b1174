"""HeapAnalyzer: leak verdicts from a robust trend, culprit lines, GC advice.

How a leak is found
-------------------
After every batch the run records the *post-batch baseline* of the process
that ran it -- its resident bytes before its next batch (``BatchOutcome.
start_rss_bytes``), or the bytes traced by :mod:`tracemalloc` when tracing is
on in this process -- against the items that process had processed, in a
bounded window per process id (``collections.deque(maxlen=window)``).

The trend is the Theil-Sen estimator (Sen 1968, "Estimates of the regression
coefficient based on Kendall's tau", JASA 63:1379): the median of the slopes
between every pair of points, which ignores up to ~29 % of outliers (allocator
noise, one-off caches) where a first-to-last difference or least squares would
not. The confidence figure is the share of those pairwise slopes that are
positive (0.5 for noise, 1.0 for growth at every step; equal to
``(1 + tau) / 2`` for Kendall's tau without ties).

A leak is flagged when, over at least ``min_batches`` samples after
``warmup_batches``:

* the slope times the median batch size is at least
  ``min_growth_per_batch_bytes`` (default 32 KiB per batch),
* the growth projected over the window is at least
  ``min_window_growth_bytes`` (default 1 MiB),
* the confidence is at least ``min_confidence`` (default 0.8), and
* the slope over the most recent half of the window is at least half of the
  whole window's (growth that has flattened out is warm-up, not a leak).

These defaults are checked by ``benchmarks/bench_leaks.py`` (false-positive
rate over repeated clean runs with noisy allocation sizes; detection delay of
a 100 KB-per-batch leak).

Measured by ``benchmarks/bench_leaks.py`` (2 vCPUs, CPython 3.11): 0/20 false
positives on clean noisy runs judged on malloc in-use bytes (1/20 on RSS,
which ratchets up with allocator fragmentation -- why in-process and worker
baselines use :func:`~batchmem.heap.malloc.heap_in_use_bytes` where glibc provides it); a 100 KB
per batch leak is flagged after 14 batches (2 warm-up + 12).

Culprits: with ``trace_allocations=True`` a :mod:`tracemalloc` snapshot is
taken at the start of the leak window and another at verdict time;
``Snapshot.compare_to(old, "lineno")`` ranks source lines by growth, with
tracemalloc's, importlib's and batchmem's own frames filtered out. Tracing
(1 frame) costs 3-5x wall time on allocation-bound functions (3.1x light,
4.0x 3 objects/item, 4.8x large noisy blocks; bench_leaks.py): use it to find
a leak, not in production runs. Workers are not traced: culprits need n_jobs=1.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
import tracemalloc
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from batchmem.heap.gc_watch import GcWatch
from batchmem.heap.issue import Issue
from batchmem.heap.malloc import heap_in_use_bytes
from batchmem.heap.monitor import MemoryMonitor, current_rss_bytes
from batchmem.heap.trend import LineGrowth, Trend, theil_sen, top_growth_lines
from batchmem.units import format_bytes

__all__ = ["Issue", "Trend", "theil_sen", "LineGrowth", "top_growth_lines", "HeapAnalyzer"]

logger = logging.getLogger("batchmem")

# --- per-process series ---------------------------------------------------------


@dataclass
class _Series:
    """Post-batch baselines of one process: (items processed, bytes, batch size) in a bounded window."""

    window: int
    items_done: int = 0
    batches: int = 0
    points: deque = field(init=False)  # (items_done, bytes, batch items)
    flagged: bool = False
    metric: str = "resident bytes"
    largest_batch: int = 0  # items

    def __post_init__(self) -> None:
        self.points = deque(maxlen=self.window)


class HeapAnalyzer:
    """Watches a run (or any loop) for leaks, cyclic garbage and GC pauses.

    Args:
        monitor: the :class:`MemoryMonitor` that gives the limit and tree RSS
            (one is made from ``memory_limit`` when None).
        memory_limit: as for :class:`MemoryMonitor` (only when ``monitor`` is None).
        trace_allocations: start :mod:`tracemalloc` (if not already tracing)
            to name culprit lines and to use traced bytes as the in-process
            baseline. Costs time on every allocation: see benchmarks/bench_leaks.py.
        window: samples kept per process (batches).
        warmup_batches: first batches of each process ignored (imports, caches).
        min_batches: samples needed before a verdict.
        min_growth_per_batch_bytes: the leak rule's least growth per batch, bytes (module docstring).
        min_window_growth_bytes: the leak rule's least growth over the window, bytes.
        min_confidence: the leak rule's least confidence in the slope, 0-1.
        top_lines: culprit lines named per leak.
        gc_watch: a :class:`GcWatch` to read GC figures from (one is made otherwise).

    Use :meth:`start`/:meth:`stop` (or ``with``) around the work, and call
    :meth:`observe_batch` after each batch. :meth:`analyze_heap` gives the
    issues and recommendations, :meth:`get_memory_stats` the current figures.
    """

    def __init__(
        self,
        monitor: MemoryMonitor | None = None,
        *,
        memory_limit: int | str | float | None = None,
        trace_allocations: bool = False,
        window: int = 50,
        warmup_batches: int = 2,
        min_batches: int = 10,
        min_growth_per_batch_bytes: int = 32 * 1024,
        min_window_growth_bytes: int = 1 << 20,
        min_confidence: float = 0.8,
        top_lines: int = 5,
        gc_watch: GcWatch | None = None,
    ) -> None:
        if window < min_batches or min_batches < 3:
            raise ValueError(f"window={window} must be >= min_batches={min_batches} >= 3")
        self.monitor = monitor if monitor is not None else MemoryMonitor(memory_limit)
        self.trace_allocations = bool(trace_allocations)
        self.window, self.warmup_batches, self.min_batches = window, warmup_batches, min_batches
        self.min_growth_per_batch_bytes = min_growth_per_batch_bytes
        self.min_window_growth_bytes = min_window_growth_bytes
        self.min_confidence = min_confidence
        self.top_lines = top_lines
        self.gc_watch = gc_watch if gc_watch is not None else GcWatch()
        self._own_gc_watch = gc_watch is None
        self.issues: list[Issue] = []
        self._series: dict[int, _Series] = {}
        self._started_tracing = False
        self._snapshot: tracemalloc.Snapshot | None = None
        self._snapshot_at = 0  # in-process samples recorded when the snapshot was taken
        self._cycle_checks = 0
        self._cycle_unreachable = 0
        self._cycle_items = 0
        self._items = 0
        self._fn_gc = [0.0, 0.0, 0.0]  # GC pause s inside the function's batches, their s, the pause s in this process
        self._t0 = time.perf_counter()
        self._stopped_s: float | None = None

    # -- lifecycle
    def start(self) -> HeapAnalyzer:
        """Install the GC callbacks and, with ``trace_allocations``, start tracemalloc (1 frame per trace)."""
        self._t0 = time.perf_counter()
        self._stopped_s = None
        if self._own_gc_watch:
            self.gc_watch.install()
        if self.trace_allocations and not tracemalloc.is_tracing():
            tracemalloc.start(1)
            self._started_tracing = True
        return self

    def stop(self) -> None:
        """Remove the GC callbacks and stop tracemalloc if :meth:`start` started it."""
        if self._own_gc_watch:
            self.gc_watch.remove()
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False
        self._snapshot = None
        self._stopped_s = time.perf_counter() - self._t0

    def __enter__(self) -> HeapAnalyzer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def tracing(self) -> bool:
        """True when tracemalloc traces this process for the analyzer."""
        return self.trace_allocations and tracemalloc.is_tracing()

    # -- observations
    def observe_batch(
        self,
        *,
        pid: int | None,
        items: int,
        baseline_bytes: int | None = None,
        metric: str = "resident bytes",
        tree_rss_bytes: int | None = None,
    ) -> list[Issue]:
        """Record one batch of ``items`` run in process ``pid`` and return any new issues.

        ``baseline_bytes`` is that process's memory with the batch's effects
        settled -- its RSS before its next batch, or malloc's in-use bytes
        (:func:`~batchmem.heap.malloc.heap_in_use_bytes`) -- named by ``metric``. For this process it
        may be None: it is read here, traced bytes when tracing, else malloc
        in-use bytes (glibc), else RSS. ``tree_rss_bytes`` (process tree RSS,
        for the items-until-limit projection) is sampled when None.
        """
        pid = os.getpid() if pid is None else pid
        own = pid == os.getpid()
        traced = own and self.tracing
        if traced:
            baseline_bytes, metric = tracemalloc.get_traced_memory()[0], "traced bytes"
        elif baseline_bytes is None:
            baseline_bytes, metric = heap_in_use_bytes(), "malloc in-use bytes"
            if baseline_bytes is None:
                baseline_bytes, metric = current_rss_bytes(), "resident bytes"
        s = self._series.get(pid)
        if s is None:
            s = self._series[pid] = _Series(self.window)
        self._items += items
        s.batches += 1
        before = s.items_done
        s.items_done += items
        if s.batches <= self.warmup_batches:
            s.largest_batch = max(s.largest_batch, items)
            return []
        if items > 1.25 * s.largest_batch:
            # A batch larger than any before may leave the allocator's pools (and RSS) at a new,
            # legitimately higher level: while the optimizer ramps the size up, baselines grow
            # with the batch size, not with items processed. The window starts again at the new
            # level, so baselines after small batches are not fitted with those after large ones
            # (bench_core.py overhead flagged a 36 B/item "leak", a cold flights run ~25 B/item).
            s.largest_batch = items
            s.points.clear()
            return []
        s.points.append((before, int(baseline_bytes), items))
        s.metric = metric
        if traced and (self._snapshot is None or (not s.flagged and s.batches - self._snapshot_at >= self.window)):
            self._snapshot = tracemalloc.take_snapshot()  # start of the leak window (renewed every window)
            self._snapshot_at = s.batches
        if s.flagged or len(s.points) < self.min_batches:
            return []
        issue = self._leak_verdict(pid, s, traced, tree_rss_bytes)
        if issue is None:
            return []
        s.flagged = True
        self.issues.append(issue)
        logger.warning("batchmem: %s", issue.message, extra={"in_summary": True})  # a run's summary repeats it
        return [issue]

    def _leak_verdict(self, pid: int, s: _Series, traced: bool, tree_rss_bytes: int | None) -> Issue | None:
        growth = self._steady_growth(s)
        if growth is None:
            return None
        fit, batch_items, per_batch, span_items, window_growth = growth
        if tree_rss_bytes is None:
            tree_rss_bytes = self.monitor.rss_bytes()
        headroom = self.monitor.limit.bytes - tree_rss_bytes
        items_to_limit = max(0, int(headroom / fit.slope))
        own = pid == os.getpid()
        culprits = self._culprits() if traced else []
        where = "this process" if own else f"worker process {pid}"
        message = (
            f"memory leak suspected in {where}: {s.metric} grow {format_bytes(per_batch)} per batch "
            f"({fit.slope:.0f} bytes/item, Theil-Sen over {fit.n} batches, confidence {fit.confidence:.0%}); "
            f"the limit ({format_bytes(self.monitor.limit.bytes)}) is reached after ~{items_to_limit} more items"
        )
        if culprits:
            message += "; top lines by growth: " + "; ".join(str(c) for c in culprits[:3])
        return Issue(
            kind="leak",
            severity="critical" if items_to_limit < 10 * batch_items else "warning",
            message=message,
            evidence={
                "pid": pid,
                "bytes_per_item": fit.slope,
                "bytes_per_batch": per_batch,
                "confidence": fit.confidence,
                "window_batches": fit.n,
                "window_items": span_items,
                "window_growth_bytes": window_growth,
                "items_until_limit": items_to_limit,
                "detected_after_batches": s.batches,
                "detected_after_items": s.items_done,
                "traced": int(traced),
            },
            culprits=[c.to_dict() for c in culprits],
            recommendation=_leak_advice(culprits, own),
        )

    def _steady_growth(self, s: _Series) -> tuple[Trend, float, float, float, float] | None:
        """The leak rule on one process's series: ``(fit, median batch items, bytes per batch, items
        spanned, bytes grown over the window)`` when it grows steadily enough, else None."""
        xs = [p[0] for p in s.points]
        ys = [p[1] for p in s.points]
        fit = theil_sen(xs, ys)
        if fit.slope <= 0 or fit.confidence < self.min_confidence:
            return None
        batch_items = statistics.median(p[2] for p in s.points)
        per_batch = fit.slope * batch_items
        span_items = xs[-1] - xs[0]
        window_growth = fit.slope * span_items
        if per_batch < self.min_growth_per_batch_bytes or window_growth < self.min_window_growth_bytes:
            return None
        half = len(xs) // 2
        if theil_sen(xs[half:], ys[half:]).slope < 0.5 * fit.slope:  # growth that has stopped is a warm-up
            return None
        return fit, batch_items, per_batch, span_items, window_growth

    def _culprits(self) -> list[LineGrowth]:
        """Source lines that grew most since the first snapshot (tracemalloc), leaving out one-off imports."""
        if self._snapshot is None:
            return []
        culprits = top_growth_lines(self._snapshot, tracemalloc.take_snapshot(), self.top_lines)
        return [c for c in culprits if c.size_bytes >= 0.1 * culprits[0].size_bytes]

    def forget(self, pid: int) -> None:
        """Drop the series of ``pid`` (its process was replaced); its issues stay."""
        self._series.pop(pid, None)

    def record_cycle_check(self, unreachable: int, items: int) -> None:
        """Record an explicit ``gc.collect()`` after a batch: ``unreachable`` objects found over ``items``
        items since the last check."""
        self._cycle_checks += 1
        self._cycle_unreachable += int(unreachable)
        self._cycle_items += int(items)

    def record_function_gc(self, pause_s: float, seconds: float, *, own: bool) -> None:
        """Record one batch's GC pauses while the function ran (``pause_s``, seconds) over its
        ``seconds``; ``own``: it ran in this process. With these, the GC verdict is about the
        function's own collections, not those of the code around it (batchmem's between batches)."""
        self._fn_gc[0] += pause_s
        self._fn_gc[1] += seconds
        self._fn_gc[2] += pause_s if own else 0.0

    # -- verdicts
    def _gc_issues(self) -> list[Issue]:
        out: list[Issue] = []
        w = self.gc_watch
        elapsed = self._stopped_s if self._stopped_s is not None else time.perf_counter() - self._t0
        garbage = w.collected + self._cycle_unreachable
        items = max(self._items, 1)
        per_item = garbage / items
        if garbage >= 1000 and per_item >= 1.0:
            out.append(
                Issue(
                    kind="gc_cycles",
                    severity="info" if w.pause_s < 0.05 * max(elapsed, 1e-9) else "warning",
                    message=(
                        f"reference cycles: the cyclic GC freed {garbage} unreachable objects "
                        f"(~{per_item:.1f} per item) in {sum(w.collections)} collections taking {w.pause_s:.3f} s"
                    ),
                    evidence={
                        "unreachable_objects": garbage,
                        "objects_per_item": per_item,
                        "gc_pause_s": w.pause_s,
                        "explicit_checks": self._cycle_checks,
                    },
                    recommendation=(
                        "The function builds reference cycles that only the cyclic GC frees; break them "
                        "(weakref, clearing back-references, closing objects) or collect explicitly between "
                        "batches (gc.collect()) so they do not pile up until a full collection"
                    ),
                )
            )
        out.extend(_pause_issues(w, elapsed, tuple(self._fn_gc) if self._fn_gc[1] > 0 else None))
        return out

    def analyze_heap(self) -> dict[str, list[Any]]:
        """Issues so far plus GC verdicts: ``{"issues": [Issue.to_dict()...], "recommendations": [str...]}``."""
        issues = self.issues + self._gc_issues()
        recs: list[str] = []
        for i in issues:
            if i.recommendation and i.recommendation not in recs:
                recs.append(i.recommendation)
        sample = self.monitor.sample()
        if sample.pressure.value >= 1:
            recs.append(
                f"Memory pressure is {sample.pressure.label} ({sample.utilization:.0%} of the limit): "
                "lower max_batch_size or memory_target_fraction, or free caches with on_pressure callbacks"
            )
        return {"issues": [i.to_dict() for i in issues], "recommendations": recs}

    def get_memory_stats(self) -> dict[str, Any]:
        """Current figures: RSS (bytes), limit, utilization, pressure, GC counts and pauses, tracemalloc."""
        sample = self.monitor.sample()
        traced, traced_peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
        return {
            "rss_bytes": current_rss_bytes(),
            "tree_rss_bytes": sample.rss_bytes,
            "available_bytes": sample.available_bytes,
            "limit_bytes": sample.limit_bytes,
            "limit_source": sample.limit_source,
            "utilization": sample.utilization,
            "pressure": sample.pressure.label,
            "gc": {
                **self.gc_watch.to_dict(),
                "counts": list(gc.get_count()),
                "thresholds": list(gc.get_threshold()),
                "frozen": gc.get_freeze_count(),
            },
            "tracemalloc": {
                "tracing": tracemalloc.is_tracing(),
                "traced_bytes": traced,
                "traced_peak_bytes": traced_peak,
                "overhead_bytes": tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0,
            },
            "processes_watched": len(self._series),
            "items_observed": self._items,
        }


def _leak_advice(culprits: list[LineGrowth], own: bool) -> str:
    """What to do about a leak: fix the lines that grew, or how to find them (this process or a worker)."""
    if culprits:
        lines = ", ".join(c.line for c in culprits[:3])
        return f"Fix the allocations kept at {lines} (objects kept in a global, cache or closure)"
    # Read by Python and job-file users alike: options by name, with their job-file keys.
    if own:
        return (
            "Rerun with trace_allocations on (analysis.trace_allocations in a job file) to name the source "
            "lines that grow; if the leak is in third-party code, run with n_jobs above 1 on the loky "
            "backend so leaking workers are replaced"
        )
    return (
        "Leaking workers are replaced automatically (recycle_leaking_workers, on by default) or every "
        "max_tasks_per_worker batches; to name the lines, rerun a sample with n_jobs 1 and trace_allocations "
        "on (execution.n_jobs, analysis.trace_allocations in a job file)"
    )


def _pause_issues(w: Any, elapsed: float, fn: tuple[float, ...] | None = None) -> list[Issue]:
    """Long GC pauses and uncollectable objects, from the run's GC accounting (``w``: a GcWatch). With
    ``fn`` (:meth:`HeapAnalyzer.record_function_gc`'s pause s, batch s, pause s in this process) the pause
    verdict is the function's own collections against its batch time; this process's collections outside
    it (batchmem's own, between batches) are an info of their own, not the function's fault."""
    out: list[Issue] = []
    pause, span, where = w.pause_s, elapsed, ""
    evidence: dict[str, Any] = {"gen0": w.collections[0], "gen1": w.collections[1], "gen2": w.collections[2]}
    if fn is not None:
        pause, span, own = fn
        where = " inside the function's batches"
        outside = max(0.0, w.pause_s - own)
        evidence = {"gc_pause_outside_function_s": outside, "gc_pause_all_s": w.pause_s}
        if elapsed > 0 and outside >= 0.5 and outside / elapsed >= 0.10:
            message = f"collections outside the function (batchmem's, between batches) took {outside:.2f} s "
            share = f"({outside / elapsed:.0%} of {elapsed:.1f} s); the function's own {pause:.2f} s"
            fix = "Fewer, larger batches commit less often (raise min_batch_size)"
            out.append(Issue(kind="gc_overhead", severity="info", message=message + share, recommendation=fix))
    if span > 0 and pause >= 0.5 and pause / span >= 0.10:
        out.append(
            Issue(
                kind="gc_pauses",
                severity="warning",
                message=(
                    f"GC pauses{where} took {pause:.2f} s ({pause / span:.0%} of {span:.1f} s), "
                    f"longest {w.max_pause_s * 1000:.0f} ms, collections per generation {w.collections}"
                ),
                evidence={"gc_pause_s": pause, "gc_pause_fraction": pause / span, "gc_max_pause_s": w.max_pause_s}
                | evidence,
                recommendation=(
                    "Call gc.freeze() after loading long-lived data, or raise the generation-0 "
                    "threshold (gc.set_threshold) for allocation-heavy functions"
                ),
            )
        )
    if gc.garbage or w.uncollectable:
        out.append(
            Issue(
                kind="uncollectable",
                severity="warning",
                message=(
                    f"{len(gc.garbage)} uncollectable objects in gc.garbage ({w.uncollectable} found during the run)"
                ),
                evidence={"gc_garbage": len(gc.garbage), "uncollectable": w.uncollectable},
                recommendation="Inspect gc.garbage: objects whose finalizers keep them alive never get freed",
            )
        )
    return out
