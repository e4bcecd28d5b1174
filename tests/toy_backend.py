"""A toy execution backend and the functions its tests run, defined outside the batchmem package.

It runs every batch in this process through :func:`batchmem.backends.run_batch` and counts them;
:meth:`ToyExecutor.describe` reports the count, so a run's stats show that this executor ran it.
``tests/test_extending.py`` registers it with :func:`batchmem.backends.register_backend` (Python)
and as a ``batchmem.backends`` entry point (a job file); see docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from batchmem.backends import BatchOutcome, BatchTask, ExecutorBase, ExecutorInfo, RunOptions, run_batch
from batchmem.options import Execution


class ToyExecutor(ExecutorBase):
    """Batches one after another in this process; ``batches`` counts them."""

    def __init__(self, fn: Callable[..., Any], opts: RunOptions, execution: Execution):
        super().__init__()
        self.fn, self.opts, self.execution = fn, opts, execution
        self.batches = 0

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        for task in tasks:
            yield self.run_isolated(task)

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        self.batches += 1
        return run_batch(self.fn, task, self.opts)

    def describe(self) -> ExecutorInfo:
        return ExecutorInfo(self.backend_name, self.in_flight, f"toy: {self.batches} batches")


def toy_factory(fn: Callable[..., Any], opts: RunOptions, execution: Execution) -> ToyExecutor:
    """The factory registered as ``"toy"``: ``(fn, opts, execution) -> Executor``."""
    return ToyExecutor(fn, opts, execution)


def double(x: int) -> int:
    return 2 * x


def numbers(n: int = 50) -> range:
    return range(n)
