"""Per-worker memory cgroups: the kernel stops a runaway worker at its own limit, never the run.

An item allocates about three times the room under ``memory_limit`` in a single ``np.ones`` call: a
sampling watchdog sees it only after it happened (the tree reached 1.34-1.40x the limit). With a
cgroup per worker the enclosing group's peak, watched from outside, stays under the limit; the item
is recorded as failed and every other item is written once. Skipped where no memory cgroup can be made.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from cgroups import memory_group, oom_kills, peak_bytes, start_in, unwritable_reason

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unwritable_reason() is not None, reason=unwritable_reason() or "")]

MiB = 1 << 20
LIMIT = 640 * MiB  # memory_limit of the run
GROUP_LIMIT = 3 << 30  # the enclosing group's limit: a cgroup limit is in force, far above the run's

CHILD = textwrap.dedent("""
    import sys, time
    sys.stdin.readline()  # wait until the test has moved this process into its group
    import numpy as np
    from batchmem import BatchProcessor

    def grow(x):
        if x == 57:  # about 3x the room under the limit, in one call
            held = np.ones((1500 << 20) // 8)
        time.sleep(0.002)
        return x

    proc = BatchProcessor(batch_size=8, auto_optimize=False, on_error="skip", n_jobs=2, backend=sys.argv[3],
                          memory_limit=int(sys.argv[2]), progress=False, use_history=False)
    st = proc.process(range(200), grow, sys.argv[1]).stats
    print(st.memory_accounting, st.watchdog_kills, st.worker_deaths, st.failed, flush=True)
""")


def _worker_groups(group: Path) -> list[str]:
    return [d.name for d in group.iterdir() if d.is_dir()]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_one_np_ones_of_3x_the_room_is_stopped_at_its_workers_limit_and_fails_alone(tmp_path, backend):
    script, out = tmp_path / "child.py", tmp_path / "out.jsonl"
    script.write_text(CHILD)
    with memory_group(GROUP_LIMIT) as group:
        child = start_in(
            group,
            [sys.executable, str(script), str(out), str(LIMIT), backend],
            env=dict(os.environ, TMPDIR=str(tmp_path)),
        )
        stdout, stderr = child.communicate("go\n", timeout=240)
        peak, kills, left = peak_bytes(group), oom_kills(group), _worker_groups(group)
    assert child.returncode == 0, stderr[-3000:]
    accounting, watchdog_kills, deaths, failed = stdout.split()
    assert accounting == "worker_cgroups"
    assert int(failed) == 1 and int(deaths) >= 1
    print(
        f"peak of the tree watched from outside: {peak / MiB:.0f} MiB of the {LIMIT / MiB:.0f} MiB limit; "
        f"worker deaths: {deaths}; watchdog kills: {watchdog_kills}; the enclosing group's OOM kills: {kills}"
    )
    assert peak <= LIMIT
    assert kills == 0  # the kernel killed in a worker's group, never in the run's
    assert left == [], "worker cgroups left behind"
    assert [json.loads(line) for line in out.read_text().splitlines()] == [None if i == 57 else i for i in range(200)]
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert record["index"] == 57 and record["error_type"] == "WorkerDiedError"
    assert "worker cgroup limit" in record["message"], record["message"]


RUN = textwrap.dedent("""
    import sys, time
    sys.stdin.readline()
    from batchmem import BatchProcessor

    def slow(x):
        time.sleep(0.002)
        return x

    groups = len(sys.argv) < 4 or sys.argv[3] != "no-groups"
    proc = BatchProcessor(n_jobs=2, backend="loky", progress=False, use_history=False, worker_cgroups=groups)
    print(proc.process(range(int(sys.argv[2])), slow, sys.argv[1]).stats.memory_accounting, flush=True)
""")


def test_without_worker_groups_the_cgroups_gain_is_apportioned_over_the_batches_in_flight(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with memory_group(2 << 30) as group:
        run = start_in(group, [sys.executable, str(script), str(tmp_path / "a.jsonl"), "2000", "no-groups"], env=env)
        stdout, stderr = run.communicate("go\n", timeout=120)
    assert run.returncode == 0, stderr[-3000:]
    assert stdout.split() == ["cgroup_apportioned"]


def test_the_groups_of_a_killed_run_empty_at_once_and_the_next_run_removes_them(tmp_path):
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with memory_group(2 << 30) as group:
        killed = start_in(group, [sys.executable, str(script), str(tmp_path / "a.jsonl"), "1000000"], env=env)
        killed.stdin.write("go\n")
        killed.stdin.flush()
        deadline = time.monotonic() + 60
        while len(_worker_groups(group)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_worker_groups(group)) == 2
        while len(list(tmp_path.glob("batchmem-w*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # until both workers run batches in their groups (each makes its temporary directory)
        time.sleep(0.5)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        time.sleep(2.0)
        left = _worker_groups(group)
        assert left and all(name.startswith(f"batchmem-{killed.pid}-w") for name in left)
        assert all((group / name / "cgroup.procs").read_text() == "" for name in left), "a worker outlived its parent"
        assert len(list(tmp_path.glob("batchmem-w*"))) == 2  # the killed workers' temporary directories stay
        nxt = start_in(group, [sys.executable, str(script), str(tmp_path / "b.jsonl"), "2000"], env=env)
        stdout, stderr = nxt.communicate("go\n", timeout=120)
        assert nxt.returncode == 0, stderr[-3000:]
        assert stdout.split() == ["worker_cgroups"]
        assert _worker_groups(group) == []  # the killed run's groups and the finished run's own
        assert list(tmp_path.glob("batchmem-w*")) == []
