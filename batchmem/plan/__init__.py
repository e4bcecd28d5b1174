"""The forecast of a run before it runs: time, peak memory, and the memory limit to ask for.

``batchmem plan JOB.yaml`` and :meth:`batchmem.BatchProcessor.plan` weigh the whole source cheaply
(:mod:`.weigh`), run the job's own function on sample batches spread over the weight distribution
(:mod:`.sample`, :mod:`.runner`), fit a baseline and bytes and seconds per weight unit (:mod:`.fit`)
and return a :class:`Plan` (:mod:`.model`). :mod:`.guard` lets ``batchmem run`` stop before its first
batch when the limit cannot hold the heaviest item.
"""

from __future__ import annotations

from .fit import CostModel, Line, RunShape, fit_line, forecast_limits, predict
from .model import Plan, ready_lines
from .runner import make_plan

__all__ = [
    "CostModel",
    "Line",
    "Plan",
    "RunShape",
    "fit_line",
    "forecast_limits",
    "make_plan",
    "predict",
    "ready_lines",
]
