"""Workers die with their parent: after a ``kill -9`` of a running job's process, none of its worker or
resource-tracker processes is alive 2 s later (before, loky's lived on until their 300 s idle timeout).

The processes are looked up by parent pid before the kill: every descendant of the killed process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

CHILD = textwrap.dedent("""
    import sys, time
    from batchmem import BatchProcessor

    def slow(x):
        time.sleep(0.002)
        return x

    proc = BatchProcessor(n_jobs=2, backend=sys.argv[2], progress=False, use_history=False)
    proc.process(range(1_000_000), slow, sys.argv[1])
""")


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline()[:4])}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_no_worker_or_resource_tracker_outlives_a_kill_9_of_the_parent(tmp_path, backend):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out.jsonl"), backend], env=env)
    procs: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "out.jsonl").exists():
            time.sleep(0.1)  # the output opens once the workers are started
        time.sleep(1.0)  # batches are running
        procs = psutil.Process(parent.pid).children(recursive=True)
        workers = [p for p in procs if "resource_tracker" not in " ".join(p.cmdline())]
        trackers = [p for p in procs if p not in workers]
        assert len(workers) >= 2, [p.cmdline() for p in procs]
        assert backend != "loky" or len(trackers) >= 1, [p.cmdline() for p in procs]
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        time.sleep(2.0)
        assert _alive(procs) == []
    finally:
        parent.kill()
        parent.wait()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_workers_started_from_a_thread_that_ends_live_on():
    """prctl(2): the parent-death signal follows the *thread* that started a worker. Workers a pool
    starts from another thread must not die when that thread ends, while this process lives."""
    from batchmem.backends import BatchTask, RunOptions
    from batchmem.backends.pool import PoolExecutor

    executor = PoolExecutor(abs, RunOptions(), 2, "loky")
    starter = threading.Thread(target=lambda: executor.run_isolated(BatchTask(-1, 0, [])))
    starter.start()
    starter.join()
    try:
        pids = executor.worker_pids()
        assert pids
        time.sleep(0.5)
        assert set(executor.worker_pids()) == set(pids)
        outcomes = list(executor.map([BatchTask(0, 0, [-1, -2]), BatchTask(1, 2, [-3])]))
        assert [o.payload for o in outcomes] == [b"1\n2\n", b"3\n"] and executor.worker_deaths == 0
    finally:
        executor._drop_pool(kill=True)
