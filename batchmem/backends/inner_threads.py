"""Thread pools inside worker processes: ``cores // workers`` threads each, as joblib gives loky workers.

A worker that calls a multi-threaded library (OpenBLAS or MKL under numpy, PyTorch's OpenMP pool,
numexpr, numba) starts as many threads as the machine has cores. With ``W`` workers that is ``W x
cores`` threads on ``cores`` cores: they take turns, and each library's own parallel speed-up is
lost to the switching. joblib's loky backend therefore starts its workers with the thread-count
variables of those libraries set to ``max(cpu_count() // n_jobs, 1)``, unless the parent's
environment sets them already, plus ``ENABLE_IPC=1`` for TBB (``ParallelBackendBase._prepare_worker_env``
in ``joblib/_parallel_backends.py``; joblib PR #940, "over-subscription mitigation"). batchmem's
process workers get the same: loky's through the executor's ``env``, forked and standard-library ones
in their initializer (:func:`apply_in_worker`), which also limits the libraries a forked worker
inherits already loaded (their variables were read at load time) with threadpoolctl.
"""

from __future__ import annotations

import os

__all__ = ["THREAD_VARS", "apply_in_worker", "worker_env"]

#: The variables joblib sets in loky workers (``ParallelBackendBase.MAX_NUM_THREADS_VARS``).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TBB_IPC_VAR = "ENABLE_IPC"


def worker_env(workers: int, cpus: int) -> dict[str, str]:
    """Environment for ``workers`` processes sharing ``cpus`` CPUs: each of :data:`THREAD_VARS` set to
    ``max(cpus // workers, 1)`` unless this process's environment sets it (then its value), and
    ``ENABLE_IPC=1`` unless set. The same dict joblib builds, so both share one loky executor."""
    threads = str(max(cpus // max(workers, 1), 1))
    env = {var: os.environ.get(var, threads) for var in THREAD_VARS}
    if TBB_IPC_VAR not in os.environ:
        env[TBB_IPC_VAR] = "1"
    return env


def apply_in_worker(env: dict[str, str]) -> None:
    """In a worker process: set ``env`` for the libraries loaded from now on, and cap the thread pools of
    those loaded already (a forked worker inherits numpy's OpenBLAS, started with the parent's count) at
    ``OMP_NUM_THREADS`` with threadpoolctl. A no-op for an empty ``env``."""
    if not env:
        return
    os.environ.update(env)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(env["OMP_NUM_THREADS"]))
