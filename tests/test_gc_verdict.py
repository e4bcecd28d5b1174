"""The GC verdict is about the function's own collections, measured inside its batches: collections of
the code around it (batchmem's, between batches) are not blamed on it."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from batchmem import BatchProcessor
from batchmem.backends.worker import BatchTask, RunOptions, run_batch
from batchmem.heap.analyzer import HeapAnalyzer


def watch(pause_s: float) -> SimpleNamespace:
    """A GcWatch's figures: ``pause_s`` seconds of collections in this process."""
    return SimpleNamespace(
        pause_s=pause_s, max_pause_s=0.01, collections=[100, 10, 1], collected=0, uncollectable=0, to_dict=dict
    )


def verdicts(process_pause_s: float, fn_pause_s: float, fn_s: float, elapsed_s: float = 10.0) -> dict:
    analyzer = HeapAnalyzer(memory_limit="64GB", gc_watch=watch(process_pause_s))
    analyzer._stopped_s = elapsed_s
    analyzer.record_function_gc(fn_pause_s, fn_s, own=True)
    return {i["kind"]: i for i in analyzer.analyze_heap()["issues"]}


def test_collections_outside_the_function_are_not_blamed_on_it():
    # 1.6 s of collections in the process, 0.3 s of them while the function ran (3 % of its 9 s)
    found = verdicts(process_pause_s=1.6, fn_pause_s=0.3, fn_s=9.0)
    assert "gc_pauses" not in found  # no gc.freeze() advice for the function
    assert found["gc_overhead"]["severity"] == "info"
    assert "outside the function" in found["gc_overhead"]["message"] and "1.30 s" in found["gc_overhead"]["message"]


def test_a_function_that_spends_its_time_in_gc_is_told_so():
    found = verdicts(process_pause_s=2.0, fn_pause_s=1.9, fn_s=8.0)
    pauses = found["gc_pauses"]
    assert (
        pauses["severity"] == "warning"
        and "inside the function's batches took 1.90 s (24% of 8.0 s)" in pauses["message"]
    )
    assert "gc.freeze()" in pauses["recommendation"] and "gc_overhead" not in found


def test_the_standalone_analyzer_keeps_its_whole_process_verdict():
    analyzer = HeapAnalyzer(memory_limit="64GB", gc_watch=watch(2.0))
    analyzer._stopped_s = 10.0
    found = {i["kind"]: i for i in analyzer.analyze_heap()["issues"]}
    assert found["gc_pauses"]["message"].startswith("GC pauses took 2.00 s (20% of 10.0 s)")


def collects(items):
    for _ in range(3):
        gc.collect()
    return items


def test_run_batch_measures_the_functions_own_gc_pauses():
    opts = RunOptions(batched=True, on_error="raise", max_retries=0, encode=False)
    out = run_batch(collects, BatchTask(0, 0, [1, 2, 3]), opts)
    assert out.gc_collections >= 3 and 0 < out.gc_pause_s <= out.duration_s


def test_a_runs_analyzer_gets_the_functions_gc_figures(tmp_path, monkeypatch):
    seen = []
    real = HeapAnalyzer.record_function_gc

    def spy(self, pause_s, seconds, *, own):
        seen.append((pause_s, seconds, own))
        real(self, pause_s, seconds, own=own)

    monkeypatch.setattr(HeapAnalyzer, "record_function_gc", spy)
    BatchProcessor(batch_size=5, auto_optimize=False, batched=True, progress=False, use_history=False).process(
        range(20), collects, tmp_path / "out.jsonl"
    )
    assert len(seen) >= 4 and all(own and 0 < pause <= s for pause, s, own in seen)
