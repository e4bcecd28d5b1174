"""Stop a run before its first batch when its memory limit cannot hold the heaviest item.

Only where the operation was measured before: a plan (``batchmem plan``) or a run left its bytes per
weight unit in the history. The source is weighed the cheap way (:mod:`batchmem.plan.weigh`: ``len()``
and file offsets); a source that would have to be consumed to be weighed (a generator) is not checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..heap.monitor import current_rss_bytes
from ..optimizer.history import HistoryStore
from ..units import format_bytes
from ..weights import make_weigher
from .weigh import is_file_source, is_sequence, run_unit, weigh_source

__all__ = ["HeaviestItemError", "measured_cost", "refuse_if_unfit"]


class HeaviestItemError(ConfigError):
    """The memory limit cannot hold the heaviest item of the source (exit 2, before any batch runs)."""


def measured_cost(record: dict | None, unit: str) -> tuple[float | None, float, float, str] | None:
    """``(baseline bytes or None, bytes per batch, bytes per weight unit, what measured them)`` from the
    newest history entry in ``unit`` (a plan's fitted line, or a run's bytes per unit), or None."""
    for run in reversed((record or {}).get("runs_detail") or []):
        if not isinstance(run, dict) or run.get("weight_unit", "items") != unit:
            continue
        plan = run.get("plan")
        if isinstance(plan, dict):
            return plan["baseline_bytes"], plan["bytes_intercept"], plan["bytes_per_unit"], "the last plan"
        per_unit = run.get("ewma_bytes_per_item")
        if isinstance(per_unit, (int, float)) and per_unit > 0:
            return None, 0.0, float(per_unit), "the last run"
    return None


def _sized(source: Any) -> bool:
    return is_file_source(source) or is_sequence(source)


def refuse_if_unfit(config: Any, limit: Any, source: Any) -> None:
    """Raise :class:`HeaviestItemError` when history says the heaviest item of ``source`` needs more
    than ``terminate_fraction`` of ``limit`` (a :class:`~batchmem.heap.limits.MemoryLimit`).

    ``config``: the run's :class:`~batchmem.options.RunConfig`. Returns without reading the source
    when the operation has no history.
    """
    b = config.batching
    record = HistoryStore().load(config.process_name) if b.use_history and _sized(source) else None
    if record is None:
        return
    frames = is_file_source(source) and b.weight is not None and b.auto_optimize
    weighed = weigh_source(source, make_weigher(b.weight) if b.auto_optimize else None, frames=frames, sample=False)
    weighed.close()
    cost = measured_cost(record, run_unit(b, source, bool(np.all(weighed.weights == 1))))
    if cost is None or not len(weighed.weights):
        return
    baseline, intercept, per_unit, what = cost
    base = baseline if baseline is not None else float(current_rss_bytes())
    need = base + intercept + per_unit * weighed.max_weight
    fraction = config.pressure.terminate_fraction
    if need <= fraction * limit.bytes:
        return
    at_least = format_bytes(need / fraction)
    raise HeaviestItemError(
        f"the memory limit {format_bytes(limit.bytes)} ({limit.source}) cannot hold item {weighed.heaviest:,}, "
        f"the heaviest: {what} measured {format_bytes(need)} with a {format_bytes(base)} baseline, over "
        f"terminate_fraction {fraction:g} of the limit (fits: false)",
        python_fix=f"; set memory_limit (or the container's limit) to at least {at_least}",
        cli_fix=f"; set batching.memory_limit (or the container's limit) to at least {at_least}",
    )
