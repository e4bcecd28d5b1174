"""The executor contract: what the run loop asks of every execution backend.

Modelled on joblib's ``ParallelBackendBase`` (``joblib/_parallel_backends.py``):
one small interface, documented method by method, that the in-process,
joblib (loky, threading) and dask backends each satisfy and that a user can
implement to plug in another (see :func:`batchmem.backends.register_backend`).

Batch sizing is not an executor's business (as joblib keeps it in
``AutoBatchingMixin``): an executor runs the :class:`BatchTask` it is given,
measures it where it runs (:func:`batchmem.backends.worker.run_batch`) and
hands back a :class:`BatchOutcome`. It may only ask for shorter batches for
a while (``batch_seconds_cap``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..heap.monitor import MemoryLimit, PressureLevel, PressureThresholds
from .worker import BatchOutcome, BatchTask, RunOptions

__all__ = ["Executor", "ExecutorBase", "ExecutorInfo", "Planning"]


@dataclass(frozen=True)
class ExecutorInfo:
    """What a run reports about its executor (``RunStats.backend``, ``n_jobs``, ``n_jobs_choice``).

    Attributes:
        backend: the registered name the executor was built from (``"auto"`` for ``n_jobs="auto"``).
        n_jobs: batches that run at once, items of parallelism (a dask cluster: its worker threads).
        choice: how an adaptive executor chose ``n_jobs``, and why ("" when nothing was chosen).
    """

    backend: str
    n_jobs: int
    choice: str = ""


def _no_room() -> float | None:
    return None


def _no_hint() -> int | None:
    return None


@dataclass(frozen=True)
class Planning:
    """What the run knows that an adaptive executor (``n_jobs="auto"``, :mod:`.auto`) plans with.

    Attributes:
        memory_room: bytes the batches in flight may still fill (target minus baseline; None: no limit).
        aim_s: the batch duration the optimizer aims for, seconds.
        last_workers: workers this operation's last run chose (its history), asked once; None: unknown.
    """

    memory_room: Callable[[], float | None] = _no_room
    aim_s: float = 1.0
    last_workers: Callable[[], int | None] = _no_hint


@runtime_checkable
class Executor(Protocol):
    """The interface of an execution backend.

    Attributes:
        in_flight: batches that run at once (workers x threads), items of parallelism
            the optimizer divides its memory budget by.
        memory_limit: the limit batches are planned against when it is not this
            machine's (dask: the workers' limit); None for the local limit.
        worker_deaths: worker processes found dead during the run (count).
        recycles: times the worker processes were replaced (count), with
            ``recycle_reasons`` saying why.
        max_tasks_per_worker: replace the workers after this many batches each (None: never).
        watchdog_kills: worker processes the OOM watchdog killed (count).
        local_memory: True when batches run in this machine's process tree, so its resident
            set size (RSS) is theirs; False for remote workers (dask), whose peaks are measured
            in the worker and reported per worker.
        batch_seconds_cap: longest batch the run loop should cut now, seconds (None: as the
            optimizer says). ``n_jobs="auto"`` sets it while its workers start, so that the batch
            running in-process ends soon after they are up.
        backend_name: the registered name it was built from (:func:`batchmem.backends.make_executor`
            sets it), reported by :meth:`describe`.
        processes: True when batches run in worker processes this machine starts (their memory is
            planned for before the run); False in-process, in threads or on a cluster.
        worker_cgroups: give each worker process a memory cgroup of its own where the hierarchy is
            writable (:mod:`batchmem.backends.worker_cgroups`); set before :meth:`guard_memory`.
        memory_accounting: how batches were measured: ``"rss"``, their process's resident set growth,
            or ``"worker_cgroups"``, their worker's cgroup charge, which also holds tmpfs and page cache.
    """

    opts: RunOptions
    backend_name: str
    in_flight: int
    memory_limit: MemoryLimit | None
    worker_deaths: int
    recycles: int
    recycle_reasons: list[str]
    max_tasks_per_worker: int | None
    local_memory: bool
    watchdog_kills: int
    batch_seconds_cap: float | None
    backend_name: str
    processes: bool
    worker_cgroups: bool
    memory_accounting: str

    def start(self) -> None:
        """Start the workers now, without waiting for them, so they boot (and run the setup) while
        the caller opens its files and cuts the first batch; a no-op where batches run in this process."""
        ...

    def describe(self) -> ExecutorInfo:
        """The backend's name, the batches at once and (adaptive executors) what was chosen and why."""
        ...

    def history_extras(self) -> dict[str, Any]:
        """Figures to keep in the operation's history for its next run (``n_jobs="auto"``: the workers)."""
        ...

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Run ``tasks`` (pulled lazily) and yield their outcomes in task order.

        A task whose worker died comes back with ``split="worker_died"``; it never raises for that.
        """
        ...

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        """Run a few tasks at once (the halves of a split batch); outcomes in order."""
        ...

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` alone, so that a worker death names it (``split="worker_died"``)."""
        ...

    def memory_plan(
        self, outcome: BatchOutcome | None, rss_bytes: int, pressure: PressureLevel, thresholds: PressureThresholds
    ) -> tuple[int, PressureLevel, int]:
        """Baseline (bytes), pressure and batches sharing one memory budget, for the optimizer."""
        ...

    def request_recycle(self, reason: str) -> bool:
        """Replace the worker processes once the batches dispatched finish; False if this backend cannot."""
        ...

    def wait_started(self, timeout_s: float = 60.0) -> list[int]:
        """Wait until the worker processes started before the run have run their setup; their pids
        (empty where batches run in this process)."""
        ...

    def resize(self, workers: int, reason: str) -> bool:
        """Run at most ``workers`` batches at once from now on (fewer workers fit under the memory
        target, :mod:`batchmem.backends.fit`); False where the count cannot change."""
        ...

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (empty for in-process backends)."""
        ...

    def guard_memory(self, limit_bytes: int, terminate_fraction: float) -> None:
        """Kill the worker holding the most memory when the tree passes ``terminate_fraction`` of
        ``limit_bytes`` (the OOM watchdog, :mod:`batchmem.backends.watchdog`); a no-op where batches
        run in this process."""
        ...

    def cancel(self) -> None:
        """Abandon the batches in flight now (a stop whose grace period ran out): terminate
        the worker processes or cancel the futures. ``map`` then ends without their outcomes."""
        ...

    def close(self) -> None:
        """Release workers, clients and per-worker state; safe to call twice."""
        ...


class ExecutorBase:
    """Defaults for the parts of :class:`Executor` a simple backend does not need."""

    opts: RunOptions
    in_flight: int = 1
    memory_limit: MemoryLimit | None = None
    max_tasks_per_worker: int | None = None
    local_memory: bool = True
    watchdog_kills: int = 0
    batch_seconds_cap: float | None = None
    worker_cgroups: bool = True
    memory_accounting: str = "rss"
    #: Called with the first outcome a worker returns: the workers that fit once a batch is measured.
    refit: Callable[[BatchOutcome], int | None] | None = None
    #: Why fewer workers run than ``n_jobs`` asked for ("" when as many as asked), for the stats.
    fit_note: str = ""
    backend_name: str = "custom"
    processes: bool = False

    def __init__(self) -> None:
        self.worker_deaths = 0
        self.recycles = 0
        self.recycle_reasons: list[str] = []

    def start(self) -> None:
        return None

    def describe(self) -> ExecutorInfo:
        return ExecutorInfo(self.backend_name, self.in_flight, self.fit_note)

    def history_extras(self) -> dict[str, Any]:
        return {}

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        return [self.run_isolated(t) for t in tasks]

    def memory_plan(
        self, outcome: BatchOutcome | None, rss_bytes: int, pressure: PressureLevel, thresholds: PressureThresholds
    ) -> tuple[int, PressureLevel, int]:
        """The local process tree's resident bytes and pressure as sampled, and ``in_flight``.

        Less the free heap the batch's process held when it ended: the next batch there counts
        those bytes in its peak (:func:`~batchmem.backends.worker.run_batch`), so the baseline
        must not count them a second time.
        """
        reusable = outcome.free_heap_end_bytes if outcome is not None else 0
        return max(0, rss_bytes - reusable), pressure, self.in_flight

    def request_recycle(self, reason: str) -> bool:
        return False

    def wait_started(self, timeout_s: float = 60.0) -> list[int]:
        return []

    def resize(self, workers: int, reason: str) -> bool:
        return False

    def worker_pids(self) -> list[int]:
        return []

    def guard_memory(self, limit_bytes: int, terminate_fraction: float) -> None:
        return None

    def cancel(self) -> None:
        return None

    def _release_setup(self) -> None:
        """Tear down the setup state held in this process (serial and threading runs)."""
        if self.opts.setup is not None:
            self.opts.setup.release()

    def close(self) -> None:
        self._release_setup()
