"""Worker processes run their libraries' thread pools at cores // workers threads, as joblib's loky
workers do: loky workers, standard-library workers and forked ones (each in a fresh interpreter, so
that n_jobs="auto" may fork). A forked worker's OpenBLAS, loaded in the parent, keeps its count."""

import json
import os
import subprocess
import sys

import pytest

from batchmem.backends.forking import usable_cpus
from batchmem.backends.inner_threads import worker_env

INNER = """
import json, os, sys, time
import numpy  # OpenBLAS starts its pool here, before any worker exists
from batchmem import BatchProcessor

def threads(x):
    from threadpoolctl import threadpool_info
    end = time.perf_counter() + 0.002  # worth a worker for n_jobs="auto"
    while time.perf_counter() < end:
        pass
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return [os.environ.get("OMP_NUM_THREADS"), blas, os.getpid()]

backend = None if sys.argv[1] == "auto" else sys.argv[1]
proc = BatchProcessor(n_jobs=2 if backend else "auto", backend=backend, progress=False, use_history=False)
result = proc.process(range(400), threads)
print(json.dumps({"choice": result.stats.n_jobs_choice, "workers": [r for r in result if r[2] != os.getpid()]}))
"""


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "auto"])
def test_workers_run_cores_over_workers_threads(backend):
    if backend == "auto" and usable_cpus() < 2:
        pytest.skip("n_jobs='auto' forks workers only with 2 or more CPUs")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", INNER, backend], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    if backend == "auto":
        assert out["choice"].startswith("2 forked workers"), out["choice"]
    expected = str(max(usable_cpus() // 2, 1))
    assert out["workers"], "no item ran in a worker"
    for omp, blas, _ in out["workers"]:
        assert omp == expected
        if backend == "loky":  # a new interpreter: numpy loads its OpenBLAS under the variables
            assert blas and all(n == int(expected) for n in blas), blas


def test_a_count_set_in_this_environment_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("ENABLE_IPC", raising=False)
    env = worker_env(workers=4, cpus=2)
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "1" and env["ENABLE_IPC"] == "1"
