"""Leak watch for one run: feed the heap analyzer per worker, check for cycles, ask for worker recycling.

After each committed batch the run loop calls :meth:`LeakGuard.after_batch`.
Each worker process gets its own baseline series (malloc in-use bytes when
the worker reports them, else its resident bytes; this process's batches
are judged by the analyzer's own readings), so one leaking worker is
flagged and, for process backends, replaced (``recycle``). Every
``cycle_check_every`` batches run in this process, a throttled
``gc.collect()`` tells how much garbage lives only in reference cycles.

Not covered here: pressure escalation (:mod:`batchmem.heap.pressure`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from batchmem.heap.analyzer import HeapAnalyzer, Issue
from batchmem.heap.gc_watch import GcWatch, ThrottledCollector

__all__ = ["LeakGuard"]

logger = logging.getLogger("batchmem")


class LeakGuard:
    """Heap analysis and GC accounting of one run.

    ``recycle(reason) -> bool`` asks the executor to replace its worker processes (False when it
    cannot); None turns recycling off. ``analyze=False`` keeps only the GC accounting.
    """

    def __init__(
        self,
        monitor: Any,
        collector: ThrottledCollector,
        *,
        analyze: bool = True,
        trace_allocations: bool = False,
        recycle: Callable[[str], bool] | None = None,
        analyzer_options: Mapping[str, Any] | None = None,
        cycle_check_every: int = 10,
    ) -> None:
        self.collector, self.recycle, self.cycle_check_every = collector, recycle, cycle_check_every
        self.gc_watch = GcWatch().install()
        self.analyzer: HeapAnalyzer | None = None
        if analyze or trace_allocations:
            self.analyzer = HeapAnalyzer(
                monitor, trace_allocations=trace_allocations, gc_watch=self.gc_watch, **dict(analyzer_options or {})
            ).start()
        self.collected = 0  # objects found by the cycle checks
        self._batches = 0
        self._items_since_check = 0
        self._recycled_pids: set[int] = set()

    def after_batch(self, outcome: Any, rss_now: int) -> None:
        """Feed the analyzer with ``outcome``'s baseline (per worker pid) and run the periodic cycle check."""
        self._batches += 1
        pid = outcome.pid or os.getpid()
        own = pid == os.getpid()
        if self.analyzer is not None:
            self.analyzer.record_function_gc(getattr(outcome, "gc_pause_s", 0.0), outcome.duration_s, own=own)
        if self.analyzer is not None and pid not in self._recycled_pids:
            if own:
                base, metric = None, ""
            elif outcome.heap_bytes:
                base, metric = outcome.heap_bytes, "malloc in-use bytes"
            else:
                base, metric = outcome.start_rss_bytes, "resident bytes"
            for issue in self.analyzer.observe_batch(
                pid=pid, items=outcome.size, baseline_bytes=base, metric=metric, tree_rss_bytes=rss_now
            ):
                if issue.kind == "leak" and not own:
                    self._recycle(pid)
        if own:
            self._items_since_check += outcome.size
            if self.analyzer is not None and self._batches % self.cycle_check_every == 0:
                found = self.collector.collect()
                if found is not None:
                    self.analyzer.record_cycle_check(found, self._items_since_check)
                    self.collected += found
                    self._items_since_check = 0

    def _recycle(self, pid: int) -> None:
        if self.recycle is None or not self.recycle(f"leak flagged in worker {pid}"):
            return
        self._recycled_pids.add(pid)
        self.analyzer.forget(pid)

    def finish(self) -> list[Issue | dict[str, Any]]:
        """Remove the GC hooks, stop tracing; the analyzer's issues (dicts)."""
        self.gc_watch.remove()
        if self.analyzer is None:
            return []
        self.analyzer.stop()
        return list(self.analyzer.analyze_heap()["issues"])
