"""Pressure escalation with real memory: callbacks, backpressure, emergency stop, adaptive thresholds."""

import json
import logging

import pytest

from batchmem import BatchProcessor, MemoryMonitor
from batchmem.errors import ConfigError
from batchmem.heap.malloc import heap_free_bytes, trim_heap
from batchmem.heap.monitor import PressureLevel
from batchmem.heap.pressure import PressureCallbacks, adaptive_thresholds
from batchmem.io.checkpoint import Checkpoint, checkpoint_path

MB = 10**6
#: Blocks above glibc's largest mmap threshold (32 MiB), so freeing one returns it to the kernel at once.
_BLOCK = 40 << 20
_HOG = []
_CAP = {"blocks": None}  # set to bound the cache (the resumed run)


def hog(batch):
    """Keeps a 40 MiB block per batch (a cache that grows)."""
    if _CAP["blocks"] is not None and len(_HOG) >= _CAP["blocks"]:
        _HOG.clear()
    _HOG.append(b"x" * _BLOCK)
    return list(batch)


@pytest.fixture(autouse=True)
def _free_hog():
    _HOG.clear()
    yield
    _HOG.clear()
    _CAP["blocks"] = None


def _proc(**kw):
    return BatchProcessor(batch_size=1, auto_optimize=False, batched=True, progress=False, use_history=False, **kw)


def _heap_with_free_chunks(nbytes: int) -> bytearray:
    """Free ``nbytes`` of heap below a live block (so the heap cannot shrink), its pages handed back:
    the state a long-lived process (a test session) is in. glibc then serves a 40 MiB request from
    the free chunk, not with mmap, and a block freed there stays resident until the heap is trimmed."""
    blocks = [bytearray(100 << 10) for _ in range(nbytes // (100 << 10))]
    pin = bytearray(100 << 10)
    del blocks
    trim_heap()
    return pin


@pytest.mark.parametrize(
    "free_heap",
    [
        pytest.param(0, id="fresh heap"),
        pytest.param(
            200 << 20,
            id="200 MiB free heap",
            marks=pytest.mark.skipif(heap_free_bytes() is None, reason="glibc's heap (mallinfo2) only"),
        ),
    ],
)
def test_callback_frees_the_cache_and_dispatch_resumes(caplog, free_heap):
    caplog.set_level(logging.INFO, logger="batchmem")
    pin = _heap_with_free_chunks(free_heap)  # noqa: F841 (held for the test)
    baseline = MemoryMonitor().rss_bytes()
    proc = _proc(
        memory_limit=baseline + 2000 * MB,
        pressure_max_wait_s=5.0,
        adaptive_thresholds={"warning_mb": 70, "critical_mb": 110, "emergency_mb": 400},
    )
    calls = []
    proc.on_pressure("critical", lambda: (calls.append(len(_HOG)), _HOG.clear()), cooldown_s=0)
    result = proc.process(range(12), hog)
    st = result.stats
    assert st.status == "completed" and st.items == 12
    assert calls and all(n >= 3 for n in calls)  # ran once the cache held >= 110 MB
    assert "pausing dispatch" in caplog.text and "dispatch resumed" in caplog.text
    pressure = next(i for i in st.issues if i["kind"] == "pressure")
    ev = pressure["evidence"]
    assert ev["critical_batches"] >= 1 and ev["callbacks_run"] == len(calls) and ev["pauses"] >= 1
    assert ev["paused_s"] < 5.0 and ev["pause_timeouts"] == 0
    assert st.gc_collected_between_batches >= 0 and ev["gc_between_batches"] >= 1
    assert proc.monitor.thresholds.warning == 0.80  # the adaptive thresholds were for that run only


def test_emergency_runs_cleanup_then_stops_with_everything_written(tmp_path):
    baseline = MemoryMonitor().rss_bytes()
    proc = _proc(memory_limit=baseline + 400 * MB, pressure_max_wait_s=0.1)
    cleaned = []
    proc.on_pressure("emergency", lambda: cleaned.append(len(_HOG)), cooldown_s=0)
    out = tmp_path / "out.jsonl"
    result = proc.process(range(100), hog, out)
    st = result.stats
    assert st.status == "stopped" and 3 <= st.items < 100
    assert st.stop_reason.startswith("memory pressure emergency") and "resume=True" in st.stop_reason
    assert cleaned == [st.items]  # cleanup ran once, right before the stop
    assert list(result) == list(range(st.items))  # every finished batch is on disk
    assert Checkpoint.load(checkpoint_path(out)).items == st.items
    saved = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    assert saved["status"] == "stopped" and saved["stop_reason"] == st.stop_reason
    kinds = {i["kind"] for i in st.issues}
    assert {"emergency_stop", "pressure"} <= kinds
    _HOG.clear()
    _CAP["blocks"] = 2
    rest = BatchProcessor(batch_size=40, auto_optimize=False, batched=True, progress=False, use_history=False).process(
        range(100), hog, out, resume=True
    )
    assert rest.stats.status == "completed" and list(rest) == list(range(100))


def test_adaptive_thresholds_from_the_baseline():
    t = adaptive_thresholds(100 * MB, 1000 * MB)  # baseline + 50 / 70 (/ 90) MB
    assert (t.warning, t.critical, t.emergency) == pytest.approx((0.15, 0.17, 0.19))
    squeezed = adaptive_thresholds(990 * MB, 1000 * MB)
    assert squeezed.warning < squeezed.critical < squeezed.emergency == 1.0
    with pytest.raises(ConfigError, match="warning_mb"):
        adaptive_thresholds(0, 1000 * MB, warning_mb=80, critical_mb=70)


def test_callbacks_escalate_by_level_and_respect_cooldown():
    cbs, ran = PressureCallbacks(), []
    cbs.register("warning", lambda: ran.append("w"), cooldown_s=60)
    cbs.register(PressureLevel.CRITICAL, lambda: ran.append("c"), cooldown_s=0)
    cbs.register("emergency", lambda: 1 / 0, cooldown_s=0)  # a failing hook is logged, not raised
    assert cbs.fire(PressureLevel.WARNING) == 1
    assert cbs.fire(PressureLevel.CRITICAL) == 1  # warning's cooldown holds; critical runs
    assert cbs.fire(PressureLevel.EMERGENCY) == 2
    assert ran == ["w", "c", "c"]
    with pytest.raises(ConfigError, match="level"):
        BatchProcessor().on_pressure("normal", print)
    with pytest.raises(ConfigError, match="max_tasks_per_worker"):
        BatchProcessor(max_tasks_per_worker=0)
