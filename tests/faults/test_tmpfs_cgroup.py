"""Files staged on a tmpfs are charged to the memory cgroup, though no process's RSS shows them.

A batched function stages each item of its batch as a 4 MiB file in ``$TMPDIR``, a tmpfs, and reads
them back (the usual way to call an external converter over a folder). The run has no
``memory_limit``: batchmem detects the cgroup's 700 MiB. Serial and with ``n_jobs=2`` the run exits
0, writes every item once, the kernel kills nothing in the run's group (it may stop a worker at its
own group's limit: that batch runs again in halves), and the group's peak stays under its limit.
Skipped where no memory cgroup or tmpfs can be made.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from cgroups import memory_group, oom_kills, peak_bytes, start_in, tmpfs, unwritable_reason

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unwritable_reason() is not None, reason=unwritable_reason() or "")]

MiB = 1 << 20
LIMIT = 700 * MiB
ITEMS = 3_000

CHILD = textwrap.dedent("""
    import os, sys, tempfile
    sys.stdin.readline()  # wait until the test has moved this process into its group
    from batchmem import BatchProcessor

    CHUNK = os.urandom(1 << 20)

    def convert(batch):
        with tempfile.TemporaryDirectory() as folder:  # $TMPDIR: the tmpfs
            for i in batch:
                with open(os.path.join(folder, f"{i}.bin"), "wb") as f:
                    f.write(CHUNK * 4)  # 4 MiB staged per item
            return [os.path.getsize(os.path.join(folder, f"{i}.bin")) // (1 << 20) + i for i in batch]

    n_jobs = int(sys.argv[2])
    proc = BatchProcessor(batched=True, n_jobs=n_jobs, backend="loky" if n_jobs > 1 else None,
                          progress=False, use_history=False)
    st = proc.process(range(int(sys.argv[3])), convert, sys.argv[1]).stats
    print(st.limit_source, st.memory_limit_bytes, st.items, st.failed, st.worker_deaths, st.memory_accounting,
          flush=True)
""")


@pytest.mark.parametrize("n_jobs", [1, 2], ids=["serial", "n_jobs=2"])
def test_files_staged_on_a_tmpfs_do_not_get_the_run_oom_killed(tmp_path, n_jobs):
    script, out = tmp_path / "child.py", tmp_path / "out.jsonl"
    script.write_text(CHILD)
    with tmpfs(tmp_path / "tmpfs") as staging, memory_group(LIMIT) as group:
        before = oom_kills(group)
        env = dict(os.environ, TMPDIR=str(staging))
        child = start_in(group, [sys.executable, str(script), str(out), str(n_jobs), str(ITEMS)], env=env)
        stdout, stderr = child.communicate("go\n", timeout=400)
        peak, kills = peak_bytes(group), oom_kills(group) - before
    assert child.returncode == 0, stderr[-3000:]
    source, limit, items, failed, deaths, accounting = stdout.split()
    print(
        f"n_jobs={n_jobs}: the group's peak {peak / MiB:.0f} MiB of {LIMIT / MiB:.0f} MiB; its OOM kills {kills}; "
        f"workers stopped at their own group's limit {deaths}"
    )
    assert source == "cgroup_v1" and int(limit) == LIMIT and int(items) == ITEMS and int(failed) == 0
    # The kernel never killed in the run's group. A worker may be stopped at its own group's limit by the
    # first batches, cut before any was measured (100 items, 400 MiB): their halves run again.
    assert kills == 0
    assert peak < LIMIT
    assert accounting == ("worker_cgroups" if n_jobs > 1 else "cgroup_delta")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [4 + i for i in range(ITEMS)]
