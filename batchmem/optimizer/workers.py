"""How many worker processes fit under a memory target: baselines first, then a batch each.

Each worker process holds its own interpreter, imports and setup state before its first batch (its
*baseline*: a worker that imports pandas holds ~100 MiB), and the parent holds its own. Under a memory
limit those baselines are paid once per process, whatever the batch size, so the room left for
batches is ``target - parent - workers x worker baseline``, shared by the batches in flight. When that
room cannot hold one useful batch per worker, more workers only make every batch smaller: a run on
two workers whose baselines filled the target cut most of its batches to one row and ran ~30x slower
than one process (``benchmarks/bench_parallel_fit.py``). Fewer workers, each with room for a batch
at the time aim, are then faster.

Pure functions, no I/O: the readings come from the caller (:mod:`batchmem.backends.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..units import format_bytes

__all__ = ["WorkerFit", "workers_that_fit"]


def workers_that_fit(
    requested: int, *, target_bytes: float, parent_bytes: float, worker_bytes: float, batch_bytes: float = 0.0
) -> int:
    """The most workers, between 1 and ``requested``, with ``parent + k x (worker + batch) <= target``.

    Args:
        requested: workers asked for (``n_jobs``), >= 1.
        target_bytes: the memory target, bytes (``memory_target_fraction x limit``).
        parent_bytes: what the parent process holds, bytes (resident set size).
        worker_bytes: what one worker holds before its first batch (after setup), bytes.
        batch_bytes: peak bytes of one batch at the time aim (0 when not measured yet: baselines only).

    One worker always "fits": a run that cannot hold even one is the up-front limit check's to stop.
    """
    per_worker = max(0.0, worker_bytes) + max(0.0, batch_bytes)
    if per_worker <= 0:
        return max(1, requested)
    return max(1, min(requested, int((target_bytes - parent_bytes) // per_worker)))


@dataclass(frozen=True)
class WorkerFit:
    """A decision on the number of workers, with the figures it was made from (bytes)."""

    requested: int
    workers: int
    limit_bytes: int
    parent_bytes: float
    worker_bytes: float
    batch_bytes: float = 0.0

    @classmethod
    def decide(
        cls,
        requested: int,
        *,
        limit_bytes: int,
        target_fraction: float,
        parent_bytes: float,
        worker_bytes: float,
        batch_bytes: float = 0.0,
    ) -> WorkerFit:
        """Decide from the readings; ``target_fraction`` of ``limit_bytes`` is the memory target."""
        workers = workers_that_fit(
            requested,
            target_bytes=target_fraction * limit_bytes,
            parent_bytes=parent_bytes,
            worker_bytes=worker_bytes,
            batch_bytes=batch_bytes,
        )
        return cls(requested, workers, limit_bytes, parent_bytes, worker_bytes, batch_bytes)

    @property
    def fewer(self) -> bool:
        """True when fewer workers than requested fit."""
        return self.workers < self.requested

    def message(self) -> str:
        """One line: what was requested, what fits and why, e.g. ``n_jobs=2 requested; 1 fits under
        1.0GiB (each worker holds 210MiB before its first batch); running 1``."""
        why = f"each worker holds {format_bytes(self.worker_bytes)} before its first batch"
        if self.batch_bytes > 0:
            why += f" and a batch at the time aim needs {format_bytes(self.batch_bytes)}"
        return (
            f"n_jobs={self.requested} requested; {self.workers} fit{'s' if self.workers == 1 else ''} under "
            f"{format_bytes(self.limit_bytes)} ({why}; the parent holds {format_bytes(self.parent_bytes)}); "
            f"running {self.workers}"
        )
