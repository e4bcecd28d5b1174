"""Run batches on a dask.distributed cluster through joblib's dask backend.

batchmem does not schedule anything itself on a cluster: each batch is one
joblib task, and joblib's ``"dask"`` backend (``joblib.parallel_config("dask",
client=...)``) submits it to the cluster's scheduler. What this module adds:

* which ``Client`` to use (:func:`resolve_client`): the one passed in, one
  connected to ``scheduler_address``, or the default client
  (:func:`distributed.default_client`);
* the limit the optimizer plans against (:func:`cluster_memory`): the
  smallest ``memory_limit`` the scheduler reports for its workers
  (``Client.scheduler_info()["workers"][address]["memory_limit"]``, bytes,
  the limit each worker's nanny enforces), with source ``"dask_worker"``;
* per-worker setup as a dask :class:`~distributed.WorkerPlugin`, so the setup
  runs on every worker when the run starts (and on workers that join later),
  and its teardown when the run ends;
* :class:`DaskExecutor`, the executor the run loop uses for ``backend="dask"``.

Peak bytes are measured by :func:`batchmem.backends.worker.run_batch` inside the
worker process that runs the batch, exactly as for loky workers.

Requires the ``dask`` extra (``pip install "batchmem[dask]"``); without it
:func:`import_distributed` raises a one-line :class:`~batchmem.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .joblib_backend import BatchOutcome, JoblibExecutor, RunOptions
from .worker_setup import WorkerSetup
from ..heap.monitor import MemoryLimit, PressureLevel, PressureThresholds

__all__ = ["ClusterMemory", "DaskExecutor", "cluster_memory", "import_distributed", "resolve_client"]

logger = logging.getLogger("batchmem")

#: Message of the error raised when dask.distributed is missing (names the extra to install).
MISSING_DASK = 'backend: "dask" needs dask.distributed, which is not installed; pip install "batchmem[dask]"'

#: Seconds to wait for a scheduler connection (``Client(address, timeout=...)``).
CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for at least one worker when the scheduler has none yet.
WAIT_FOR_WORKERS_S = 30.0


def import_distributed() -> Any:
    """Import and return :mod:`distributed`; ConfigError naming the ``dask`` extra when it is missing."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(MISSING_DASK) from None
    return distributed


def resolve_client(client: Any = None, scheduler_address: str | None = None) -> tuple[Any, bool]:
    """The dask ``Client`` to run on, and whether batchmem created it (and must close it).

    Order: ``client`` if given; else a client connected to
    ``scheduler_address`` (the default client is reused when it is already
    connected there); else :func:`distributed.default_client`.

    Raises ConfigError when the scheduler cannot be reached within
    :data:`CONNECT_TIMEOUT_S` seconds, or when there is no client at all.
    """
    distributed = import_distributed()
    if client is not None:
        return client, False
    if scheduler_address is not None:
        try:
            default = distributed.default_client()
            if default.scheduler is not None and default.scheduler.address == scheduler_address:
                return default, False
        except ValueError:
            pass
        try:
            return distributed.Client(scheduler_address, timeout=CONNECT_TIMEOUT_S, set_as_default=False), True
        except (OSError, TimeoutError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(
                f"scheduler_address: cannot connect to {scheduler_address} within {CONNECT_TIMEOUT_S:g} s ({reason}); "
                "start `dask scheduler` there or fix the address"
            ) from None
    try:
        return distributed.default_client(), False
    except ValueError:
        raise ConfigError(
            'backend: "dask" needs a dask.distributed Client; create one first (Client(...)), '
            "or pass client= or scheduler_address="
        ) from None


@dataclass(frozen=True)
class ClusterMemory:
    """What the scheduler reports about its workers' memory and threads.

    ``limit`` is the smallest worker ``memory_limit`` (bytes; source
    ``"dask_worker"``), or None when every worker is unlimited
    (``memory_limit`` 0/None). ``threads`` is the sum of worker ``nthreads``
    (batches the cluster runs at once), ``threads_per_worker`` the largest
    ``nthreads`` of one worker (batches that share one worker's memory),
    ``rss_bytes`` the largest worker's resident bytes now (scheduler metrics).
    """

    workers: int
    threads: int
    threads_per_worker: int
    limit: MemoryLimit | None
    rss_bytes: int


def cluster_memory(client: Any, wait_s: float = WAIT_FOR_WORKERS_S) -> ClusterMemory:
    """Read worker limits and threads from ``client.scheduler_info()``; wait up to ``wait_s`` seconds for a worker.

    Raises ConfigError when no worker connects in time.
    """
    info = client.scheduler_info(n_workers=-1)
    if not info.get("workers"):
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except (TimeoutError, asyncio.TimeoutError):
            raise ConfigError(
                f"scheduler_address: no dask worker connected to {client.scheduler.address} within {wait_s:g} s; "
                "start workers with `dask worker <scheduler address>`"
            ) from None
        info = client.scheduler_info(n_workers=-1)
    workers = info["workers"].values()
    limits = [int(w["memory_limit"]) for w in workers if w.get("memory_limit")]
    threads = [int(w.get("nthreads", 1)) for w in workers]
    rss = [int(w.get("metrics", {}).get("memory", 0) or 0) for w in workers]
    return ClusterMemory(
        workers=len(threads),
        threads=max(1, sum(threads)),
        threads_per_worker=max(1, max(threads)),
        limit=MemoryLimit(bytes=min(limits), source="dask_worker") if limits else None,
        rss_bytes=max(rss, default=0),
    )


def _setup_plugin(setup: WorkerSetup) -> Any:
    """A :class:`distributed.WorkerPlugin` running ``setup`` on each worker, ``teardown`` when removed.

    The state lands in the worker process's setup cache (the same one
    :func:`~batchmem.backends.worker.run_batch` reads), so batches find it ready.
    Setup and teardown run in a thread, not on the worker's event loop, so
    a slow setup (loading a model) does not stall heartbeats.
    """
    from distributed import WorkerPlugin

    class BatchmemSetup(WorkerPlugin):
        def __init__(self, worker_setup: WorkerSetup):
            self.worker_setup = worker_setup
            self.name = f"batchmem-setup-{worker_setup.token}"

        async def setup(self, worker: Any) -> None:
            await asyncio.get_running_loop().run_in_executor(None, self.worker_setup.state)

        async def teardown(self, worker: Any) -> None:
            await asyncio.get_running_loop().run_in_executor(None, self.worker_setup.release)

    return BatchmemSetup(setup)


class DaskExecutor(JoblibExecutor):
    """Runs each batch as one joblib task on a dask cluster (joblib's ``"dask"`` backend).

    ``in_flight`` is the cluster's total worker threads (batches at once).
    The optimizer plans one worker's memory: limit = smallest worker
    ``memory_limit`` from the scheduler (unless the user set
    ``memory_limit``), baseline = the largest worker resident bytes seen at
    the start of a batch, batches sharing it = that worker's threads (see
    :meth:`memory_plan`). Results come back in task order.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        opts: RunOptions,
        client: Any = None,
        scheduler_address: str | None = None,
        pre_dispatch: str = "2*n_jobs",
    ):
        import joblib

        self.opts = opts
        self.client, self._owns_client = resolve_client(client, scheduler_address)
        self._plugin_name: str | None = None
        try:
            self.cluster = cluster_memory(self.client)
            with joblib.parallel_config(backend="dask", client=self.client):
                super().__init__(fn, opts, n_jobs=-1, backend=None, pre_dispatch=pre_dispatch)
            if opts.setup is not None:
                plugin = _setup_plugin(opts.setup)
                self.client.register_plugin(plugin, name=plugin.name)
                self._plugin_name = plugin.name
        except BaseException:
            self.close()
            raise
        self.backend = "dask"
        self.n_jobs = self.in_flight = self.cluster.threads
        self.memory_limit = self.cluster.limit
        self._worker_rss: dict[int, int] = {}  # worker pid -> resident bytes at its last batch start
        logger.info(
            "dask: %d workers, %d threads, worker memory limit %s bytes",
            self.cluster.workers, self.cluster.threads, self.memory_limit.bytes if self.memory_limit else "none",
        )

    def _parallel(self, **kw: Any) -> Any:
        import joblib

        with joblib.parallel_config(backend="dask", client=self.client):
            return joblib.Parallel(n_jobs=-1, batch_size=1, return_as="generator", **kw)

    def memory_plan(
        self, outcome: BatchOutcome | None, rss_bytes: int, pressure: PressureLevel, thresholds: PressureThresholds
    ) -> tuple[int, PressureLevel, int]:
        """Plan against one worker: its resident bytes, its pressure, its threads.

        Baseline: the largest resident bytes any worker had at the start of
        its last batch (measured in the worker; before the first batch the
        scheduler's figure). Pressure: the higher of this machine's level
        (``pressure``, from the local sample) and the worker's level, from
        (start + peak bytes of the batch) / worker limit. In flight: the
        threads of one worker, since batches on other workers do not share
        its memory.
        """
        if outcome is not None and outcome.pid:
            self._worker_rss[outcome.pid] = outcome.start_rss_bytes
        baseline = max(self._worker_rss.values(), default=self.cluster.rss_bytes)
        if self.memory_limit is not None and outcome is not None:
            worker_level = thresholds.level((outcome.start_rss_bytes + outcome.peak_bytes) / self.memory_limit.bytes)
            pressure = max(pressure, worker_level)
        return baseline, pressure, self.cluster.threads_per_worker

    def close(self) -> None:
        """Remove the setup plugin (its teardown runs on every worker) and close a client batchmem created."""
        try:
            if self._plugin_name is not None:
                try:
                    self.client.unregister_worker_plugin(self._plugin_name)
                except Exception:  # a worker that died already has nothing to tear down
                    logger.warning("dask: removing worker plugin %s failed", self._plugin_name, exc_info=True)
                self._plugin_name = None
            self._release_setup()  # a client sharing this process with its workers (processes=False)
        finally:
            if self._owns_client:
                self.client.close()
                self._owns_client = False
