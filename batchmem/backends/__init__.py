"""Execution backends: the executor contract and a registry of backends by name.

Like joblib's ``BACKENDS`` dict and ``register_parallel_backend``
(``joblib/parallel.py``), a backend is a name mapped to a factory
``factory(fn, opts, execution) -> Executor`` that receives the run's
:class:`~batchmem.options.Execution` options; a user adds one with
:func:`register_backend`, or an installed package declares one in the
``batchmem.backends`` entry-point group (found the first time its name is
asked for; see docs/extending.md).

Built in: ``"serial"`` (in this process), ``"loky"``, ``"multiprocessing"``
and ``"threading"`` (batchmem's own pools on joblib's loky executor, the
standard library's process pool and threads, :mod:`.pool`), ``"dask"`` (a
dask.distributed cluster).
``backend=None`` means in-process for ``n_jobs=1`` and otherwise joblib's
current :func:`joblib.parallel_config` backend (loky unless configured); any
other name is handed to joblib as is, so backends registered with joblib
work too from Python (job files accept the registered names only).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..options import Execution
from .base import Executor, ExecutorBase, ExecutorInfo, Planning
from .forking import fork_unsafe_reason, usable_cpus
from .joblib_backend import JoblibExecutor
from .pickling import check_picklable
from .pool import PoolExecutor
from .serial import SerialExecutor
from .worker import BatchOutcome, BatchTask, RunOptions, run_batch
from .worker_setup import check_accepts_state

__all__ = [
    "BACKENDS",
    "BatchOutcome",
    "BatchTask",
    "Executor",
    "ExecutorBase",
    "ExecutorInfo",
    "Planning",
    "RunOptions",
    "backend_names",
    "check_backend",
    "get_backend",
    "local_workers",
    "make_executor",
    "register_backend",
    "run_batch",
]

BackendFactory = Callable[[Callable[..., Any], RunOptions, Execution], Executor]

#: The entry-point group an installed package declares its backends in (``name = "module:factory"``).
ENTRY_POINT_GROUP = "batchmem.backends"


def _serial(fn: Callable[..., Any], opts: RunOptions, execution: Execution) -> Executor:
    return SerialExecutor(fn, opts)


def _pool(kind: str) -> BackendFactory:
    def factory(fn: Callable[..., Any], opts: RunOptions, execution: Execution) -> Executor:
        if kind == "threading" and execution.n_jobs != 1:
            # Batches sharing one process cannot each reset its VmHWM high-water mark.
            opts = dataclasses.replace(opts, peak_by_sampling=True)
        return PoolExecutor(fn, opts, execution.n_jobs, kind)

    return factory


def _configured(fn: Callable[..., Any], opts: RunOptions, n_jobs: int) -> Executor:
    """``backend=None`` with several jobs: joblib's configured backend (loky unless
    :func:`joblib.parallel_config` says otherwise); loky and threads run on batchmem's own pools."""
    import joblib

    active = type(joblib.parallel.get_active_backend()[0]).__name__
    kind = {"LokyBackend": "loky", "ThreadingBackend": "threading", "MultiprocessingBackend": "multiprocessing"}.get(
        active
    )
    executor = PoolExecutor(fn, opts, n_jobs, kind) if kind else JoblibExecutor(fn, opts, n_jobs, None)
    executor.backend_name = kind or active
    return executor


def _dask(fn: Callable[..., Any], opts: RunOptions, execution: Execution) -> Executor:
    from .dask_backend import DaskExecutor

    return DaskExecutor(
        fn,
        opts,
        client=execution.client,
        scheduler_address=execution.scheduler_address,
        connect_timeout=execution.connect_timeout,
    )


def _dask_installed() -> None:
    from .dask_backend import import_distributed

    import_distributed()


def _auto(fn: Callable[..., Any], opts: RunOptions, execution: Execution, planning: Planning) -> Executor:
    """``n_jobs="auto"``: in-process until worker processes pay (:mod:`.auto`). With ``backend=None``
    the workers are forked before the run when that is safe (:mod:`.forking`) and the last run did not
    stay in-process: a fork takes milliseconds, a loky worker ~0.45 s of CPU; otherwise they are loky's
    (or the standard library's, ``backend="multiprocessing"``), started once they pay."""
    from .auto import AutoExecutor

    backend = execution.backend
    if backend is not None and backend not in ("loky", "multiprocessing"):
        raise ConfigError(f"n_jobs: 'auto' chooses loky worker processes; backend {backend!r} needs a number of jobs")
    workers_hint = planning.last_workers()
    forked = None
    if backend is None and workers_hint != 1 and (cpus := usable_cpus()) > 1 and fork_unsafe_reason() is None:
        forked = PoolExecutor(fn, opts, cpus, "fork")
        forked.start()
    factory = BACKENDS[backend or "loky"]

    def cores() -> int:  # joblib's count honours CPU affinity and cgroup CPU quotas
        import joblib

        return max(1, joblib.cpu_count(only_physical_cores=False))

    executor = AutoExecutor(
        fn,
        opts,
        parallel=lambda workers: factory(fn, opts, dataclasses.replace(execution, n_jobs=workers)),
        cores=cores,
        memory_room=planning.memory_room,
        aim_s=planning.aim_s,
        check_picklable=lambda: _check_picklable(fn, opts),
        workers_hint=workers_hint,
        forked=forked,
    )
    executor.max_tasks_per_worker = execution.max_tasks_per_worker
    executor.worker_cgroups = execution.worker_cgroups
    return executor


#: Backend name -> factory ``(fn, opts, execution) -> Executor``.
BACKENDS: dict[str, BackendFactory] = {
    "serial": _serial,
    "sequential": _serial,
    "loky": _pool("loky"),
    "threading": _pool("threading"),
    "multiprocessing": _pool("multiprocessing"),
    "dask": _dask,
}
#: Backend name -> a check run when a processor is configured with it (raises ConfigError naming the fix).
_PREFLIGHT: dict[str, Callable[[], None]] = {"dask": _dask_installed}


def register_backend(name: str, factory: BackendFactory, *, preflight: Callable[[], None] | None = None) -> None:
    """Make ``backend=name`` build its executor with ``factory(fn, opts, execution)``.

    ``opts`` (:class:`RunOptions`) says how a worker runs a batch; ``execution``
    (:class:`~batchmem.options.Execution`) holds the user's execution options (``n_jobs``,
    ``max_tasks_per_worker``, ...). The factory returns an object satisfying :class:`Executor`
    (subclass :class:`ExecutorBase` for the defaults). ``preflight()`` runs when a processor is
    configured with the name, to fail early (e.g. a missing extra). Registering a name again
    replaces it. Raises :class:`~batchmem.errors.ConfigError` when ``factory`` is not callable.
    """
    if not callable(factory):
        raise ConfigError(
            f"register_backend: factory for {name!r} is not callable; pass a function returning an Executor"
        )
    BACKENDS[name] = factory
    _PREFLIGHT.pop(name, None)
    if preflight is not None:
        _PREFLIGHT[name] = preflight


def _from_entry_points(name: str) -> BackendFactory | None:
    """Register ``name`` from the :data:`ENTRY_POINT_GROUP` entry point of that name, if one is installed."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        register_backend(name, ep.load())
        return BACKENDS[name]
    return None


def backend_names() -> list[str]:
    """Every backend a job file may name: the registered ones and those installed as entry points, sorted."""
    from importlib.metadata import entry_points

    return sorted(BACKENDS.keys() | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def joblib_backend(name: str) -> bool:
    """Whether ``name`` is a backend registered with joblib (``register_parallel_backend``), which runs
    through :class:`.joblib_backend.JoblibExecutor`."""
    import joblib

    return name in joblib.parallel.BACKENDS


def get_backend(name: str) -> BackendFactory | None:
    """The factory registered as ``name`` (loading an installed entry point of that name), or None."""
    return BACKENDS.get(name) or _from_entry_points(name)


def local_workers(execution: Execution) -> int | None:
    """Worker processes a run with ``execution`` starts on this machine (0: batches run in this process
    or in threads; ``n_jobs="auto"`` starts in-process), None when batches run on a cluster whose
    workers have memory limits of their own (dask). Negative ``n_jobs`` count from the CPUs, as joblib does."""
    n_jobs, backend = execution.n_jobs, execution.backend
    if backend == "dask":
        return None
    if n_jobs == "auto" or backend in ("threading", "sequential", "serial") or (backend is None and n_jobs == 1):
        return 0
    n = int(n_jobs)
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)


def check_backend(name: str | None) -> None:
    """Fail now, before any run, when the backend called ``name`` cannot work here (dask: distributed
    missing); :class:`~batchmem.errors.ConfigError` naming the fix."""
    if name is not None and get_backend(name) is not None:
        check = _PREFLIGHT.get(name)
        if check is not None:
            check()


def _pickles(backend: str | None, n_jobs: int | str) -> bool:
    """Whether the function travels to worker processes (pickled) with this backend from the start
    (``n_jobs="auto"`` checks once workers would pay)."""
    if backend in ("serial", "sequential", "threading") or n_jobs == "auto":
        return False
    return backend is not None or n_jobs != 1


def _check_picklable(fn: Callable[..., Any], opts: RunOptions) -> None:
    setup = opts.setup
    check_picklable(fn, ("setup", setup.setup if setup else None), ("teardown", setup.teardown if setup else None))


def make_executor(
    fn: Callable[..., Any], opts: RunOptions, execution: Execution, planning: Planning | None = None
) -> Executor:
    """The started executor for ``execution`` (see the module docstring for how a backend is chosen).

    ``n_jobs="auto"`` starts in-process and moves to loky workers when they pay, planning with
    ``planning`` (see :mod:`batchmem.backends.auto`). With ``opts.setup``, ``fn`` must accept
    ``state=`` (ConfigError otherwise). Worker processes are started here
    (:meth:`Executor.start`): they boot (a loky worker is a new interpreter, and a setup may
    import torch) while the caller opens its output and cuts the first batch, instead of after
    the first submit.
    """
    n_jobs, backend = execution.n_jobs, execution.backend
    if opts.setup is not None:
        check_accepts_state(fn)
    if _pickles(backend, n_jobs):
        _check_picklable(fn, opts)
    if n_jobs == "auto":
        return _auto(fn, opts, execution, planning or Planning())
    name = backend if backend is not None else ("serial" if n_jobs == 1 else None)
    if name is None:
        executor = _configured(fn, opts, n_jobs)
    else:
        factory = get_backend(name)
        # Not registered here: a backend registered with joblib (register_parallel_backend).
        executor = factory(fn, opts, execution) if factory is not None else JoblibExecutor(fn, opts, n_jobs, name)
        executor.backend_name = name
    executor.max_tasks_per_worker = execution.max_tasks_per_worker
    executor.worker_cgroups = execution.worker_cgroups
    executor.start()
    return executor
