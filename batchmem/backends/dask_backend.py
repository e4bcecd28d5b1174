"""Run batches on a dask.distributed cluster, as futures batchmem owns.

Each batch is one task submitted with ``client.submit``; :meth:`DaskExecutor.map`
keeps at most ``in_flight + 1`` of them ahead of the results and waits for the
oldest, so outcomes come back in input order, each batch is sized with fresh
feedback, and a failed or lost task always comes back as an outcome, never as
an endless wait. What this module adds to that:

* which ``Client`` to use (:func:`resolve_client`): the one passed in, one
  connected to ``scheduler_address`` (checked first with a plain TCP connect, so
  a refused connection fails at once and only a silent address waits for
  ``connect_timeout``), or the default client;
* the limit the optimizer plans against (:func:`cluster_memory`): the
  smallest worker ``memory_limit`` the scheduler reports (source ``"dask_worker"``);
* worker death handled as on loky: the scheduler's ``allowed-failures`` is set to 0
  for the run, so a task whose worker dies comes back as ``KilledWorker`` at once
  and goes through the worker-death path (halves, each alone); a worker lost under
  a running batch (SIGKILL from outside) is counted in ``worker_deaths`` too;
* per-worker setup as a :class:`~distributed.WorkerPlugin`;
* ``item_timeout``: a worker thread cannot be killed, so a batch stuck past its deadline where the
  in-place timer cannot reach (inside C) is cancelled and its worker restarted (needs a nanny:
  ``processes=True``), and the batch takes the worker-death path;
* quiet by default: distributed's warnings about lost workers and rescheduling
  are held back during a run (shown with ``-v``), and batchmem logs one line per death.

Requires the ``dask`` extra (``pip install "batchmem[dask]"``); without it
:func:`import_distributed` raises a one-line :class:`~batchmem.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, one_line
from ..heap.monitor import MemoryLimit, PressureLevel, PressureThresholds
from .base import ExecutorBase
from .item_timeout import batch_deadline_s, overdue_reason
from .joblib_backend import _died
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch
from .worker_setup import WorkerSetup

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


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to ``address`` (``tcp://host:port``): a refused connection fails
    at once, a silent address after ``timeout_s`` seconds. Raises a one-line ConfigError naming
    ``scheduler_address``. Other protocols (``inproc://``, ``tls://``...) are left to distributed."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else one_line(exc.strerror or exc)
        raise ConfigError(
            f"scheduler_address: cannot connect to {address} ({reason}); start `dask scheduler` there or fix the "
            "address"
        ) from None


def resolve_client(
    client: Any = None, scheduler_address: str | None = None, connect_timeout: float = CONNECT_TIMEOUT_S
) -> tuple[Any, bool]:
    """The dask ``Client`` to run on, and whether batchmem created it (and must close it).

    Order: ``client`` if given; else a client connected to ``scheduler_address``
    (:func:`check_reachable` first; the default client is reused when it is already
    connected there); else :func:`distributed.default_client`. Raises ConfigError
    when the scheduler cannot be reached, or when there is no client at all.
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
        check_reachable(scheduler_address, connect_timeout)
        try:
            return distributed.Client(scheduler_address, timeout=connect_timeout, set_as_default=False), True
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"scheduler_address: cannot connect to {scheduler_address} within {connect_timeout:g} s "
                f"({one_line(exc)}); start `dask scheduler` there or fix the address"
            ) from None
    try:
        return distributed.default_client(), False
    except ValueError:
        raise ConfigError(
            'backend: "dask" needs a dask.distributed Client; create one first (Client(...)), '
            "or pass client= or scheduler_address="
        ) from None


def describe_cluster(address: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> str:
    """``"2 workers, 2 threads, worker memory limit 1.0GiB"`` for the scheduler at ``address``
    (``batchmem validate``); the same one-line ConfigError as a run when it cannot be reached."""
    from ..units import format_bytes

    client, owned = resolve_client(None, address, connect_timeout)
    try:
        info = cluster_memory(client, wait_s=connect_timeout)
    finally:
        if owned:
            client.close()
    limit = format_bytes(info.limit.bytes) if info.limit else "none"
    return f"{info.workers} workers, {info.threads} threads, worker memory limit {limit}"


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


def _run_on_worker(fn: Callable[..., Any], task: BatchTask, opts: RunOptions) -> BatchOutcome:
    """:func:`run_batch` on a dask worker; the outcome names the worker's address."""
    from distributed import get_worker

    out = run_batch(fn, task, opts)
    out.worker = get_worker().address
    return out


#: How a batch whose worker died is described (distributed does not report the exit code to clients).
_KILLED = "its dask worker died (KilledWorker)"

#: Loggers whose warnings about lost workers, rescheduling and gathering are held back during a run.
_NOISY_LOGGERS = (
    "distributed.scheduler",
    "distributed.nanny",
    "distributed.worker",
    "distributed.core",
    "distributed.client",
    "distributed.comm",
    "distributed.utils_perf",
    "distributed.protocol",
)


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Raise distributed's loggers to ERROR for the run unless batchmem logs at DEBUG (``-v``)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class DaskExecutor(ExecutorBase):
    """Runs each batch as one task on a dask cluster (``client.submit``), outcomes in task order.

    ``in_flight`` is the cluster's total worker threads (batches at once). The
    optimizer plans one worker's memory: limit = smallest worker ``memory_limit``
    (unless the user set ``memory_limit``), baseline = the largest worker resident
    bytes seen at the start of a batch, batches sharing it = that worker's threads
    (see :meth:`memory_plan`).
    """

    local_memory = False

    def __init__(
        self,
        fn: Callable[..., Any],
        opts: RunOptions,
        client: Any = None,
        scheduler_address: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ):
        super().__init__()
        self.fn, self.opts = fn, opts
        self.client, self._owns_client = resolve_client(client, scheduler_address, connect_timeout)
        self._plugin_name: str | None = None
        self._saved_allowed_failures: int | None = None
        self._futures: deque[tuple[BatchTask, Any]] = deque()
        self._cancelled = False
        try:
            self.cluster = cluster_memory(self.client)
            if opts.setup is not None:
                plugin = _setup_plugin(opts.setup)
                self.client.register_plugin(plugin, name=plugin.name)
                self._plugin_name = plugin.name
            self._saved_allowed_failures = self.client.run_on_scheduler(_set_allowed_failures, 0)
        except BaseException:
            self.close()
            raise
        self.in_flight = self.cluster.threads
        self.memory_limit = self.cluster.limit
        self._workers = self._worker_addresses()
        self._worker_rss: dict[int, int] = {}  # worker pid -> resident bytes at its last batch start
        self._quiet = _quiet_distributed()
        self._quiet.__enter__()
        logger.info(
            "dask: %d workers, %d threads, worker memory limit %s bytes",
            self.cluster.workers,
            self.cluster.threads,
            self.memory_limit.bytes if self.memory_limit else "none",
        )

    def _worker_addresses(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _count_lost_workers(self) -> None:
        """Workers that left the cluster since the last look count as deaths (the scheduler re-runs
        their tasks elsewhere; with allowed-failures 0 a task that was running fails as KilledWorker)."""
        now = self._worker_addresses()
        lost = self._workers - now
        for address in sorted(lost):
            self.worker_deaths += 1
            logger.warning("batchmem: dask worker %s died; its batches are re-run", address)
        self._workers = now

    def _submit(self, task: BatchTask) -> Any:
        return self.client.submit(
            _run_on_worker,
            self.fn,
            task,
            self.opts,
            pure=False,
            key=f"batchmem-batch-{task.index}-{task.start}-{len(task)}-{id(task):x}",
        )

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchOutcome]:
        """Outcomes in task order, with at most ``in_flight + 1`` batches submitted ahead of them."""
        from distributed import KilledWorker

        it = iter(tasks)
        window = self._futures
        exhausted = False
        waited_for, since = None, 0.0  # the batch waited for, and since when (monotonic seconds)
        while not self._cancelled:
            while not exhausted and len(window) < self.in_flight + 1:
                task = next(it, None)
                if task is None:
                    exhausted = True
                    break
                window.append((task, self._submit(task)))
            if not window:
                return
            task, future = window[0]  # stays in the window while awaited, so cancel() reaches it
            if waited_for is not task:
                waited_for, since = task, time.monotonic()
            try:
                outcome = self._await(task, future, since)
            except KilledWorker:
                window.popleft()
                self._count_lost_workers()
                yield from self._after_death(task)
                continue
            except Exception:
                if self._cancelled:
                    return
                raise
            window.popleft()
            self._count_lost_workers()
            yield outcome

    def _after_death(self, task: BatchTask) -> Iterator[BatchOutcome]:
        if len(task) == 1:  # it may be innocent: run it alone to tell
            yield self.run_isolated(task)
        else:
            logger.warning(
                "a dask worker died running a batch of %d items (items %d..); retrying it in halves",
                len(task),
                task.start,
            )
            yield _died(task, _KILLED)

    def run_now(self, tasks: list[BatchTask]) -> list[BatchOutcome]:
        return [self.run_isolated(t) for t in tasks]

    def run_isolated(self, task: BatchTask) -> BatchOutcome:
        """Run ``task`` alone; a ``KilledWorker`` comes back as a ``split="worker_died"`` outcome."""
        from distributed import KilledWorker

        try:
            return self._await(task, self._submit(task), time.monotonic())
        except KilledWorker:
            self._count_lost_workers()
            return _died(task, _KILLED)

    def _await(self, task: BatchTask, future: Any, since: float) -> BatchOutcome:
        """The task's outcome. With ``item_timeout``, once the batch runs past its deadline (counted from
        ``since``, when it became the batch waited for) it is stuck where the in-place timer cannot reach
        (inside C): the task is cancelled and its worker restarted, since a thread cannot be killed, and
        the outcome is a worker death that the run loop retries in halves."""
        if not self.opts.item_timeout:
            return future.result()
        deadline = since + batch_deadline_s(self.opts.item_timeout, len(task))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (TimeoutError, asyncio.TimeoutError):
            pass
        address = self.client.run_on_scheduler(_processing_on, future.key)
        self.client.cancel([future], force=True)
        reason = f"{overdue_reason(task.start, len(task))}, task cancelled"
        try:
            if address:
                self.client.restart_workers([address])
                reason += f" and dask worker {address} restarted"
        except Exception as exc:  # no nanny (processes=False): the thread runs on
            logger.warning("batchmem: cannot restart dask worker %s (%s); its stuck thread runs on", address, exc)
        logger.warning("batchmem: %s", reason)
        return _died(task, reason)

    def cancel(self) -> None:
        """Cancel the futures in flight; ``map`` ends without their outcomes."""
        self._cancelled = True
        futures = [f for _, f in self._futures]
        if futures:
            self.client.cancel(futures, force=True)

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
        """Restore the scheduler's allowed-failures, remove the setup plugin (its teardown runs on every
        worker) and close a client batchmem created."""
        quiet = getattr(self, "_quiet", None)
        try:
            if self._saved_allowed_failures is not None:
                with contextlib.suppress(Exception):
                    self.client.run_on_scheduler(_set_allowed_failures, self._saved_allowed_failures)
                self._saved_allowed_failures = None
            if self._plugin_name is not None:
                try:
                    self.client.unregister_worker_plugin(self._plugin_name)
                except Exception:  # a worker that died already has nothing to tear down
                    logger.warning("dask: removing worker plugin %s failed", self._plugin_name, exc_info=True)
                self._plugin_name = None
            self._release_setup()  # a client sharing this process with its workers (processes=False)
        finally:
            if quiet is not None:
                quiet.__exit__(None, None, None)
                self._quiet = None
            if self._owns_client:
                self.client.close()
                self._owns_client = False


def _processing_on(key: str, dask_scheduler: Any = None) -> str | None:
    """On the scheduler: the address of the worker running task ``key`` (None if none is)."""
    ts = dask_scheduler.tasks.get(key)
    return ts.processing_on.address if ts is not None and ts.processing_on is not None else None


def _set_allowed_failures(value: int, dask_scheduler: Any = None) -> int:
    """On the scheduler: set how often a task may kill its worker before it fails (KilledWorker);
    returns the previous value (``distributed.scheduler.allowed-failures``, default 3)."""
    previous = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = value
    return previous
