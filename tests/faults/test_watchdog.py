"""The OOM watchdog: a worker past the terminate level is killed by batchmem, not the kernel; the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from batchmem.backends.watchdog import choose_victim, statm_rss_bytes

MiB = 1 << 20


def test_choose_victim_picks_the_largest_worker_only_past_the_level():
    workers = {11: 300 * MiB, 12: 900 * MiB, 13: 100 * MiB}
    assert choose_victim(100 * MiB, workers, terminate_bytes=2000 * MiB) is None
    assert choose_victim(100 * MiB, workers, terminate_bytes=1400 * MiB) == 12
    assert choose_victim(5000 * MiB, {}, terminate_bytes=1 * MiB) is None  # never the parent


def test_statm_reads_this_process():
    assert statm_rss_bytes(os.getpid()) > 10 * MiB
    assert statm_rss_bytes(2**22 + 7) is None  # no such pid


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
