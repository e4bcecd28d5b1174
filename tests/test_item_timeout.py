"""``item_timeout`` in-process, fast: the per-item timer (main thread and other threads), the batched
calling convention, retries, the deadline board and the watchdog's decision, and the counts in the
stats, the report and ``batchmem stats``."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from batchmem import BatchProcessor
from batchmem.backends.deadlines import DeadlineBoard, Running, reporting
from batchmem.backends.item_timeout import ItemTimer, is_item_timeout
from batchmem.backends.watchdog import OomWatchdog, Rss

HANGS = 3


def sleeps_at_3(x: int) -> int:
    if x == HANGS:
        time.sleep(3600)
    return x


def spins_at_3(x: int) -> int:
    while x == HANGS:
        pass
    return x


def batched_sleeps_at_3(batch: list) -> list:
    return [sleeps_at_3(x) for x in batch]


def _run(fn, **options):
    options = {"on_error": "skip", **options}
    proc = BatchProcessor(item_timeout=0.3, progress=False, batch_size=5, **options)
    t0 = time.monotonic()
    result = proc.process(range(10), fn)
    return result, time.monotonic() - t0


@pytest.mark.parametrize("fn", [sleeps_at_3, spins_at_3])
def test_in_process_a_hung_item_fails_as_timeout_and_the_run_goes_on(fn):
    result, took = _run(fn)
    with result:
        assert list(result) == [None if i == HANGS else i for i in range(10)]
        [error] = list(result.errors())
        assert (error["index"], error["error_type"]) == (HANGS, "TimeoutError")
        assert error["message"] == "item 3 ran past item_timeout=0.3s" and error["attempts"] == 1
        assert result.stats.timeouts == 1
    assert took < 5


def test_a_run_in_another_thread_is_interrupted_by_the_monitor_thread():
    box = {}
    thread = threading.Thread(target=lambda: box.update(run=_run(spins_at_3)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    result, _ = box["run"]
    with result:
        assert result.stats.timeouts == 1 and [e["index"] for e in result.errors()] == [HANGS]


def test_a_batched_call_past_items_x_item_timeout_is_bisected_to_the_item():
    result, took = _run(batched_sleeps_at_3, batched=True, auto_optimize=False)
    with result:
        assert list(result) == [None if i == HANGS else i for i in range(10)]
        assert [(e["index"], e["error_type"]) for e in result.errors()] == [(HANGS, "TimeoutError")]
    assert took < 10


def test_a_timeout_is_not_retried():
    result, took = _run(sleeps_at_3, on_error="retry", max_retries=3)
    with result:
        [error] = list(result.errors())
        assert error["error_type"] == "TimeoutError" and error["attempts"] == 1
    assert took < 5


def test_the_timer_gives_back_the_callers_sigalrm_handler_and_timer():
    seen = []
    old = signal.signal(signal.SIGALRM, lambda *a: seen.append("caller"))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with ItemTimer(0.05) as timer:
            with pytest.raises(TimeoutError) as info:
                timer.timed(lambda: time.sleep(5), 7)
            assert timer.timed(lambda: 42, 8) == 42
        assert is_item_timeout(info.value) and str(info.value) == "item 7 ran past item_timeout=0.05s"
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.5
        time.sleep(0.6)
        assert seen == ["caller"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_board_hears_a_batch_start_and_end_and_names_the_overdue_worker():
    board = DeadlineBoard()
    try:
        with reporting(board.address, 40, 20, deadline_s=0.05):
            time.sleep(0.01)
            board.drain()
            assert board.overdue([os.getpid()]) == []
            time.sleep(0.06)
            [(pid, batch)] = board.overdue([os.getpid()])
            assert pid == os.getpid() and (batch.start, batch.items) == (40, 20)
        board.drain()
        assert board.overdue([os.getpid()]) == [] and board.running == {}
    finally:
        board.close()


def test_the_watchdog_kills_the_worker_past_its_deadline_once_with_the_reason():
    board = DeadlineBoard()
    killed = []
    dog = OomWatchdog(
        lambda: [7, 8],
        10**12,
        read=lambda pid: Rss(1),
        kill=lambda pid, sig: killed.append((pid, sig)),
        confirm=lambda pids: None,
        deadlines=board,
    )
    try:
        now = time.monotonic()
        board.running.update({7: Running(now - 1, 40, 20), 8: Running(now + 60, 60, 20)})
        dog.check()
        dog.check()
        assert killed == [(7, signal.SIGKILL)] and dog.timeouts == 1 and dog.kills == 0
        assert dog.reason_for(7) == "item_timeout: items 40..59 ran past item_timeout x 20 items + 1s, worker killed"
    finally:
        board.close()


def test_the_report_and_batchmem_stats_count_the_timeouts(tmp_path):
    from batchmem.report import load_report, operation_statistics, render_operation_detail, render_text

    proc = BatchProcessor(item_timeout=0.3, on_error="skip", progress=False, process_name="hangs")
    proc.process(range(10), sleeps_at_3, tmp_path / "out.jsonl")
    text = render_text(load_report(tmp_path / "out.jsonl.stats.json"))
    assert any(line.split() == ["items", "past", "item_timeout", "1"] for line in text.splitlines()), text
    detail = render_operation_detail("hangs", operation_statistics("hangs")["operations"]["hangs"])
    assert "items past item_timeout, all runs" in detail
    assert operation_statistics("hangs")["operations"]["hangs"]["timeouts"] == 1
