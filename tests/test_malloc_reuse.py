"""Worker processes keep large freed blocks in the heap for the next item (glibc's mallopt), instead of
unmapping them and faulting the pages in again; this process's allocator is left as it is."""

import os
import sys

import pytest

from batchmem import BatchProcessor
from batchmem.heap.malloc import REUSE_BLOCKS_BYTES, heap_free_bytes

pytestmark = pytest.mark.skipif(heap_free_bytes() is None, reason="needs glibc's mallinfo2")

BLOCK = 40 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mapped unless kept


def free_heap_after_a_block(x):
    before = heap_free_bytes()
    block = bytearray(BLOCK)
    del block
    return [os.getpid(), heap_free_bytes(), before]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_freed_40_mib_block_stays_in_a_workers_heap(tmp_path, backend):
    result = BatchProcessor(n_jobs=1, backend=backend, progress=False, use_history=False).process(
        range(4), free_heap_after_a_block, tmp_path / "out.jsonl"
    )
    rows = list(result)
    assert all(pid != os.getpid() for pid, _, _ in rows)
    assert all(BLOCK <= free <= REUSE_BLOCKS_BYTES + BLOCK for _, free, _ in rows), rows


def test_this_process_unmaps_it_as_before():
    if sys.platform != "linux":
        pytest.skip("glibc only")
    _, free, before = free_heap_after_a_block(0)
    assert free - before < BLOCK // 2
