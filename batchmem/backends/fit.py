"""Start no more worker processes than fit under the memory target, and say so once.

The figures are measured, not guessed: each worker's resident bytes once it has run its setup (the
empty batch :meth:`~batchmem.backends.pool.PoolExecutor.start` submits), the parent's, and then, once
the first batch comes back, the workers' resident bytes again (a worker keeps some of the heap a batch
used) and that batch's peak grown to the time aim. The decision itself is
:func:`batchmem.heap.fit.workers_that_fit`; ``n_jobs="auto"`` sizes its workers from the same figures
(:func:`batch_peak_at_aim`).
"""

from __future__ import annotations

import dataclasses
import logging

from ..errors import ConfigError
from ..heap.fit import WorkerFit
from ..heap.monitor import current_rss_bytes
from .base import Executor
from .watchdog import statm_rss_bytes
from .worker import BatchOutcome

__all__ = ["WorkersDoNotFitError", "batch_peak_at_aim", "fit_workers"]

logger = logging.getLogger("batchmem")


class WorkersDoNotFitError(ConfigError):
    """``n_jobs_strict``: fewer worker processes than ``n_jobs`` fit under the memory target (exit 2)."""


def batch_peak_at_aim(out: BatchOutcome, aim_s: float, batched: bool) -> float:
    """Predicted peak bytes of the batch of ``out`` grown to last ``aim_s`` seconds.

    A batched function may hold all of its items at once, so its peak grows with the batch. A per-item
    function frees an item's transient memory before the next one starts: what grows with the batch is
    only the results it keeps (their encoded bytes stand in for them). The free heap counted into the
    measured peak (:func:`~batchmem.backends.worker.run_batch`) is left out: it belongs to the process
    the batch ran in, and is in that process's baseline.
    """
    growth = max(1.0, aim_s / out.duration_s) if out.duration_s > 0 else 1.0
    own = max(0, out.peak_bytes - out.free_heap_bytes)
    return own * growth if batched else own + len(out.payload) * (growth - 1)


def fit_workers(
    executor: Executor, *, limit_bytes: int, target_fraction: float, aim_s: float, batched: bool, strict: bool
) -> str | None:
    """Measure the started workers' baselines and shrink ``executor`` to the workers that fit; then do
    the same once the first batch is measured. Returns the up-front decision's message, or None.

    Raises :class:`WorkersDoNotFitError` (``strict``) instead of running fewer workers.
    """
    pids = executor.wait_started()
    requested = executor.in_flight
    if len(pids) < 2 or requested < 2:
        return None

    def decide(batch_bytes: float) -> WorkerFit:
        # Measured each time: a worker that ran a batch holds more than its baseline (the heap it keeps).
        worker = max((statm_rss_bytes(pid) or 0) for pid in executor.worker_pids() or pids)
        fit = WorkerFit.decide(
            requested,
            limit_bytes=limit_bytes,
            target_fraction=target_fraction,
            parent_bytes=current_rss_bytes(),
            worker_bytes=worker,
            batch_bytes=batch_bytes,
        )
        return dataclasses.replace(fit, workers=min(fit.workers, executor.in_flight))

    def refit(outcome: BatchOutcome) -> int | None:
        fit = decide(batch_peak_at_aim(outcome, aim_s, batched))
        if fit.workers >= executor.in_flight:
            return None
        executor.fit_note = fit.message()
        return _apply(fit, strict)

    executor.refit = refit
    fit = decide(0.0)
    if not fit.fewer:
        return None
    executor.resize(_apply(fit, strict), fit.message())
    return fit.message()


def _apply(fit: WorkerFit, strict: bool) -> int:
    if strict:
        raise WorkersDoNotFitError(
            fit.message().replace("; running", "; would run"),
            python_fix=" (raise memory_limit, lower n_jobs, or leave n_jobs_strict=False to run fewer)",
            cli_fix=" (raise batching.memory_limit, lower execution.n_jobs, or set execution.n_jobs_strict: false)",
        )
    logger.warning("batchmem: %s", fit.message())
    return fit.workers
