"""In a real memory cgroup with a limit, files on a tmpfs count: the sample's working set shows them.

A child process is moved into a new cgroup v1 memory group with a 512 MiB limit and writes 200 MiB
of files to a tmpfs mounted in ``tmp_path``. Its RSS hardly moves (the pages belong to the tmpfs, not
to the process), but the cgroup charges them and the kernel kills on that charge:
:meth:`MemoryMonitor.sample` must count them. A batched job that keeps a 240 MiB table on the tmpfs must
then be told (a ``cgroup_charge`` issue) that this charge set its batch sizes. Skipped
where no cgroup v1 memory hierarchy is writable or a tmpfs cannot be mounted (not root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cgroups import memory_group, oom_kills, start_in, unwritable_reason
from cgroups import tmpfs as mounted_tmpfs

LIMIT = 512 << 20
MiB = 1 << 20

SAMPLE = textwrap.dedent("""
    import json, os, sys
    sys.stdin.readline()  # wait until the parent has moved this process into the cgroup
    from batchmem import MemoryMonitor
    mon = MemoryMonitor()
    before = mon.sample()
    block = os.urandom(MiB := 1 << 20)
    for i in range(200):
        with open(os.path.join(sys.argv[1], f"f{i}"), "wb") as f:
            f.write(block)
    after = mon.sample()
    print(json.dumps({"before": before.to_dict(), "after": after.to_dict(), "used_after": after.used_bytes,
                      "used_before": before.used_bytes}))
""")

STAGING = textwrap.dedent("""
    import json, os, sys
    sys.stdin.readline()
    from batchmem import BatchProcessor

    def convert(batch):
        cache = os.path.join(os.environ["TMPDIR"], "table.bin")
        if not os.path.exists(cache):  # a lookup table unpacked to the tmpfs once, kept for the run
            with open(cache, "wb") as f:
                for _ in range(240):
                    f.write(b"t" * (1 << 20))
        held = [b"x" * (1 << 20) for _ in batch]  # 1 MiB of the process's own memory per item
        return [len(h) for h in held]

    proc = BatchProcessor(batched=True, progress=False, use_history=False)
    st = proc.process(range(600), convert, sys.argv[1]).stats
    print(json.dumps({"source": st.limit_source, "items": st.items, "issues": st.issues,
                      "sizes": st.batch_sizes}))
""")


pytestmark = [pytest.mark.slow, pytest.mark.skipif(unwritable_reason() is not None, reason=unwritable_reason() or "")]


@pytest.fixture
def tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "400m") as mnt:
        yield mnt


def _in_cgroup(tmp_path: Path, script: str, arg: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, int]:
    path = tmp_path / "child.py"
    path.write_text(script)
    with memory_group(LIMIT) as group:
        env = {**os.environ, "TMPDIR": str(tmp_path), **env}
        child = start_in(group, [sys.executable, str(path), arg], env=env)
        out, err = child.communicate("go\n", timeout=240)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err), oom_kills(group)


def test_the_sample_counts_tmpfs_files_that_rss_does_not_show(tmp_path, tmpfs):
    done, kills = _in_cgroup(tmp_path, SAMPLE, str(tmpfs), {})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    before, after = r["before"], r["after"]
    assert after["limit_source"] == "cgroup_v1" and after["limit_bytes"] == LIMIT
    assert after["rss_bytes"] - before["rss_bytes"] < 20 * MiB  # the files are in no process's RSS
    assert after["working_set_bytes"] - before["working_set_bytes"] >= 190 * MiB  # but the cgroup charges them
    assert r["used_after"] - r["used_before"] >= 190 * MiB
    assert after["utilization"] == pytest.approx(r["used_after"] / LIMIT)
    assert kills == 0


def test_a_job_holding_files_on_a_tmpfs_is_told_the_cgroup_charge_set_its_batches(tmp_path, tmpfs):
    done, kills = _in_cgroup(tmp_path, STAGING, str(tmp_path / "out.jsonl"), {"TMPDIR": str(tmpfs)})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["source"] == "cgroup_v1" and r["items"] == 600 and kills == 0
    charge = [i for i in r["issues"] if i["kind"] == "cgroup_charge"]
    assert len(charge) == 1, (r["issues"], r["sizes"])
    assert charge[0]["severity"] == "warning" and "tmpfs" in charge[0]["message"]
    assert charge[0]["evidence"]["charge_outside_rss_bytes"] >= 200 * MiB
