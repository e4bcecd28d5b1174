"""A real cgroup v1 memory group for a test's subprocess (made, watched from outside, removed), and a tmpfs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HIERARCHY = Path("/sys/fs/cgroup/memory")


def unwritable_reason() -> str | None:
    """Why no memory cgroup can be made here (None when one can)."""
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    if not (HIERARCHY / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory"
    if not os.access(HIERARCHY, os.W_OK):
        return "the cgroup v1 memory hierarchy is not writable"
    return None


def oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def peak_bytes(group: Path) -> int:
    return int((group / "memory.max_usage_in_bytes").read_text())


@contextlib.contextmanager
def memory_group(limit: int) -> Iterator[Path]:
    """A new group with ``limit`` bytes (no swap to hide behind); on exit every process left in it or
    in a child group is killed and every group is removed (children first)."""
    group = HIERARCHY / f"batchmem-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        yield group
    finally:
        _remove(group)


def _remove(group: Path) -> None:
    for _ in range(100):
        children = [d for d in group.iterdir() if d.is_dir()]
        for d in [*children, group]:
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        for d in children:
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"could not remove {group}")


def start_in(group: Path, args: list[str], **kw) -> subprocess.Popen:
    """Start ``args`` (a script that first reads one line of stdin) and move it into ``group`` before it goes on."""
    child = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )
    (group / "cgroup.procs").write_text(str(child.pid))
    return child


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "4g") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (made here), unmounted on exit; skips the test where
    none can be mounted (not root)."""
    import pytest

    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
