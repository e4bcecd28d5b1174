"""Worker recycling: a leaky function on loky workers still finishes, on fresh workers."""

import logging
import os
import time

from batchmem import BatchProcessor

#: Lives in each loky worker process (the module is imported there): the planted leak.
_KEPT = []


def leaky_double(batch):
    """Keeps 2 MB per batch in the worker that runs it (and takes 20 ms, like real work)."""
    _KEPT.append(b"x" * (2 << 20))
    time.sleep(0.02)
    return [x * 2 for x in batch]


def _pids(result):
    return list(result.stats.to_dataframe()["pid"])


def test_leak_in_workers_is_flagged_and_workers_are_replaced(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="batchmem")
    proc = BatchProcessor(
        batch_size=4, auto_optimize=False, batched=True, n_jobs=2, backend="loky", progress=False, use_history=False
    )
    result = proc.process(range(144), leaky_double, tmp_path / "out.jsonl")
    assert result.stats.status == "completed"
    assert list(result) == [x * 2 for x in range(144)]
    pids = _pids(result)
    assert os.getpid() not in pids
    assert len(set(pids)) > 2, "the leaking workers were not replaced"
    kinds = [i["kind"] for i in result.stats.issues]
    assert "leak" in kinds and "worker_recycling" in kinds
    leak = next(i for i in result.stats.issues if i["kind"] == "leak")
    assert leak["evidence"]["pid"] in pids and leak["evidence"]["pid"] != os.getpid()
    assert leak["evidence"]["bytes_per_batch"] > 1_000_000
    assert "replaced the worker processes" in caplog.text


def test_max_tasks_per_worker_recycles_on_schedule(tmp_path):
    proc = BatchProcessor(
        batch_size=10,
        auto_optimize=False,
        batched=True,
        n_jobs=2,
        backend="loky",
        progress=False,
        use_history=False,
        detect_memory_issues=False,
        max_tasks_per_worker=5,
    )
    result = proc.process(range(200), leaky_double, tmp_path / "out.jsonl")
    assert result.stats.items == 200 and list(result) == [x * 2 for x in range(200)]
    pids = _pids(result)
    assert len(set(pids)) >= 3  # 20 batches, 10 per generation of 2 workers -> 2 generations
    assert set(pids[:5]).isdisjoint(pids[-5:])
    recycling = [i for i in result.stats.issues if i["kind"] == "worker_recycling"]
    assert recycling and recycling[0]["evidence"]["recycles"] == 1
