"""BatchProcessor end to end: real files, real joblib workers, real allocations."""

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from batchmem import BatchProcessor, RunStats
from batchmem.errors import BatchFunctionError, ItemFailedError, OutputExistsError, SerializationError
from batchmem.optimizer.history import HistoryStore
from batchmem.report import load_report


def square(x):
    return {"x": x, "sq": x * x}


def test_results_in_order_with_stats_beside_output(tmp_path):
    out = tmp_path / "out.jsonl"
    result = BatchProcessor(batch_size=7, progress=False).process(range(1000), square, output=out)
    assert result.path == out
    assert len(result) == 1000
    assert list(result) == [square(i) for i in range(1000)]
    assert out.read_bytes().count(b"\n") == 1000
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    for key in (
        "items",
        "failed",
        "batches",
        "batch_sizes",
        "duration_s",
        "items_per_s",
        "peak_rss_bytes",
        "bytes_per_item",
        "memory_limit_bytes",
        "limit_source",
        "process_name",
    ):
        assert key in stats
    assert (
        stats["items"] == 1000 and sum(stats["batch_sizes"]) == 1000 and stats["batches"] == len(stats["batch_sizes"])
    )
    assert stats["batch_sizes"][0] == 7
    assert RunStats.load(tmp_path / "out.jsonl.stats.json").items == 1000
    frame = result.stats.to_dataframe()
    assert len(frame) == stats["batches"] and frame["items"].sum() == 1000


def test_node_aliases_work_as_written():
    result = BatchProcessor(autoOptimize=True, batchSize=5, processName="aliases", progress=False).process(
        range(20), square
    )
    assert list(result) == [square(i) for i in range(20)]
    assert result.stats.process_name == "aliases" and result.stats.batch_sizes[0] == 5
    assert result.path.exists()  # a temporary spool file
    with pytest.raises(TypeError):
        BatchProcessor(batchSize=5, batch_size=6)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_two_workers_give_identical_ordered_output(tmp_path, backend):
    items = list(range(3000))
    one = BatchProcessor(batch_size=50, progress=False).process(items, square, tmp_path / "one.jsonl")
    two = BatchProcessor(batch_size=50, n_jobs=2, backend=backend, progress=False).process(
        items, square, tmp_path / "two.jsonl"
    )
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert two.stats.items == 3000 and one.stats.items == 3000
    if backend == "loky":  # measured in the worker processes, not here
        pids = {r["pid"] for r in two.stats.to_dataframe().to_dict("records")}
        assert os.getpid() not in pids


def test_huge_generator_is_consumed_lazily():
    consumed = itertools.count()
    proc = BatchProcessor(batch_size=100, auto_optimize=False, progress=False)

    def gen():
        for i in range(10_000_000):
            next(consumed)
            yield i

    def fn(x):
        if x >= 5_000:
            proc.stop()
        return x

    result = proc.process(gen(), fn)
    pulled = next(consumed)
    assert result.stats.status == "stopped"
    assert 5_000 <= result.stats.items <= 5_100
    assert pulled <= 5_200, f"the generator was read ahead by {pulled} items"
    assert list(result) == list(range(result.stats.items))


def test_batched_length_mismatch_names_the_batch():
    with pytest.raises(BatchFunctionError, match=r"batch 0 \(items 0\.\.9\).*returned 9 results for 10 items"):
        BatchProcessor(batch_size=10, batched=True, progress=False).process(range(30), lambda b: b[:-1])


def test_memory_error_splits_until_it_fits(tmp_path):
    k = 13

    def picky(batch):
        if len(batch) > k:
            raise MemoryError("too many")
        return [x + 1 for x in batch]

    proc = BatchProcessor(batch_size=100, batched=True, progress=False, min_batch_size=1)
    result = proc.process(range(1000), picky, tmp_path / "o.jsonl")
    assert list(result) == [x + 1 for x in range(1000)]
    assert result.stats.memory_errors >= 1
    later = result.stats.batch_sizes[
        result.stats.batch_sizes.index(max(s for s in result.stats.batch_sizes if s <= k)) :
    ]
    assert max(result.stats.batch_sizes) <= k
    assert later


def test_skip_writes_null_lines_and_error_records(tmp_path):
    def fragile(x):
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x

    result = BatchProcessor(batch_size=16, on_error="skip", progress=False).process(
        range(100), fragile, tmp_path / "o.jsonl"
    )
    values = list(result)
    assert len(values) == 100
    assert [i for i, v in enumerate(values) if v is None] == [i for i in range(100) if i % 10 == 3]
    errors = list(result.errors())
    assert [e["index"] for e in errors] == [i for i in range(100) if i % 10 == 3]
    assert (
        errors[0]["error_type"] == "ValueError"
        and "bad 3" in errors[0]["message"]
        and "Traceback" in errors[0]["traceback"]
    )
    assert result.stats.failed == 10


def test_retry_recovers_flaky_items(tmp_path):
    calls = {}

    def flaky(x):
        calls[x] = calls.get(x, 0) + 1
        if x % 7 == 0 and calls[x] < 3:
            raise ConnectionError("try again")
        return x

    result = BatchProcessor(batch_size=10, on_error="retry", max_retries=3, progress=False).process(range(30), flaky)
    assert list(result) == list(range(30)) and result.stats.failed == 0
    assert calls[7] == 3


def test_raise_names_the_item_and_keeps_committed_batches(tmp_path):
    def bad(x):
        if x == 57:
            raise KeyError("missing")
        return x

    out = tmp_path / "o.jsonl"
    with pytest.raises(ItemFailedError, match="item 57") as info:
        BatchProcessor(batch_size=10, auto_optimize=False, progress=False).process(range(100), bad, out)
    assert info.value.index == 57
    assert out.read_text().splitlines() == [str(i) for i in range(50)]
    assert json.loads((tmp_path / "o.jsonl.stats.json").read_text())["status"] == "failed"


def test_unserialisable_result_names_type_and_index():
    with pytest.raises(SerializationError, match=r"item 4 .*object"):
        BatchProcessor(batch_size=3, progress=False).process(range(10), lambda x: object() if x == 4 else x)
    result = BatchProcessor(batch_size=3, progress=False, json_default=str).process(range(3), lambda x: {x})
    assert all(v.startswith("{") for v in result)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(OutputExistsError, match="overwrite"):
        BatchProcessor(progress=False).process(range(3), square, out)
    assert out.read_text() == "keep me\n"
    BatchProcessor(progress=False).process(range(3), square, out, overwrite=True)
    assert len(out.read_text().splitlines()) == 3


def test_history_warm_start_uses_the_learned_size(tmp_path):
    def work(batch):
        return [sum(range(200)) + x for x in batch]

    first = BatchProcessor(batch_size=4, batched=True, process_name="warm", progress=False).process(
        range(200_000), work
    )
    learned = HistoryStore().load("warm")["learned_batch_size"]
    assert learned != 4 and first.stats.batch_sizes[0] == 4
    second = BatchProcessor(batch_size=4, batched=True, process_name="warm", progress=False).process(
        range(50_000), work
    )
    assert second.stats.batch_sizes[0] == min(learned, 50_000)


REAL_ALLOCATION = textwrap.dedent(
    """
    import sys, numpy as np
    from batchmem import BatchProcessor
    from batchmem.heap import current_rss_bytes

    MB = 1 << 20
    def allocate(batch):
        blocks = [np.ones(2 * MB // 8) for _ in batch]  # 2 MB touched per item, held for the whole batch
        return [float(b[0]) for b in blocks]

    baseline = current_rss_bytes()
    limit = baseline + 300 * MB
    print(limit, flush=True)
    auto = sys.argv[1] == "auto"
    proc = BatchProcessor(batch_size=8 if auto else 400, auto_optimize=auto, batched=True, memory_limit=limit,
                          max_batch_size=5000, progress=False, use_history=False)
    result = proc.process(range(4000), allocate)
    print(result.stats.items, result.stats.batch_sizes, flush=True)
    """
)


@pytest.mark.parametrize("mode", ["auto", "fixed"])
def test_real_allocations_stay_under_the_limit_only_when_adaptive(tmp_path, mode):
    """Peak RSS is watched from outside (psutil, every ms): batchmem resets its own VmHWM per batch, so the
    child's ru_maxrss is no independent witness."""
    import psutil

    script = tmp_path / "alloc.py"
    script.write_text(REAL_ALLOCATION)
    child = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    limit = int(child.stdout.readline())
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.001)
    rest, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    items, sizes = rest.split(" ", 1)
    assert int(items) == 4000
    if mode == "auto":
        assert peak < limit, f"peak {peak >> 20} MB over limit {limit >> 20} MB; batch sizes {sizes[:300]}"
    else:
        assert peak > limit


MEMORY_BOUND = textwrap.dedent(
    """
    import json, sys
    from batchmem import BatchProcessor
    from batchmem.heap import current_rss_bytes

    def hold_a_mib_each(batch):
        held = [b"x" * (int(sys.argv[3]) << 20) for _ in batch]  # MiB written per item, held for the batch
        return [len(h) for h in held]

    # The baseline at half the limit: under the 0.6 target (the up-front check passes), so a few MiB fit.
    limit = int(current_rss_bytes() / 0.5 * float(sys.argv[1]))
    proc = BatchProcessor(batch_size=2, batched=True, memory_limit=limit, progress=False)
    stats = proc.process(range(40), hold_a_mib_each, output=sys.argv[2]).stats
    issues = [i for i in stats.issues if i["kind"] == "memory_bound"]
    print(json.dumps({"sizes": stats.batch_sizes, "issues": issues, "stats": stats.stats_path}))
    """
)


@pytest.mark.parametrize("room", [1, 16], ids=["tight", "roomy"])
def test_a_run_held_to_short_batches_by_memory_says_so_and_names_the_fix(tmp_path, room):
    """The tree already holds most of the memory target (0.6 of the limit) before the first batch, as
    the embeddings example's model did under 1.5 GiB: every batch is cut to one item (8 MiB each), and the
    run's issues say which setting to raise. Under a 16x roomier limit the same run has no such issue. In a fresh
    interpreter: this one's RSS (and the free heap the baseline leaves out) depends on the tests before."""
    script = tmp_path / "bound.py"
    script.write_text(MEMORY_BOUND)
    out = subprocess.run(
        [sys.executable, str(script), str(room), str(tmp_path / "out.jsonl"), "8" if room == 1 else "1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout.splitlines()[-1])
    assert sum(run["sizes"]) == 40
    if room == 1:  # above the 0.6 target, below the 0.8 warning level
        [issue] = run["issues"]
        assert max(run["sizes"][1:]) == 1 and issue["severity"] == "warning"
        assert "memory target (60% of the limit) set the size of" in issue["message"]
        assert "raise memory_limit" in issue["message"]
        report = load_report(run["stats"])  # with the run's history (this test's BATCHMEM_HOME)
        said = [i["message"] for i in report.issues] + report.recommendations
        assert sum("memory target (60% of the limit)" in text for text in said) == 1  # said once, as the issue
    else:
        assert run["issues"] == [] and max(run["sizes"][1:]) > 2  # grown past the first batch
