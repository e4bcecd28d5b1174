"""A loky worker that dies mid-batch: the batch is retried in halves in fresh workers; an item that
kills its worker on its own is recorded as failed; the job completes."""

from __future__ import annotations

import json

import faultfns
import pytest
from conftest import expected_line
from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError

from batchmem import BatchProcessor
from batchmem.backends.joblib_backend import worker_exit


def test_joblib_raises_terminated_worker_error_when_a_worker_dies():
    """The exception type the executor catches, confirmed on a real worker death, and its exit code."""
    with pytest.raises(TerminatedWorkerError) as info:
        list(
            Parallel(n_jobs=2, backend="loky", return_as="generator")(delayed(faultfns.poison)(i) for i in (36, 37, 38))
        )
    assert worker_exit(info.value) == "exit code 3"
    # The next Parallel call gets fresh workers.
    assert list(Parallel(n_jobs=2, backend="loky")(delayed(faultfns.expected)(i) for i in range(3))) == [
        faultfns.expected(i) for i in range(3)
    ]


def test_item_that_kills_its_worker_alone_is_recorded_and_the_job_completes(tmp_path):
    out = tmp_path / "poison.jsonl"
    proc = BatchProcessor(
        batch_size=8, auto_optimize=False, n_jobs=2, backend="loky", on_error="skip", progress=False, use_history=False
    )
    result = proc.process(range(120), faultfns.poison, out)
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 120
    for i, line in enumerate(lines):
        assert line == (b"null\n" if i == 37 else expected_line(i)), i
    st = result.stats
    assert st.status == "completed" and st.failed == 1 and st.worker_deaths >= 2
    (record,) = list(result.errors())
    assert record["index"] == 37 and record["error_type"] == "WorkerDiedError"
    assert record["message"].startswith("worker died (exit code 3) while running item 37 on its own")
    assert json.loads(out.with_name(out.name + ".ckpt.json").read_bytes())["complete"]


def test_item_that_kills_its_worker_stops_the_run_under_raise(tmp_path):
    from batchmem.errors import ItemFailedError

    proc = BatchProcessor(
        batch_size=8, auto_optimize=False, n_jobs=2, backend="loky", on_error="raise", progress=False, use_history=False
    )
    with pytest.raises(ItemFailedError, match=r"item 37 failed: WorkerDiedError: worker died \(exit code 3\)") as info:
        proc.process(range(60), faultfns.poison, tmp_path / "o.jsonl")
    assert info.value.index == 37
    # halves that finished before item 37 are committed: items 0..36, whole lines, checkpoint matching
    ck = json.loads((tmp_path / "o.jsonl.ckpt.json").read_bytes())
    assert ck["items"] == 37 and (tmp_path / "o.jsonl").stat().st_size == ck["output_bytes"]


def test_batch_that_kills_its_worker_only_when_big_completes_in_halves(tmp_path):
    """oom_when_big SIGKILLs its worker for batches of more than 4 items: batches of 16 are halved to 4."""
    out = tmp_path / "big.jsonl"
    proc = BatchProcessor(
        batch_size=16,
        auto_optimize=False,
        n_jobs=2,
        backend="loky",
        batched=True,
        on_error="skip",
        progress=False,
        use_history=False,
    )
    result = proc.process(range(32), faultfns.oom_when_big, out)
    st = result.stats
    assert st.status == "completed" and st.failed == 0 and st.worker_deaths >= 3
    assert out.read_bytes() == b"".join(expected_line(i) for i in range(32))
    assert max(st.batch_sizes) <= 4 and sum(st.batch_sizes) == 32
