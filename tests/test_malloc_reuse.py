"""Per-item calls in a worker process reuse large freed blocks within a batch (glibc's mallopt), instead
of unmapping them and faulting the pages in again, and hand them back between batches, so that each
batch's peak is its own RSS growth. Batched calls keep glibc's own thresholds."""

from __future__ import annotations

import os

import pytest

from batchmem import BatchProcessor
from batchmem.heap import current_rss_bytes
from batchmem.heap.malloc import heap_free_bytes

pytestmark = pytest.mark.skipif(heap_free_bytes() is None, reason="needs glibc's mallinfo2")

BLOCK = 40 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mapped unless kept
MiB = 1 << 20


def free_heap_after_a_block(x):
    """Allocate and free a 40 MiB block (or 1 MiB for odd x): pid, free heap after, RSS before and after."""
    rss = current_rss_bytes()
    block = bytearray(BLOCK if x % 2 == 0 else MiB)
    del block
    return [os.getpid(), heap_free_bytes(), rss, current_rss_bytes()]


def free_heap_after_blocks(xs):
    return [free_heap_after_a_block(x) for x in xs]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_freed_40_mib_block_is_reused_within_a_batch_and_handed_back_after_it(tmp_path, backend):
    # An in-process run first: a forked worker inherits what this process decided and must decide again.
    BatchProcessor(progress=False, use_history=False).process([1], free_heap_after_a_block, tmp_path / "here.jsonl")
    proc = BatchProcessor(n_jobs=1, backend=backend, batch_size=2, auto_optimize=False, progress=False)
    result = proc.process([0, 2, 1, 1], free_heap_after_a_block, tmp_path / "out.jsonl")
    rows = list(result)
    assert all(row[0] != os.getpid() for row in rows)
    (_, free1, rss1, end1), (_, free2, _, end2), (_, _, rss3, _), _ = rows
    assert free1 >= BLOCK and free2 >= BLOCK  # freed into the heap, not unmapped
    assert end1 - rss1 >= 0.9 * BLOCK and abs(end2 - end1) < BLOCK // 2  # kept resident, then reused
    assert end2 - rss3 >= 0.9 * BLOCK  # handed back to the kernel before the next batch
    peaks = list(result.stats.to_dataframe()["peak_bytes"])
    # Each batch's peak is its own: the 1 MiB batch does not read the 40 MiB the one before it left free.
    assert 0.9 * BLOCK <= peaks[0] < 1.5 * BLOCK and peaks[1] < BLOCK // 2, peaks


def test_batched_calls_keep_glibcs_own_thresholds(tmp_path):
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # a fresh worker: one that ran per-item calls keeps reusing
    proc = BatchProcessor(n_jobs=1, backend="loky", batched=True, batch_size=2, auto_optimize=False, progress=False)
    rows = list(proc.process([0, 2], free_heap_after_blocks, tmp_path / "out.jsonl"))
    assert all(end - rss < BLOCK // 2 for _, _, rss, end in rows), rows  # each block unmapped when freed
