"""The OOM watchdog: a worker past the terminate level is killed by batchmem, not the kernel; the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from batchmem.backends.watchdog import (
    OomWatchdog,
    Rss,
    StatmReader,
    choose_victim,
    statm,
    statm_rss_bytes,
    tree_bytes,
)
from batchmem.heap.monitor import tree_pss_bytes

MiB = 1 << 20


def test_choose_victim_picks_the_worker_with_most_private_memory_only_past_the_level():
    workers = {11: Rss(300 * MiB), 12: Rss(900 * MiB), 13: Rss(100 * MiB)}
    assert choose_victim(Rss(100 * MiB), workers, terminate_bytes=2000 * MiB) is None
    assert choose_victim(Rss(100 * MiB), workers, terminate_bytes=1400 * MiB) == 12
    assert choose_victim(Rss(5000 * MiB), {}, terminate_bytes=1 * MiB) is None  # never the parent
    # most resident is not most private: 21 maps a big shared file, 22 allocated its memory
    assert choose_victim(Rss(0), {21: Rss(800 * MiB, 700 * MiB), 22: Rss(600 * MiB)}, 1000 * MiB) == 22


def test_shared_pages_count_once_so_many_workers_with_numpy_are_not_killed_early():
    parent, workers = Rss(110 * MiB, 55 * MiB), [Rss(107 * MiB, 51 * MiB)] * 8  # measured: loky workers with numpy
    assert tree_bytes(parent, workers) == 55 * MiB + 8 * 56 * MiB + 55 * MiB
    assert parent.resident + sum(w.resident for w in workers) > 900 * MiB  # what a plain sum of RSS says
    assert choose_victim(parent, dict(enumerate(workers, 100)), terminate_bytes=900 * MiB) is None


class FakeTree:
    """Readings a test sets by hand, and the signals the watchdog sent."""

    def __init__(self, parent: Rss):
        self.rss: dict[int, Rss] = {os.getpid(): parent}
        self.workers: list[int] = []
        self.sent: list[tuple[int, int]] = []

    def kill(self, pid: int, sig: int) -> None:
        if pid not in self.rss:
            raise ProcessLookupError(pid)
        self.sent.append((pid, sig))


def test_the_watchdog_kills_once_and_spares_the_others_while_the_kernel_tears_the_victim_down():
    tree = FakeTree(Rss(100 * MiB))
    dog = OomWatchdog(
        lambda: list(tree.workers), 1000 * MiB, 0.95, read=tree.rss.get, kill=tree.kill, confirm=lambda pids: None
    )
    tree.workers = [7, 8]
    tree.rss.update({7: Rss(300 * MiB), 8: Rss(400 * MiB)})
    assert dog.check() is None and dog.kills == 0  # 800 MiB: below 950
    tree.rss[8] = Rss(600 * MiB)
    assert dog.check() == 8 and tree.sent == [(8, 9)] and dog.kills == 1
    assert (
        dog.reason_for(8)
        == dog.last_reason()
        == (
            "killed by the OOM watchdog: worker RSS 600.0MiB (tree 1000.0MiB) above the terminate level "
            "950.0MiB (0.95 of the 1000.0MiB limit)"
        )
    )
    tree.rss[7] = Rss(500 * MiB)  # 8 still listed with its memory: it is dying, not counted, not killed again
    assert dog.check() is None and dog.kills == 1 and len(tree.sent) == 1
    tree.workers = [7]  # 8 is gone
    del tree.rss[8]
    assert dog.check() is None
    tree.workers, tree.rss[8] = [7, 8], Rss(900 * MiB)  # the pid is reused by a fresh worker that grows
    assert dog.check() == 8 and dog.kills == 2


def test_pages_shared_copy_on_write_are_confirmed_once_before_a_kill():
    """Forked workers each count the parent's 400 MiB in statm; the tree's Pss says what is really held."""
    tree = FakeTree(Rss(400 * MiB))
    pss = {"total": 900 * MiB}
    asked: list[list[int]] = []

    def confirm(pids: list[int]) -> int:
        asked.append(pids)
        return pss["total"]

    dog = OomWatchdog(lambda: [7, 8], 1000 * MiB, 0.95, read=tree.rss.get, kill=tree.kill, confirm=confirm)
    tree.rss.update({7: Rss(450 * MiB), 8: Rss(450 * MiB)})  # statm: 1300 MiB, over 950
    assert dog.check() is None and dog.kills == 0 and asked == [[7, 8]]
    pss["total"] = 960 * MiB  # a batch grew past the level, counted once
    assert dog.check() in (7, 8) and dog.kills == 1


def test_tree_pss_counts_a_forked_childs_copy_on_write_pages_once():
    """A real fork of a process holding 200 MiB: statm counts them twice, Pss once."""
    import numpy as np

    block = np.ones((200 * MiB) // 8)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child says it runs, then only waits, sharing every page with the parent
        os.write(ready_w, b"r")
        os.read(r, 1)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        rss_sum = statm(os.getpid()).resident + statm(pid).resident
        shared_once = tree_pss_bytes([pid])
        assert rss_sum > 400 * MiB and shared_once is not None
        assert 200 * MiB < shared_once < rss_sum - 150 * MiB
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        del block


def test_a_worker_that_exits_before_the_signal_is_not_counted():
    tree = FakeTree(Rss(0))
    dog = OomWatchdog(lambda: [5], 100 * MiB, read=lambda pid: Rss(200 * MiB), kill=tree.kill, confirm=lambda p: None)
    assert dog.check() is None and dog.kills == 0 and dog.last_reason() is None


def test_statm_reads_this_process():
    me = statm(os.getpid())
    assert me is not None and me.resident > 10 * MiB and 0 < me.shared < me.resident
    assert statm_rss_bytes(os.getpid()) >= me.resident // 2
    assert statm(2**22 + 7) is None  # no such pid


def test_statm_reader_rereads_open_files_and_drops_reaped_pids():
    read = StatmReader()
    before = read(os.getpid())
    block = b"x" * (64 * MiB)  # written: resident
    grown = read(os.getpid())
    assert before is not None and grown is not None and grown.resident - before.resident >= 60 * MiB
    del block
    hold, release = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(release)
        os.read(hold, 1)  # alive until the parent has read it
        os._exit(0)
    os.close(hold)
    assert read(pid).resident > 10 * MiB
    os.close(release)
    os.waitpid(pid, 0)
    assert read(pid) is None and read(2**22 + 7) is None
    read.keep([os.getpid()])
    assert read(os.getpid()) is not None
    read.close()


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from batchmem import BatchProcessor
    from batchmem.heap import current_rss_bytes

    def grow(x):
        if x == 57:  # one item allocates 50 MiB at a time, far past the limit, as a runaway would
            held = []
            for _ in range(80):
                held.append(np.ones((50 << 20) // 8))
                time.sleep(0.005)
        time.sleep(0.002)  # costly enough that n_jobs="auto" hands the items to workers
        return x

    limit = current_rss_bytes() + (900 << 20)
    jobs = dict(n_jobs=1, backend="loky") if sys.argv[2] == "loky" else dict(n_jobs="auto")
    proc = BatchProcessor(batch_size=8, auto_optimize=False, on_error="skip",
                          memory_limit=limit, progress=False, use_history=False, **jobs)
    result = proc.process(range(200), grow, sys.argv[1])
    print(result.stats.watchdog_kills, result.stats.worker_deaths, result.stats.failed, flush=True)
    print(result.stats.n_jobs_choice)
""")


@pytest.mark.parametrize("workers", ["loky", "forked"])
def test_one_isolated_worker_is_guarded_an_item_past_the_limit_fails_alone_and_the_run_finishes(tmp_path, workers):
    """``n_jobs=1, backend="loky"``: the recommended setting under a hard limit (one isolated, guarded worker);
    forked workers of ``n_jobs="auto"`` share the parent's pages and are guarded as well."""
    script, out = tmp_path / "child.py", tmp_path / "out.jsonl"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), str(out), workers], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    counts, choice = done.stdout.splitlines()
    kills, deaths, failed = map(int, counts.split())
    assert workers == "loky" or choice.startswith("2 forked workers"), choice
    assert kills >= 1 and deaths >= kills and failed == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 200
    assert [json.loads(line) for line in lines] == [None if i == 57 else i for i in range(200)]
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert record["index"] == 57 and record["error_type"] == "WorkerDiedError"
    assert record["message"].startswith("item 57 alone: worker killed by the OOM watchdog: worker RSS")
    assert "terminate level" in record["message"] and "\n" not in record["message"]
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    assert stats["watchdog_kills"] == kills
