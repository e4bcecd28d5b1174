"""Under a real kernel memory limit (a cgroup of its own), items that grow 100x: no OOM kill.

The job runs in a subprocess placed in a new cgroup v1 memory group with a 1,200 MiB limit and no
``memory_limit`` given, so batchmem must detect the limit (source ``cgroup_v1``) and predict the
heavy items' cost from their weight (text length). The cgroup's ``oom_kill`` counter must not move.
The same job cut into fixed batches of 500 items (the last one all heavy, 1.6 GB) meets the OOM
killer: that case shows the limit and the workload can kill, so the test can fail. Skipped where
no cgroup memory hierarchy is writable (not root, or no cgroup v1 memory controller).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

HIERARCHY = Path("/sys/fs/cgroup/memory")
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


def _writable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    if not (HIERARCHY / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory"
    if not os.access(HIERARCHY, os.W_OK):
        return "the cgroup v1 memory hierarchy is not writable"
    return None


pytestmark = pytest.mark.skipif(_writable() is not None, reason=_writable() or "")


def _oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def _run_in_cgroup(tmp_path: Path, n_jobs: int, weight: str) -> tuple[subprocess.CompletedProcess, int]:
    group = HIERARCHY / f"batchmem-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(LIMIT))
        if (group / "memory.memsw.limit_in_bytes").exists():
            try:  # no swap to hide behind
                (group / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
            except OSError:
                pass
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        child = subprocess.Popen(
            [sys.executable, str(script), str(n_jobs), weight, str(tmp_path / "out.jsonl")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        (group / "cgroup.procs").write_text(str(child.pid))
        out, err = child.communicate("go\n", timeout=240)
        done = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        return done, _oom_kills(group)
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # leftover workers
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


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
