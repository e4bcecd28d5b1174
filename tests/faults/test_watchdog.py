"""The OOM watchdog: a worker past the terminate level is killed by batchmem, not the kernel; the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from batchmem.backends.watchdog import OomWatchdog, Rss, choose_victim, statm, statm_rss_bytes, tree_bytes

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
    dog = OomWatchdog(lambda: list(tree.workers), 1000 * MiB, 0.95, read=tree.rss.get, kill=tree.kill)
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


def test_a_worker_that_exits_before_the_signal_is_not_counted():
    tree = FakeTree(Rss(0))
    dog = OomWatchdog(lambda: [5], 100 * MiB, read=lambda pid: Rss(200 * MiB), kill=tree.kill)
    assert dog.check() is None and dog.kills == 0 and dog.last_reason() is None


def test_statm_reads_this_process():
    me = statm(os.getpid())
    assert me is not None and me.resident > 10 * MiB and 0 < me.shared < me.resident
    assert statm_rss_bytes(os.getpid()) >= me.resident // 2
    assert statm(2**22 + 7) is None  # no such pid


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
        return x

    limit = current_rss_bytes() + (900 << 20)
    proc = BatchProcessor(batch_size=8, auto_optimize=False, n_jobs=1, backend="loky", on_error="skip",
                          memory_limit=limit, progress=False, use_history=False)
    result = proc.process(range(200), grow, sys.argv[1])
    print(result.stats.watchdog_kills, result.stats.worker_deaths, result.stats.failed, flush=True)
""")


def test_one_isolated_worker_is_guarded_an_item_past_the_limit_fails_alone_and_the_run_finishes(tmp_path):
    """``n_jobs=1, backend="loky"``: the recommended setting under a hard limit (one isolated, guarded worker)."""
    script, out = tmp_path / "child.py", tmp_path / "out.jsonl"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    kills, deaths, failed = map(int, done.stdout.split())
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
