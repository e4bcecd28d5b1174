"""The batch-size control law: measurements in, next batch size out.

Pure: no I/O, no clock reads, no psutil. Everything the law needs arrives
as arguments (a :class:`BatchMeasurement` per finished batch, the current
resident bytes of the process tree, the pressure level, how many batches
run at once), so it can be unit-tested with synthetic numbers.

After every batch, with per-unit costs smoothed by :class:`~.ewma.Ewma`::

    candidate = min(memory_size, time_size, size * growth)   # MI toward the set-points
    candidate = climb's answer, if any (weighted runs)        # :mod:`.climb`
    if pressure >= WARNING:
        candidate = min(candidate, size * shrink_factor ** pressure)  # MD on pressure
    next = clamp(candidate, min_batch_size, min(max_batch_size, ceiling))

``memory_size`` keeps ``baseline + size * bytes_per_item * in_flight`` under
``memory_target_fraction * memory_limit_bytes`` (0.6: Dask's worker memory
target, https://distributed.dask.org/en/stable/worker-memory.html);
``time_size`` aims a batch at the low edge of ``target_batch_seconds``
((0.2, 2.0) s: joblib's ``AutoBatchingMixin`` band,
https://joblib.readthedocs.io/en/stable/parallel.html). A batch that ran out
of memory while its halves fit sets a ceiling that reopens additively
(RFC 5681, section 3.1). With ``weighted=True`` the law runs in weight units
(:mod:`batchmem.weights`). The derivation, and the measurements behind the
defaults: ``docs/internals.md``, "How the control law works".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchmem.errors import ConfigError
from batchmem.optimizer.climb import ClimbState, ThroughputClimb
from batchmem.optimizer.ewma import Ewma
from batchmem.options import DEFAULT_BATCH_SIZE, Batching

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


#: The user-facing options the control law shares with :class:`batchmem.options.Batching`.
_OPTION = Batching.__dataclass_fields__


@dataclass
class ControlConfig:
    """Tuning of the control law; validated on construction.

    Attributes:
        initial_batch_size, min_batch_size, max_batch_size, memory_target_fraction,
            target_batch_seconds: the options ``batch_size`` (items), ``min_batch_size``,
            ``max_batch_size``, ``memory_target_fraction`` and ``target_batch_seconds``
            (seconds) of :class:`batchmem.options.Batching`, which defines their
            defaults, units and bounds and checks them here too.
        ewma_alpha: weight of the newest sample in the EWMA estimates, (0, 1].
        growth_factor: multiplicative increase per batch while there is room, > 1.
        max_growth_factor: largest increase per batch while batches are far shorter than the
            time aim (cold start): the size grows by ``aim_s / duration`` capped here, >= growth_factor.
        shrink_factor: multiplicative decrease per pressure level, in (0, 1).
        outlier_ratio: a per-item sample further than this factor from the
            estimate is clipped (one outlier) or, twice in a row on the same
            side, taken as a level shift; > 1.
        batch_overhead_s: seconds one batch costs outside its own wall time (a
            memory sample, the fsyncs of output and checkpoint; measured by
            benchmarks/bench_core.py), added to each batch in the throughput
            hill-climb (weighted runs), >= 0.
        probe_margin: the hill-climb moves to a probed size only when its
            seconds per unit are lower by more than this fraction, and gives
            up a probe once they are higher by more, >= 0: above the noise of
            one batch's seconds per unit (benchmarks/bench_weighted.py prints
            it under its table; figures in docs/internals.md).
        probe_every: batches at the hill-climb's cap between two probes of
            twice the cap, >= 1; a probe into a dearer octave costs about
            ``2 * (ratio - 1) / (probe_every + 2)`` of the throughput.
    """

    initial_batch_size: int = DEFAULT_BATCH_SIZE
    min_batch_size: int = _OPTION["min_batch_size"].default
    max_batch_size: int = _OPTION["max_batch_size"].default
    memory_target_fraction: float = _OPTION["memory_target_fraction"].default
    target_batch_seconds: tuple[float, float] = _OPTION["target_batch_seconds"].default
    ewma_alpha: float = 0.3
    growth_factor: float = 2.0
    max_growth_factor: float = 8.0
    shrink_factor: float = 0.5
    outlier_ratio: float = field(default=3.0)
    batch_overhead_s: float = 0.003
    probe_margin: float = 0.25
    probe_every: int = 16

    def __post_init__(self) -> None:
        # The bounds of the options a user sets are defined once, in batchmem.options.
        checked = Batching(
            batch_size=self.initial_batch_size,
            min_batch_size=self.min_batch_size,
            max_batch_size=self.max_batch_size,
            memory_target_fraction=self.memory_target_fraction,
            target_batch_seconds=self.target_batch_seconds,
        )
        self.target_batch_seconds = checked.target_batch_seconds
        for name, ok, rule, example in _NUMBER_RULES:
            value = getattr(self, name)
            if not _is_number(value) or not ok(self, value):
                raise ConfigError(f"{name}={value!r} {rule.format(self)}: give e.g. {example}")
        pe = self.probe_every
        if not _is_int(pe) or pe < 1:
            raise ConfigError(f"probe_every={pe!r} is not a whole number >= 1: give e.g. 16")

    @property
    def aim_s(self) -> float:
        """Batch wall time the time term aims at: the band's low edge, seconds (0.2 s by default)."""
        return self.target_batch_seconds[0]


#: (field, check, what is wrong, example) of ControlConfig's number fields; ``{0}`` is the config.
_NUMBER_RULES: tuple[tuple[str, Callable[[ControlConfig, float], bool], str, str], ...] = (
    ("ewma_alpha", lambda c, v: 0 < v <= 1, "is not in (0, 1]", "0.3"),
    ("growth_factor", lambda c, v: v > 1, "is not > 1", "2.0"),
    ("max_growth_factor", lambda c, v: v >= c.growth_factor, "is below growth_factor={0.growth_factor}", "8.0"),
    ("shrink_factor", lambda c, v: 0 < v < 1, "is not in (0, 1)", "0.5"),
    ("outlier_ratio", lambda c, v: v > 1, "is not > 1", "3.0"),
    ("batch_overhead_s", lambda c, v: v >= 0, "is not >= 0 seconds", "0.003"),
    ("probe_margin", lambda c, v: v >= 0, "is not >= 0", "0.25"),
)


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


class BatchSizeController:
    """Chooses the next batch size (items) from per-batch measurements.

    See the module docstring for the control law. ``memory_limit_bytes`` is
    the limit of the process tree, bytes; ``None`` disables the memory term
    (only time, pressure and the MemoryError ceiling then bound the size).
    ``warm_start`` seeds a run with what an earlier run of the same
    operation learned: ``{"batch_size": items (weight units when weighted),
    "bytes_per_item": bytes, "seconds_per_item": seconds, "climb": a
    :class:`~.climb.ClimbState` value, "throughput_cap": weight units}`` (any
    key may be missing).
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
        self._bytes = Ewma(cfg.ewma_alpha, cfg.outlier_ratio)
        self._seconds = Ewma(cfg.ewma_alpha, cfg.outlier_ratio)
        self._ceiling: float | None = None
        self._ceiling_step = self._ceiling_drop = 0.0
        # Weighted, the first batch is cut by items (initial_batch_size); its measured weight seeds the budget.
        size: float | None = None if weighted else cfg.initial_batch_size
        warm = warm_start or {}
        bs, bpi, spi = (warm.get(k) for k in ("batch_size", "bytes_per_item", "seconds_per_item"))
        if _is_number(bs) and bs >= 1:
            size = int(bs)
        if _is_number(bpi) and bpi >= 0:
            self._bytes.value = float(bpi)
        if _is_number(spi) and spi >= 0:
            self._seconds.value = float(spi)
        self.climb = _climb_of(cfg, warm) if weighted else None
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
        climb = self.climb.propose(m, units, candidate, in_flight) if self.climb is not None else None
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
        return None if self.climb is None else self.climb.cap

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


def _climb_of(config: ControlConfig, warm: Mapping[str, Any]) -> ThroughputClimb:
    """The hill-climb of a weighted run: fresh (descending from the first batch), or where the
    warm start's run left it (capped at its cap, or off)."""
    cap = warm.get("throughput_cap")
    try:
        state = ClimbState(warm.get("climb"))
    except ValueError:
        state = ClimbState.DOWN
    if state is ClimbState.CAPPED and _is_number(cap) and cap > 0:
        return ThroughputClimb(config, ClimbState.CAPPED, float(cap))
    return ThroughputClimb(config, ClimbState.OFF if state is ClimbState.OFF else ClimbState.DOWN)


def _round(value: float | None) -> int | None:
    return None if value is None else int(math.ceil(value))
