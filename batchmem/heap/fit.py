"""Does a job fit under its memory limit at all? The check made before the first batch.

The batches of a run get what is left of the memory target (``memory_target_fraction`` of the limit)
once the process tree holds its baseline: the interpreter, the function's imports, the setup's state,
the first item, and the same again in each worker process. A baseline at or above the target leaves
no batch any room: the run would wait in emergency and stop after an item or two. So it is refused
up front, before anything is dispatched or written, and the first fix named is the one that can help:
a larger ``memory_limit``.

Worker processes each hold their own interpreter, imports and setup state before their first batch
(a worker that imports pandas holds ~100 MiB), paid once per process whatever the batch size. When
the room left after the baselines cannot hold a batch at the time aim in each worker, more workers
only make every batch smaller: two workers whose baselines filled the target cut most batches to one
row and ran ~30x slower than one process (``benchmarks/bench_parallel_fit.py``). Fewer workers, each
with room for a batch at the aim, are then faster: :func:`workers_that_fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LimitTooSmallError
from ..units import format_bytes

__all__ = ["WorkerFit", "check_fits", "suggested_limit_bytes", "workers_that_fit"]

_MiB = 2**20


def suggested_limit_bytes(held_bytes: int, target_fraction: float) -> int:
    """A limit whose memory target holds ``held_bytes`` with as much again for the batches, in bytes
    rounded up to 64 MiB (a value a user types)."""
    need = 2 * held_bytes / target_fraction
    return math.ceil(need / (64 * _MiB)) * 64 * _MiB


def check_fits(
    held_bytes: int, workers: int, limit_bytes: int, target_fraction: float, *, limit_source: str = ""
) -> None:
    """Raise :class:`~batchmem.errors.LimitTooSmallError` when the baseline passes the memory target.

    ``held_bytes``: what this process holds after importing the function, running the setup and
    pulling the first item (bytes). ``workers``: worker processes the run will start; each is counted
    as holding ``held_bytes`` too, a first estimate (a worker imports the same function and runs the
    same setup, but not the parts of this process that only the parent needs). ``limit_bytes`` and
    ``target_fraction`` (of the limit, (0, 1]) give the target. The message names the figures and,
    first, a ``memory_limit`` that fits.
    """
    total = held_bytes * (1 + workers)
    target = target_fraction * limit_bytes
    if total < target:
        return
    each = f" plus about as much in each of its {workers} worker processes" if workers > 1 else ""
    each = each or (" plus about as much in its worker process" if workers else "")
    each += f", {format_bytes(total)} in all" if workers else ""
    new = f"{suggested_limit_bytes(total, target_fraction) // _MiB}MiB"
    source = f" ({limit_source})" if limit_source else ""
    raise LimitTooSmallError(
        f"memory_limit: {format_bytes(limit_bytes)}{source} is too small for this job: the process holds "
        f"{format_bytes(held_bytes)} with the function, setup and first item loaded{each}, and its batches "
        f"may fill only {format_bytes(target)} "
        f"({target_fraction:.0%} of the limit); raise memory_limit",
        python_fix=f" (e.g. memory_limit='{new}'), or load less in the setup",
        cli_fix=f" (e.g. --set batching.memory_limit={new}), or load less in the setup",
    )


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
            why = f"each worker holds {format_bytes(self.worker_bytes)} after its first batch"
            why += f" and a batch at the time aim needs {format_bytes(self.batch_bytes)}"
        return (
            f"n_jobs={self.requested} requested; {self.workers} fit{'s' if self.workers == 1 else ''} under "
            f"{format_bytes(self.limit_bytes)} ({why}; the parent holds {format_bytes(self.parent_bytes)}); "
            f"running {self.workers}"
        )
