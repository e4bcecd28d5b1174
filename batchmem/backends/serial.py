"""In-process execution: every batch in this process, one after another (``n_jobs=1``).

No isolation: an item that crashes the interpreter or is killed by the kernel's
OOM killer ends the run. For hard container limits run one isolated worker
instead (``n_jobs=1, backend="loky"``), which the OOM watchdog can guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .base import ExecutorBase
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch

__all__ = ["SerialExecutor"]


class SerialExecutor(ExecutorBase):
    """Runs every batch in this process, one after another."""

    in_flight = 1

    def __init__(self, fn: Callable[..., Any], opts: RunOptions):
        super().__init__()
        self.fn, self.opts = fn, opts

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Outcomes in task order; tasks are pulled one at a time."""
        for task in tasks:
            yield run_batch(self.fn, task, self.opts)

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        return run_batch(self.fn, task, self.opts)
