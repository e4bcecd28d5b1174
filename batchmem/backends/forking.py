"""When worker processes may be forked from this process instead of started fresh.

A loky worker is a new interpreter that imports joblib and batchmem before
its first batch: about 0.45 s of CPU each on this project's 2-core test
machine, two of them 0.45-0.7 s of wall time (``benchmarks/bench_peers.py``).
A forked worker exists within milliseconds, which is why ``multiprocessing.Pool``
and mpire, which fork, led the parallel rows of that benchmark. Forking is
only safe when no other thread of this process can hold a lock the child will
need: after ``fork(2)`` the child has one thread, and a lock held by any other
thread stays locked in it forever (POSIX ``fork``, "Application Usage";
CPython warns about this since 3.12 and no longer forks by default since 3.14).

:func:`fork_unsafe_reason` allows it when, on Linux,

* this process runs no Python thread besides the main one (a Python thread may
  hold the lock of a logging handler, a buffered file or the user's own);
* no OpenMP runtime is loaded: its thread pool does not survive a fork, and a
  forked child that uses it can crash or hang (loky's README, "fork + exec ...
  multiprocessing.Pool uses fork without exec by default, causing third party
  runtimes to crash (e.g. OpenMP, macOS Accelerate...)", https://github.com/joblib/loky);
* every native thread belongs to an OpenBLAS pthreads pool: OpenBLAS shuts its
  pool down before a fork and starts it again when next used
  (``openblas_fork_handler`` in OpenBLAS's ``driver/others/memory.c``, registered
  with ``pthread_atfork``). The pools are listed by threadpoolctl.

Otherwise workers are loky's, as before. Not covered: threads that a C
extension starts after the check (the check runs just before the fork).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import warnings
from collections.abc import Iterator

__all__ = ["fork_unsafe_reason", "forking_allowed_threads", "usable_cpus"]


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no procfs
        return 0


def fork_unsafe_reason() -> str | None:
    """None when forking worker processes from this process is safe now (see the module docstring),
    else a short reason ("3 Python threads are running")."""
    if sys.platform != "linux":
        return "workers are forked only on Linux"
    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads are running"
    native = _os_threads() - 1
    if native <= 0:
        return None if native == 0 else "the threads of this process cannot be counted"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency
        return f"{native} native threads are running"
    pools = threadpool_info()
    openmp = [p["prefix"] for p in pools if p.get("user_api") == "openmp"]
    if openmp:
        return f"an OpenMP runtime is loaded ({', '.join(openmp)}), which does not survive a fork"
    openblas = sum(
        p["num_threads"] - 1
        for p in pools
        if p["internal_api"] == "openblas" and p.get("threading_layer") == "pthreads"
    )
    if native > openblas:
        return f"{native - openblas} native threads besides OpenBLAS's are running"
    return None


@contextlib.contextmanager
def forking_allowed_threads() -> Iterator[None]:
    """Silence CPython's warning about forking a multi-threaded process (3.12+) for a fork that
    :func:`fork_unsafe_reason` allowed: the only other threads then are OpenBLAS's, which it stops
    itself before the fork."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*multi-threaded, use of fork\(\)", category=DeprecationWarning)
        yield


def _read(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU bandwidth quota (v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up), read where loky's
    ``_cpu_count_cgroup`` reads them (``joblib/externals/loky/backend/context.py``), which
    ``joblib.cpu_count`` reports; here without importing joblib (0.25 s), which forked workers never need."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _read("/sys/fs/cgroup/cpu.max") or (
        _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") + _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    )
    if len(quota) == 2 and quota[0] not in ("max", "-1"):
        with contextlib.suppress(ValueError, ZeroDivisionError):
            cpus = min(cpus, max(1, math.ceil(int(quota[0]) / int(quota[1]))))
    return max(1, cpus)
