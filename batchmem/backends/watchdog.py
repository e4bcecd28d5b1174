"""The OOM watchdog: kill the worker process holding the most memory before the kernel kills the tree.

Under a container (cgroup) limit the kernel's OOM killer ends the process it
picks, often the parent, and no Python code runs after it. The optimizer
predicts peaks, but one item heavier than anything seen can still cross the
limit. While batches run in worker processes, a thread of the parent reads
the resident set size (RSS) of this process and of the known worker pids
from ``/proc/PID/statm`` every :data:`POLL_S` seconds (a few microseconds a
read, no process listing) and, once their sum passes the terminate level,
sends SIGKILL to the largest worker. The batch it ran comes back through the
worker-death path: re-run in halves, each half alone, and an item that
crosses the level on its own is recorded as failed with the watchdog's reason.

This is distributed's worker memory monitor brought to a process pool: the
nanny terminates a worker above ``distributed.worker.memory.terminate``
(0.95 of its limit; ``distributed/worker_memory.py``,
https://distributed.dask.org/en/stable/worker-memory.html). The decision is
the pure function :func:`choose_victim`, tested with fake readings.

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
from collections.abc import Callable, Mapping

from ..units import format_bytes

__all__ = ["POLL_S", "OomWatchdog", "choose_victim", "statm_rss_bytes"]

logger = logging.getLogger("batchmem")

#: Seconds between readings: a batch allocating 1 GB/s grows by 20 MB between two of them.
POLL_S = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def statm_rss_bytes(pid: int) -> int | None:
    """Resident bytes of ``pid`` from ``/proc/PID/statm`` (second field, in pages); None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def choose_victim(parent_rss: int, workers: Mapping[int, int], terminate_bytes: int) -> int | None:
    """The worker pid to kill, or None: the largest worker once ``parent + workers`` RSS (bytes)
    reaches ``terminate_bytes``. Only workers are candidates, never the parent."""
    if not workers or parent_rss + sum(workers.values()) < terminate_bytes:
        return None
    return max(workers, key=workers.__getitem__)


class OomWatchdog:
    """A daemon thread that applies :func:`choose_victim` to live readings while it runs.

    ``worker_pids()`` lists the live workers (cheap: the pool's own table); ``limit_bytes`` is the
    run's memory limit and ``terminate_fraction`` the share of it that triggers a kill. After a kill,
    :attr:`kills` counts it and :meth:`reason_for` gives the one-line reason for that pid.
    """

    def __init__(
        self,
        worker_pids: Callable[[], list[int]],
        limit_bytes: int,
        terminate_fraction: float = 0.95,
        poll_s: float = POLL_S,
    ):
        self.worker_pids, self.poll_s = worker_pids, poll_s
        self.limit_bytes, self.terminate_fraction = limit_bytes, terminate_fraction
        self.terminate_bytes = int(limit_bytes * terminate_fraction)
        self.kills = 0
        self._reasons: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="batchmem-oom-watchdog", daemon=True)

    def start(self) -> OomWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def reason_for(self, pid: int) -> str | None:
        """Why the watchdog killed ``pid`` (None if it did not)."""
        return self._reasons.get(pid)

    def last_reason(self) -> str | None:
        """The reason of the most recent kill."""
        return next(reversed(self._reasons.values()), None)

    def _watch(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.poll_s):
            readings = {pid: rss for pid in self.worker_pids() if (rss := statm_rss_bytes(pid)) is not None}
            parent = statm_rss_bytes(me) or 0
            victim = choose_victim(parent, readings, self.terminate_bytes)
            if victim is not None:
                self._kill(victim, readings[victim], parent + sum(readings.values()))

    def _kill(self, pid: int, rss: int, total: int) -> None:
        reason = (
            f"killed by the OOM watchdog: worker RSS {format_bytes(rss)} (tree {format_bytes(total)}) above "
            f"the terminate level {format_bytes(self.terminate_bytes)} ({self.terminate_fraction:.2f} of the "
            f"{format_bytes(self.limit_bytes)} limit)"
        )
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills += 1
        self._reasons[pid] = reason
        logger.warning("batchmem: %s", reason)
