"""n_jobs="auto" with real loky workers: in-process for cheap items, workers when an item costs more than
shipping it."""

import os

from batchmem import BatchProcessor


def cheap(x):
    return x + 1


def costly(x):
    total = 0
    for i in range(20_000):  # ~0.5 ms of pure Python
        total += i
    return (x, os.getpid())


def _run(fn, n):
    return BatchProcessor(n_jobs="auto", progress=False, use_history=False).process(range(n), fn)


def test_cheap_items_stay_in_process():
    result = _run(cheap, 200_000)
    st = result.stats
    assert st.backend == "auto" and st.n_jobs == 1
    assert st.n_jobs_choice.startswith("in-process: an item takes") and "shipping" in st.n_jobs_choice
    assert list(result)[-1] == 200_000


def test_costly_items_move_to_worker_processes():
    result = _run(costly, 3_000)
    st = result.stats
    assert st.n_jobs == os.cpu_count() >= 2
    assert st.n_jobs_choice.startswith(f"{st.n_jobs} workers")
    pids = {pid for _, pid in result}
    assert os.getpid() in pids and len(pids - {os.getpid()}) >= 2  # first batches here, the rest in workers
    assert [x for x, _ in result] == list(range(3_000))
