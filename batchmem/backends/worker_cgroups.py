"""A child memory cgroup for each worker process: exact per-batch charges, and a kernel limit per worker.

Inside a memory cgroup the kernel kills on the group's charge, which also holds tmpfs files, shared
memory and page cache that no resident set size shows. Where the cgroup v1 memory hierarchy is
writable (root, here), each worker process of a process pool is moved into a group of its own,
``<the run's cgroup>/batchmem-<parent pid>-w<worker pid>``, with ``memory.limit_in_bytes`` set to its
share of the room left under the run's terminate level (:meth:`WorkerCgroups.place`). Then:

* the kernel stops a runaway worker at once, at its own limit, never the parent, however fast it
  allocates (a sampling watchdog sees a single ``np.ones`` call only after it happened); the kill goes
  through the pool's worker-death path, as the watchdog's does;
* a batch's peak is its group's high-water mark: the worker writes 0 to
  ``memory.max_usage_in_bytes`` before the batch, which resets it to the group's usage, and reads it
  after (:class:`BatchCharge`).

The files are the Linux kernel's, ``Documentation/admin-guide/cgroup-v1/memory.rst``: a process moved
into a group leaves its earlier pages charged where they were (``memory.move_charge_at_immigrate`` is
0 by default), so a worker's group counts what it allocated since it was placed; an emptied group is
removed with ``rmdir``, its remaining page cache charged to the parent group.

cgroup v2 is not used: a v2 group that holds processes cannot hand the memory controller to children
(the "no internal process" rule, ``cgroup-v2.rst``), and batchmem does not move the run itself.
Groups of a run whose parent was killed are emptied by the workers' own death
(:mod:`batchmem.backends.lifeline`) and removed when the next run starts (:func:`remove_stale`).
A placed worker also gets a temporary directory of its own, removed once it is gone
(:mod:`batchmem.backends.worker_tmp`): files it staged on a tmpfs are memory charged to the run.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..heap.cgroup import MemoryCgroup, _cgroup_dir, _cgroup_mounts, find_memory_cgroup
from ..units import format_bytes
from .watchdog import Rss, statm, tree_bytes
from .worker_tmp import remove_private_tmpdir, remove_stale_tmpdirs, use_private_tmpdir

__all__ = ["BatchCharge", "WorkerCgroups", "own_memory_cgroup", "remove_stale"]

logger = logging.getLogger("batchmem")

#: The smallest limit a worker's group gets (bytes): enough for a worker to start (an interpreter
#: with numpy and joblib imported holds about 60 MiB) when the room under the limit is used up.
FLOOR_BYTES = 64 << 20
#: Tries, 20 ms apart, to remove a group whose worker is still exiting when the pool closes.
CLOSE_RETRIES = 25
_NAME = re.compile(r"^batchmem-(\d+)-w(\d+)$")
_MOUNT: tuple[str, str] | None | bool = False  # this process's v1 memory mount (root, mount point); False: unread


def _read(path: Path | str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _write(path: Path, text: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
        return True
    except OSError:
        return False


def own_memory_cgroup() -> Path | None:
    """The directory of this process's cgroup v1 memory group (``/proc/self/cgroup`` and mountinfo,
    proc(5)); None without a v1 memory hierarchy."""
    global _MOUNT
    if _MOUNT is False:
        mountinfo = _read("/proc/self/mountinfo")
        _MOUNT = _cgroup_mounts(mountinfo)[1] if mountinfo else None
    if not _MOUNT:
        return None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return _cgroup_dir(_MOUNT, parts[2], "")[0]  # type: ignore[arg-type]
    return None


def _oom_kills(group: Path) -> int:
    for line in (_read(group / "memory.oom_control") or "").splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def _usage(group: Path) -> int:
    text = _read(group / "memory.usage_in_bytes")
    return int(text) if text and text.strip().isdigit() else 0


def remove_stale(base: Path) -> int:
    """Remove the empty worker groups under ``base`` whose parent process is gone (a run killed
    before it could remove them); their workers died with it. Returns how many were removed."""
    removed = 0
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0
    for entry in entries:
        found = _NAME.match(entry.name)
        if not found or psutil.pid_exists(int(found.group(1))):
            continue
        try:
            entry.rmdir()
            removed += 1
        except OSError:  # a worker of it still lives (it will die with its parent) or not ours to remove
            pass
    return removed

    return True


def enable_reason() -> tuple[Path | None, str]:
    """The run's group when worker groups can be made, else None and why not: no cgroup v1 memory
    group, no cgroup limit below physical RAM (outside a container the tree's RSS and the watchdog
    guard the run, as before), or a hierarchy this process cannot write."""
    found = find_memory_cgroup()
    if found is None or found.version != 1:
        return None, "no cgroup v1 memory hierarchy"
    if found.limit_bytes is None:
        return None, "no cgroup memory limit below physical RAM"
    base = found.path
    if not os.access(base, os.W_OK) or not os.access(base / "cgroup.procs", os.W_OK):
        return None, f"the memory cgroup {base} is not writable"
    return base, ""


@dataclass
class _Group:
    path: Path
    limit: int
    oom_kills: int = 0


class WorkerCgroups:
    """The worker groups of one pool's parent: placed by :meth:`place`, removed by :meth:`close`.

    ``base`` is the run's cgroup directory, ``terminate_bytes`` the level the tree must stay under
    (the run's memory limit times its terminate fraction), ``in_flight`` the number of workers.
    Thread-safe: the watchdog's thread places, the run's thread reads kills and closes.
    """

    def __init__(self, base: Path, terminate_bytes: int, in_flight: int):
        self.base, self.terminate_bytes, self.in_flight = base, terminate_bytes, max(1, in_flight)
        self._run_group = MemoryCgroup(1, base)  # its working set: what the tree holds that no RSS shows
        self._groups: dict[int, _Group] = {}
        self._refused: set[int] = set()  # workers whose group could not be made (not tried again)
        self._leftover: dict[int, _Group] = {}  # groups of gone workers that could not be removed yet
        self._killed: list[str] = []  # reasons of kernel OOM kills not yet asked for (oom_kill_reason)
        self._lock = threading.Lock()
        self._me = os.getpid()
        self.placed = 0  # workers placed so far (count)
        remove_stale_tmpdirs()
        stale = remove_stale(base)
        if stale:
            logger.info("removed %d worker cgroup(s) left by a killed run under %s", stale, base)

    def place(self, pids: list[int]) -> list[int]:
        """Give each new worker pid a group with its share of the room left, remove the groups of
        workers no longer listed; returns ``pids`` (so it can wrap a pool's pid listing)."""
        with self._lock:
            for pid in [p for p in [*self._groups, *self._leftover] if p not in pids]:
                self._remove(pid)
                remove_private_tmpdir(pid)  # what it staged on a tmpfs is still charged to the run
            new = [pid for pid in pids if pid not in self._groups and pid not in self._refused]
            for pid in new:
                self._place_one(pid, pids)
        return pids

    def _place_one(self, pid: int, pids: list[int]) -> None:
        """The room left: the terminate level less what the tree holds now and the room already
        granted to placed workers, shared by the workers not yet placed (``in_flight`` less the placed).
        What the tree holds is the larger of its resident bytes and the run's group's working set,
        which also counts files on a tmpfs and what the groups of gone workers handed back to it."""
        parent = statm(self._me) or Rss(0)
        resident = tree_bytes(parent, [r for p in pids if (r := statm(p)) is not None])
        tree = max(resident, self._run_group.working_set_bytes() or 0)
        granted = sum(max(0, g.limit - _usage(g.path)) for g in self._groups.values())
        waiting = max(1, self.in_flight - len(self._groups))
        share = max(FLOOR_BYTES, (self.terminate_bytes - tree - granted) // waiting)
        path = self.base / f"batchmem-{self._me}-w{pid}"
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            logger.info("no cgroup for worker %d: %s", pid, exc)
            self._refused.add(pid)
            return
        self._groups[pid] = _Group(path, share)
        if not (_write(path / "memory.limit_in_bytes", str(share)) and _write(path / "cgroup.procs", str(pid))):
            self._remove(pid)  # the worker is gone already, or the group refused it
            self._refused.add(pid)
            return
        self.placed += 1
        logger.debug("worker %d placed in %s with a limit of %s", pid, path, format_bytes(share))

    def _remove(self, pid: int) -> None:
        """Forget ``pid``'s group and remove it; one still busy (a killed worker the kernel is tearing
        down) is retried at the next :meth:`place` and at :meth:`close`."""
        group = self._groups.pop(pid, None) or self._leftover.pop(pid)
        self._note_oom_kill(pid, group)  # read before the group and its counter are gone
        try:
            group.path.rmdir()
        except OSError:
            if group.path.exists():
                self._leftover[pid] = group

    def _note_oom_kill(self, pid: int, group: _Group) -> None:
        kills = _oom_kills(group.path)
        if kills > group.oom_kills:
            group.oom_kills = kills
            self._killed.append(
                f"killed by the kernel's OOM killer at its worker cgroup limit {format_bytes(group.limit)} "
                f"(worker {pid}'s share of the {format_bytes(self.terminate_bytes)} terminate level)"
            )

    def oom_kill_reason(self) -> str | None:
        """The reason of a worker the kernel killed at its group's limit since the last call, else None."""
        with self._lock:
            for pid, group in [*self._groups.items(), *self._leftover.items()]:
                self._note_oom_kill(pid, group)
            reasons, self._killed = self._killed, []
        return reasons[-1] if reasons else None

    def close(self, live: list[int] = ()) -> None:
        """Move the ``live`` workers (loky's, kept for the next run) back to the run's group and remove
        every worker group; groups still holding a process that is exiting are retried once."""
        with self._lock:
            for pid in live:
                _write(self.base / "cgroup.procs", str(pid))
            for pid in [*self._groups, *self._leftover]:
                self._remove(pid)
            for _ in range(CLOSE_RETRIES):  # a worker killed just now: the kernel is still tearing it down
                if not self._leftover:
                    break
                time.sleep(0.02)
                for pid in list(self._leftover):
                    self._remove(pid)
            left = [str(g.path) for g in self._leftover.values()]
            self._run_group.close()
        if left:
            logger.info("worker cgroups still in use, removed at the next run: %s", ", ".join(left))


_CGROUP_FD: tuple[int, int] | None = None  # (pid, descriptor of its /proc/self/cgroup), kept open


def _own_cgroup_line() -> bytes:
    """This process's ``/proc/self/cgroup``, re-read with ``pread`` from a descriptor kept open (the
    kernel renders it anew at offset 0); reopened in a forked child, whose ``self`` is another process."""
    global _CGROUP_FD
    try:
        if _CGROUP_FD is None or _CGROUP_FD[0] != os.getpid():
            _CGROUP_FD = (os.getpid(), os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC))
        return os.pread(_CGROUP_FD[1], 4096, 0)
    except OSError:
        return b""


class BatchCharge:
    """In a worker: its group's charge during one batch (bytes), where :class:`WorkerCgroups` placed it.

    ``BatchCharge.start()`` resets the group's high-water mark and returns None outside a worker
    group (nothing is written then); :attr:`peak_bytes` is the group's peak above its usage at the
    start, read once the batch is done.
    """

    def __init__(self, group: Path, start: int):
        self.group, self.start_bytes = group, start

    @classmethod
    def start(cls) -> BatchCharge | None:
        if b"/batchmem-" not in _own_cgroup_line():  # not placed: this runs before every batch, so skip the path lookup
            return None
        group = own_memory_cgroup()
        if group is None or not _NAME.match(group.name) or not _write(group / "memory.max_usage_in_bytes", "0"):
            return None
        use_private_tmpdir()  # files a killed worker staged go with it (worker_tmp.py)
        return cls(group, _usage(group))

    @property
    def peak_bytes(self) -> int:
        text = _read(self.group / "memory.max_usage_in_bytes")
        peak = int(text) if text and text.strip().isdigit() else 0
        return max(0, peak - self.start_bytes)
