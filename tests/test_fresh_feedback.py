"""Parallel runs size every batch with the measurements of the batches committed before it was cut:
at most n_jobs + 1 batches are cut ahead of the results (real loky workers, standard-library
worker processes and threads)."""

from __future__ import annotations

import time

import orjson
import pytest

from batchmem import BatchProcessor
from batchmem.batcher import TAIL_MIN_BATCH_S


def slowish(x):
    time.sleep(0.002)
    return x


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
def test_batches_are_cut_at_most_n_jobs_plus_one_ahead_of_the_commits(tmp_path, backend):
    proc = BatchProcessor(batch_size=5, n_jobs=2, backend=backend, progress=False, use_history=False, max_batch_size=20)
    opt = proc.optimizer
    observed, lags = [0], []
    real_observe, real_next = opt.observe, opt.next_batch_size

    def observe(*a, **kw):
        observed[0] += 1
        return real_observe(*a, **kw)

    def next_size():
        lags.append(len(lags) - observed[0])  # batches cut before this one minus batches committed
        return real_next()

    opt.observe, opt.next_batch_size = observe, next_size
    result = proc.process(range(600), slowish, tmp_path / "out.jsonl")
    assert list(result) == list(range(600))
    assert len(lags) >= 20
    assert max(lags) <= 2 + 1, lags  # n_jobs + 1


def sleepy(x):
    time.sleep(0.001)
    return x


def test_the_tail_is_shared_out_in_batches_of_at_least_10_ms(tmp_path):
    """The last batches of a sized source shrink so that both workers finish together, down to
    TAIL_MIN_BATCH_S of work (about 10 items of a 1 ms sleep; fewer where a sleep overshoots), not to
    single items."""
    proc = BatchProcessor(n_jobs=2, backend="threading", progress=False, use_history=False)
    result = proc.process(range(2_000), sleepy, tmp_path / "out.jsonl")
    assert list(result) == list(range(2_000))
    sizes = result.stats.batch_sizes
    top = sizes.index(max(sizes))
    assert sizes[-2] < max(sizes), sizes  # the tail shrinks
    records = [orjson.loads(line) for line in (tmp_path / "out.jsonl.batches.jsonl").read_bytes().splitlines()]
    tail = records[top:-1]  # the last batch takes what is left
    # each tail batch is at least 10 ms of work as measured in this run, with 2x slack
    assert min(r["duration_s"] for r in tail) >= TAIL_MIN_BATCH_S / 2, [(r["items"], r["duration_s"]) for r in tail]
    assert min(r["items"] for r in tail) > 1, sizes
