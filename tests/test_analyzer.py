"""HeapAnalyzer: real allocations in real runs; the trend estimator on known series."""

import gc
import random

import pytest

from batchmem import BatchProcessor, HeapAnalyzer
from batchmem.heap.analyzer import Issue
from batchmem.heap.gc_watch import GcWatch, ThrottledCollector
from batchmem.heap.malloc import heap_in_use_bytes
from batchmem.heap.trend import theil_sen

_KEPT = []


def leak_100kb(batch):
    """Planted leak: keeps 100 KB per batch."""
    _KEPT.append(b"x" * 100_000)
    return [x + 1 for x in batch]


def noisy_clean(batch):
    """Allocates and frees blocks of varying sizes (up to 8 MB per batch); keeps nothing."""
    rng = random.Random(batch[0])
    junk = [bytes(rng.randint(1, 400_000)) for _ in range(rng.randint(1, 20))]
    lists = [list(range(rng.randint(10, 5_000))) for _ in range(3)]
    del junk, lists
    return [x + 1 for x in batch]


def make_cycles(batch):
    """Each item leaves a reference cycle behind (freed only by the cyclic GC)."""
    for _ in batch:
        a = {}
        b = {"a": a}
        a["b"] = b
    return [x + 1 for x in batch]


def _run(fn, n=400, size=10, **kw):
    proc = BatchProcessor(batch_size=size, auto_optimize=False, batched=True, progress=False, use_history=False, **kw)
    return proc.process(range(n), fn)


@pytest.fixture(autouse=True)
def _release():
    # Cycles left by earlier tests, collected in the middle of a run, lower malloc's in-use bytes
    # there and flatten the slope (68 KiB a batch for a planted 100 KB in one suite order).
    gc.collect()
    yield
    _KEPT.clear()


def test_theil_sen_ignores_outliers_and_reports_confidence():
    x = list(range(30))
    y = [100 * i for i in x]
    y[5] = 10**9  # a wild outlier
    fit = theil_sen(x, y)
    assert fit.slope == pytest.approx(100) and fit.confidence > 0.9
    flat = theil_sen(x, [random.Random(i).gauss(0, 1000) for i in x])
    assert abs(flat.slope) < 200 and 0.2 < flat.confidence < 0.8
    assert theil_sen([1], [5]).slope == 0.0


def test_planted_leak_flagged_within_30_batches():
    result = _run(leak_100kb, n=400)
    leaks = [i for i in result.stats.issues if i["kind"] == "leak"]
    assert len(leaks) == 1
    ev = leaks[0]["evidence"]
    assert ev["detected_after_batches"] <= 30
    assert 80_000 <= ev["bytes_per_batch"] <= 130_000
    assert ev["bytes_per_item"] == pytest.approx(ev["bytes_per_batch"] / 10)
    assert ev["confidence"] >= 0.8 and ev["items_until_limit"] > 0
    assert "leak suspected" in leaks[0]["message"] and leaks[0]["recommendation"]


def test_planted_leak_names_the_culprit_line_when_tracing():
    result = _run(leak_100kb, n=300, trace_allocations=True)
    leak = next(i for i in result.stats.issues if i["kind"] == "leak")
    assert leak["evidence"]["traced"] == 1
    top = leak["culprits"][0]
    assert top["line"].endswith(f"test_analyzer.py:{leak_100kb.__code__.co_firstlineno + 2}")
    assert top["size_bytes"] >= 500_000 and top["count"] >= 5
    assert top["line"] in leak["message"]


@pytest.mark.parametrize("trace", [False, True])
def test_allocate_and_free_with_noisy_sizes_is_not_flagged(trace):
    result = _run(noisy_clean, n=350 if trace else 500, trace_allocations=trace)
    assert [i for i in result.stats.issues if i["kind"] == "leak"] == []


def test_gc_collections_and_pauses_recorded_and_cycles_reported():
    result = _run(make_cycles, n=20_000, size=500)
    st = result.stats
    assert sum(st.gc_collections_by_generation) > 0 and st.gc_collections_by_generation[0] > 0
    assert st.gc_pause_s > 0 and st.gc_max_pause_s <= st.gc_pause_s
    cycles = next(i for i in st.issues if i["kind"] == "gc_cycles")
    assert cycles["evidence"]["objects_per_item"] >= 1
    assert "cycle" in cycles["recommendation"]
    assert not any(cb.__self__.__class__ is GcWatch for cb in gc.callbacks if hasattr(cb, "__self__"))


def test_standalone_analyzer_api():
    kept = []
    with HeapAnalyzer(memory_limit="64GB", min_batches=5, warmup_batches=1) as analyzer:
        new = []
        for _ in range(12):
            kept.append(bytearray(300_000))
            new += analyzer.observe_batch(pid=None, items=3)
        assert len(new) == 1 and isinstance(new[0], Issue)
        assert new[0].evidence["bytes_per_batch"] == pytest.approx(300_000, rel=0.2)
        report = analyzer.analyze_heap()
        assert report["issues"][0]["kind"] == "leak" and report["recommendations"]
        stats = analyzer.get_memory_stats()
        for key in ("rss_bytes", "limit_bytes", "utilization", "pressure", "gc", "tracemalloc"):
            assert key in stats
        assert stats["limit_bytes"] == 64 * 10**9 and stats["gc"]["collections_by_generation"] is not None
    assert heap_in_use_bytes() is None or heap_in_use_bytes() > 0


def test_throttled_collector_keeps_to_its_time_share():
    c = ThrottledCollector(max_time_fraction=0.01)
    assert c.collect() is not None
    assert c.collect() is None and c.skipped == 1  # right after a collection: over 1 % of the elapsed time


def test_baselines_that_follow_a_ramping_batch_size_are_not_a_leak():
    # A cold chunked run: batches of ~1,000 rows, then a ramp to ~60,000 where they settle. What the
    # process keeps after a batch (reader and allocator buffers) follows the largest batch so far, ~100
    # bytes a row, not the items processed: fitted together, the small-batch baselines and the settled
    # ones read as ~25 bytes/item of "leak" (seen on the flights example).
    sizes = [
        1_093,
        1_230,
        1_249,
        1_100,
        1_230,
        11_071,
        53_214,
        60_966,
        59_000,
        61_000,
        60_004,
        58_000,
        60_500,
        59_500,
        61_200,
        60_100,
        59_800,
    ]
    analyzer = HeapAnalyzer(memory_limit="64GB", warmup_batches=2, min_batches=5)
    largest, found = 0, []
    for i, n in enumerate(sizes):
        largest = max(largest, n)
        baseline = 23 * 2**20 + 100 * largest + (i % 3) * 4096
        found += analyzer.observe_batch(pid=4242, items=n, baseline_bytes=baseline, tree_rss_bytes=2**30)
    assert not [i for i in found if i.kind == "leak"]


def test_a_leak_under_settled_batches_is_still_flagged_after_a_ramp():
    analyzer = HeapAnalyzer(memory_limit="64GB", warmup_batches=2, min_batches=5)
    found, done = [], 0
    for n in [1_000, 2_000, 8_000, 30_000] + [30_000] * 12:
        done += n
        found += analyzer.observe_batch(pid=4242, items=n, baseline_bytes=23 * 2**20 + 50 * done, tree_rss_bytes=2**30)
    assert [i.kind for i in found] == ["leak"]
