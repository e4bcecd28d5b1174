"""Execution backends: the executor contract and a registry of backends by name.

Like joblib's ``BACKENDS`` dict and ``register_parallel_backend``
(``joblib/parallel.py``), a backend is a name mapped to a factory
``factory(fn, opts, n_jobs, **backend_options) -> Executor``; a user can
register one more with :func:`register_backend`.

Built in: ``"serial"`` (in this process), ``"loky"``, ``"multiprocessing"``
and ``"threading"`` (batchmem's own pools on joblib's loky executor, the
standard library's process pool and threads, :mod:`.pool`), ``"dask"`` (a
dask.distributed cluster).
``backend=None`` means in-process for ``n_jobs=1`` and otherwise joblib's
current :func:`joblib.parallel_config` backend (loky unless configured); any
other name is handed to joblib as is, so backends registered with joblib
work too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Executor, ExecutorBase
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
    "RunOptions",
    "make_executor",
    "register_backend",
    "run_batch",
]

BackendFactory = Callable[..., Executor]


def _serial(fn: Callable[..., Any], opts: RunOptions, n_jobs: int, **_: Any) -> Executor:
    return SerialExecutor(fn, opts)


def _pool(kind: str) -> BackendFactory:
    def factory(fn: Callable[..., Any], opts: RunOptions, n_jobs: int, **_: Any) -> Executor:
        return PoolExecutor(fn, opts, n_jobs, kind)

    return factory


def _configured(fn: Callable[..., Any], opts: RunOptions, n_jobs: int) -> Executor:
    """``backend=None`` with several jobs: joblib's configured backend (loky unless
    :func:`joblib.parallel_config` says otherwise); loky and threads run on batchmem's own pools."""
    import joblib

    active = type(joblib.parallel.get_active_backend()[0]).__name__
    kind = {"LokyBackend": "loky", "ThreadingBackend": "threading", "MultiprocessingBackend": "multiprocessing"}.get(
        active
    )
    return PoolExecutor(fn, opts, n_jobs, kind) if kind else JoblibExecutor(fn, opts, n_jobs, None)


def _dask(fn: Callable[..., Any], opts: RunOptions, n_jobs: int, **options: Any) -> Executor:
    from .dask_backend import DaskExecutor

    return DaskExecutor(fn, opts, **options)


def _auto(
    fn: Callable[..., Any],
    opts: RunOptions,
    backend: str,
    *,
    memory_room: Callable[[], float | None],
    aim_s: float,
    workers_hint: int | None = None,
    **options: Any,
) -> Executor:
    """``n_jobs="auto"``: in-process until worker processes pay (:mod:`.auto`). With ``backend=None``
    the workers are forked before the run when that is safe (:mod:`.forking`) and the last run did not
    stay in-process: a fork takes milliseconds, a loky worker ~0.45 s of CPU; otherwise they are loky's
    (or the standard library's, ``backend="multiprocessing"``), started once they pay."""
    from .auto import AutoExecutor

    if backend is not None and backend not in ("loky", "multiprocessing"):
        raise ConfigError(f"n_jobs: 'auto' chooses loky worker processes; backend {backend!r} needs a number of jobs")
    forked = None
    if backend is None and workers_hint != 1 and (cpus := usable_cpus()) > 1 and fork_unsafe_reason() is None:
        forked = PoolExecutor(fn, opts, cpus, "fork")
        forked.start()
    backend = backend or "loky"

    def cores() -> int:  # joblib's count honours CPU affinity and cgroup CPU quotas
        import joblib

        return max(1, joblib.cpu_count(only_physical_cores=False))

    return AutoExecutor(
        fn,
        opts,
        parallel=lambda workers: BACKENDS[backend](fn, opts, workers),
        cores=cores,
        memory_room=memory_room,
        aim_s=aim_s,
        check_picklable=lambda: _check_picklable(fn, opts),
        workers_hint=workers_hint,
        forked=forked,
    )


#: Backend name -> factory ``(fn, opts, n_jobs, **backend_options) -> Executor``.
BACKENDS: dict[str, BackendFactory] = {
    "serial": _serial,
    "sequential": _serial,
    "loky": _pool("loky"),
    "threading": _pool("threading"),
    "multiprocessing": _pool("multiprocessing"),
    "dask": _dask,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``backend=name`` build its executor with ``factory(fn, opts, n_jobs, **backend_options)``.

    The factory returns an object satisfying :class:`Executor` (subclass
    :class:`ExecutorBase` for the defaults). Registering a name again replaces it.
    Raises :class:`~batchmem.errors.ConfigError` when ``factory`` is not callable.
    """
    if not callable(factory):
        raise ConfigError(
            f"register_backend: factory for {name!r} is not callable; pass a function returning an Executor"
        )
    BACKENDS[name] = factory


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
    fn: Callable[..., Any], opts: RunOptions, n_jobs: int, backend: str | None, **backend_options: Any
) -> Executor:
    """The executor for ``backend`` (see the module docstring for how a name is chosen).

    ``n_jobs="auto"`` starts in-process and moves to loky workers when they pay (``backend_options``
    ``memory_room``, ``aim_s`` and ``workers_hint``; see :mod:`batchmem.backends.auto`).
    ``backend_options`` go to the factory (dask: ``client``, ``scheduler_address``).
    With ``opts.setup``, ``fn`` must accept ``state=`` (ConfigError otherwise). Worker processes
    are started here, with an empty batch that runs the setup: they boot (a loky worker is a new
    interpreter, and a setup may import torch) while the caller opens its output and cuts the first
    batch, instead of after the first submit.
    """
    if opts.setup is not None:
        check_accepts_state(fn)
    if _pickles(backend, n_jobs):
        _check_picklable(fn, opts)
    if n_jobs == "auto":
        return _auto(fn, opts, backend, **backend_options)
    name = backend if backend is not None else ("serial" if n_jobs == 1 else None)
    if name is None:
        executor = _configured(fn, opts, n_jobs)
    elif (factory := BACKENDS.get(name)) is None:  # a backend registered with joblib (register_parallel_backend)
        return JoblibExecutor(fn, opts, n_jobs, backend)
    else:
        executor = factory(fn, opts, n_jobs, **backend_options)
    if isinstance(executor, PoolExecutor) and executor.processes:
        executor.start()  # the workers boot, and run the setup, while this process opens its files
    return executor
