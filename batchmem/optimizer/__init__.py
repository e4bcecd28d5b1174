"""Batch sizing: the pure control law (:mod:`.control`, :mod:`.climb`), the per-operation history
(:mod:`.history`), recommendations (:mod:`.advice`) and :class:`BatchOptimizer`, which wires them
together for one process (:mod:`.batch_optimizer`)."""

from batchmem.optimizer.batch_optimizer import LEARNED_WINDOW, BatchOptimizer
from batchmem.optimizer.control import BatchMeasurement, BatchSizeController, ControlConfig, Decision
from batchmem.optimizer.history import HistoryStore, history_dir

__all__ = [
    "BatchMeasurement",
    "BatchOptimizer",
    "BatchSizeController",
    "ControlConfig",
    "Decision",
    "HistoryStore",
    "LEARNED_WINDOW",
    "history_dir",
]
