"""The summary of one finished run, as the history stores it and advice reads it.

Pure: :class:`RunSummary` is built by :meth:`batchmem.BatchOptimizer.finish_run`, written by
:meth:`batchmem.optimizer.HistoryStore.record_run` as a JSON object with the same keys, and read back
once through :meth:`RunSummary.from_dict`, which tolerates files of older and newer versions: unknown
keys are ignored, missing ones are None, a value of the wrong type counts as missing.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunSummary"]


@dataclass
class RunSummary:
    """One run's figures. Units: items, bytes, seconds; ``learned_budget`` and ``throughput_cap`` in
    ``weight_unit`` units; ``finished_at`` in epoch seconds.

    Attributes:
        learned_batch_size: the run's steady-state batch size, items (the next run starts there when
            counting items).
        learned_budget: the steady-state weight budget (weighted runs; the next run starts there).
        weight_unit: what batches were budgeted in: ``"items"`` or the weight's name.
        bytes_per_item, seconds_per_item: the run's measured figures (bytes per item is
            :func:`batchmem.stats.bytes_per_item`); ``ewma_*``: the control law's estimates per unit,
            which the next run starts from.
        climb, throughput_cap: where the throughput hill-climb ended (a
            :class:`~batchmem.optimizer.climb.ClimbState` value) and the budget it held.
        settings: the run's options that advice checks (:class:`~batchmem.optimizer.advice.RunSettings`
            as a dict).
        kind, plan: ``"plan"`` and the fitted cost model for an entry ``batchmem plan`` recorded
            (:mod:`batchmem.plan`), which the up-front guard and the next run read; None for runs.
    """

    items: int | None = None
    batches: int | None = None
    failed: int | None = None
    timeouts: int | None = None  # items past item_timeout
    leaks: int | None = None
    memory_errors: int | None = None
    resumed: int | None = None
    duration_s: float | None = None
    items_per_s: float | None = None
    learned_batch_size: int | None = None
    learned_budget: float | None = None
    weight_unit: str = "items"
    bytes_per_item: float | None = None
    seconds_per_item: float | None = None
    ewma_bytes_per_item: float | None = None
    ewma_seconds_per_item: float | None = None
    peak_rss_bytes: int | None = None
    peak_batch_bytes: int | None = None
    memory_bound_batches: int | None = None
    pressure_batches: int | None = None
    ceiling: float | None = None
    batch_size_min: int | None = None
    batch_size_max: int | None = None
    batch_size_median: float | None = None
    batch_s_median: float | None = None
    memory_limit_bytes: int | None = None
    limit_source: str | None = None
    auto_workers: int | None = None
    climb: str | None = None
    throughput_cap: float | None = None
    finished_at: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    plan: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunSummary:
        """The summary in ``data`` (a history file's run, or a dict of the same keys); see the module doc."""
        data = data if isinstance(data, Mapping) else {}
        values: dict[str, Any] = {}
        for name, kind in _KINDS.items():
            value = _coerce(data.get(name), kind)
            if value is not None:
                values[name] = value
        return cls(**values)

    @classmethod
    def of(cls, run: RunSummary | Mapping[str, Any] | None) -> RunSummary:
        """``run`` itself, or the summary of a dict."""
        return run if isinstance(run, RunSummary) else cls.from_dict(run)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the known figures (None left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def warm_start(self, weight_unit: str) -> dict[str, Any] | None:
        """What the next run's control law starts from (``BatchSizeController`` ``warm_start``): this
        run's learned size (or budget), estimates and hill-climb, when it counted in ``weight_unit``."""
        if self.weight_unit != weight_unit:
            return None
        learned = self.learned_batch_size if weight_unit == "items" else self.learned_budget
        if learned is None:
            return None
        bpi, spi = self.ewma_bytes_per_item, self.ewma_seconds_per_item
        return {
            "batch_size": learned,
            "bytes_per_item": bpi if bpi is not None else self.bytes_per_item,
            "seconds_per_item": spi if spi is not None else self.seconds_per_item,
            "climb": self.climb,
            "throughput_cap": self.throughput_cap,
        }

    def warm_items(self, budget: float | None) -> int | None:
        """Items a weight ``budget`` holds at this run's learned items per unit, or None."""
        if not self.learned_batch_size or not self.learned_budget or budget is None:
            return None
        return max(1, int(self.learned_batch_size * budget / self.learned_budget))

    def get(self, key: str, default: Any = None) -> Any:
        """A figure by name (None counts as missing), for code that reads summaries by key."""
        value = getattr(self, key, None)
        return default if value is None else value


def _coerce(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, bool):
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    if kind is dict:
        return dict(value) if isinstance(value, Mapping) else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if kind is int else float(value)


def _kind(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    return base if base in (int, float, str, dict) else str


#: Field name -> the type its stored value is coerced to.
_KINDS: dict[str, type] = {name: _kind(hint) for name, hint in typing.get_type_hints(RunSummary).items()}
