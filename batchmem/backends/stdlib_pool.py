"""The standard library's process pool behind ``backend="multiprocessing"`` and forked workers.

The function and options travel once per worker, in the pool's initializer (pickled with cloudpickle, or
inherited by a forked worker), not with every task; :class:`~batchmem.backends.pool.PoolExecutor` submits
:func:`run_shipped`. A worker ties its life to the parent's first (:mod:`batchmem.backends.lifeline`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .lifeline import die_with_parent, parent_death_signal
from .worker import BatchOutcome, BatchTask, RunOptions, own_this_process, run_batch
from .worker_setup import _STATES

__all__ = ["exit_of", "forks", "process_pool", "run_shipped"]

_SHIPPED: tuple[Callable[..., Any], RunOptions] | None = None  # in a worker: the function and options of its pool


def forks() -> bool:
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=False) == "fork"


def process_pool(
    workers: int, fn: Callable[..., Any], opts: RunOptions, env: dict[str, str], *, fork: bool = False
) -> concurrent.futures.ProcessPoolExecutor:
    """The standard library's pool: the platform's default start method, or ``fork`` (the function and
    options are then inherited, not pickled); ``env`` limits the workers' thread pools
    (:mod:`batchmem.backends.inner_threads`)."""
    import multiprocessing

    if fork:
        context, shipped = multiprocessing.get_context("fork"), (fn, opts)
    else:
        import cloudpickle

        context, shipped = multiprocessing.get_context(), cloudpickle.dumps((fn, opts))
    # A fork server's children are its own, not this process's; it exits when this process does.
    parent = None if context.get_start_method() == "forkserver" else os.getpid()
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(shipped, frozenset(_STATES._entries), env, (parent, parent_death_signal())),
    )


def _init_worker(
    shipped: bytes | tuple[Callable[..., Any], RunOptions],
    inherited: frozenset[str],
    env: dict[str, str],
    lifeline: tuple[int | None, int],
) -> None:
    """In a new worker: ignore SIGINT (the parent decides how a run stops), give SIGTERM its default
    action back (a forked worker inherits the parent's handler, and the pool terminates broken workers
    with SIGTERM, then joins them), set the thread-count variables (:mod:`batchmem.backends.inner_threads`),
    unpickle the function and options once (a forked worker has them already), and tear down the setup
    states this worker creates when it exits (a forked worker does not run :mod:`atexit`; states it
    inherited from the parent are the parent's to tear down). First of all it ties its life to the
    parent's (``lifeline``: the parent's pid and death signal, :mod:`batchmem.backends.lifeline`)."""
    import pickle
    from multiprocessing.util import Finalize

    global _SHIPPED
    die_with_parent(*lifeline)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(env)  # thread pools of the libraries it loads from now on (batchmem.backends.inner_threads)
    own_this_process()
    _SHIPPED = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    Finalize(None, _release_own_states, args=(inherited,), exitpriority=10)


def _release_own_states(inherited: frozenset[str]) -> None:
    for token in list(_STATES._entries):
        if token not in inherited:
            _STATES.release(token)


def run_shipped(task: BatchTask, charged: bool = False) -> BatchOutcome:
    assert _SHIPPED is not None, "the pool's initializer did not run"
    fn, opts = _SHIPPED
    return run_batch(fn, task, dataclasses.replace(opts, worker_cgroups=True) if charged else opts)


def exit_of(processes: dict[int, Any], patience_s: float = 1.0) -> str:
    """How a worker of a broken standard-library pool ended: ``"exit code 3"``, ``"signal SIGKILL"``.

    The pool then stops the other workers (they exit with 0 or SIGTERM), so those are reported only
    when no worker ended otherwise. Waits up to ``patience_s`` seconds for the pool to reap them."""
    deadline = time.monotonic() + patience_s
    while True:
        codes = [p.exitcode for p in list(processes.values())]
        if all(c is not None for c in codes) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    ended = [c for c in codes if c is not None]
    own = [c for c in ended if c not in (0, -signal.SIGTERM)] or ended
    parts = [f"exit code {c}" if c >= 0 else f"signal {_signal_name(-c)}" for c in own]
    return ", ".join(dict.fromkeys(parts)) or "unknown exit"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
