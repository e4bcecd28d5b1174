"""Outcomes that must be split: a batch that hit MemoryError, a failing batched call or a dead worker.

:class:`Splits` turns such an outcome into final ones, in input order: the batch is
run again in halves (each half alone in a fresh worker after a death, so a second
death names its half), recursively, until a single item that still fails on its own
becomes that item's failure. The run loop (:mod:`batchmem.run`) commits what it yields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from .backends import BatchOutcome, BatchTask, Executor
from .backends.item_timeout import OVERDUE, item_timeout_error
from .errors import WorkerDiedError
from .io.sinks import NULL_LINE, error_record
from .stats import RunStats

__all__ = ["Splits"]

logger = logging.getLogger("batchmem")


class Splits:
    """Resolves outcomes marked ``split`` by re-running their batch in halves on ``executor``.

    ``on_error`` is the run's policy (``"raise"`` makes a lone failing item the run's error);
    ``item_timeout`` (seconds, or None) names the setting when a lone item was stopped past it;
    ``on_memory_error(task)`` is called when a batch ran out of memory and its halves fit, a
    property of the batch size that the optimizer learns from. ``stats.memory_errors`` counts them.
    """

    def __init__(
        self,
        executor: Executor,
        stats: RunStats,
        on_error: str,
        on_memory_error: Callable[[BatchTask], None],
        item_timeout: float | None = None,
    ):
        self.executor, self.stats, self.on_error, self.on_memory_error = executor, stats, on_error, on_memory_error
        self.item_timeout = item_timeout

    def resolve(self, task: BatchTask, outcome: BatchOutcome) -> Iterator[BatchOutcome]:
        """Yield final outcomes in order, halving batches that hit MemoryError, a failing batched
        call or a dead worker; a single item that does so on its own is that item's failure."""
        outcome.weight = task.weight
        if not outcome.split:
            yield outcome
            return
        if len(task) == 1:
            yield self._single_item_failure(task, outcome)
            return
        if outcome.split == "memory":
            self.stats.memory_errors += 1
            logger.warning(
                "MemoryError in a batch of %d items (items %d..); retrying it in halves", len(task), task.start
            )
        elif outcome.split == "worker_died":
            logger.warning(
                "worker died (%s) running a batch of %d items (items %d..); retrying it in halves in fresh workers",
                outcome.worker_exit,
                len(task),
                task.start,
            )
        halves = task.halves()
        if outcome.split == "worker_died":  # each half alone in a worker: a death names its half
            subs = [self.executor.run_isolated(h) for h in halves]
        else:
            subs = self.executor.run_now(list(halves))
        # SIGKILL (the kernel's OOM killer) or the watchdog's kill: out of memory
        out_of_memory = outcome.split == "memory" or "SIGKILL" in outcome.worker_exit or "OOM" in outcome.worker_exit
        if out_of_memory and not any(sub.split for sub in subs):
            # The batch did not fit and its halves did: a property of the batch size, not of one item.
            self.on_memory_error(task)
        for half, sub in zip(halves, subs, strict=True):
            yield from self.resolve(half, sub)

    def _single_item_failure(self, task: BatchTask, outcome: BatchOutcome) -> BatchOutcome:
        """The outcome of one item that raised MemoryError or killed its worker on its own."""
        timed_out = outcome.split == "worker_died" and outcome.worker_exit.startswith(OVERDUE)
        if timed_out:  # stuck past item_timeout on its own (inside C: the in-place timer could not stop it)
            err: BaseException = item_timeout_error(task.start, self.item_timeout or 0.0)
            logger.warning("item %d alone: %s; recorded as failed", task.start, outcome.worker_exit)
        elif outcome.split == "worker_died":
            how = outcome.worker_exit
            if how.startswith("killed by"):  # the OOM watchdog, or the kernel at a worker cgroup's limit
                err = WorkerDiedError(f"item {task.start} alone: worker {how}")
            else:
                err = WorkerDiedError(
                    f"worker died ({how}) while running item {task.start} on its own (os._exit, a signal such as "
                    "the OOM killer's SIGKILL, or a crash in a C extension)"
                )
            logger.warning("item %d killed its worker on its own (%s); recorded as failed", task.start, how)
        elif outcome.split == "memory":
            self.stats.memory_errors += 1
            err = MemoryError(f"item {task.start} raised MemoryError on its own")
        else:
            err = RuntimeError(f"item {task.start} failed on its own")
        out = BatchOutcome(task.index, task.start, 1, duration_s=outcome.duration_s, timeouts=int(timed_out))
        if self.on_error == "raise":
            out.error = (task.start, err)
        else:
            out.failed, out.payload, out.results = 1, NULL_LINE, [None]
            out.error_records.append(error_record(task.start, task.items[0], err, 1))
        return out
