"""Recommendations in plain language: a run's figures and settings in, sentences out.

Pure: no I/O, no clock, no global state; :class:`~batchmem.optimizer.BatchOptimizer`
(live runs, ``batchmem stats``) and :mod:`batchmem.report` both call it.

Two rules hold for every recommendation:

- It names the option it would change and first checks the run's own setting
  of it: a run that is already ``batched`` is never told to set
  ``batched=True``, a run at ``max_batch_size`` is told the value it had.
  A setting that is not known (None: a stats file or history written before
  settings were recorded) turns off the advice that needs it.
- It quotes the figure it is based on with the definition and the formatting
  the report shows (:func:`batchmem.units.format_bytes`,
  :func:`batchmem.units.format_seconds`). The batch time is
  :attr:`RunFigures.batch_s_median`: the median wall time of the function on
  one batch, measured where the batch ran (``duration_s`` of the per-batch
  records), the quantity that ``target_batch_seconds`` bounds. It is not the
  run's wall time divided by its batches, which also counts reading the
  source and writing results (reading a CSV chunk can take longer than
  transforming it).

Not covered here: the heap analyzer's own advice (leaks, GC), which comes
with its issues (:mod:`batchmem.heap.analyzer`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batchmem.optimizer.summary import RunSummary
from batchmem.units import format_bytes, format_seconds

__all__ = [
    "TREND_RUNS",
    "TREND_THRESHOLD",
    "RunFigures",
    "RunSettings",
    "batch_seconds",
    "median_or_none",
    "memory_bound_advice",
    "run_advice",
    "trend_advice",
]

#: Runs looked at for trends.
TREND_RUNS = 5
#: Relative change over the trend window that earns a recommendation (0.25 = 25 %).
TREND_THRESHOLD = 0.25
#: Share of failed items above which the errors file is pointed at.
_FAILED_SHARE = 0.05
#: Batches a run needs before its batch sizes and times are judged.
_MIN_BATCHES = 3


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def median_or_none(values: Iterable[float]) -> float | None:
    """Median of ``values`` (None for none), the statistic every batch figure uses."""
    data = [float(v) for v in values]
    return statistics.median(data) if data else None


@dataclass(frozen=True)
class RunSettings:
    """The options of a run that a recommendation may suggest changing; None where not known.

    Sizes in items, seconds in seconds, ``memory_target_fraction`` a fraction of the limit.
    """

    batched: bool | None = None
    auto_optimize: bool | None = None
    batch_size: int | None = None
    min_batch_size: int | None = None
    max_batch_size: int | None = None
    target_batch_seconds: tuple[float, float] | None = None
    memory_target_fraction: float | None = None
    use_history: bool | None = None
    n_jobs: int | str | None = None

    @classmethod
    def of_config(cls, config: Any) -> RunSettings:
        """The settings of a :class:`batchmem.options.RunConfig` (read by attribute: its
        ``batching`` and ``execution`` groups)."""
        b, e = config.batching, config.execution
        return cls(
            batched=b.batched,
            auto_optimize=b.auto_optimize,
            batch_size=b.batch_size,
            min_batch_size=b.min_batch_size,
            max_batch_size=b.max_batch_size,
            target_batch_seconds=(float(b.target_batch_seconds[0]), float(b.target_batch_seconds[1])),
            memory_target_fraction=b.memory_target_fraction,
            use_history=b.use_history,
            n_jobs=e.n_jobs,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunSettings:
        """Settings from a stats file or a history record; unknown keys and bad values are ignored."""
        data = data if isinstance(data, Mapping) else {}
        flags = {k: data.get(k) for k in ("batched", "auto_optimize", "use_history")}
        sizes = {k: _count(data.get(k)) for k in ("batch_size", "min_batch_size", "max_batch_size")}
        band = data.get("target_batch_seconds")
        low_high = None
        if isinstance(band, (list, tuple)) and len(band) == 2 and all(_number(v) is not None for v in band):
            low_high = (float(band[0]), float(band[1]))
        n_jobs = data.get("n_jobs")
        return cls(
            **{k: v if isinstance(v, bool) else None for k, v in flags.items()},
            **sizes,
            target_batch_seconds=low_high,
            memory_target_fraction=_number(data.get("memory_target_fraction")),
            n_jobs=n_jobs if isinstance(n_jobs, (int, str)) and not isinstance(n_jobs, bool) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the known settings (None left out)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if "target_batch_seconds" in out:
            out["target_batch_seconds"] = list(out["target_batch_seconds"])
        return out

    def merged(self, fallback: RunSettings) -> RunSettings:
        """These settings, with ``fallback``'s where these are not known."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(fallback, **{k: v for k, v in known.items() if v is not None})


@dataclass(frozen=True)
class RunFigures:
    """What one run measured, in the report's definitions; None where not known.

    Attributes:
        when: how the text names the run ("this run", "the last run").
        items, failed, batches: counts of the run (items, items, batches).
        batch_size_median, batch_size_max: items per batch over the run's batches.
        batch_s_median: median wall time of the function on one batch, seconds (see the module doc).
        bytes_per_item: :func:`batchmem.stats.bytes_per_item` of the run, bytes.
        memory_limit_bytes, limit_source: the limit the run planned against and where it came from.
        memory_bound_batches: batches whose size the memory target decided.
        pressure_batches: batches after which memory pressure was warning or above.
        memory_errors: MemoryErrors of the run (``RunStats.memory_errors``).
        ceiling: batch size cap (items) that MemoryErrors of whole batches set; None if none.
        leaks: leaks the heap analyzer flagged.
    """

    when: str = "this run"
    items: int = 0
    failed: int = 0
    batches: int = 0
    batch_size_median: float | None = None
    batch_size_max: int | None = None
    batch_s_median: float | None = None
    bytes_per_item: float | None = None
    memory_limit_bytes: int | None = None
    limit_source: str | None = None
    memory_bound_batches: int | None = None
    pressure_batches: int | None = None
    memory_errors: int = 0
    ceiling: int | None = None
    leaks: int = 0

    @classmethod
    def from_summary(cls, summary: RunSummary | Mapping[str, Any], when: str = "the last run") -> RunFigures:
        """Figures of a run summary stored in the history (a :class:`RunSummary`, or a dict of its keys)."""
        run = RunSummary.of(summary)
        median = run.batch_size_median
        return cls(
            when=when,
            items=run.items or 0,
            failed=run.failed or 0,
            batches=run.batches or 0,
            batch_size_median=median if median is not None else _number(run.learned_batch_size),
            batch_size_max=run.batch_size_max,
            batch_s_median=batch_seconds(run),
            bytes_per_item=run.bytes_per_item if run.bytes_per_item is not None else run.ewma_bytes_per_item,
            memory_limit_bytes=run.memory_limit_bytes,
            limit_source=run.limit_source,
            memory_bound_batches=run.memory_bound_batches,
            pressure_batches=run.pressure_batches,
            memory_errors=run.memory_errors or 0,
            ceiling=_count(run.ceiling),
            leaks=run.leaks or 0,
        )


def batch_seconds(summary: RunSummary | Mapping[str, Any]) -> float | None:
    """The median batch time (s) of a stored run summary.

    ``batch_s_median`` when recorded; for older summaries of runs counted in
    items, learned batch size x seconds per item (the same quantity,
    estimated). None for weighted runs without it: their seconds per item
    are seconds per weight unit, not per item.
    """
    run = RunSummary.of(summary)
    if run.batch_s_median is not None:
        return run.batch_s_median
    if run.weight_unit != "items":
        return None
    size = run.learned_batch_size
    spi = run.ewma_seconds_per_item if run.ewma_seconds_per_item is not None else run.seconds_per_item
    return size * spi if size is not None and spi is not None else None


# --------------------------------------------------------------------------- one run


def run_advice(f: RunFigures, s: RunSettings) -> list[str]:
    """Recommendations for one run: memory, batch time, failures, leaks (in that order)."""
    if not f.batches:
        return []
    out = [
        memory_bound_advice(f, s),
        _pressure(f, s),
        _memory_errors(f, s),
        _batch_time(f, s),
        _failures(f),
        _leaks(f),
    ]
    return [text for text in out if text]


def _limit_text(f: RunFigures) -> str:
    if not f.memory_limit_bytes:
        return ""
    source = f" from {f.limit_source}" if f.limit_source else ""
    return f" (now {format_bytes(f.memory_limit_bytes)}{source})"


def memory_bound_advice(f: RunFigures, s: RunSettings) -> str | None:
    """One line when the memory target set the size of at least half the run's batches (of 3 or more) and
    they ran shorter than the time band's low edge, with the fix (raise ``memory_limit`` or the target
    fraction, or lower the memory per item); else None. Batches that were long enough anyway need no fix."""
    bound = f.memory_bound_batches
    if bound is None or f.batches < _MIN_BATCHES or bound * 2 < f.batches:
        return None
    low = s.target_batch_seconds[0] if s.target_batch_seconds else None
    if low is not None and f.batch_s_median is not None and f.batch_s_median >= low:
        return None  # memory set the size, and batches were long enough anyway
    share = f" ({s.memory_target_fraction:.0%} of the limit)" if s.memory_target_fraction else ""
    per_item = f" ({format_bytes(f.bytes_per_item)})" if f.bytes_per_item else ""
    fraction = (
        f", or memory_target_fraction (now {s.memory_target_fraction:.0%})"
        if s.memory_target_fraction is not None and s.memory_target_fraction < 0.8
        else ""
    )
    return (
        f"the memory target{share} set the size of {bound} of {f.batches} batches in {f.when}: raise memory_limit"
        f"{_limit_text(f)}{fraction}, or lower the memory per item{per_item}"
    )


def _pressure(f: RunFigures, s: RunSettings) -> str | None:
    if not f.pressure_batches:
        return None
    parallel = isinstance(s.n_jobs, int) and s.n_jobs != 1
    fewer = f", or fewer n_jobs (now {s.n_jobs})" if parallel else ""
    return (
        f"memory pressure was warning or above after {f.pressure_batches} of {f.batches} batches in {f.when}, "
        f"so batches were cut: raise memory_limit{_limit_text(f)}{fewer}"
    )


def _memory_errors(f: RunFigures, s: RunSettings) -> str | None:
    if not f.memory_errors:
        return None
    if f.ceiling is None:
        return (
            f"{f.memory_errors} MemoryError(s) in {f.when}, from items that did not fit on their own: "
            f"see the errors file; raise memory_limit{_limit_text(f)} if those items must succeed"
        )
    lower = ""
    if s.max_batch_size is not None and s.max_batch_size > f.ceiling:
        lower = f", or set max_batch_size to {f.ceiling} (now {s.max_batch_size}) to skip the failed first tries"
    return (
        f"{f.memory_errors} MemoryError(s) in {f.when}: batch size capped at {f.ceiling} items; "
        f"raise memory_limit{_limit_text(f)}{lower}"
    )


def _calm(f: RunFigures) -> bool:
    """No sign that memory held the batch size down."""
    bound = f.memory_bound_batches or 0
    return bound * 2 < f.batches and not f.pressure_batches and not f.memory_errors


def _batch_time(f: RunFigures, s: RunSettings) -> str | None:
    if s.target_batch_seconds is None or f.batch_s_median is None or f.batches < _MIN_BATCHES:
        return None
    low, high = s.target_batch_seconds
    median = f"median batch time {format_seconds(f.batch_s_median)}, target {low:g}-{high:g} s"
    if f.batch_s_median < low and _calm(f):
        fixes = _longer_batch_fixes(f, s)
        if fixes:
            return (
                f"batches are short in {f.when} ({median}): per-batch overhead is not amortised; "
                f"use {' or '.join(fixes)}"
            )
    if f.batch_s_median > high:
        fix = _shorter_batch_fix(f, s)
        if fix:
            return f"batches are long in {f.when} ({median}): use {fix}, so progress and checkpoints stay frequent"
    return None


def _shorter_batch_fix(f: RunFigures, s: RunSettings) -> str | None:
    """The option that would make batches shorter, checked against the run's setting."""
    if s.auto_optimize is False and s.batch_size is not None:
        return f"a smaller batch_size (now {s.batch_size}; auto_optimize is off)"
    at_min = s.min_batch_size is not None and f.batch_size_median is not None
    if at_min and f.batch_size_median <= s.min_batch_size:
        return f"a smaller min_batch_size (now {s.min_batch_size}), or split the items"
    return None


def _longer_batch_fixes(f: RunFigures, s: RunSettings) -> list[str]:
    """The options that would make batches longer, each checked against the run's setting."""
    fixes = []
    if s.auto_optimize is False and s.batch_size is not None:
        fixes.append(f"a larger batch_size (now {s.batch_size}; auto_optimize is off)")
    elif s.max_batch_size is not None and f.batch_size_max is not None and f.batch_size_max >= s.max_batch_size:
        fixes.append(f"a larger max_batch_size (now {s.max_batch_size})")
    if s.batched is False:
        fixes.append("batched=True (batched: true in a job file; fn called once per batch)")
    return fixes


def _failures(f: RunFigures) -> str | None:
    if not f.items or f.failed / f.items <= _FAILED_SHARE:
        return None
    return f"{f.failed:,} of {f.items:,} items failed ({f.failed / f.items:.0%}) in {f.when}: see the errors file"


def _leaks(f: RunFigures) -> str | None:
    if not f.leaks:
        return None
    return f"the heap analyzer reported {f.leaks} leak(s) in {f.when}: see the issues in the stats file"


# --------------------------------------------------------------------------- trends over runs


def trend_advice(runs: Sequence[RunSummary | Mapping[str, Any]]) -> list[str]:
    """Recommendations from the last :data:`TREND_RUNS` stored run summaries (oldest first):
    memory per item that grew, throughput that fell, each by :data:`TREND_THRESHOLD` or more."""
    recent = [RunSummary.of(r) for r in runs if isinstance(r, (RunSummary, Mapping))][-TREND_RUNS:]
    out = []
    grew = _trend(recent, "bytes_per_item", "ewma_bytes_per_item")
    if grew and grew[1] >= grew[0] * (1 + TREND_THRESHOLD):
        out.append(
            f"bytes per item grew {100 * (grew[1] / grew[0] - 1):.0f}% over the last {len(recent)} runs "
            f"({format_bytes(grew[0])} -> {format_bytes(grew[1])}): inputs grew, or memory leaks across items"
        )
    fell = _trend(recent, "items_per_s")
    if fell and fell[1] <= fell[0] * (1 - TREND_THRESHOLD):
        out.append(
            f"throughput fell {100 * (1 - fell[1] / fell[0]):.0f}% over the last {len(recent)} runs "
            f"({fell[0]:,.1f} -> {fell[1]:,.1f} items/s)"
        )
    return out


def _trend(runs: Sequence[RunSummary], key: str, alt: str | None = None) -> tuple[float, float] | None:
    """(first, last) value of ``key`` (else ``alt``) over ``runs``; None with fewer than 3 values."""
    values = [v for r in runs if (v := _number(r.get(key, r.get(alt) if alt else None)))]
    if len(values) < 3 or values[0] <= 0:
        return None
    return values[0], values[-1]
