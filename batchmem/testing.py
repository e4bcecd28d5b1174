"""Memory test utilities and the batchmem pytest plugin (registered through the ``pytest11`` entry point).

``MemoryTestUtils`` (take a snapshot, compare to it, allocate N MiB under
control, print a status), done with :mod:`tracemalloc` and the
kernel's counters, plus a pytest plugin:

* fixture ``memory_utils``: a :class:`MemoryTestUtils` whose allocations are
  released when the test ends;
* marker ``no_leak``: ``@pytest.mark.no_leak(iterations=50, max_growth="1MiB")``
  runs the test body ``warmup`` + ``iterations`` times under tracemalloc and
  fails when the traced bytes keep growing: the Theil-Sen trend (the same
  estimator as :class:`batchmem.HeapAnalyzer`) projected over the iterations
  exceeds ``max_growth`` with at least ``min_confidence`` of the pairwise
  slopes positive. The failure names the growth and the top source lines.

Sizes are bytes (``max_growth`` also takes a size string), times seconds.
"""

from __future__ import annotations

import gc
import inspect
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:  # the utilities work without pytest; the hooks need it
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

__all__ = ["MemorySnapshot", "SnapshotDiff", "Allocation", "MemoryTestUtils", "LeakCheck", "check_no_leak"]

_MB = 1 << 20  # allocate_mb counts MiB


def _fmt(n: float) -> str:
    from batchmem.units import format_bytes

    return format_bytes(n)


def _rss() -> int:
    from batchmem.heap.monitor import current_rss_bytes

    return current_rss_bytes()


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory of this process at one moment.

    rss_bytes: resident set size; traced_bytes: bytes traced by tracemalloc
    (None when not tracing); gc_objects: objects tracked by the GC;
    trace: the tracemalloc snapshot (when tracing), for per-line comparisons.
    """

    label: str
    timestamp: float  # time.perf_counter() seconds
    rss_bytes: int
    traced_bytes: int | None
    gc_objects: int
    trace: tracemalloc.Snapshot | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SnapshotDiff:
    """What changed since a snapshot (bytes, objects, seconds) and the lines that grew most."""

    label: str
    elapsed_s: float
    rss_delta_bytes: int
    traced_delta_bytes: int | None
    gc_objects_delta: int
    top_lines: list[Any] = field(default_factory=list)  # batchmem.heap.analyzer.LineGrowth

    def format(self) -> str:
        """A few printable lines."""
        traced = "n/a" if self.traced_delta_bytes is None else _fmt(self.traced_delta_bytes)
        out = [
            f"{self.label}: rss {_fmt(self.rss_delta_bytes)}, traced {traced}, "
            f"gc objects {self.gc_objects_delta:+d} in {self.elapsed_s:.3f} s"
        ]
        out += [f"  {line}" for line in self.top_lines]
        return "\n".join(out)


class Allocation:
    """A block of memory held on purpose (pages written, so it is resident) until :meth:`release`."""

    def __init__(self, nbytes: int, owner: MemoryTestUtils | None = None):
        self.nbytes = int(nbytes)
        buf = bytearray(self.nbytes)
        buf[::4096] = b"\x01" * len(range(0, self.nbytes, 4096))  # touch every page
        self._buf: bytearray | None = buf
        self._owner = owner

    @property
    def held(self) -> bool:
        return self._buf is not None

    def release(self) -> int:
        """Free the block; returns the bytes released (0 if already released)."""
        if self._buf is None:
            return 0
        self._buf = None
        if self._owner is not None:
            self._owner._forget(self)
        return self.nbytes

    def __enter__(self) -> Allocation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemoryTestUtils:
    """Snapshots, comparisons and controlled allocations for memory tests (snapshot, compare, allocate, status).

    ``trace=True`` starts tracemalloc (stopped again by :meth:`close` if this
    object started it) so snapshots carry per-line data.
    """

    def __init__(self, trace: bool = False):
        self._started_tracing = False
        if trace and not tracemalloc.is_tracing():
            tracemalloc.start(1)
            self._started_tracing = True
        self._held: list[Allocation] = []
        self.snapshots: list[MemorySnapshot] = []
        self.peak_rss_bytes = 0
        self.baseline = self.take_snapshot("baseline")

    def take_snapshot(self, label: str | None = None) -> MemorySnapshot:
        """Record RSS, traced bytes, GC object count (and a tracemalloc snapshot when tracing)."""
        tracing = tracemalloc.is_tracing()
        snap = MemorySnapshot(
            label=label or f"snapshot {len(self.snapshots) + 1}",
            timestamp=time.perf_counter(),
            rss_bytes=_rss(),
            traced_bytes=tracemalloc.get_traced_memory()[0] if tracing else None,
            gc_objects=len(gc.get_objects()),
            trace=tracemalloc.take_snapshot() if tracing else None,
        )
        self.peak_rss_bytes = max(self.peak_rss_bytes, snap.rss_bytes)
        self.snapshots.append(snap)
        return snap

    def compare_to_snapshot(self, snapshot: MemorySnapshot, label: str | None = None, top: int = 5) -> SnapshotDiff:
        """Differences from ``snapshot`` to now (a new snapshot is taken)."""
        from batchmem.heap.trend import top_growth_lines

        now = self.take_snapshot(label or f"since {snapshot.label}")
        lines = top_growth_lines(snapshot.trace, now.trace, top) if snapshot.trace and now.trace else []
        traced = None
        if snapshot.traced_bytes is not None and now.traced_bytes is not None:
            traced = now.traced_bytes - snapshot.traced_bytes
        return SnapshotDiff(
            now.label,
            now.timestamp - snapshot.timestamp,
            now.rss_bytes - snapshot.rss_bytes,
            traced,
            now.gc_objects - snapshot.gc_objects,
            lines,
        )

    def allocate_mb(self, mb: float) -> Allocation:
        """Hold ``mb`` MiB (resident: every page written) until ``release()`` or :meth:`release_all`."""
        if mb < 0:
            raise ValueError(f"allocate_mb: {mb!r} must be >= 0 MiB")
        block = Allocation(int(mb * _MB), self)
        self._held.append(block)
        self.peak_rss_bytes = max(self.peak_rss_bytes, _rss())
        return block

    def _forget(self, block: Allocation) -> None:
        self._held = [b for b in self._held if b is not block]

    @property
    def held_bytes(self) -> int:
        """Bytes currently held by :meth:`allocate_mb` blocks."""
        return sum(b.nbytes for b in self._held)

    def release_all(self) -> int:
        """Release every held block; returns the bytes released."""
        freed = 0
        for block in list(self._held):
            freed += block.release()
        return freed

    def close(self) -> None:
        """Release everything and stop tracemalloc if this object started it."""
        self.release_all()
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False

    def summary(self) -> dict[str, Any]:
        """Baseline, current and peak RSS (bytes), growth since the baseline, held bytes, snapshots taken."""
        rss = _rss()
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        return {
            "baseline_rss_bytes": self.baseline.rss_bytes,
            "rss_bytes": rss,
            "peak_rss_bytes": self.peak_rss_bytes,
            "growth_bytes": rss - self.baseline.rss_bytes,
            "held_bytes": self.held_bytes,
            "allocations": len(self._held),
            "snapshots": len(self.snapshots),
            "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        }

    def format_status(self, label: str = "status") -> str:
        """One printable line: label, RSS, traced bytes and the live allocations."""
        s = self.summary()
        return (
            f"[{label}] rss {_fmt(s['rss_bytes'])} (baseline {_fmt(s['baseline_rss_bytes'])}, "
            f"growth {_fmt(s['growth_bytes'])}, peak {_fmt(s['peak_rss_bytes'])}), "
            f"held {_fmt(s['held_bytes'])} in {s['allocations']} blocks"
        )


# --- leak check ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakCheck:
    """Outcome of :func:`check_no_leak`: traced bytes after each iteration and the verdict."""

    iterations: int
    samples: list[int]  # traced bytes after each measured iteration
    slope_bytes: float  # Theil-Sen growth per iteration
    confidence: float  # share of positive pairwise slopes
    growth_bytes: float  # slope * (iterations - 1): the trend's growth over the run
    max_growth_bytes: int
    leaking: bool
    top_lines: list[Any]

    @property
    def message(self) -> str:
        head = (
            f"memory kept growing: +{_fmt(self.growth_bytes)} over {self.iterations} iterations "
            f"({_fmt(self.slope_bytes)} per iteration, Theil-Sen trend, {self.confidence:.0%} of pairwise slopes "
            f"positive; allowed {_fmt(self.max_growth_bytes)})"
        )
        if not self.top_lines:
            return head
        return head + "\ntop lines by growth:\n" + "\n".join(f"  {line}" for line in self.top_lines)


def check_no_leak(
    fn: Callable[[], Any],
    *,
    iterations: int = 50,
    max_growth: int | str = "1MiB",
    warmup: int = 3,
    min_confidence: float = 0.7,
    top: int = 5,
) -> LeakCheck:
    """Call ``fn()`` ``warmup`` + ``iterations`` times under tracemalloc and judge the trend of traced bytes.

    Objects alive before the measured iterations are frozen (:func:`gc.freeze`)
    so the full collection after each iteration (which keeps cyclic garbage
    from looking like growth) only scans what the test created.
    """
    from batchmem.heap.monitor import parse_size
    from batchmem.heap.trend import theil_sen, top_growth_lines

    limit = parse_size(max_growth)
    if iterations < 3:
        raise ValueError(f"no_leak: iterations={iterations} must be >= 3")
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(1)
    gc.collect()
    gc.freeze()
    try:
        for _ in range(warmup):
            fn()
        gc.collect()
        first = tracemalloc.take_snapshot()
        samples: list[int] = []
        for _ in range(iterations):
            fn()
            gc.collect()
            samples.append(tracemalloc.get_traced_memory()[0])
        last = tracemalloc.take_snapshot()
        fit = theil_sen(range(iterations), samples)
        growth = fit.slope * (iterations - 1)
        leaking = growth > limit and fit.confidence >= min_confidence
        lines = top_growth_lines(first, last, top) if leaking else []
    finally:
        gc.unfreeze()
        if started:
            tracemalloc.stop()
    return LeakCheck(iterations, samples, fit.slope, fit.confidence, growth, limit, leaking, lines)


# --- pytest plugin -----------------------------------------------------------------------

if pytest is not None:

    def pytest_configure(config: Any) -> None:
        config.addinivalue_line(
            "markers",
            "no_leak(iterations=50, max_growth='1MiB', warmup=3, min_confidence=0.7): run the test body "
            "repeatedly under tracemalloc and fail when traced memory keeps growing (batchmem)",
        )

    @pytest.fixture
    def memory_utils() -> Any:
        """A :class:`MemoryTestUtils`; its allocations are released when the test ends."""
        utils = MemoryTestUtils()
        yield utils
        utils.close()

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(pyfuncitem: Any) -> Any:
        marker = pyfuncitem.get_closest_marker("no_leak")
        if marker is None:
            return None
        func = pyfuncitem.obj
        if inspect.iscoroutinefunction(func):
            return None  # async tests run through their own plugin, unmeasured
        options = dict(marker.kwargs)
        if marker.args:
            options.setdefault("iterations", marker.args[0])
        kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        result = check_no_leak(lambda: func(**kwargs), **options)
        if result.leaking:
            pytest.fail(result.message, pytrace=False)
        return True
