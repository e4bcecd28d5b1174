"""Faults on a real 2-worker dask LocalCluster end in bounded time with the loky outcome.

A poisoned item (``os._exit``) under skip and under raise, a worker SIGKILLed from outside, a
function that cannot be pickled, SIGTERM during a batch that never returns, a refused address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import faultfns
import pytest
from conftest import assert_complete, batchmem, checkpoint, expected_line, write_job

from batchmem import BatchProcessor
from batchmem.errors import ConfigError, ItemFailedError

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB", dashboard_address=None
    ) as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        yield c


def _proc(client, **kw):
    return BatchProcessor(client=client, batch_size=50, auto_optimize=False, progress=False, use_history=False, **kw)


def test_poison_item_under_skip_is_recorded_and_every_other_line_written(client, tmp_path):
    out = tmp_path / "poison.jsonl"
    t0 = time.monotonic()
    result = _proc(client, on_error="skip").process(range(2000), faultfns.poison_500, out)
    assert time.monotonic() - t0 < 90
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2000
    assert all(line == (b"null\n" if i == 500 else expected_line(i)) for i, line in enumerate(lines))
    (record,) = list(result.errors())
    assert record["index"] == 500 and record["error_type"] == "WorkerDiedError"
    assert result.stats.worker_deaths >= 1 and result.stats.failed == 1


def test_poison_item_under_raise_names_the_item(client, tmp_path):
    with pytest.raises(ItemFailedError, match=r"^item 500 failed: WorkerDiedError"):
        _proc(client).process(range(2000), faultfns.poison_500, tmp_path / "raise.jsonl")


def test_a_worker_killed_from_outside_is_counted_and_the_run_completes(client, tmp_path):
    out = tmp_path / "killed.jsonl"
    pids = list(client.run(os.getpid).values())

    def kill_one_soon():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (checkpoint(out) or {}).get("items", 0) < 200:
            time.sleep(0.01)
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_soon)
    killer.start()
    result = _proc(client).process(range(3000), faultfns.slow, out)
    killer.join()
    assert_complete(out, 3000)
    assert result.stats.worker_deaths >= 1


def test_an_unpicklable_function_fails_at_once_naming_the_object(client, tmp_path):
    lock = threading.Lock()

    def holds_a_lock(x):
        with lock:
            return x

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"^function: .*holds_a_lock cannot be sent to worker processes: .*lock"):
        _proc(client).process(range(10), holds_a_lock, tmp_path / "lock.jsonl")
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "lock.jsonl").exists()


def _local_cluster():
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB", dashboard_address=None
    )


def test_sigterm_during_a_batch_that_never_returns_exits_130_and_resume_completes(job_dir, monkeypatch):
    out = job_dir / "hang.jsonl"
    started = job_dir / "item300.started"
    monkeypatch.setenv("FAULTFNS_STARTED", str(started))  # before the cluster: its workers inherit it
    with _local_cluster() as cluster:  # its own: the hung item keeps a worker thread busy after the cancel
        job = write_job(
            job_dir,
            "hang",
            n=1000,
            function="faultfns:forever",
            extra=(
                "batching: {batch_size: 50, auto_optimize: false}\n"
                f"execution: {{scheduler_address: '{cluster.scheduler_address}', "
                "stop_grace_seconds: 2}\n"
            ),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchmem.cli", "run", str(job)],
            cwd=job_dir,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                (checkpoint(out) or {}).get("items", 0) >= 300 and started.exists()
            ):
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # the batch holding item 300 is running and will not return
            t0 = time.monotonic()
            _, stderr = proc.communicate(timeout=2 + 5 + 10)
            waited = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    assert waited < 2 + 5, waited
    assert f"run again with: batchmem run {job} --resume" in stderr and "Traceback" not in stderr
    assert checkpoint(out)["items"] == 300  # everything before the hung batch, nothing after it
    # The hang was one bad item: with a function that returns, resume on a new cluster completes the output.
    with _local_cluster() as cluster:
        old = job.read_text()
        address = old.split("scheduler_address: '")[1].split("'")[0]
        job.write_text(old.replace("faultfns:forever", "faultfns:expected").replace(address, cluster.scheduler_address))
        again = batchmem("run", str(job), "--resume", "--force-resume", "-q", cwd=job_dir, timeout=120)
    assert again.returncode == 0, again.stderr
    assert_complete(out, 1000)
    assert json.loads((job_dir / "hang.jsonl.stats.json").read_text())["resumed_from"] == 300


def test_a_refused_scheduler_address_fails_in_under_two_seconds(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"^scheduler_address: cannot connect to tcp://127.0.0.1:9 \(.*refused"):
        BatchProcessor(scheduler_address="tcp://127.0.0.1:9", progress=False).process(
            range(3), faultfns.expected, tmp_path / "o.jsonl"
        )
    assert time.monotonic() - t0 < 2
    assert not (tmp_path / "o.jsonl").exists()


def test_validate_connects_to_the_scheduler(cluster, job_dir):
    job = write_job(job_dir, "val", n=10, extra=f"execution: {{scheduler_address: '{cluster.scheduler_address}'}}\n")
    ok = batchmem("validate", str(job), cwd=job_dir)
    assert ok.returncode == 0, ok.stderr
    assert f"cluster: {cluster.scheduler_address}: 2 workers, 2 threads, worker memory limit 1.0GiB" in ok.stdout
    refused = write_job(job_dir, "refused", n=10, extra="execution: {scheduler_address: 'tcp://127.0.0.1:9'}\n")
    bad = batchmem("validate", str(refused), cwd=job_dir)
    assert bad.returncode == 2 and bad.stderr.startswith(
        "error: scheduler_address: cannot connect to tcp://127.0.0.1:9"
    )
