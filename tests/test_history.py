"""Per-operation history: real files under tmp_path via BATCHMEM_HOME."""

from __future__ import annotations

import logging
import os

import orjson
import pytest

from batchmem.errors import ConfigError
from batchmem.optimizer import BatchMeasurement, BatchOptimizer, HistoryStore, history_dir
from batchmem.optimizer.history import MAX_RUNS, history_file_name

GB = 1_000_000_000
MB = 1_000_000


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path))
    return tmp_path


def run_once(opt: BatchOptimizer, operation: str, *, per_item: int = 100_000, batches: int = 15) -> list[int]:
    sizes = [opt.start_run(operation)]
    for _ in range(batches):
        size = sizes[-1]
        sizes.append(opt.observe(BatchMeasurement(size, 2e-5 * size, per_item * size), baseline_bytes=100 * MB))
    opt.finish_run({"items": sum(sizes[:-1]), "duration_s": 3.0, "peak_rss_bytes": 700 * MB})
    return sizes


def test_history_dir_reads_env_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path / "a"))
    assert history_dir() == tmp_path / "a" / "history"
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path / "b"))
    assert history_dir() == tmp_path / "b" / "history"
    assert HistoryStore().root == tmp_path / "b" / "history"
    monkeypatch.delenv("BATCHMEM_HOME")
    assert history_dir().name == "history" and "batchmem" in str(history_dir())


def test_record_and_load_round_trip(home):
    store = HistoryStore()
    assert store.load("embed") is None
    store.record_run("embed", {"items": 100, "duration_s": 2.0, "learned_batch_size": 50, "bytes_per_item": 10.0})
    store.record_run("embed", {"items": 300, "duration_s": 2.0, "learned_batch_size": 70, "peak_rss_bytes": 5})
    rec = store.load("embed")
    assert rec["operation"] == "embed" and rec["runs"] == 2
    assert rec["items"] == 400 and rec["duration_s"] == 4.0 and rec["items_per_s"] == 100.0
    assert rec["learned_batch_size"] == 70 and rec["peak_rss_bytes"] == 5
    assert rec["bytes_per_item"] == 10.0  # kept from the earlier run when the last lacks it
    assert all("finished_at" in r for r in rec["runs_detail"])
    assert store.path_for("embed").parent == home / "history"
    assert store.operations() == ["embed"]


def test_keeps_last_runs_only(home):
    store = HistoryStore()
    for i in range(MAX_RUNS + 5):
        store.record_run("op", {"items": 1, "learned_batch_size": i + 1})
    rec = store.load("op")
    assert rec["runs"] == MAX_RUNS + 5 and rec["items"] == MAX_RUNS + 5
    assert len(rec["runs_detail"]) == MAX_RUNS
    assert rec["runs_detail"][-1]["learned_batch_size"] == MAX_RUNS + 5


def test_atomic_write_leaves_no_tmp_file(home):
    store = HistoryStore()
    store.record_run("op", {"items": 1})
    files = sorted(p.name for p in (home / "history").iterdir())
    assert files == [history_file_name("op")]


def test_failed_write_keeps_old_file_and_no_tmp(home, monkeypatch):
    store = HistoryStore()
    store.record_run("op", {"items": 1})
    before = store.path_for("op").read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="disk full"):
            store.record_run("op", {"items": 2})
    assert store.path_for("op").read_bytes() == before
    assert [p.name for p in (home / "history").iterdir()] == [history_file_name("op")]


def test_finish_run_logs_instead_of_raising_on_unwritable_history(home, monkeypatch, caplog):
    opt = BatchOptimizer(memory_limit_bytes=GB)

    def boom(src, dst):
        raise OSError("read-only")

    monkeypatch.setattr(os, "replace", boom)
    opt.start_run("op")
    with caplog.at_level(logging.WARNING, logger="batchmem"):
        opt.finish_run({"items": 1})
    assert "could not save history" in caplog.text


def test_warm_start_gives_learned_size_first(home):
    first = BatchOptimizer(memory_limit_bytes=GB)
    sizes = run_once(first, "embed_docs")
    assert sizes[0] == 100  # cold: initial_batch_size
    learned = HistoryStore().load("embed_docs")["learned_batch_size"]
    expected = (0.6 * GB - 100 * MB) / 100_000  # 5000 items
    assert abs(learned - expected) <= 0.2 * expected

    second = BatchOptimizer(memory_limit_bytes=GB)
    assert second.calculate_optimal_batch_size(range(10**6), operation="embed_docs") == learned
    assert second.start_run("embed_docs") == learned
    assert second.controller.bytes_per_item == pytest.approx(100_000, rel=0.05)
    assert second.get_batch_statistics("embed_docs")["current_run"]["warm_started"] is True
    # no probing: the first observed batch keeps the size near the target
    nxt = second.observe(BatchMeasurement(learned, 1e-4 * learned, 100_000 * learned), baseline_bytes=100 * MB)
    assert abs(nxt - learned) <= 0.05 * learned
    # another operation still starts cold
    assert BatchOptimizer(memory_limit_bytes=GB).start_run("other") == 100


def test_warm_start_respects_baseline_given_at_start(home):
    run_once(BatchOptimizer(memory_limit_bytes=GB), "op")
    opt = BatchOptimizer(memory_limit_bytes=GB)
    # 450 MB already resident: only 150 MB of the 600 MB target left = 1500 items
    assert opt.start_run("op", baseline_bytes=450 * MB) == 1500


def test_learned_size_is_capped_by_memory_error_ceiling(home):
    opt = BatchOptimizer(memory_limit_bytes=64 * GB)
    opt.start_run("op")
    size = 100
    for _ in range(5):
        size = opt.observe(BatchMeasurement(size, 0.001, size), baseline_bytes=MB)
    opt.on_memory_error(size)
    opt.finish_run({})
    rec = HistoryStore().load("op")
    assert rec["learned_batch_size"] <= size // 2
    assert rec["runs_detail"][-1]["memory_errors"] == 1


def test_use_history_false_writes_nothing(home):
    opt = BatchOptimizer(memory_limit_bytes=GB, use_history=False)
    run_once(opt, "op")
    assert not (home / "history").exists()


def test_clear(home):
    store = HistoryStore()
    store.record_run("a", {"items": 1})
    store.record_run("b", {"items": 1})
    assert store.clear("a") is True
    assert store.clear("a") is False
    assert store.load("a") is None and store.operations() == ["b"]
    assert store.clear() is True
    assert store.operations() == [] and store.clear() is False
    assert BatchOptimizer().start_run("b") == 100


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"version": 99}', b"", b'{"version": 1}'])
def test_corrupt_history_is_ignored_with_a_warning(home, caplog, content):
    store = HistoryStore()
    path = store.path_for("op")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="batchmem"):
        assert store.load("op") is None
        opt = BatchOptimizer(memory_limit_bytes=GB)
        assert opt.start_run("op") == 100
        assert opt.get_batch_statistics()["operations"]["op"]["runs"] == 0
    assert "history file" in caplog.text
    # the next run replaces the bad file
    opt.finish_run({"items": 5})
    assert store.load("op")["runs"] == 1


def test_file_names_are_safe_and_distinct(home):
    store = HistoryStore()
    names = ["../../etc/passwd", "a/b", "a_b", "émbed docs!", "x" * 500, "CON"]
    paths = {store.path_for(n) for n in names}
    assert len(paths) == len(names)
    for n in names:
        p = store.path_for(n)
        assert p.parent == home / "history"
        assert len(p.name) < 100 and "/" not in p.name and not p.name.startswith(".")
        store.record_run(n, {"items": 1})
    assert store.operations() == sorted(names)
    with pytest.raises(ConfigError, match="process_name"):
        history_file_name("  ")


def test_statistics_and_trend_recommendation(home):
    store = HistoryStore()
    for i, bpi in enumerate([1000, 1100, 1200, 1300, 1400]):
        store.record_run(
            "grow",
            {
                "items": 1000,
                "duration_s": 1.0 + i * 0.5,
                "learned_batch_size": 200,
                "ewma_bytes_per_item": bpi,
                "ewma_seconds_per_item": 0.0001,
                "items_per_s": 1000 / (1.0 + i * 0.5),
                "batches": 5,
                "leaks": 2 if i == 4 else 0,
                # the run's own settings: advice checks the option it would change
                "settings": {"batched": False, "target_batch_seconds": [0.2, 2.0]},
            },
        )
    stats = BatchOptimizer(memory_limit_bytes=GB).get_batch_statistics()
    figures = stats["operations"]["grow"]
    assert figures["runs"] == 5 and figures["items"] == 5000
    assert figures["learned_batch_size"] == 200 and figures["bytes_per_item"] == 1400
    assert figures["items_per_s"] == pytest.approx(5000 / 10.0)
    recs = figures["recommendations"]
    assert any(r.startswith("bytes per item grew 40% over the last 5 runs") for r in recs), recs
    assert any("throughput fell" in r for r in recs)
    assert any("leak" in r for r in recs)
    assert any("batches are short" in r for r in recs)  # 200 items x 0.1 ms = 0.02 s
    assert stats["recommendations"] == recs  # one operation: no prefix
    raw = orjson.loads(store.path_for("grow").read_bytes())
    assert raw["version"] == 1


def test_old_and_newer_history_files_load_with_unknown_and_missing_keys_tolerated(tmp_path):
    # A run summary written by another version: keys this one does not know, figures it lacks and a
    # figure of the wrong type. The warm start still reads what it needs; nothing raises.
    store = HistoryStore(tmp_path)
    run = {"learned_batch_size": 64, "items": "many", "future_key": [1, 2], "seconds_per_item": 0.001}
    store.path_for("op").write_bytes(
        orjson.dumps({"version": 1, "operation": "op", "runs": 1, "learned_batch_size": 64, "runs_detail": [run]})
    )
    last = store.last_run("op")
    assert last is not None and last.learned_batch_size == 64 and last.items is None
    assert not hasattr(last, "future_key")
    opt = BatchOptimizer(history=store)
    assert opt.start_run("op") == 64
    assert opt.get_batch_statistics("op")["operations"]["op"]["learned_batch_size"] == 64
