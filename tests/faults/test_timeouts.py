"""Items that never return, with ``item_timeout``: one sleeps forever and one spins in a pure-Python
loop among 200. On every backend (in-process, loky workers, a dask LocalCluster) the run goes on,
records exactly those two items as ``TimeoutError`` and writes every other item once; under
``on_error: raise`` it stops with exit 1 and one line naming the item and the setting; interrupted
by SIGINT and resumed, the job file completes exactly once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import checkpoint, write_job
from faultfns import SLEEPS_FOREVER, SPINS_FOREVER, expected, hang_or_spin, stuck_in_c

from batchmem import BatchProcessor

N = 200
TIMEOUT_S = 2
HUNG = {SLEEPS_FOREVER, SPINS_FOREVER}


@contextlib.contextmanager
def _cluster(tmp_path: Path):
    distributed = pytest.importorskip("distributed", reason='the dask backend needs: pip install "batchmem[dask]"')
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="1GiB",
        dashboard_address=None,
        local_directory=str(tmp_path / "dask"),
    ) as cluster:
        yield cluster


@contextlib.contextmanager
def _backend(kind: str, tmp_path: Path):
    """``(execution keywords, job-file execution section)`` of ``kind``."""
    if kind == "serial":
        yield {}, ""
    elif kind == "loky":
        yield {"n_jobs": 2, "backend": "loky"}, "n_jobs: 2, backend: loky, "
    else:
        with _cluster(tmp_path) as cluster:
            address = cluster.scheduler_address
            yield {"scheduler_address": address}, f"scheduler_address: '{address}', "


def _assert_output(out: Path) -> None:
    """One line per item: ``null`` for the two hung items, ``expected(i)`` for every other."""
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == N
    assert [i for i, value in enumerate(lines) if value is None] == sorted(HUNG)
    assert all(lines[i] == expected(i) for i in range(N) if i not in HUNG)


def _assert_errors(errors: list[dict]) -> None:
    assert sorted(e["index"] for e in errors) == sorted(HUNG)
    for e in errors:
        assert e["error_type"] == "TimeoutError"
        assert e["message"] == f"item {e['index']} ran past item_timeout={TIMEOUT_S}s"


@pytest.mark.parametrize("kind", ["serial", "loky", "dask"])
def test_hung_items_are_recorded_as_timeouts_and_every_other_item_is_written_once(tmp_path, kind):
    out = tmp_path / "out.jsonl"
    with _backend(kind, tmp_path) as (execution, _):
        proc = BatchProcessor(item_timeout=TIMEOUT_S, on_error="skip", progress=False, **execution)
        t0 = time.monotonic()
        result = proc.process(range(N), hang_or_spin, out)
        took = time.monotonic() - t0
    assert took < 30, took
    _assert_output(out)
    _assert_errors(list(result.errors()))
    assert result.stats.timeouts == 2 and result.stats.failed == 2 and result.stats.status == "completed"
    assert json.loads((tmp_path / "out.jsonl.stats.json").read_bytes())["timeouts"] == 2


@pytest.mark.parametrize("kind", ["loky", "dask"])
def test_an_item_stuck_where_no_timer_reaches_is_stopped_by_killing_or_restarting_its_worker(tmp_path, kind):
    """Item 17 blocks SIGALRM and sleeps in C: the loky worker is killed by the watchdog, the dask task
    cancelled and its worker restarted, at the batch's deadline; halves, then the item alone."""
    out = tmp_path / "stuck.jsonl"
    with _backend(kind, tmp_path) as (execution, _):
        proc = BatchProcessor(
            item_timeout=1, on_error="skip", progress=False, batch_size=4, auto_optimize=False, **execution
        )
        result = proc.process(range(40), stuck_in_c, out)
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert lines == [None if i == 17 else expected(i) for i in range(40)]
    assert [(e["index"], e["error_type"], e["message"]) for e in result.errors()] == [
        (17, "TimeoutError", "item 17 ran past item_timeout=1s")
    ]
    assert result.stats.timeouts == 1 and result.stats.worker_deaths >= 1


@pytest.mark.parametrize("kind", ["serial", "loky", "dask"])
def test_under_on_error_raise_a_hung_item_stops_the_run_with_exit_1_and_one_line(job_dir, kind):
    with _backend(kind, job_dir) as (_, execution):
        job = write_job(
            job_dir,
            "raise",
            n=N,
            function="faultfns:hang_or_spin",
            extra=f"on_error: raise\nexecution: {{{execution}item_timeout: {TIMEOUT_S}}}\n",
        )
        t0 = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "batchmem.cli", "run", str(job), "-q"],
            cwd=job_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - t0
    assert run.returncode == 1, run.stderr
    assert took < 30, took
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"item {SLEEPS_FOREVER} ran past item_timeout={TIMEOUT_S}s" in errors[0]
    assert checkpoint(job_dir / "raise.jsonl")["items"] <= SLEEPS_FOREVER


def test_a_job_file_interrupted_and_resumed_completes_exactly_once(job_dir):
    out = job_dir / "resume.jsonl"
    job = write_job(
        job_dir,
        "resume",
        n=N,
        function="faultfns:hang_or_spin",
        extra=(
            "on_error: skip\nbatching: {batch_size: 20, auto_optimize: false}\n"
            f"execution: {{n_jobs: 2, backend: loky, item_timeout: {TIMEOUT_S}}}\n"
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", str(job), "-q"],
        cwd=job_dir,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (checkpoint(out) or {}).get("items", 0) <= SLEEPS_FOREVER:
            time.sleep(0.02)  # polls the event: the batch holding the sleeping item is committed
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    first = checkpoint(out)
    assert SLEEPS_FOREVER < first["items"] < N and not first["complete"]
    again = subprocess.run(
        [sys.executable, "-m", "batchmem.cli", "run", str(job), "--resume", "-q"],
        cwd=job_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1, again.stderr  # two items failed
    assert checkpoint(out)["complete"]
    _assert_output(out)
    _assert_errors([json.loads(line) for line in (job_dir / "resume.jsonl.errors.jsonl").read_bytes().splitlines()])
    assert json.loads((job_dir / "resume.jsonl.stats.json").read_bytes())["resumed_from"] == first["items"]
