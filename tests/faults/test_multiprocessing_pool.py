"""``backend="multiprocessing"``: the standard library's process pool with loky's guarantees.

joblib's multiprocessing backend cannot return results as a generator, so batchmem runs its own
:class:`concurrent.futures.ProcessPoolExecutor` (default start method). These tests check that it
keeps what the loky pool does: worker deaths named by exit code, recycling, per-worker setup with
its teardown, and functions that only cloudpickle can ship.
"""

from __future__ import annotations

import functools
import json
import os
import signal

from batchmem import BatchProcessor


def poison_57(x: int) -> int:
    if x == 57:
        os._exit(3)
    return 2 * x


def sigkill_when_big(batch: list) -> list:
    if len(batch) > 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return [2 * x for x in batch]


def _proc(**kw) -> BatchProcessor:
    return BatchProcessor(progress=False, use_history=False, auto_optimize=False, **kw)


def test_an_item_that_kills_its_worker_is_recorded_with_its_exit_code_and_the_rest_written(tmp_path):
    proc = _proc(batch_size=8, n_jobs=2, backend="multiprocessing", on_error="skip")
    result = proc.process(range(200), poison_57, tmp_path / "out.jsonl")
    assert result.stats.status == "completed" and result.stats.failed == 1 and result.stats.worker_deaths >= 1
    assert list(result) == [None if x == 57 else 2 * x for x in range(200)]
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert record["index"] == 57 and record["error_type"] == "WorkerDiedError"
    assert "(exit code 3)" in record["message"]


def test_a_batch_that_kills_its_worker_only_when_big_completes_in_halves(tmp_path):
    proc = _proc(batch_size=16, n_jobs=2, backend="multiprocessing", batched=True)
    result = proc.process(range(100), sigkill_when_big, tmp_path / "out.jsonl")
    assert list(result) == [2 * x for x in range(100)] and result.stats.failed == 0
    assert result.stats.worker_deaths >= 1


def record(log: str, event: str) -> None:
    with open(log, "a") as f:
        f.write(f"{event} {os.getpid()}\n")


def load(log: str) -> int:
    record(log, "setup")
    return 3


def drop(log: str, state: int) -> None:
    record(log, "teardown")


def test_recycling_setup_once_per_worker_teardown_at_exit_and_a_closure_as_the_function(tmp_path):
    log = str(tmp_path / "setup.log")
    offset = 1
    proc = _proc(
        batch_size=10,
        n_jobs=2,
        backend="multiprocessing",
        max_tasks_per_worker=5,
        detect_memory_issues=False,
        setup=functools.partial(load, log),
        teardown=functools.partial(drop, log),
    )
    result = proc.process(range(200), lambda x, state: x * state + offset, tmp_path / "out.jsonl")
    assert list(result) == [3 * x + 1 for x in range(200)]
    pids = set(result.stats.to_dataframe()["pid"])
    assert os.getpid() not in pids and len(pids) >= 3
    assert any(i["kind"] == "worker_recycling" for i in result.stats.issues)
    lines = [line.split() for line in open(log).read().splitlines()]
    setups = [int(pid) for event, pid in lines if event == "setup"]
    teardowns = [int(pid) for event, pid in lines if event == "teardown"]
    assert sorted(setups) == sorted(pids)  # once per worker process, not per batch (20)
    assert sorted(teardowns) == sorted(pids)  # every worker tore its state down: at recycling and at close
