"""Garbage-collector accounting and throttled collection.

* :class:`GcWatch` counts collections per generation and measures each pause
  through :data:`gc.callbacks` (CPython calls every callback with
  ``phase="start"`` before and ``phase="stop"`` after each collection; the
  ``info`` dict carries ``generation``, ``collected`` and ``uncollectable``,
  see the :mod:`gc` documentation). It is installed for one run and removed
  at its end; its state lives on the instance, never at module level.
* :class:`ThrottledCollector` calls :func:`gc.collect` only while the time
  spent collecting stays under a share of wall time, after Dask's
  ``ThrottledGC`` (``distributed/utils_perf.py`` in distributed < 2024,
  ``distributed/gc.py`` since): a collection is skipped when the previous one
  lasted more than ``max_time_fraction`` of the time elapsed since it.

Only the process that installs a :class:`GcWatch` is observed: collections in
loky worker processes are counted per batch by
:func:`batchmem.backends.worker.run_batch` (``BatchOutcome.gc_collections``).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

__all__ = ["GcWatch", "ThrottledCollector"]

logger = logging.getLogger("batchmem")


class GcWatch:
    """Counts garbage collections of this process and their pauses while installed.

    Attributes (all since :meth:`install`):
        collections: collections per generation, ``[gen0, gen1, gen2]``.
        pause_s: total wall seconds spent inside collections.
        max_pause_s: longest single collection, seconds.
        collected: objects found unreachable (cyclic garbage) and freed.
        uncollectable: objects found unreachable but not freeable (``gc.garbage``).

    Usage::

        with GcWatch() as w:
            work()
        w.collections, w.pause_s

    Cost: one Python call at the start and one at the end of every
    collection (about 1 us each), nothing between collections.
    """

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_s = 0.0
        self.max_pause_s = 0.0
        self.collected = 0
        self.uncollectable = 0
        self._started: float | None = None
        self._callback = self._on_gc  # one bound method, so remove() finds it

    @property
    def installed(self) -> bool:
        """True while the callback is in :data:`gc.callbacks`."""
        return any(cb == self._callback for cb in gc.callbacks)

    def install(self) -> GcWatch:
        """Append the callback to :data:`gc.callbacks` (idempotent)."""
        if not self.installed:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        """Remove the callback from :data:`gc.callbacks` (idempotent)."""
        while self.installed:
            gc.callbacks.remove(self._callback)

    def __enter__(self) -> GcWatch:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is not None:
            pause = time.perf_counter() - self._started
            self._started = None
            self.pause_s += pause
            if pause > self.max_pause_s:
                self.max_pause_s = pause
        gen = int(info.get("generation", 2))
        if 0 <= gen < len(self.collections):
            self.collections[gen] += 1
        self.collected += int(info.get("collected", 0))
        self.uncollectable += int(info.get("uncollectable", 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures: collections per generation, pause seconds, objects collected."""
        return {
            "collections_by_generation": list(self.collections),
            "collections": sum(self.collections),
            "pause_s": self.pause_s,
            "max_pause_s": self.max_pause_s,
            "collected": self.collected,
            "uncollectable": self.uncollectable,
        }


class ThrottledCollector:
    """``gc.collect()`` that never takes more than ``max_time_fraction`` of wall time.

    After Dask's ``ThrottledGC`` (distributed, ``utils_perf.py``/``gc.py``,
    default ``max_in_gc_frac=0.05``): :meth:`collect` runs a collection only
    if the previous one lasted less than ``max_time_fraction`` of the wall
    seconds elapsed since it started; otherwise it returns None at once.

    Attributes: ``runs`` (collections done), ``skipped``, ``time_s`` (wall
    seconds spent collecting), ``unreachable`` (objects the collections found).
    """

    def __init__(self, max_time_fraction: float = 0.05, warn_if_longer_s: float = 1.0) -> None:
        if not 0 < max_time_fraction <= 1:
            raise ValueError(f"max_time_fraction={max_time_fraction!r} must be in (0, 1], e.g. 0.05")
        self.max_time_fraction = float(max_time_fraction)
        self.warn_if_longer_s = float(warn_if_longer_s)
        self._last_start: float | None = None
        self._last_duration = 0.0
        self.runs = 0
        self.skipped = 0
        self.time_s = 0.0
        self.unreachable = 0

    def allowed(self) -> bool:
        """Whether a collection now would stay within the time share."""
        if self._last_start is None:
            return True
        elapsed = max(time.perf_counter() - self._last_start, 1e-6)
        return self._last_duration / elapsed < self.max_time_fraction

    def collect(self, generation: int = 2) -> int | None:
        """Collect ``generation`` if allowed; the number of unreachable objects found, or None if throttled."""
        if not self.allowed():
            self.skipped += 1
            return None
        start = time.perf_counter()
        found = gc.collect(generation)
        duration = time.perf_counter() - start
        self._last_start, self._last_duration = start, duration
        self.runs += 1
        self.time_s += duration
        self.unreachable += found
        if duration > self.warn_if_longer_s:
            logger.warning(
                "gc.collect() took %.3f s: the process holds very many Python objects; "
                "smaller batches or fewer long-lived objects would shorten it",
                duration,
            )
        return found
