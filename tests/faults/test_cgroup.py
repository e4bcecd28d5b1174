"""Under a real kernel memory limit (a cgroup of its own), items that grow 100x: no OOM kill.

The job runs in a subprocess placed in a new cgroup v1 memory group with a 1,200 MiB limit and no
``memory_limit`` given, so batchmem must detect the limit (source ``cgroup_v1``) and predict the
heavy items' cost from their weight (text length). The cgroup's ``oom_kill`` counter must not move.
The same job cut into fixed batches of 500 items (the last one all heavy, 1.6 GB) meets the OOM
killer: that case shows the limit and the workload can kill, so the test can fail. Skipped where
no cgroup memory hierarchy is writable (not root, or no cgroup v1 memory controller).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cgroups import memory_group, oom_kills, start_in, unwritable_reason

LIMIT = 1200 << 20  # 1.17 GiB, a whole number of pages

CHILD = textwrap.dedent("""
    import sys
    sys.stdin.readline()  # wait until the parent has moved this process into the cgroup
    import numpy as np
    from batchmem import BatchProcessor

    def work(batch):
        held = [np.ones(len(text) * 40 // 8) for text in batch]  # 40 bytes of transient memory per character
        return [len(text) for text in batch]

    n_jobs, mode = int(sys.argv[1]), sys.argv[2]
    backend = "loky" if n_jobs > 1 else None
    texts = ["a" * 1_000] * 3_000 + ["b" * 100_000] * 400  # the heavy ones: 1.6 GB at once
    sizing = {"weight": "auto"} if mode == "auto" else {"weight": None, "auto_optimize": False, "batch_size": 500}
    proc = BatchProcessor(batched=True, n_jobs=n_jobs, backend=backend, progress=False, use_history=False, **sizing)
    result = proc.process(texts, work, sys.argv[3])
    st = result.stats
    print(st.limit_source, st.memory_limit_bytes, st.items, st.watchdog_kills, flush=True)
""")


pytestmark = pytest.mark.skipif(unwritable_reason() is not None, reason=unwritable_reason() or "")


def _run_in_cgroup(tmp_path: Path, n_jobs: int, weight: str) -> tuple[subprocess.CompletedProcess, int]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with memory_group(LIMIT) as group:
        child = start_in(group, [sys.executable, str(script), str(n_jobs), weight, str(tmp_path / "out.jsonl")])
        out, err = child.communicate("go\n", timeout=240)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err), oom_kills(group)


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["serial", "n_jobs=2"])
def test_weighted_shift_completes_under_a_cgroup_limit_without_an_oom_kill(tmp_path, n_jobs):
    done, kills = _run_in_cgroup(tmp_path, n_jobs, "auto")
    assert done.returncode == 0, done.stderr[-2000:]
    source, limit, items, _ = done.stdout.split()
    assert source == "cgroup_v1" and int(limit) == LIMIT
    assert int(items) == 3_400
    assert kills == 0
    assert sum(1 for _ in open(tmp_path / "out.jsonl")) == 3_400


def test_fixed_batches_of_the_same_shift_meet_the_oom_killer(tmp_path):
    done, kills = _run_in_cgroup(tmp_path, 1, "fixed")
    assert done.returncode != 0 and kills >= 1
