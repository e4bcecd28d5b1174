"""The batch-size control law: measurements in, next batch size out.

Pure: no I/O, no clock reads, no psutil. Everything the law needs arrives
as arguments (a :class:`BatchMeasurement` per finished batch, the current
resident bytes of the process tree, the pressure level, how many batches
run at once), so it can be unit-tested with synthetic numbers.

Estimates
---------
Two per-item costs are estimated from each batch and smoothed with an
exponentially weighted moving average (EWMA, weight ``ewma_alpha`` on the
newest sample):

* ``bytes_per_item`` = ``peak_bytes / size`` (bytes per item), the peak
  resident bytes above the pre-batch level divided by the batch size;
* ``seconds_per_item`` = ``duration_s / size`` (seconds per item).

Before a sample enters the EWMA it is clipped to
``[estimate / outlier_ratio, estimate * outlier_ratio]``, so one outlier
batch moves the estimate by at most ``alpha * (outlier_ratio - 1)``
(+60 % with the defaults) and cannot halve or double the batch size. Two
consecutive samples outside that window *on the same side* are a level
shift, not an outlier: the estimate is reset to the newest sample.

Set-points
----------
* Memory: the predicted peak of the next batch,
  ``baseline_bytes + size * bytes_per_item * in_flight``, must stay under
  ``memory_target_fraction * memory_limit_bytes``. Solving for ``size``
  gives ``memory_size = (fraction * limit - baseline) / (bytes_per_item *
  in_flight)``. The default fraction 0.6 is Dask's worker memory "target"
  (``distributed.worker.memory.target: 0.60`` in distributed's
  ``distributed.yaml``; https://distributed.dask.org/en/stable/worker-memory.html),
  the level at which a Dask worker starts to relieve memory.
* Time: batch wall time inside ``target_batch_seconds`` (default
  ``(0.2, 2.0)`` s), joblib's auto-batching band
  (``AutoBatchingMixin.MIN_IDEAL_BATCH_DURATION = 0.2`` and
  ``MAX_IDEAL_BATCH_DURATION = 2`` in ``joblib/_parallel_backends.py``; older
  joblib kept them in ``joblib/parallel.py``): long enough to amortise the
  per-batch overhead, short enough that progress, checkpoints and load
  balancing stay frequent. ``time_size = low / seconds_per_item`` aims at
  the band's low edge (0.2 s by default): the per-batch
  overhead of batchmem (a memory sample, an fsync of the output and of the
  checkpoint: ~3 ms, benchmarks/bench_core.py) is already ~1.5 % there, and a
  longer batch only holds more results in memory (a batch of 1 KB results
  at 0.63 s held ~700 MB in the streaming benchmark). While the
  predicted duration of the current size is inside the band the time term
  never asks for a *smaller* batch (``time_size = max(size, time_size)``):
  hysteresis, so noise does not make the size chatter.

The law (applied after every batch, in this order)
--------------------------------------------------
::

    candidate = min(memory_size, time_size, size * growth)  # MI toward the set-points
    if pressure >= WARNING:
        candidate = min(candidate, size * shrink_factor ** pressure) # MD on pressure
    next = clamp(candidate, min_batch_size, min(max_batch_size, ceiling))

That is multiplicative increase, multiplicative decrease (MIMD) around
model-based set-points, not AIMD: the size grows by ``growth`` per batch
while both targets have room (``growth_factor``, 2, or up to
``max_growth_factor``, 8, while a batch takes a small fraction of the time
aim: a cold start reaches its steady size in a few batches), jumps straight
down to the memory or time set-point when one binds, and is multiplied by
``shrink_factor`` once per pressure level (warning x0.5, critical x0.25,
emergency x0.125 with the default 0.5).

Out-of-memory ceiling: a batch of two or more items that ran out of memory
(``MemoryError``, or its worker killed by SIGKILL) while its two halves then
fit sets a ceiling of half its size. The ceiling rises again by an eighth of
its starting value per successful batch (additive increase, as TCP congestion
avoidance reopens its window after a loss: RFC 5681, section 3.1) and is
dropped at twice the size that failed. A single item that fails on its own
is that item's failure and sets no ceiling.

Weights
-------
With ``weighted=True`` the same law runs in weight units instead of items
(:mod:`batchmem.weights`): the estimates are bytes and seconds per weight
unit, the size is a weight budget, and the item bounds
(``min_batch_size``/``max_batch_size``) are kept by the batcher, which cuts
a batch at the item that would cross the budget.

Weighted runs add a throughput hill-climb (perturb and observe, see
``BatchSizeController._climb``): items that differ in size can cost less per
unit in small batches (batches that fit in the heap pages the allocator keeps
skip the page faults of larger ones), which the time band does not see. From
the first batch the budget halves while that is not clearly dearer per unit
(``(duration_s + batch_overhead_s) / weight``); a budget cheaper by more than
``probe_margin`` caps the law's size, and a batch at twice the cap every
``probe_every`` batches checks whether the cap still pays. Memory and
pressure can still ask for less. Unweighted runs are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchmem.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from batchmem.heap.monitor import PressureLevel

__all__ = [
    "BatchMeasurement",
    "BatchSizeController",
    "ControlConfig",
    "Decision",
]

#: ``PressureLevel.WARNING`` as an int: the control law compares ints so it
#: does not import the heap package (PressureLevel is an IntEnum).
_WARNING = 1

#: Batches the hill-climb waits for a probe (or the confirmation) to come back before it gives up on
#: it: with batches in flight, those cut before it report first, and memory or the tail may cut it smaller.
_PROBE_WAIT = 4


@dataclass(frozen=True)
class BatchMeasurement:
    """What one finished batch cost.

    Attributes:
        size: items in the batch.
        duration_s: wall time of the batch, seconds.
        peak_bytes: peak resident bytes above the pre-batch level, in the
            process that ran the batch, bytes.
        failed: items of the batch that raised, items.
        weight: the batch's weight in the run's weight unit (see
            :mod:`batchmem.weights`); None counts items (``weight == size``).
    """

    size: int
    duration_s: float
    peak_bytes: int
    failed: int = 0
    weight: float | None = None

    @property
    def units(self) -> float:
        """What the batch is budgeted in: its weight, or its items when unweighted."""
        return float(self.size) if self.weight is None else float(self.weight)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ControlConfig:
    """Tuning of the control law; validated on construction.

    Attributes:
        initial_batch_size: first batch size of a cold run, items.
        min_batch_size: smallest batch ever proposed, items (>= 1).
        max_batch_size: largest batch ever proposed, items.
        memory_target_fraction: share of the memory limit the predicted
            batch peak may reach, in (0, 1]. Default 0.6 = Dask's
            ``distributed.worker.memory.target``.
        target_batch_seconds: (low, high) wall-time band of one batch,
            seconds. Default (0.2, 2.0) = joblib's
            ``MIN_IDEAL_BATCH_DURATION`` / ``MAX_IDEAL_BATCH_DURATION``.
        ewma_alpha: weight of the newest sample in the EWMA estimates, (0, 1].
        growth_factor: multiplicative increase per batch while there is room, > 1.
        max_growth_factor: largest increase per batch while batches are far shorter than the
            time aim (cold start): the size grows by ``aim_s / duration`` capped here, >= growth_factor.
        shrink_factor: multiplicative decrease per pressure level, in (0, 1).
        outlier_ratio: a per-item sample further than this factor from the
            estimate is clipped (one outlier) or, twice in a row on the same
            side, taken as a level shift; > 1.
        batch_overhead_s: seconds one batch costs outside its own wall time (a
            memory sample, the fsyncs of output and checkpoint: ~3 ms,
            benchmarks/bench_core.py), added to each batch in the throughput
            hill-climb (weighted runs), >= 0.
        probe_margin: the hill-climb moves to a probed size only when its
            seconds per unit are lower by more than this fraction, and gives
            up a probe once they are higher by more, >= 0. Default 0.25: a
            serial batch's seconds per unit fall 10-23 % below their median
            (10th percentile, benchmarks/bench_weighted.py, the lines under
            its table), so a 25 % gain is beyond that noise. With two workers
            on two shared, loaded cores the spread reached 25-64 %, which is
            why octaves are compared by the least of their last three
            batches, not by one. Noise upward (90th percentile 1.8-8x) can
            only end the descent early or keep a cap until the next probe.
        probe_every: batches at the hill-climb's cap between two probes of
            twice the cap, >= 1. Default 16: a probe into a dearer octave
            costs about ``2 * (ratio - 1) / (probe_every + 2)`` of the
            throughput, 3-5 % with the 1.3-1.5x of 32- over 16-item batches
            in benchmarks/bench_weighted.py (log-normal, serial).
    """

    initial_batch_size: int = 100
    min_batch_size: int = 1
    max_batch_size: int = 1_000_000
    memory_target_fraction: float = 0.6
    target_batch_seconds: tuple[float, float] = (0.2, 2.0)
    ewma_alpha: float = 0.3
    growth_factor: float = 2.0
    max_growth_factor: float = 8.0
    shrink_factor: float = 0.5
    outlier_ratio: float = field(default=3.0)
    batch_overhead_s: float = 0.003
    probe_margin: float = 0.25
    probe_every: int = 16

    def __post_init__(self) -> None:
        for name in ("initial_batch_size", "min_batch_size", "max_batch_size"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ConfigError(f"{name}={value!r} is not an integer: give a whole number of items")
        if self.min_batch_size < 1:
            raise ConfigError(f"min_batch_size={self.min_batch_size} is below 1: set min_batch_size >= 1")
        if self.max_batch_size < self.min_batch_size:
            raise ConfigError(
                f"max_batch_size={self.max_batch_size} is below min_batch_size={self.min_batch_size}: "
                "set max_batch_size >= min_batch_size"
            )
        if not self.min_batch_size <= self.initial_batch_size <= self.max_batch_size:
            raise ConfigError(
                f"initial_batch_size={self.initial_batch_size} is outside "
                f"[min_batch_size={self.min_batch_size}, max_batch_size={self.max_batch_size}]: "
                "set it between the two"
            )
        f = self.memory_target_fraction
        if not _is_number(f) or not 0 < f <= 1:
            raise ConfigError(
                f"memory_target_fraction={f!r} is not in (0, 1]: give a fraction of the memory limit, e.g. 0.6"
            )
        band = self.target_batch_seconds
        if not isinstance(band, (tuple, list)) or len(band) != 2 or not all(_is_number(x) for x in band):
            raise ConfigError(
                f"target_batch_seconds={band!r} is not a (low, high) pair of seconds: give e.g. (0.2, 2.0)"
            )
        low, high = float(band[0]), float(band[1])
        if not 0 < low < high:
            raise ConfigError(f"target_batch_seconds={band!r} needs 0 < low < high: give e.g. (0.2, 2.0)")
        self.target_batch_seconds = (low, high)
        a = self.ewma_alpha
        if not _is_number(a) or not 0 < a <= 1:
            raise ConfigError(f"ewma_alpha={a!r} is not in (0, 1]: give e.g. 0.3")
        g = self.growth_factor
        if not _is_number(g) or g <= 1:
            raise ConfigError(f"growth_factor={g!r} is not > 1: give e.g. 2.0")
        mg = self.max_growth_factor
        if not _is_number(mg) or mg < g:
            raise ConfigError(f"max_growth_factor={mg!r} is below growth_factor={g}: give e.g. 8.0")
        s = self.shrink_factor
        if not _is_number(s) or not 0 < s < 1:
            raise ConfigError(f"shrink_factor={s!r} is not in (0, 1): give e.g. 0.5")
        r = self.outlier_ratio
        if not _is_number(r) or r <= 1:
            raise ConfigError(f"outlier_ratio={r!r} is not > 1: give e.g. 3.0")
        o = self.batch_overhead_s
        if not _is_number(o) or o < 0:
            raise ConfigError(f"batch_overhead_s={o!r} is not >= 0 seconds: give e.g. 0.003")
        pm = self.probe_margin
        if not _is_number(pm) or pm < 0:
            raise ConfigError(f"probe_margin={pm!r} is not >= 0: give e.g. 0.25")
        pe = self.probe_every
        if not _is_int(pe) or pe < 1:
            raise ConfigError(f"probe_every={pe!r} is not a whole number >= 1: give e.g. 16")

    @property
    def aim_s(self) -> float:
        """Batch wall time the time term aims at: the band's low edge, seconds (0.2 s by default)."""
        return self.target_batch_seconds[0]


@dataclass(frozen=True)
class Decision:
    """Why the last size was chosen (for statistics and recommendations).

    ``reason`` is one of ``"initial"``, ``"growth"``, ``"memory"``,
    ``"time"``, ``"hold"``, ``"pressure"``, ``"ceiling"``, ``"min"``,
    ``"max"``, ``"memory_error"``, and for weighted runs ``"probe"`` (the
    throughput hill-climb tries another size) and ``"throughput"`` (it holds
    the size whose seconds per unit were lowest). Sizes are items.
    """

    size: int
    reason: str
    memory_size: int | None = None
    time_size: int | None = None


class _Ewma:
    """EWMA of a non-negative per-item cost with outlier clipping and level-shift reset."""

    __slots__ = ("alpha", "ratio", "value", "_pending")

    def __init__(self, alpha: float, ratio: float, value: float | None = None):
        self.alpha = alpha
        self.ratio = ratio
        self.value = value
        self._pending = 0  # +1 / -1: the previous sample was clipped high / low

    def update(self, sample: float) -> float:
        sample = max(0.0, float(sample))
        est = self.value
        if est is None or est <= 0.0:
            # Nothing to compare against (cold start, or all-zero so far): take the sample.
            self.value = sample if est is None else est + self.alpha * (sample - est)
            self._pending = 0
            return self.value
        hi, lo = est * self.ratio, est / self.ratio
        side = 1 if sample > hi else (-1 if sample < lo else 0)
        if side and side == self._pending:
            self.value = sample  # level shift confirmed by two batches in a row
            self._pending = 0
            return self.value
        self._pending = side
        clipped = min(max(sample, lo), hi)
        self.value = est + self.alpha * (clipped - est)
        return self.value


class _Octave:
    """Seconds per unit of the batches in one octave of weight: an EWMA and the last three costs."""

    __slots__ = ("ewma", "recent", "count")

    def __init__(self, alpha: float, ratio: float):
        self.ewma = _Ewma(alpha, ratio)
        self.recent: list[float] = []
        self.count = 0

    def add(self, cost: float) -> None:
        self.ewma.update(cost)
        self.recent = [*self.recent[-2:], cost]
        self.count += 1

    @property
    def score(self) -> float:
        """The least of the last three costs: the least disturbed by other work on the machine."""
        return min(self.recent)


class BatchSizeController:
    """Chooses the next batch size (items) from per-batch measurements.

    See the module docstring for the control law. ``memory_limit_bytes`` is
    the limit of the process tree, bytes; ``None`` disables the memory term
    (only time, pressure and the MemoryError ceiling then bound the size).
    ``warm_start`` seeds a run with what an earlier run of the same
    operation learned: ``{"batch_size": items, "bytes_per_item": bytes,
    "seconds_per_item": seconds}`` (any key may be missing).
    """

    def __init__(
        self,
        config: ControlConfig | None = None,
        memory_limit_bytes: int | None = None,
        warm_start: Mapping[str, Any] | None = None,
        weighted: bool = False,
    ):
        self.config = config if config is not None else ControlConfig()
        self.weighted = weighted
        if memory_limit_bytes is not None and (not _is_int(memory_limit_bytes) or memory_limit_bytes <= 0):
            raise ConfigError(
                f"memory_limit_bytes={memory_limit_bytes!r} is not a positive number of bytes: "
                "give e.g. 2_000_000_000, or None to size by time only"
            )
        self.memory_limit_bytes = memory_limit_bytes
        cfg = self.config
        self._bytes = _Ewma(cfg.ewma_alpha, cfg.outlier_ratio)
        self._seconds = _Ewma(cfg.ewma_alpha, cfg.outlier_ratio)
        self._ceiling: float | None = None
        self._ceiling_step = self._ceiling_drop = 0.0
        # Throughput hill-climb (weighted runs), see _climb: "down" explores smaller budgets from
        # the first batch's, "confirm" measures the largest once more, "capped" holds the cheapest
        # one found, "off" leaves the law alone.
        self._climb_state = "down" if weighted else "off"
        self._octaves: dict[int, _Octave] = {}  # seconds per unit of the batches weighing (2^k, 2^(k+1)]
        self._cap_octave: int | None = None  # the octave the cap fills batches up to
        self._since_probe = 0
        self._probe = 0  # +1 / -1: a batch one octave above / below the cap is on its way
        self._probe_wait = 0  # batches observed since that probe (or the confirmation) was asked for
        self._confirm = (0, 0)  # "confirm": the largest octave measured and its batch count then
        self._warm_up: int | None = None  # first batches not scored: one per process running them
        size: float | None = cfg.initial_batch_size
        if weighted:  # the first batch is cut by items; its measured weight seeds the budget
            size = None
        if warm_start:
            bs = warm_start.get("batch_size")
            if _is_number(bs) and bs >= 1:
                size = int(bs)
            bpi = warm_start.get("bytes_per_item")
            if _is_number(bpi) and bpi >= 0:
                self._bytes.value = float(bpi)
            spi = warm_start.get("seconds_per_item")
            if _is_number(spi) and spi >= 0:
                self._seconds.value = float(spi)
        self._size = None if size is None else self._clamp(size)
        self.last_decision = Decision(self._size or cfg.initial_batch_size, "initial")

    # -- read-only state ----------------------------------------------------

    @property
    def bytes_per_item(self) -> float | None:
        """Smoothed peak bytes per unit (per item, or per weight unit when weighted), or None before the first batch."""
        return self._bytes.value

    @property
    def seconds_per_item(self) -> float | None:
        """Smoothed wall time per unit (seconds per item, or per weight unit), or None before the first batch."""
        return self._seconds.value

    @property
    def ceiling(self) -> float | None:
        """Largest size allowed after a MemoryError (items, or weight units when weighted), or None."""
        return self._ceiling

    def next_size(self) -> int:
        """The size the next batch should have: items (unweighted) or the weight budget rounded up.

        Weighted, before the first batch: ``initial_batch_size`` (items; the batcher cuts it by count).
        """
        if self._size is None:
            return self.config.initial_batch_size
        return int(math.ceil(self._size))

    def next_budget(self) -> float | None:
        """Weight budget of the next batch (weight units), or None until the first weighted batch ran."""
        return self._size if self.weighted else float(self._size)

    def memory_target_size(self, baseline_bytes: int, in_flight: int = 1) -> float | None:
        """Largest size whose predicted peak stays under the memory target.

        ``baseline_bytes + size * bytes_per_unit * in_flight <=
        memory_target_fraction * memory_limit_bytes``; unweighted, clamped to
        ``[min_batch_size, max_batch_size]`` items (weighted, the batcher keeps
        the item bounds). None when there is no limit or no per-unit estimate
        yet (or it is zero).
        """
        bpi = self._bytes.value
        if self.memory_limit_bytes is None or bpi is None or bpi <= 0:
            return None
        cfg = self.config
        budget = cfg.memory_target_fraction * self.memory_limit_bytes - max(0, baseline_bytes)
        per_unit = bpi * max(1, in_flight)
        if self.weighted:
            return max(0.0, budget / per_unit)
        if budget <= per_unit * cfg.min_batch_size:
            return cfg.min_batch_size
        return int(min(cfg.max_batch_size, budget // per_unit))

    def time_target_size(self) -> float | None:
        """Size the time band asks for, or None without a usable estimate.

        Outside the band: the size whose predicted duration is the band's
        aim (``aim_s``). Inside: the same, but never below the current size.
        """
        spi = self._seconds.value
        if spi is None or spi <= 0 or self._size is None:
            return None
        cfg = self.config
        low, high = cfg.target_batch_seconds
        aim = cfg.aim_s / spi
        aim_size = aim if self.weighted else int(min(float(cfg.max_batch_size), max(1.0, aim)))
        predicted_s = self._size * spi
        if low <= predicted_s <= high:
            return max(self._size, aim_size)
        return aim_size

    # -- inputs -------------------------------------------------------------

    def observe(
        self,
        m: BatchMeasurement,
        *,
        baseline_bytes: int,
        pressure: PressureLevel | int = 0,
        in_flight: int = 1,
    ) -> int:
        """Feed one finished batch; return the next size (see :meth:`next_size`).

        Args:
            m: the batch's measurement.
            baseline_bytes: resident bytes of the process tree now, bytes.
            pressure: ``PressureLevel`` (an IntEnum; NORMAL=0 ... EMERGENCY=3).
            in_flight: batches that run at the same time (n_jobs), batches.
        """
        units = m.units if self.weighted else float(m.size)
        if units > 0 and m.failed < m.size:
            # A batch where every item failed says nothing about the cost of success.
            self._bytes.update(max(0, m.peak_bytes) / units)
            self._seconds.update(max(0.0, m.duration_s) / units)
        if self._ceiling is not None:
            self._raise_ceiling()
        cfg = self.config
        # A weighted budget of 0 (memory left no room: the batcher then cuts one item) grows from what ran.
        size = self._size if self._size else units
        if self.weighted and size <= 0:  # only weightless items so far: no budget yet, cut the next batch by count
            self._size = None
            return self.next_size()
        factor = self._growth(m, units, size)
        grown = size * factor if self.weighted else max(size + 1, int(size * factor))
        candidate, reason = grown, "growth"
        mem = self.memory_target_size(baseline_bytes, in_flight)
        tim = self.time_target_size()
        if tim is not None and tim < candidate:
            candidate, reason = tim, ("hold" if tim == size else "time")
        climb = self._climb(m, units, candidate, in_flight) if self.weighted else None
        if climb is not None:
            candidate, reason = climb
        # Unweighted, memory_target_size is clamped at max_batch_size: there the max binds, not memory.
        if mem is not None and mem <= candidate and (self.weighted or mem < cfg.max_batch_size):
            candidate, reason = mem, "memory"
        level = int(pressure)
        if level >= _WARNING:
            shrunk = size * cfg.shrink_factor**level
            shrunk = shrunk if self.weighted else min(size - 1, int(shrunk))
            if shrunk < candidate:
                candidate, reason = shrunk, "pressure"
        self._size, reason = self._clamp_reason(candidate, reason)
        self.last_decision = Decision(self.next_size(), reason, _round(mem), _round(tim))
        return self.next_size()

    @property
    def throughput_cap(self) -> float | None:
        """Budget the throughput hill-climb holds batches at (weight units), or None."""
        return None if self._cap_octave is None else float(2 ** (self._cap_octave + 1))

    def _climb(self, m: BatchMeasurement, units: float, law: float, in_flight: int) -> tuple[float, str] | None:
        """Throughput hill-climb on seconds per weight unit (weighted runs): a size, or None.

        Perturb and observe, the hill-climbing search for a maximum power point (Esram and
        Chapman, "Comparison of Photovoltaic Array Maximum Power Point Tracking Techniques",
        IEEE Trans. Energy Conversion 22(2), 2007): change the size, keep the change while the
        measured cost per unit improves, turn back once it worsens. The cost of a batch is
        ``(duration_s + batch_overhead_s) / units``, so batches too small to amortise the
        per-batch overhead read as dearer. Why: seconds per unit need not be flat in the size.
        Batches that fit in the heap pages the allocator keeps reuse them; larger ones fault
        their pages in again (benchmarks/bench_weighted.py, log-normal mix: 16-item batches
        0.5-0.8 s, 64 to 512 items 1.3-2.2 s, most of it in the kernel), a cost the time band
        (aimed at amortising overhead) does not see.

        Costs are kept per octave of batch weight (``(2^k, 2^(k+1)]`` units), so batches may
        report in any order: with batches in flight, those cut before a decision come back after
        it. With batches in flight (worker processes), the first ``in_flight`` batches are not
        scored: each pays a fresh worker's cold start (new heap pages, first calls), which made
        later, smaller batches look cheaper (tests/test_weights.py, the shift under n_jobs=2); the
        size is held for them. An octave is scored by the
        least of its last three batches' costs, the least disturbed figure (noise on a shared
        machine only adds time; benchmarks/bench_weighted.py takes the best of its repeats for
        the same reason). From the first batch the budget
        halves (into the next octave down) while the smallest octave measured is not dearer
        than the cheapest by more than ``probe_margin``; one batch dearer than that is run once
        more before the descent turns back. Then, if the cheapest octave beats the largest
        measured by more than the margin, one more batch in the largest octave checks that: its
        costs are the run's first, measured while a fresh worker warms up and the parent starts
        (the embeddings example, one loky worker: its first three batches of 8 texts cost
        71-131 us a character against 31-40 us later, which capped the budget at one text for 20
        batches). This is the extra measurement of the dP-P&O variant, which tells a change of
        conditions from the effect of a perturbation (Sera et al., "Optimized Maximum Power Point
        Tracker for Fast-Changing Environmental Conditions", IEEE Trans. Industrial Electronics
        55(7), 2008). If the cheapest octave still wins, its top caps the law's size (memory and
        pressure may still ask for less). At the cap, one batch in ``probe_every`` tries the octave above,
        and one, half-way between, the octave below: the cap moves up when the batch above cost
        no more per unit than the cap's own (an EWMA of its batches), and down when the batch
        below was cheaper by more than the margin; it is dropped once the law's own size is as
        cheap. Without a clear gain the law runs as before.
        """
        cfg = self.config
        if units <= 0 or m.failed or m.duration_s < 0:
            return None
        cost = (m.duration_s + cfg.batch_overhead_s) / units
        worse = 1.0 + cfg.probe_margin
        if self._warm_up is None:  # worker processes start cold; batches in this process run in a warm one
            self._warm_up = in_flight if in_flight > 1 else 0
        if self._warm_up > 0:  # a worker's first batch pays its cold start: hold the size, score the next
            self._warm_up -= 1
            return units, "probe"
        k = math.ceil(math.log2(units)) - 1 if units > 1 else -1  # (2^k, 2^(k+1)]; up to 1 unit: one octave
        self._octaves.setdefault(k, _Octave(cfg.ewma_alpha, cfg.outlier_ratio)).add(cost)
        scores = {o: oc.score for o, oc in self._octaves.items()}
        best = min(scores, key=scores.__getitem__)
        if self._climb_state == "down":
            low = min(scores)
            if low >= 0 and (k != low or m.size > 1):
                if scores[low] <= scores[best] * worse:
                    return float(2**low), "probe"  # budget 2^low: batches in the octave below
                if self._octaves[low].count < 2:
                    return float(2 ** (low + 1)), "probe"  # dearer on one batch: once more to be sure
            top = max(scores)
            if not _clearly_cheaper(scores, best, top, worse):
                self._climb_state = "off"
                return None
            # Measure the largest octave once more before capping below it: its costs are the
            # run's first, and a fresh worker's first batches (and the parent's start-up) read dear.
            self._climb_state, self._confirm, self._probe_wait = "confirm", (top, self._octaves[top].count), 0
            return float(2 ** (top + 1)), "probe"
        if self._climb_state == "confirm":
            top, count = self._confirm
            self._probe_wait += 1
            if max(scores) == top and self._octaves[top].count == count and self._probe_wait <= _PROBE_WAIT:
                return float(2 ** (top + 1)), "probe"  # on its way (or cut smaller, by memory or the tail)
            if not _clearly_cheaper(scores, best, max(scores), worse):
                self._climb_state = "off"
                return None
            self._climb_state, self._cap_octave, self._since_probe = "capped", best, 0
        if self._climb_state != "capped" or self._cap_octave is None:
            return None
        c = self._cap_octave
        cap_cost = self._octaves[c].ewma.value if c in self._octaves else None
        self._since_probe += 1
        if self._probe and (k - c) * self._probe > 0:  # the probe (or a batch as far out) came back
            up, self._probe = self._probe > 0, 0
            if cap_cost is not None and (cost <= cap_cost if up else cost * worse < cap_cost):
                self._cap_octave = c = c + (1 if up else -1)
                if up:
                    self._since_probe = cfg.probe_every  # as cheap above: try higher still
        elif self._probe:
            self._probe_wait += 1
            if self._probe_wait > _PROBE_WAIT:  # its batch was cut smaller (memory, the tail): give up on it
                self._probe = 0
        cap = float(2 ** (c + 1))
        if cap >= law:
            self._climb_state, self._cap_octave = "off", None
            return None
        if not self._probe and self._since_probe >= cfg.probe_every:
            self._probe, self._probe_wait, self._since_probe = 1, 0, 0
            return min(2 * cap, law), "probe"
        if not self._probe and self._since_probe == cfg.probe_every // 2 and c > 0:
            self._probe, self._probe_wait = -1, 0
            return cap / 2, "probe"
        return cap, "throughput"

    def _growth(self, m: BatchMeasurement, units: float, size: float) -> float:
        """Increase factor: ``growth_factor``, or up to ``max_growth_factor`` while the batch just run
        (scaled to the current size) took a small fraction of the time aim. joblib's auto-batching
        jumps straight to ``old_size * MIN_IDEAL_BATCH_DURATION / duration``
        (``AutoBatchingMixin.compute_batch_size`` in ``joblib/_parallel_backends.py``); the cap keeps
        one step from multiplying memory by more than the cap before the memory term has a
        measurement at that scale."""
        cfg = self.config
        if units <= 0 or m.duration_s <= 0 or m.failed:
            return cfg.growth_factor
        predicted_s = m.duration_s * size / units
        return max(cfg.growth_factor, min(cfg.max_growth_factor, cfg.aim_s / predicted_s))

    def cap_to_memory(self, baseline_bytes: int, in_flight: int = 1) -> int:
        """Lower the next size to the memory-target size if it is above it; return the next size.

        For the first batch of a warm-started run, whose learned size may
        come from a run under a larger limit or a smaller baseline.
        """
        mem = self.memory_target_size(baseline_bytes, in_flight)
        if mem is not None and self._size is not None and mem < self._size:
            self._size = self._clamp(mem)
            self.last_decision = Decision(self.next_size(), "memory", _round(mem), None)
        return self.next_size()

    def on_memory_error(self, size: float) -> int:
        """A batch of ``size`` (items, or weight units when weighted) ran out of memory while its
        halves then fit: cap sizes at ``size / 2``, and raise that ceiling again as batches succeed.

        The ceiling rises by an eighth of its starting value after every batch that succeeds (see
        :meth:`_raise_ceiling`) and is dropped once it reaches twice the size that failed (24
        successful batches); a second error lowers it again. Only batches of two or more items
        call this: one item that fails on its own is that item's failure and sets no ceiling.
        Returns the next size.
        """
        cap = float(size) / 2 if self.weighted else float(max(self.config.min_batch_size, int(size) // 2))
        self._ceiling = cap if self._ceiling is None else min(self._ceiling, cap)
        self._ceiling_step = max(self._ceiling / 8, 0.0 if self.weighted else 1.0)
        self._ceiling_drop = 4 * self._ceiling
        if self._size is not None:
            self._size = self._clamp(min(self._size, self._ceiling))
        self.last_decision = Decision(self.next_size(), "memory_error")
        return self.next_size()

    def _raise_ceiling(self) -> None:
        """Additive increase of the memory-error ceiling after a successful batch, as TCP
        congestion avoidance opens its window again after a loss (RFC 5681, section 3.1)."""
        assert self._ceiling is not None
        self._ceiling += self._ceiling_step
        if self._ceiling >= self._ceiling_drop:
            self._ceiling = None

    # -- helpers ------------------------------------------------------------

    def _upper(self) -> float:
        cfg = self.config
        top = math.inf if self.weighted else cfg.max_batch_size
        return top if self._ceiling is None else min(top, self._ceiling)

    def _lower(self) -> float:
        return 0.0 if self.weighted else self.config.min_batch_size

    def _clamp(self, size: float) -> float:
        value = min(self._upper(), max(self._lower(), size))
        return value if self.weighted else int(value)

    def _clamp_reason(self, size: float, reason: str) -> tuple[float, str]:
        upper = self._upper()
        if size > upper:
            return self._clamp(upper), ("ceiling" if self._ceiling is not None and upper == self._ceiling else "max")
        if size < self._lower():
            return self._clamp(self._lower()), "min"
        return (size if self.weighted else int(size)), reason


def _clearly_cheaper(scores: Mapping[int, float], best: int, top: int, worse: float) -> bool:
    """Whether octave ``best`` is below ``top`` and cheaper per unit by more than the margin (``worse``: 1 + it)."""
    return best < top and scores[best] * worse < scores[top]


def _round(value: float | None) -> int | None:
    return None if value is None else int(math.ceil(value))
