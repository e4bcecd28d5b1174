"""BatchOptimizer: the control law of :mod:`.control` plus the per-operation history of :mod:`.history`.

Life of a run (what :class:`batchmem.BatchProcessor` does)::

    opt = BatchOptimizer(memory_limit_bytes=limit, operation="embed_docs")
    size = opt.start_run()                 # warm start from history: the learned size, or initial_batch_size
    ...  # run a batch of `size` items, measure it
    size = opt.observe(BatchMeasurement(size, duration_s, peak_bytes),
                       baseline_bytes=rss, pressure=level, in_flight=n_jobs)
    ...  # on MemoryError: size = opt.on_memory_error(size)
    opt.finish_run(RunSummary(items=..., duration_s=..., peak_rss_bytes=...))  # persisted for the next run

The *learned batch size* of a run is the median of the last
:data:`LEARNED_WINDOW` sizes the controller chose (its steady state, not the
warm-up nor the clipped tail batch), capped by the MemoryError ceiling if one
was hit; weighted runs learn a budget the same way, and its size in items at
the items per unit of their last batches. The next run of the same operation
(in the same unit) starts there, its EWMAs of bytes and seconds per unit start
from the previous run's estimates, and its hill-climb where the last one ended.

Recommendations are :mod:`.advice`'s (pure text); this class hands it the
figures of the live run or of the last stored one, with that run's settings.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, deque
from collections.abc import Mapping, Sized
from typing import Any

from batchmem.optimizer.advice import (
    RunFigures,
    RunSettings,
    batch_seconds,
    median_or_none,
    memory_bound_advice,
    run_advice,
    trend_advice,
)
from batchmem.optimizer.control import BatchMeasurement, BatchSizeController, ControlConfig
from batchmem.optimizer.history import HistoryStore, summaries
from batchmem.optimizer.summary import RunSummary
from batchmem.stats import bytes_per_item

__all__ = ["LEARNED_WINDOW", "BatchOptimizer"]

logger = logging.getLogger("batchmem")

#: Decided sizes whose median is the learned batch size of a run, batches.
LEARNED_WINDOW = 5
#: Recent batch sizes kept in the live statistics, batches.
_LIVE_SIZES = 1000
_DEFAULT_OPERATION = "default"
_PRESSURE_LABELS = ("normal", "warning", "critical", "emergency")


#: Summary fields that only the control law knows: never taken from the caller's summary.
_LEARNED_FIELDS = frozenset(
    {"learned_budget", "weight_unit", "ewma_bytes_per_item", "ewma_seconds_per_item", "memory_bound_batches"}
    | {"pressure_batches", "ceiling", "batch_size_min", "batch_size_max", "climb", "throughput_cap"}
)


class _Run:
    """Live figures of the current run (plain counters; no clock reads)."""

    def __init__(self, operation: str, first_size: int, warm: bool):
        self.operation = operation
        self.first_size = first_size
        self.warm_started = warm
        self.batches = 0
        self.items = 0
        self.failed = 0
        self.busy_s = 0.0  # sum of batch wall times, seconds (not wall time of the run when n_jobs > 1)
        self.max_peak_bytes = 0
        self.sizes: deque[int] = deque(maxlen=_LIVE_SIZES)
        self.durations: deque[float] = deque(maxlen=_LIVE_SIZES)  # wall s of each batch where it ran
        self.peak_bytes_sum = 0  # sum of the batches' peak growth, bytes (batchmem.stats.bytes_per_item)
        self.size_min: int | None = None
        self.size_max: int | None = None
        self.decided: deque[int] = deque([first_size], maxlen=LEARNED_WINDOW)
        self.budgets: deque[float] = deque(maxlen=LEARNED_WINDOW)  # decided weight budgets (weighted runs)
        self.recent: deque[tuple[int, float]] = deque(maxlen=LEARNED_WINDOW)  # (items, weight) of the last batches
        self.weight_max = 0.0  # the heaviest batch, weight units (weighted runs)
        self.reasons: Counter[str] = Counter()
        self.pressure: Counter[str] = Counter()
        self.memory_errors = 0
        self.finished = False


class BatchOptimizer:
    """Adaptive batch sizes for one process, remembered per operation across runs.

    Args:
        memory_limit_bytes: limit of the process tree, bytes (from
            ``MemoryMonitor.limit.bytes``); None sizes by time and pressure only.
        config: the control law's tuning (:class:`ControlConfig`).
        operation: default operation name (the run's ``process_name``).
        history: where runs are remembered; default ``HistoryStore()``
            (``$BATCHMEM_HOME`` or the user cache dir).
        use_history: False: no warm start, nothing persisted.
    """

    def __init__(
        self,
        *,
        memory_limit_bytes: int | None = None,
        config: ControlConfig | None = None,
        operation: str | None = None,
        history: HistoryStore | None = None,
        use_history: bool = True,
    ):
        self.config = config if config is not None else ControlConfig()
        self.memory_limit_bytes = memory_limit_bytes
        self.operation = operation
        self.use_history = use_history
        self.history: HistoryStore | None = None
        if use_history:
            self.history = history if history is not None else HistoryStore()
        # Validates memory_limit_bytes now rather than at the first batch.
        self.controller = BatchSizeController(self.config, memory_limit_bytes)
        self.weight_unit = "items"
        self.warm_items: int | None = None  # items the first budget of a warm weighted run holds
        self._run: _Run | None = None

    # -- the run ------------------------------------------------------------

    def _load(self, operation: str) -> dict | None:
        if self.history is None:
            return None
        return self.history.load(operation)

    def last_run(self, operation: str) -> RunSummary | None:
        """The summary of ``operation``'s last recorded run, or None."""
        return self.history.last_run(operation) if self.history is not None else None

    def start_run(
        self,
        operation: str | None = None,
        *,
        baseline_bytes: int | None = None,
        in_flight: int = 1,
        weight_unit: str = "items",
    ) -> int:
        """Begin a run of ``operation``; return the first batch size (items, or weight units).

        ``weight_unit`` names what batches are budgeted in: ``"items"`` (unweighted) or the
        weight's name (``"auto"``, a callable's name); the control law then works in weight
        units (:class:`BatchSizeController` ``weighted``). Warm start: with history of the same
        unit, the first size is the learned size (or budget) of the operation's last run, the
        EWMAs start from its estimates and the hill-climb where it ended (:meth:`RunSummary.warm_start`).
        If ``baseline_bytes`` (resident bytes now) is given, the first size is also kept under the
        memory target.
        """
        op = operation or self.operation or _DEFAULT_OPERATION
        self.operation = op
        self.weight_unit = weight_unit
        weighted = weight_unit != "items"
        last = self.last_run(op)
        warm = last.warm_start(weight_unit) if last is not None else None
        self.controller = BatchSizeController(self.config, self.memory_limit_bytes, warm_start=warm, weighted=weighted)
        if baseline_bytes is not None:
            self.controller.cap_to_memory(baseline_bytes, in_flight)
        # Sources that weigh rows only after their first read (a CSV reader) cut the first budget by items.
        budget = self.controller.next_budget()
        self.warm_items = last.warm_items(budget) if last is not None and warm is not None and weighted else None
        first = self.controller.next_size()
        self._run = _Run(op, first, warm is not None)
        if warm is not None:
            logger.debug("batchmem: %s warm-starts at %d items per batch", op, first)
        return first

    def take_warm_items(self) -> int | None:
        """Items the first budget of a warm-started weighted run holds at the last run's items per unit,
        once (None afterwards, and for cold or unweighted runs): for cutting the first batch of a source
        that cannot weigh its items before reading them."""
        items, self.warm_items = self.warm_items, None
        return items

    def _ensure_run(self) -> _Run:
        if self._run is None or self._run.finished:
            self.start_run()
        assert self._run is not None
        return self._run

    def next_batch_size(self) -> int:
        """Size (items) of the next batch; starts a run if none is active."""
        self._ensure_run()
        return self.controller.next_size()

    @property
    def seconds_per_unit(self) -> float | None:
        """Smoothed wall seconds per item (per weight unit when weighted) of the current run, or
        None before its first batch (or a warm start's estimate)."""
        return self.controller.seconds_per_item

    def next_batch_budget(self) -> float | None:
        """Weight budget of the next batch (weight units); None while the first weighted batch
        is still to be cut by items (:meth:`next_batch_size`)."""
        self._ensure_run()
        return self.controller.next_budget()

    def observe(
        self,
        measurement: BatchMeasurement,
        *,
        baseline_bytes: int,
        pressure: Any = 0,
        in_flight: int = 1,
    ) -> int:
        """Feed one finished batch (see :meth:`BatchSizeController.observe`); return the next size (items)."""
        run = self._ensure_run()
        size = self.controller.observe(
            measurement, baseline_bytes=baseline_bytes, pressure=pressure, in_flight=in_flight
        )
        m = measurement
        run.batches += 1
        run.items += m.size
        run.failed += m.failed
        run.busy_s += max(0.0, m.duration_s)
        run.max_peak_bytes = max(run.max_peak_bytes, m.peak_bytes)
        run.sizes.append(m.size)
        run.durations.append(max(0.0, m.duration_s))
        run.peak_bytes_sum += max(0, m.peak_bytes)
        run.size_min = m.size if run.size_min is None else min(run.size_min, m.size)
        run.size_max = m.size if run.size_max is None else max(run.size_max, m.size)
        run.decided.append(size)
        budget = self.controller.next_budget()
        if self.controller.weighted and budget is not None:
            run.budgets.append(budget)
            run.recent.append((m.size, m.units))
            run.weight_max = max(run.weight_max, m.units)
        run.reasons[self.controller.last_decision.reason] += 1
        level = int(pressure)
        if level > 0:
            run.pressure[_PRESSURE_LABELS[min(level, 3)]] += 1
        return size

    def on_memory_error(self, size: float) -> int:
        """A batch of ``size`` (items, or weight units) ran out of memory and its halves fit: ceiling
        ``size / 2``, raised again as batches succeed (:meth:`BatchSizeController.on_memory_error`)."""
        run = self._ensure_run()
        new = self.controller.on_memory_error(size)
        run.memory_errors += 1
        run.decided.append(new)
        return new

    def learned_batch_size(self) -> int:
        """Steady-state size of the current run (items): median of the last few decided sizes, under
        the ceiling; weighted, the learned budget in items at the items per unit of the last batches."""
        return self._learned(self._ensure_run())

    def _learned(self, run: _Run) -> int:
        cfg = self.config
        budget = self._learned_budget(run)
        if budget is not None:
            items = sum(n for n, _ in run.recent)
            weight = sum(w for _, w in run.recent)
            learned = int(budget * items / weight) if weight > 0 else statistics.median(run.sizes)
            learned = min(learned, run.size_max or learned)  # as the budget, no larger than what ran
        else:
            learned = int(statistics.median(run.sizes if self.controller.weighted and run.sizes else run.decided))
        ceiling = self.controller.ceiling
        if ceiling is not None and not self.controller.weighted:
            learned = min(learned, ceiling)
        return int(max(cfg.min_batch_size, min(cfg.max_batch_size, learned)))

    def _learned_budget(self, run: _Run) -> float | None:
        """Weighted runs: the median of the last decided budgets (weight units), under the ceiling and
        no larger than the heaviest batch that ran (a run that ended while still growing learned that)."""
        if not self.controller.weighted or not run.budgets:
            return None
        budget = min(float(statistics.median(run.budgets)), run.weight_max)
        ceiling = self.controller.ceiling
        return budget if ceiling is None else min(budget, ceiling)

    def finish_run(self, summary: RunSummary | Mapping[str, Any] | None = None) -> RunSummary:
        """End the run and persist its summary; return it.

        Figures the caller did not give (counts, times, batch sizes) are filled from the live
        counters; what the control law learned (sizes, estimates, the climb) always comes from it.
        A history that cannot be written is logged as a warning, not raised.
        """
        run = self._ensure_run()
        out = RunSummary.of(summary)
        given = out.to_dict()
        live = self._summary(run)
        for name, value in live.to_dict().items():
            if name not in given or name in _LEARNED_FIELDS:
                setattr(out, name, value)
        out.settings = RunSettings.from_dict(given.get("settings")).merged(self._config_settings()).to_dict()
        run.finished = True
        if self.history is not None:
            try:
                self.history.record_run(run.operation, out)
            except OSError as exc:
                logger.warning(
                    "batchmem: could not save history of %r (%s); the next run will probe again", run.operation, exc
                )
        return out

    def _summary(self, run: _Run) -> RunSummary:
        """The live counters and what the control law learned, as a summary."""
        c = self.controller
        climb = c.climb
        return RunSummary(
            items=run.items,
            batches=run.batches,
            failed=run.failed,
            memory_errors=run.memory_errors,
            duration_s=run.busy_s,
            items_per_s=run.items / run.busy_s if run.busy_s > 0 else None,
            learned_batch_size=self._learned(run),
            learned_budget=self._learned_budget(run),
            weight_unit=self.weight_unit,
            bytes_per_item=c.bytes_per_item,
            seconds_per_item=c.seconds_per_item,
            ewma_bytes_per_item=c.bytes_per_item,
            ewma_seconds_per_item=c.seconds_per_item,
            peak_batch_bytes=run.max_peak_bytes,
            memory_bound_batches=run.reasons.get("memory", 0),
            pressure_batches=sum(run.pressure.values()),
            ceiling=c.ceiling,
            batch_size_min=run.size_min,
            batch_size_max=run.size_max,
            batch_size_median=median_or_none(run.sizes),
            batch_s_median=median_or_none(run.durations),
            memory_limit_bytes=self.memory_limit_bytes,
            climb=None if climb is None else climb.state.value,
            throughput_cap=None if climb is None else climb.cap,
        )

    # -- queries -------------------------------------------------------------

    def calculate_optimal_batch_size(self, items: Any = None, operation: str | None = None) -> int:
        """Best batch size (items) for ``items`` of ``operation`` now.

        The live controller's next size during a run of that operation,
        else the learned size from history, else ``initial_batch_size``;
        clipped to ``len(items)`` when ``items`` is sized (and at least 1).
        """
        op = operation or self.operation or _DEFAULT_OPERATION
        run = self._run
        if run is not None and not run.finished and run.operation == op:
            size = self.controller.next_size()
        else:
            record = self._load(op)
            learned = RunSummary.from_dict(record).learned_batch_size  # the record keeps its last run's
            size = learned or self.config.initial_batch_size
            size = max(self.config.min_batch_size, min(self.config.max_batch_size, size))
        if isinstance(items, Sized):
            size = max(1, min(size, len(items)))
        return size

    def _live(self) -> dict[str, Any] | None:
        run = self._run
        if run is None:
            return None
        c = self.controller
        sizes = list(run.sizes)
        return {
            "operation": run.operation,
            "finished": run.finished,
            "warm_started": run.warm_started,
            "first_batch_size": run.first_size,
            "batches": run.batches,
            "items": run.items,
            "failed": run.failed,
            "busy_s": run.busy_s,
            "batch_sizes": sizes,
            "batch_size_min": run.size_min,
            "batch_size_max": run.size_max,
            "batch_size_median": median_or_none(sizes),
            "batch_s_median": median_or_none(run.durations),
            "bytes_per_item_measured": bytes_per_item(run.peak_bytes_sum, run.items),
            "next_batch_size": c.next_size(),
            "learned_batch_size": self._learned(run),
            "last_reason": c.last_decision.reason,
            "reasons": dict(run.reasons),
            "bytes_per_item": c.bytes_per_item,
            "seconds_per_item": c.seconds_per_item,
            "max_batch_peak_bytes": run.max_peak_bytes,
            "ceiling": c.ceiling,
            "memory_errors": run.memory_errors,
            "pressure_batches": dict(run.pressure),
            "memory_limit_bytes": self.memory_limit_bytes,
            "memory_target_fraction": self.config.memory_target_fraction,
            "target_batch_seconds": list(self.config.target_batch_seconds),
        }

    @staticmethod
    def _figures(record: Mapping[str, Any]) -> dict[str, Any]:
        runs = summaries(record)
        return {
            "runs": record.get("runs", len(runs)),
            "items": record.get("items"),
            "failed": record.get("failed"),
            "timeouts": record.get("timeouts", 0),
            "batches": record.get("batches"),
            "duration_s": record.get("duration_s"),
            "items_per_s": record.get("items_per_s"),
            "bytes_per_item": record.get("bytes_per_item"),
            "seconds_per_item": record.get("seconds_per_item"),
            "learned_batch_size": record.get("learned_batch_size"),
            "batch_s_median": batch_seconds(runs[-1]) if runs else None,
            "peak_rss_bytes": record.get("peak_rss_bytes"),
            "leaks": record.get("leaks", sum(r.leaks or 0 for r in runs)),
            "resumes": record.get("resumes", 0),
            "first_run_at": record.get("first_run_at"),
            "last_run_at": record.get("last_run_at"),
            "last_run": runs[-1].to_dict() if runs else None,
        }

    def get_batch_statistics(self, operation: str | None = None) -> dict[str, Any]:
        """Per-operation figures, the current run's live figures and plain-language recommendations.

        Returns ``{"operations": {name: figures}, "current_run": live or None,
        "recommendations": [str, ...]}``. Figures: runs, items, failed,
        batches, duration_s (s), items_per_s, bytes_per_item (bytes),
        seconds_per_item (s), learned_batch_size (items), batch_s_median
        (median wall time of a batch in the last run, s), peak_rss_bytes (bytes), leaks (flagged by the heap analyzer,
        all runs), resumes (runs that continued an output), first/last_run_at (epoch s), last_run,
        and that operation's "recommendations". With ``operation`` only that
        one is reported.
        """
        if operation is not None:
            names = [operation]
        else:
            names = list(self.history.operations()) if self.history is not None else []
            if self._run is not None and self._run.operation not in names:
                names.append(self._run.operation)
        live = self._live()
        if live is not None and operation is not None and live["operation"] != operation:
            live = None
        ops: dict[str, Any] = {}
        recs: list[str] = []
        for name in names:
            record = self._load(name)
            figures = self._figures(record) if record else {"runs": 0}
            op_live = live if live is not None and live["operation"] == name else None
            figures["recommendations"] = self._recommend(record, op_live)
            if record is None and op_live is None:
                continue
            ops[name] = figures
            prefix = f"{name}: " if len(names) > 1 else ""
            recs.extend(prefix + r for r in figures["recommendations"])
        return {"operations": ops, "current_run": live, "recommendations": recs}

    # -- recommendations -----------------------------------------------------

    def _config_settings(self) -> RunSettings:
        """The settings this optimizer was built with (the run's batch sizes, time band, memory target)."""
        cfg = self.config
        return RunSettings(
            batch_size=cfg.initial_batch_size,
            min_batch_size=cfg.min_batch_size,
            max_batch_size=cfg.max_batch_size,
            target_batch_seconds=tuple(cfg.target_batch_seconds),
            memory_target_fraction=cfg.memory_target_fraction,
        )

    def _live_figures(self, live: Mapping[str, Any]) -> RunFigures:
        return RunFigures(
            when="this run",
            items=live["items"],
            failed=live["failed"],
            batches=live["batches"],
            batch_size_median=live["batch_size_median"],
            batch_size_max=live["batch_size_max"],
            batch_s_median=live["batch_s_median"],
            bytes_per_item=live["bytes_per_item_measured"],
            memory_limit_bytes=self.memory_limit_bytes,
            memory_bound_batches=live["reasons"].get("memory", 0),
            pressure_batches=sum(live["pressure_batches"].values()),
            memory_errors=live["memory_errors"],
            ceiling=live["ceiling"],
        )

    def memory_bound(self) -> str | None:
        """The current run's memory-bound advice (see :func:`~batchmem.optimizer.advice.memory_bound_advice`),
        or None: no run, too few batches, or memory did not hold them short."""
        live = self._live()
        if live is None or not live["batches"]:
            return None
        return memory_bound_advice(self._live_figures(live), self._config_settings())

    def _recommend(self, record: Mapping[str, Any] | None, live: Mapping[str, Any] | None) -> list[str]:
        """Trends over the stored runs, then advice on the live run (else the last stored one)."""
        runs = summaries(record)
        out = trend_advice(runs)
        if live is not None and live["batches"]:
            out += run_advice(self._live_figures(live), self._config_settings())
        elif runs:
            out += run_advice(RunFigures.from_summary(runs[-1]), RunSettings.from_dict(runs[-1].settings))
        return out
