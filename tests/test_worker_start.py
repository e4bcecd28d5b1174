"""Process pools start their workers, and run the setup there, when the executor is made: before the
first batch is cut, not after it is submitted (real loky and standard-library workers)."""

import os
import tempfile
import time
from pathlib import Path

import pytest

from batchmem import BatchProcessor


def _mark(parent: int) -> Path:
    return Path(tempfile.gettempdir()) / f"batchmem-setup-ran-{parent}"


def load_state():
    _mark(os.getppid()).write_text(str(os.getpid()))  # the worker's parent is this test's process
    return 1


def add_state(x, state):
    return x + state


def items_after_the_setup(mark: Path, seen: list[bool]):
    deadline = time.monotonic() + 30  # pulled when the first batch is cut: the worker may still be booting
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.append(mark.exists())
    yield from range(20)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_the_setup_runs_in_the_worker_before_the_first_batch_is_cut(tmp_path, backend):
    mark, seen = _mark(os.getpid()), []
    mark.unlink(missing_ok=True)
    try:
        proc = BatchProcessor(n_jobs=1, backend=backend, setup=load_state, progress=False, use_history=False)
        result = proc.process(items_after_the_setup(mark, seen), add_state, tmp_path / "out.jsonl")
        assert seen == [True], "the worker had not run the setup when the first batch was cut"
        assert list(result) == list(range(1, 21))
        assert int(mark.read_text()) != os.getpid()
    finally:
        mark.unlink(missing_ok=True)
