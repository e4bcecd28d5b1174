"""n_jobs="auto" with real workers: in-process for cheap items, workers when an item costs more than
shipping it; forked at once when this process runs no other thread, loky's otherwise."""

import os
import subprocess
import sys
import time

import pytest

from batchmem import BatchProcessor, MemoryMonitor
from batchmem.options import Batching


def cheap(x):
    return x + 1


def costly(x):
    total = 0
    for i in range(20_000):  # ~0.5 ms of pure Python
        total += i
    return (x, os.getpid())


def _run(fn, n, **options):
    return BatchProcessor(n_jobs="auto", progress=False, use_history=False, **options).process(range(n), fn)


def test_cheap_items_stay_in_process():
    result = _run(cheap, 200_000)
    st = result.stats
    assert st.backend == "auto" and st.n_jobs == 1
    assert st.n_jobs_choice.startswith("in-process: an item takes") and "shipping" in st.n_jobs_choice
    assert list(result)[-1] == 200_000


def test_costly_items_move_to_worker_processes():
    result = _run(costly, 3_000, backend="loky")
    st = result.stats
    assert st.n_jobs == os.cpu_count() >= 2
    assert st.n_jobs_choice.startswith(f"{st.n_jobs} workers")
    pids = {pid for _, pid in result}
    assert os.getpid() in pids and len(pids - {os.getpid()}) >= 2  # first batches here, the rest in workers
    assert [x for x, _ in result] == list(range(3_000))


def test_a_second_run_starts_the_workers_its_history_chose():
    proc = BatchProcessor(n_jobs="auto", backend="loky", progress=False, process_name="auto_costly")
    first = proc.process(range(3_000), costly).stats
    assert first.n_jobs >= 2
    result = proc.process(range(3_000), costly)
    assert (
        result.stats.n_jobs_choice
        == f"{first.n_jobs} workers: {first.n_jobs} workers paid in this operation's last run (history)"
    )
    assert [x for x, _ in result] == list(range(3_000))


def transient_40mib(x):
    import numpy as np

    block = np.ones((40 << 20) // 8)  # 40 MiB, freed before the next item
    time.sleep(0.005)
    return float(block[0]) + x


def test_a_per_item_function_gets_workers_when_one_item_fits_though_a_batch_of_them_would_not():
    # At the 0.2 s time aim a batch holds ~15 items; counted as held together they would need ~600 MiB
    # per worker, more than the 400 MiB of room; one at a time each worker holds 40 MiB. The room is
    # under the memory target (0.6 of the limit) above this process's RSS, which earlier tests grow.
    limit = int((MemoryMonitor().rss_bytes() + (400 << 20)) / Batching().memory_target_fraction)
    result = BatchProcessor(
        n_jobs="auto", backend="loky", batch_size=2, memory_limit=limit, progress=False, use_history=False
    ).process(range(200), transient_40mib)
    st = result.stats
    assert st.n_jobs_choice.startswith(f"{st.n_jobs} workers") and st.n_jobs >= 2
    assert list(result) == [1.0 + x for x in range(200)]


def test_a_run_that_stays_in_process_imports_no_worker_pool():
    code = (
        "import sys\nfrom batchmem import BatchProcessor\n"
        "BatchProcessor(n_jobs='auto', progress=False, use_history=False).process(range(100_000), abs)\n"
        "print(' '.join(m for m in ('joblib', 'cloudpickle', 'tqdm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def test_in_process_batches_stay_short_while_the_workers_start(tmp_path):
    """The workers take over between two in-process batches: while they start, those batches are cut
    at WARMUP_BATCH_S, not at the history's size, which had kept workers that were up idle."""
    from batchmem.backends.auto import WARMUP_BATCH_S

    proc = BatchProcessor(n_jobs="auto", backend="loky", progress=False, process_name="auto_warmup")
    # ~3 s of work in-process: time enough for the workers to come up and take over on a slow machine
    first = proc.process(range(6_000), costly, tmp_path / "first.jsonl").stats
    assert first.n_jobs >= 2
    second = proc.process(range(6_000), costly, tmp_path / "second.jsonl")
    assert second.stats.n_jobs_choice.startswith(f"{first.n_jobs} workers")
    records = second.stats.to_dataframe()
    here = records[records["pid"] == os.getpid()]
    assert len(here) and len(here) < len(records), "first batches here, the rest in workers"
    # Predicted from the first run's seconds per item, with 2x slack for a slower start.
    before = first.to_dataframe()
    per_item = (before["duration_s"] / before["items"]).median()
    assert here["items"].max() <= 2 * WARMUP_BATCH_S / per_item < first.learned_batch_size
    assert [x for x, _ in second] == list(range(6_000))


FORKED = """
import os, sys, threading, time
from batchmem import BatchProcessor

def costly(x):
    total = 0
    for i in range(20_000):
        total += i
    return (x, os.getpid())

if sys.argv[1] == "thread":  # a thread of the user's: forking could deadlock the children
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
if sys.argv[1] == "cheap":  # forked, then found not worth it: the workers are shut down
    import psutil
    result = BatchProcessor(n_jobs="auto", progress=False, use_history=False).process(range(300_000), abs)
    assert list(result) == list(range(300_000))
    print(result.stats.n_jobs_choice)
    print(len(psutil.Process().children()), "joblib" in sys.modules)
    sys.exit()
result = BatchProcessor(n_jobs="auto", progress=False, use_history=False).process(range(3_000), costly)
pids = {pid for _, pid in result}
assert [x for x, _ in result] == list(range(3_000))
print(result.stats.n_jobs_choice)
print(len(pids - {os.getpid()}), "joblib" in sys.modules)
"""


@pytest.mark.parametrize(
    ("mode", "workers", "joblib_imported"), [("alone", "forked workers", "False"), ("thread", "workers", "True")]
)
def test_costly_items_go_to_forked_workers_unless_another_thread_runs(mode, workers, joblib_imported):
    """A fresh interpreter runs only its main thread (and OpenBLAS's, which survive a fork): the workers are
    forked before the first batch, and joblib is never imported. A thread of the user's keeps them loky's."""
    done = subprocess.run([sys.executable, "-c", FORKED, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    choice, (used, imported) = done.stdout.splitlines()[0], done.stdout.splitlines()[1].split()
    assert choice.startswith(f"{os.cpu_count()} {workers}: an item takes"), choice
    assert int(used) >= 2 and imported == joblib_imported


def test_cheap_items_leave_the_forked_workers_and_shut_them_down():
    done = subprocess.run([sys.executable, "-c", FORKED, "cheap"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    choice, (children, joblib_imported) = done.stdout.splitlines()[0], done.stdout.splitlines()[1].split()
    assert choice.startswith("in-process: an item takes"), choice
    assert children == "0" and joblib_imported == "False"


def test_fork_unsafe_reason_names_python_threads():
    import threading

    from batchmem.backends.forking import fork_unsafe_reason

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert fork_unsafe_reason() == f"{threading.active_count()} Python threads are running"
    finally:
        stop.set()
        thread.join()
