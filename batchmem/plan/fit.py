"""The forecast's arithmetic: straight lines fitted to sample batches, and what they predict for a run.

Pure: numbers in, numbers out, no I/O, no clocks. :mod:`batchmem.plan.runner` measures the sample
batches and hands them here.

A batch of weight ``w`` (weight units: items, characters, bytes in the file, ...) is modelled as

* peak bytes above the process tree's resident baseline: ``bytes.intercept + bytes.slope * w``;
* seconds of the function where it runs (what the control law aims at its time band):
  ``seconds.intercept + seconds.slope * w``;
* seconds of the batch's round trip, the function plus encoding its results and, for worker processes,
  shipping the batch and its results: ``wall.intercept + wall.slope * w``; the run's time is made of
  these: the function's own seconds alone leave out the encoding, which a run pays for every result;
* seconds to cut it from the source in the parent (reading and parsing a file chunk):
  ``cut.intercept + cut.slope * w``.

Each line is a Theil-Sen fit (the median of the pairwise slopes; Sen, "Estimates of the regression
coefficient based on Kendall's tau", JASA 1968), as the leak verdicts of :mod:`batchmem.heap.trend`:
on a machine shared with other work one slow sample batch in four must not tilt the line, as it does
a least-squares fit. Slopes and intercepts are kept at or above zero: a batch never frees memory or
time by growing. The spread of a fit is its largest relative residual
(``|measured / fitted - 1|`` over the sample), the figure the ``confidence`` of a plan reports.

What a run does with the lines is :class:`batchmem.optimizer.control.BatchSizeController`'s law: a
batch's weight is the time aim (``target_batch_seconds[0]``) over the seconds per unit, unless the
memory target (``memory_target_fraction`` of the limit, less the baseline, shared by the batches in
flight) is smaller; an item heavier than the budget runs alone. The OOM watchdog kills a worker at
``terminate_fraction`` of the limit (Dask's ``distributed.worker.memory.terminate``, 0.95), so the
heaviest item alone must stay under that share to complete at all.

Not covered: page cache (output files being written count in a cgroup's charge until reclaimed),
results held between batches, and memory that grows from batch to batch (a leak).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchmem.heap.trend import theil_sen

__all__ = [
    "CostModel",
    "Line",
    "RunShape",
    "batch_seconds",
    "batch_weight",
    "fit_line",
    "forecast_limits",
    "predict",
]

#: Limits are rounded up to this many bytes (1 MiB): what a ``--mem``/``memory:`` line can ask for.
ROUND_BYTES = 1 << 20


@dataclass(frozen=True)
class Line:
    """``y = intercept + slope * x``, fitted to ``n`` points; ``r2`` (coefficient of determination, 1
    when the points are all equal) and ``spread`` (largest ``|y / fitted - 1|``)."""

    intercept: float
    slope: float
    r2: float = 1.0
    spread: float = 0.0
    n: int = 0

    def at(self, x: float) -> float:
        """The fitted value at weight ``x``."""
        return self.intercept + self.slope * x


def _scored(xs: np.ndarray, ys: np.ndarray, line: Line) -> Line:
    fitted = line.intercept + line.slope * xs
    total = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 if total <= 0 else max(0.0, 1.0 - float(((ys - fitted) ** 2).sum()) / total)
    # relative to the fitted value, but not to one near zero (a single light item): a tenth of the median
    scale = np.maximum(np.abs(fitted), max(0.1 * float(np.median(np.abs(ys))), 1e-12))
    spread = float(np.max(np.abs(ys - fitted) / scale))
    return Line(line.intercept, line.slope, r2, spread, int(xs.size))


def fit_line(x: Sequence[float], y: Sequence[float]) -> Line:
    """Theil-Sen line through ``(x, y)`` (:func:`batchmem.heap.trend.theil_sen`), slope and intercept
    clipped at 0 (a negative slope becomes the median of ``y``).

    Raises ValueError for no points or lengths that differ.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size == 0 or xs.shape != ys.shape:
        raise ValueError(f"fit_line: needs points of equal length, got {xs.size} x and {ys.size} y")
    trend = theil_sen(xs, ys)
    slope, intercept = max(0.0, trend.slope), trend.intercept
    if trend.slope <= 0:
        intercept = float(np.median(ys))
    elif intercept < 0:  # through the origin: the median of y / x
        intercept, slope = 0.0, float(np.median(ys[xs > 0] / xs[xs > 0]))
    return _scored(xs, ys, Line(max(0.0, intercept), slope))


@dataclass(frozen=True)
class CostModel:
    """What a batch costs: ``baseline_bytes`` (resident bytes of the process tree before a batch),
    ``bytes`` (peak growth per batch, bytes over weight units), ``seconds`` (seconds of the function
    where it runs), ``wall`` (seconds of the batch's round trip: ``seconds`` plus encoding and shipping
    its results; None: ``seconds``), ``cut`` (seconds to cut it from the source), ``startup_s``
    (executor start, s), ``overhead_s`` (commit cost per batch, s), ``write_s_per_byte`` (seconds to
    commit one byte of output, s/byte), ``output_per_unit`` (bytes of output written per weight unit)
    and ``input_bytes`` (bytes of the source file read): the page cache a run adds to its charge, as do
    ``cold_cache_bytes`` (libraries and other files its processes read from storage, on a cold node);
    ``timed``: the sample's ``(weight, wall seconds)`` points the round trip is read from within their
    range (see :func:`batch_seconds`);
    ``retained_fraction`` (0..1): the share of a batch's peak the tree still holds after it (heap the
    allocator keeps), which the control law counts in its baseline before the next batch."""

    baseline_bytes: float
    bytes: Line
    seconds: Line
    cut: Line
    startup_s: float = 0.0
    overhead_s: float = 0.003
    output_per_unit: float = 0.0
    input_bytes: float = 0.0
    retained_fraction: float = 0.0
    wall: Line | None = None
    write_s_per_byte: float = 0.0
    cold_cache_bytes: float = 0.0
    timed: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class RunShape:
    """The run being forecast: the source's weights and the job's batching settings.

    total_weight/mean_weight/max_weight: weight units; items: count (None: unknown); aim_s: time aim of
    a batch (s); memory_target_fraction/terminate_fraction: shares of the limit; max/min_batch_size:
    items. (The throughput hill-climb of weighted runs caps a batch only where smaller batches cost less
    per unit, which a straight line with a non-negative intercept never says.)
    """

    total_weight: float
    mean_weight: float
    max_weight: float
    median_weight: float
    items: int | None
    aim_s: float = 0.2
    memory_target_fraction: float = 0.6
    terminate_fraction: float = 0.95
    max_batch_size: int = 1_000_000
    min_batch_size: int = 1


def _round_up(n: float) -> int:
    return int(math.ceil(max(0.0, n) / ROUND_BYTES) * ROUND_BYTES)


def time_weight(model: CostModel, shape: RunShape) -> float:
    """Weight of a batch at the time aim (weight units), within one item and ``max_batch_size`` items."""
    s = model.seconds
    w = (shape.aim_s - s.intercept) / s.slope if s.slope > 0 else shape.total_weight
    return float(min(max(w, shape.mean_weight), shape.max_batch_size * shape.mean_weight, shape.total_weight))


def memory_weight(model: CostModel, shape: RunShape, limit: float, in_flight: int) -> float:
    """Largest batch weight whose peak keeps the tree under the memory target of ``limit`` bytes."""
    room = (shape.memory_target_fraction * limit - model.baseline_bytes) / max(1, in_flight)
    room = room / (1 + model.retained_fraction) - model.bytes.intercept
    if model.bytes.slope <= 0:
        return math.inf if room >= 0 else 0.0
    return max(0.0, room / model.bytes.slope)


def forecast_limits(model: CostModel, shape: RunShape, in_flight: int) -> tuple[int, int]:
    """``(recommended, minimum)`` memory limits, bytes.

    Minimum: the baseline, the heaviest item alone and the median item in each other batch in flight,
    over ``terminate_fraction``, and at least the baseline with one mean item over the memory target
    (below that a run stops before it starts: there would be no room for batches). Recommended: batches
    at the time aim under the memory target, with the heap the batch before left behind
    (``retained_fraction``), and never below the minimum.
    """
    b = model.bytes
    heaviest = model.baseline_bytes + b.at(shape.max_weight) + (in_flight - 1) * b.at(shape.median_weight)
    # and a run refuses to start where the tree with one item loaded is above the memory target
    loaded = (model.baseline_bytes + b.at(shape.mean_weight)) / shape.memory_target_fraction
    minimum = _round_up(max(heaviest / shape.terminate_fraction, loaded))
    at_aim = model.baseline_bytes + in_flight * (1 + model.retained_fraction) * b.at(time_weight(model, shape))
    return max(minimum, _round_up(at_aim / shape.memory_target_fraction)), minimum


def batch_seconds(model: CostModel, w: float) -> float:
    """Wall seconds of one batch of weight ``w`` where it runs (its round trip).

    Within the sampled weights: through the measured points, made non-decreasing (a heavier batch
    never takes less), since a function's cost need not be straight in the batch's weight (a batch whose
    arrays fit in the heap the one before left behind skips the page faults of fresh memory; measured
    in docs/plan.md, Accuracy).
    Beyond them: the fitted line's slope from the heaviest point; no points: the line.
    """
    line = model.wall or model.seconds
    if len(model.timed) < 2:
        return line.at(w)
    xs, ys = np.array(sorted(model.timed)).T
    ys = np.maximum.accumulate(ys)
    if w >= xs[-1]:
        return float(ys[-1] + line.slope * (w - xs[-1]))
    return float(np.interp(w, xs, ys))


def predict(model: CostModel, shape: RunShape, limit: float, n_jobs: int) -> tuple[float, float]:
    """``(seconds, peak_bytes)`` of the run under ``limit`` bytes with ``n_jobs`` batches in flight.

    Batch weight: :func:`batch_weight`. The run's seconds are the executor start, the cutting (in the
    parent), and the batches' round trips (:func:`batch_seconds`) plus their commits (a fixed overhead
    and the output's bytes) shared by ``n_jobs``. Peak: what a memory cgroup of ``limit`` bytes is
    charged at most: the baseline, ``n_jobs`` batches at that weight (or the heaviest item alone beside
    the others, whichever is more), plus the page cache of the input read, the output written and the
    files read from storage at start, which the kernel reclaims at the limit (so the cache counts only
    up to it). The heap earlier batches left behind is not added: a sample batch's peak is measured
    above the resident bytes before the whole sample, lighter batches first, so it holds what those
    left, and a batch reuses that heap before it grows (``retained_fraction`` sizes the batches, as the
    control law counts it in its baseline, but is no second copy of memory).
    """
    w = batch_weight(model, shape, limit, n_jobs)
    batches = max(1.0, shape.total_weight / w)
    written = model.output_per_unit * shape.total_weight * model.write_s_per_byte
    run_s = batches * (batch_seconds(model, w) + model.overhead_s) + written
    cut_s = batches * model.cut.intercept + model.cut.slope * shape.total_weight
    seconds = model.startup_s + cut_s + run_s / max(1, n_jobs)
    b = model.bytes
    in_flight = max(1, min(n_jobs, math.ceil(batches)))
    resident = model.baseline_bytes + max(in_flight * b.at(w), b.at(shape.max_weight) + (in_flight - 1) * b.at(w))
    cache = model.output_per_unit * shape.total_weight + model.input_bytes + model.cold_cache_bytes
    return float(seconds), float(max(resident, min(limit, resident + cache)))


def batch_weight(model: CostModel, shape: RunShape, limit: float, n_jobs: int) -> float:
    """Weight of a batch of the run (weight units): the time aim or the memory target, whichever is
    smaller, and at least ``min_batch_size`` items of mean weight."""
    w = min(time_weight(model, shape), memory_weight(model, shape, limit, n_jobs))
    return max(w, shape.min_batch_size * shape.mean_weight)
