"""The OOM watchdog: kill the worker process holding the most memory before the kernel kills the tree.

Under a container (cgroup) limit the kernel's OOM killer ends the process it
picks, often the parent, and no Python code runs after it. The optimizer
predicts peaks, but one item heavier than anything seen can still cross the
limit. While batches run in worker processes, a thread of the parent reads
the resident set size (RSS) of this process and of the known worker pids
from ``/proc/PID/statm`` every :data:`POLL_S` seconds (about 10 microseconds
a read, no process listing) and, once the tree passes the terminate level,
sends SIGKILL to the worker holding the most private memory. The batch it ran
comes back through the worker-death path: re-run in halves, each half alone,
and an item that crosses the level on its own is recorded as failed with the
watchdog's reason.

The tree's total (:func:`tree_bytes`) counts each process's private pages
(resident minus shared, statm's second and third fields) plus the largest
shared set once: the libraries every worker maps (about 50 MiB each with
numpy) are one set of pages for the kernel, so a plain sum of RSS would kill
early with many workers. Forked workers share the parent's pages copy-on-write, which
statm counts as private in each of them: a total at or over the level is
therefore confirmed with the tree's proportional set size (Pss, which counts
every page once; :func:`batchmem.heap.monitor.tree_pss_bytes`, ~0.6 ms a
process) before anything is killed. A worker already killed is left out of the total and
never killed twice while the kernel tears it down (distributed's nanny
remembers the pid it terminated for the same reason).

Inside a memory cgroup that sets a limit, the reading is the larger of that total and the cgroup's
working set (:func:`cgroup_charge`: one ``pread`` of the usage, and ``memory.stat`` near the level): the
kernel kills on the cgroup's charge, which also holds tmpfs files and shared memory no RSS shows.
A worker killed for such a charge frees only its own pages; files its batch left on a tmpfs stay.

This is distributed's worker memory monitor brought to a process pool: the
nanny terminates a worker above ``distributed.worker.memory.terminate``
(0.95 of its limit; ``distributed/worker_memory.py``,
https://distributed.dask.org/en/stable/worker-memory.html). The decision is
the pure function :func:`choose_victim`, tested with fake readings.

With ``item_timeout`` the same thread also kills the worker whose batch runs past its deadline
(``item_timeout`` x items + a margin), as the workers report their batches
(:mod:`batchmem.backends.deadlines`): code stuck inside C, which the per-item timer cannot interrupt.

Not covered: batches that run in this process (``n_jobs=1`` without a
backend). Killing the only process would end the run; there the optimizer's
prediction is the only guard. For hard container limits run one isolated
worker instead: ``n_jobs=1, backend="loky"``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from ..heap.cgroup import MemoryCgroup, find_memory_cgroup
from ..heap.monitor import tree_pss_bytes
from ..units import format_bytes
from .deadlines import DeadlineBoard
from .item_timeout import overdue_reason

__all__ = [
    "POLL_S",
    "OomWatchdog",
    "Rss",
    "StatmReader",
    "cgroup_charge",
    "choose_victim",
    "statm",
    "statm_rss_bytes",
    "tree_bytes",
]

logger = logging.getLogger("batchmem")

#: Seconds between readings: a batch allocating 1 GB/s grows by 20 MB between two of them.
POLL_S = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Rss(NamedTuple):
    """One process's resident memory (bytes): all of it, and the part in shared (file or shmem) pages."""

    resident: int
    shared: int = 0

    @property
    def private(self) -> int:
        """Resident bytes not in shared pages: what killing the process gives back."""
        return max(0, self.resident - self.shared)


def _parse_statm(raw: bytes) -> Rss:
    fields = raw.split()
    return Rss(int(fields[1]) * _PAGE, int(fields[2]) * _PAGE)


def statm(pid: int) -> Rss | None:
    """``pid``'s resident and shared bytes from ``/proc/PID/statm`` (fields 2 and 3, in pages); None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return _parse_statm(f.read())
    except (OSError, ValueError, IndexError):
        return None


class StatmReader:
    """:func:`statm` for pids read again and again: each ``/proc/PID/statm`` stays open and is re-read
    with ``pread`` (about 1 us, against 13 us to open, read and close it), where a watchdog reading
    the tree every 20 ms spent 0.37 ms a reading in all (an embeddings run of the example job).

    The kernel renders the file anew on every read from offset 0. Once the process is reaped its
    descriptor fails to read, so a failed read closes it and opens the pid's file once more: a
    reused pid is read fresh. :meth:`keep` closes the files of pids no longer watched, :meth:`close` all of them.
    """

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def __call__(self, pid: int) -> Rss | None:
        for _ in range(2):
            fd = self._fds.get(pid)
            try:
                if fd is None:
                    fd = self._fds[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
                return _parse_statm(os.pread(fd, 128, 0))
            except (OSError, ValueError, IndexError):
                self._drop(pid)
        return None

    def keep(self, pids: Iterable[int]) -> None:
        """Close the files of every pid not in ``pids``."""
        for pid in self._fds.keys() - set(pids):
            self._drop(pid)

    def close(self) -> None:
        self.keep(())

    def _drop(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)


def statm_rss_bytes(pid: int) -> int | None:
    """Resident bytes of ``pid`` (None if it is gone)."""
    r = statm(pid)
    return None if r is None else r.resident


def tree_bytes(parent: Rss, workers: Iterable[Rss]) -> int:
    """Bytes the tree holds: every process's private pages plus the largest shared set, once."""
    everyone = [parent, *workers]
    return sum(r.private for r in everyone) + max(r.shared for r in everyone)


def cgroup_charge(cgroup: MemoryCgroup, level: int) -> Callable[[], int | None]:
    """A reader of ``cgroup``'s working set (bytes) for the watchdog: ``memory.stat`` is read only once
    the usage, an upper bound of the working set, reaches ``level`` (bytes); below it, None (the
    tree's own reading decides), for one small read every 20 ms."""

    def charge() -> int | None:
        usage = cgroup.usage_bytes()
        return None if usage is None or usage < level else cgroup.working_set_bytes()

    return charge


def choose_victim(
    parent: Rss, workers: Mapping[int, Rss], terminate_bytes: int, dying: Iterable[int] = (), charged: int = 0
) -> int | None:
    """The worker pid to kill, or None: the one with the most private bytes once the tree
    (:func:`tree_bytes`, ``dying`` workers left out; or ``charged``, the memory cgroup's working set
    in bytes, when larger) reaches ``terminate_bytes``. Only workers are candidates, never the parent,
    and a ``dying`` worker (killed already) is not killed again."""
    gone = set(dying)
    live = {pid: r for pid, r in workers.items() if pid not in gone}
    if not live or max(tree_bytes(parent, live.values()), charged) < terminate_bytes:
        return None
    return max(live, key=lambda pid: live[pid].private)


class OomWatchdog:
    """A daemon thread that applies :func:`choose_victim` to live readings while it runs.

    ``worker_pids()`` lists the workers (cheap: the pool's own table); ``limit_bytes`` is the run's
    memory limit and ``terminate_fraction`` the share of it that triggers a kill. After a kill,
    :attr:`kills` counts it and :meth:`reason_for` gives the one-line reason for that pid.
    ``read``, ``kill`` and ``confirm`` (the tree's bytes counting shared pages once, given the worker
    pids; None when unknown) default to a :class:`StatmReader`, :func:`os.kill` and
    :func:`~batchmem.heap.monitor.tree_pss_bytes`; tests pass fakes and call :meth:`check` themselves.
    ``charge`` reads the memory cgroup's working set (bytes, None when unknown); by default, with the
    real readings, that of this process's cgroup where it sets a limit below RAM, else nothing.
    """

    def __init__(
        self,
        worker_pids: Callable[[], list[int]],
        limit_bytes: int,
        terminate_fraction: float = 0.95,
        poll_s: float = POLL_S,
        *,
        read: Callable[[int], Rss | None] | None = None,
        kill: Callable[[int, int], None] = os.kill,
        confirm: Callable[[list[int]], int | None] = tree_pss_bytes,
        charge: Callable[[], int | None] | None = None,
        deadlines: DeadlineBoard | None = None,
    ):
        self.worker_pids, self.poll_s = worker_pids, poll_s
        self.limit_bytes, self.terminate_fraction = limit_bytes, terminate_fraction
        self.terminate_bytes = int(limit_bytes * terminate_fraction)
        self._statm = StatmReader() if read is None else None
        self.read = read or self._statm
        self._send, self.confirm = kill, confirm
        if charge is None and read is None:
            cgroup = find_memory_cgroup()
            charge = cgroup_charge(cgroup, self.terminate_bytes) if cgroup is not None and cgroup.limited else None
        self.charge = charge
        self.kills = 0
        self.deadlines, self.timeouts = deadlines, 0  # workers killed past their batch's deadline (count)
        self._reasons: dict[int, str] = {}
        self._dying: set[int] = set()
        self._me = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="batchmem-oom-watchdog", daemon=True)

    def start(self) -> OomWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._statm is not None and not self._thread.is_alive():
            self._statm.close()

    def reason_for(self, pid: int) -> str | None:
        """Why the watchdog killed ``pid`` (None if it did not)."""
        return self._reasons.get(pid)

    def last_reason(self) -> str | None:
        """The reason of the most recent kill."""
        return next(reversed(self._reasons.values()), None)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> int | None:
        """Take one reading of the tree and kill a worker if it is past the level; the pid killed, or None."""
        pids = self.worker_pids()
        self._dying.intersection_update(pids)  # a pid no longer listed is gone; if it comes back it is a new worker
        if self.deadlines is not None:
            self._kill_overdue(pids)
        if self._statm is not None:
            self._statm.keep([*pids, self._me])
        readings = {pid: r for pid in pids if (r := self.read(pid)) is not None}
        parent = self.read(self._me) or Rss(0)
        charged = (self.charge() if self.charge is not None else None) or 0
        victim = choose_victim(parent, readings, self.terminate_bytes, self._dying, charged)
        if victim is None:
            return None
        live = [pid for pid in readings if pid not in self._dying]
        tree = tree_bytes(parent, (readings[pid] for pid in live))
        total = max(tree, charged)
        shared_once = self.confirm(live)
        if shared_once is not None and max(shared_once, charged) < self.terminate_bytes:
            return None  # copy-on-write pages counted in every worker: the tree is below the level
        what = "tree" if tree >= charged else "memory cgroup working set"
        return victim if self._kill(victim, readings[victim].resident, total, what) else None

    def _kill_overdue(self, pids: list[int]) -> None:
        """SIGKILL every worker whose batch is past its reported deadline (see :mod:`.deadlines`)."""
        self.deadlines.drain()
        for pid, batch in self.deadlines.overdue(set(pids) - self._dying):
            self.deadlines.forget(pid)
            try:
                self._send(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self._dying.add(pid)
            self.timeouts += 1
            self._reasons[pid] = f"{overdue_reason(batch.start, batch.items)}, worker killed"
            logger.warning("batchmem: %s", self._reasons[pid])

    def _kill(self, pid: int, rss: int, total: int, what: str = "tree") -> bool:
        reason = (
            f"killed by the OOM watchdog: worker RSS {format_bytes(rss)} ({what} {format_bytes(total)}) above "
            f"the terminate level {format_bytes(self.terminate_bytes)} ({self.terminate_fraction:.2f} of the "
            f"{format_bytes(self.limit_bytes)} limit)"
        )
        try:
            self._send(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self._dying.add(pid)
        self.kills += 1
        self._reasons[pid] = reason
        logger.warning("batchmem: %s", reason)
        return True
