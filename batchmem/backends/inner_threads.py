"""Thread pools inside worker processes: ``cores // workers`` threads each, as joblib gives loky workers.

A worker that calls a multi-threaded library (OpenBLAS or MKL under numpy, PyTorch's OpenMP pool,
numexpr, numba) starts as many threads as the machine has cores. With ``W`` workers that is ``W x
cores`` threads on ``cores`` cores: they take turns, and each library's own parallel speed-up is
lost to the switching. joblib's loky backend therefore starts its workers with the thread-count
variables of those libraries set to ``max(cpu_count() // n_jobs, 1)``, unless the parent's
environment sets them already, plus ``ENABLE_IPC=1`` for TBB (``ParallelBackendBase._prepare_worker_env``
in ``joblib/_parallel_backends.py``; joblib PR #940, "over-subscription mitigation"). batchmem's
process workers get the same: loky's through the executor's ``env``, forked and standard-library ones
in their initializer, for the libraries they load from then on (PyTorch imported by a setup, say).
A library a forked worker inherits already loaded (numpy's OpenBLAS, loaded with numpy in the
parent) keeps the parent's count: capping it in the child with threadpoolctl starts OpenBLAS's pool
again, and its thread spins for ~0.1 s of CPU in every worker (measured: 0.40 s of CPU for 0.3 s of
pure Python in a forked child, 0.30 s without), which slowed the pure-Python CPU workload of
benchmarks/bench_peers.py.
"""

from __future__ import annotations

import os

__all__ = ["THREAD_VARS", "worker_env"]

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
