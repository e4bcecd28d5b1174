"""Memory readings, limits and pressure levels for batchmem.

What this module measures, and where each number comes from:

* **Usage** -- resident set size (RSS, bytes). :func:`current_rss_bytes` reads
  this process only (``/proc/self/statm`` on Linux, psutil elsewhere);
  :meth:`MemoryMonitor.rss_bytes` adds every descendant process (joblib/loky
  workers) found by ``psutil.Process().children(recursive=True)``. Inside a
  memory cgroup that sets a limit, the larger of that and the cgroup's working
  set (:mod:`batchmem.heap.cgroup`), which also counts tmpfs files and shared
  memory that no RSS shows (:attr:`MemorySample.used_bytes`).
* **Limit** -- :func:`detect_memory_limit` takes the smallest of the cgroup v2
  ``memory.max``, the cgroup v1 ``memory.limit_in_bytes``, the soft
  ``RLIMIT_AS`` and ``RLIMIT_DATA`` and physical RAM, and says which one won.
  The cgroup files are described in the Linux kernel's admin-guide,
  ``Documentation/admin-guide/cgroup-v2.rst`` ("memory.max") and
  ``Documentation/admin-guide/cgroup-v1/memory.rst`` ("memory.limit_in_bytes").
  A user setting (:func:`resolve_memory_limit`) overrides detection.
* **Pressure** -- utilization (usage / limit) mapped to a :class:`PressureLevel`
  by :class:`PressureThresholds`, raised by a memory pressure stall
  (:func:`batchmem.heap.levels.stall_level`).
* **Peak per batch** -- :class:`PeakMemoryTracker`, the kernel's RSS high-water
  mark (``VmHWM``) on Linux, a sampling thread elsewhere.

Costs (best of 7 rounds on a loaded 2-vCPU Linux 6.18 VM, CPython 3.11, ~90
processes), measured by ``benchmarks/bench_monitor.py``: current_rss_bytes
~4-8 us; MemoryMonitor.rss_bytes / sample ~1.6-2.6 ms (psutil scans every
process on the machine; the number of children barely matters);
PeakMemoryTracker enter+exit ~25-45 us (vmhwm) or ~0.25-0.5 ms (sampling);
detect_memory_limit ~0.4-0.6 ms (once per MemoryMonitor).
"""

from __future__ import annotations

import logging
import numbers
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import cachetools
import psutil

from batchmem.errors import ConfigError
from batchmem.heap.cgroup import MemoryCgroup, find_memory_cgroup, system_stall_avg10
from batchmem.heap.levels import PressureLevel, PressureThresholds, stall_level
from batchmem.heap.limits import (  # noqa: F401  (re-exported: the public names of this module)
    MemoryLimit,
    _cgroup_limits,
    detect_memory_limit,
    parse_size,
    resolve_memory_limit,
)

__all__ = [
    "PressureLevel",
    "PressureThresholds",
    "MemoryLimit",
    "MemorySample",
    "MemoryMonitor",
    "PeakMemoryTracker",
    "detect_memory_limit",
    "pss_bytes",
    "tree_pss_bytes",
    "parse_size",
    "resolve_memory_limit",
    "current_rss_bytes",
]

logger = logging.getLogger("batchmem")

# --- constants (immutable) ---------------------------------------------------

#: Page size in bytes, for converting ``/proc/self/statm`` pages to bytes.
_PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: True when the Linux procfs files this module reads exist.
_HAVE_PROCFS: bool = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")


# --- readings -------------------------------------------------------------------


def _read_proc(path: bytes, size: int = 8192) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def current_rss_bytes() -> int:
    """Resident set size of this process only, in bytes.

    Linux: second field of ``/proc/self/statm`` (pages) times the page size,
    read with one ``os.open``/``os.read``; elsewhere ``psutil``. Cheap
    enough for every batch: measured by benchmarks/bench_monitor.py: ~4-8 us
    on Linux.
    """
    if _HAVE_PROCFS:
        return int(_read_proc(b"/proc/self/statm", 256).split(None, 2)[1]) * _PAGE_SIZE
    return int(psutil.Process().memory_info().rss)


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid`` in bytes: its private pages plus each shared page divided by
    the number of processes mapping it, so the sum over a process tree counts every page once, also
    the pages forked workers share copy-on-write with their parent (``Pss`` in ``/proc/PID/smaps_rollup``,
    proc(5)). None where it cannot be read (gone, not Linux 4.14+). About 0.6 ms a read, most of it the
    kernel walking the mappings (measured on the 2-core test machine, 24 MiB to 2 GiB resident), so it
    confirms a reading near a limit rather than replacing the ``statm`` one."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_pss_bytes(pids: list[int]) -> int | None:
    """The sum of :func:`pss_bytes` over ``pids`` (bytes); None if this process's own cannot be read.
    A pid that is gone adds nothing."""
    own = pss_bytes(os.getpid())
    if own is None:
        return None
    return own + sum(pss_bytes(pid) or 0 for pid in pids if pid != os.getpid())


@dataclass(frozen=True)
class MemorySample:
    """One memory reading.

    Attributes:
        timestamp: ``time.time()`` when taken (seconds since the epoch).
        rss_bytes: RSS of the process tree (bytes).
        available_bytes: ``psutil.virtual_memory().available`` (bytes, system-wide).
        limit_bytes: effective limit (bytes); ``limit_source`` says where it came from.
        utilization: ``used_bytes / limit_bytes`` (may exceed 1).
        pressure: :class:`PressureLevel` of ``utilization``, raised by ``stall_avg10``.
        working_set_bytes: the memory cgroup's working set (usage minus inactive file cache,
            bytes) where a cgroup sets a limit below physical RAM; None elsewhere.
        cgroup_usage_bytes: that cgroup's whole charge (bytes); None elsewhere.
        stall_avg10: memory pressure stall, ``some avg10`` (percent of the last 10 s), of the
            cgroup (v2) or the system; None where the kernel has no pressure stall information.
    """

    timestamp: float
    rss_bytes: int
    available_bytes: int
    limit_bytes: int
    limit_source: str
    utilization: float
    pressure: PressureLevel
    working_set_bytes: int | None = None
    cgroup_usage_bytes: int | None = None
    stall_avg10: float | None = None

    @property
    def used_bytes(self) -> int:
        """What the limit is compared with: the larger of ``rss_bytes`` and ``working_set_bytes`` (bytes)."""
        return max(self.rss_bytes, self.working_set_bytes or 0)

    @property
    def charge_outside_rss_bytes(self) -> int:
        """``used_bytes - rss_bytes``: what the cgroup charges that no process's RSS shows (bytes, >= 0)."""
        return self.used_bytes - self.rss_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``pressure`` becomes its label ("warning")."""
        d = asdict(self)
        d["pressure"] = self.pressure.label
        return d


_DEFAULT_THRESHOLDS = PressureThresholds()


class MemoryMonitor:
    """Reads the memory use of this process tree against an effective limit.

    Args:
        memory_limit: ``None`` (detect), bytes (int), a size string ("2GB")
            or a fraction of the detected limit (float in (0, 1]); see
            :func:`resolve_memory_limit`. Resolved once, here.
        thresholds: utilization fractions for the pressure levels.
        include_children: count descendant processes (loky workers) in
            :meth:`rss_bytes`.
        cgroup: the memory cgroup to read (:func:`~batchmem.heap.cgroup.find_memory_cgroup`), or
            "detect" (default): this process's. Its working set counts only when it sets a limit
            below physical RAM (:attr:`MemoryCgroup.limited`); elsewhere usage is the tree's RSS
            alone, as an unlimited cgroup may hold unrelated processes and their page cache.

    Raises:
        ConfigError: for a bad ``memory_limit``.

    RSS of several processes is summed, so pages shared between them (libraries,
    copy-on-write pages after a fork) are counted once per process: an upper bound.
    From the warning level up, :meth:`sample` takes the tree's proportional set size
    instead when it is lower (:func:`tree_pss_bytes`), so that shared pages do not
    escalate the pressure early.
    """

    def __init__(
        self,
        memory_limit: int | str | float | None = None,
        thresholds: PressureThresholds = _DEFAULT_THRESHOLDS,
        include_children: bool = True,
        children_ttl_s: float = 1.0,
        cgroup: MemoryCgroup | None | str = "detect",
    ) -> None:
        if not isinstance(thresholds, PressureThresholds):
            raise ConfigError(
                f"thresholds={thresholds!r} must be a PressureThresholds, "
                "e.g. PressureThresholds(warning=0.8, critical=0.9, emergency=0.95)"
            )
        self.limit: MemoryLimit = resolve_memory_limit(memory_limit)
        self.thresholds: PressureThresholds = thresholds
        self.include_children: bool = bool(include_children)
        self._proc: psutil.Process | None = None
        found = find_memory_cgroup() if cgroup == "detect" and _HAVE_PROCFS else cgroup
        self._stall_cgroup: MemoryCgroup | None = found if isinstance(found, MemoryCgroup) else None
        #: The cgroup whose working set counts (one that sets a limit), else None.
        self.cgroup: MemoryCgroup | None = self._stall_cgroup if found and found.limited else None
        # The list of descendants is the expensive part of a tree reading (psutil scans every
        # process on the machine); it changes rarely (loky workers live for minutes), so it is
        # re-listed at most every ``children_ttl_s`` seconds. A worker started within that
        # window is counted from the next listing; one that exited is skipped at once.
        self._children: cachetools.TTLCache = cachetools.TTLCache(maxsize=1, ttl=children_ttl_s)

    def __repr__(self) -> str:
        return (
            f"MemoryMonitor(limit={self.limit.bytes} bytes from {self.limit.source}, "
            f"thresholds={self.thresholds}, include_children={self.include_children})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_proc"] = None  # psutil handles belong to one process
        state["_children"] = cachetools.TTLCache(maxsize=1, ttl=self._children.ttl)
        return state

    def _self_process(self) -> psutil.Process:
        proc = self._proc
        if proc is None or proc.pid != os.getpid():
            proc = self._proc = psutil.Process()
        return proc

    def rss_bytes(self) -> int:
        """RSS of this process plus, if ``include_children``, all its descendants (bytes).

        Children come from ``psutil.Process().children(recursive=True)``,
        which reads ``/proc/<pid>/stat`` of every process on the machine, so
        the cost grows with the machine's process count, not with the number
        of children: measured by benchmarks/bench_monitor.py: ~1.9-2.5 ms with
        0 or 2 children among ~90 processes (loaded 2-vCPU VM). The list is
        therefore kept for ``children_ttl_s`` (1 s); in between a reading costs
        one ``/proc/<pid>/statm`` read per process. ``include_children=False`` costs what
        :func:`current_rss_bytes` costs. Children that exit while being read
        are skipped.
        """
        total = current_rss_bytes()
        if not self.include_children:
            return total
        me = self._self_process()
        children = self._children.get(me.pid)
        if children is None:
            try:
                children = self._children[me.pid] = me.children(recursive=True)
            except psutil.Error:
                return total
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:  # exited, zombie, or not ours to read
                continue
        return total

    def _shared_once(self, rss_sum: int) -> int:
        """The tree's proportional set size (:func:`tree_pss_bytes`) when it is lower than the sum of
        RSS: pages shared by the processes (libraries, forked workers' copy-on-write pages) then count
        once. Read only at warning and above, where a summed RSS would escalate early."""
        children = self._children.get(self._self_process().pid) or []
        if not children:
            return rss_sum
        pss = tree_pss_bytes([c.pid for c in children])
        return rss_sum if pss is None else min(rss_sum, pss)

    def used_bytes(self) -> int:
        """The larger of :meth:`rss_bytes` and the limiting cgroup's working set (bytes)."""
        ws = self.cgroup.working_set_bytes() if self.cgroup is not None else None
        return max(self.rss_bytes(), ws or 0)

    def stall_avg10(self) -> float | None:
        """Memory pressure stall ``some avg10`` (percent) of this process's cgroup (v2) or the system."""
        if self._stall_cgroup is not None:
            return self._stall_cgroup.pressure_some_avg10()
        return system_stall_avg10() if _HAVE_PROCFS else None

    def sample(self) -> MemorySample:
        """Take a :class:`MemorySample` (tree RSS, cgroup working set, available memory, limit, pressure).

        Cost: :meth:`rss_bytes` plus one ``psutil.virtual_memory()`` (reads
        ``/proc/meminfo``); measured by benchmarks/bench_monitor.py: ~1.6-2.6 ms
        with 0 or 2 children (loaded 2-vCPU VM, ~90 processes); the cgroup's files and the
        pressure stall add a few microseconds (same script).
        """
        rss = self.rss_bytes()
        if self.include_children and self.thresholds.level(rss / self.limit.bytes) >= PressureLevel.WARNING:
            rss = self._shared_once(rss)
        usage, ws = self.cgroup.usage_and_working_set() if self.cgroup is not None else (None, None)
        stall = self.stall_avg10()
        available = int(psutil.virtual_memory().available)
        utilization = max(rss, ws or 0) / self.limit.bytes
        return MemorySample(
            timestamp=time.time(),
            rss_bytes=rss,
            available_bytes=available,
            limit_bytes=self.limit.bytes,
            limit_source=self.limit.source,
            utilization=utilization,
            pressure=max(self.thresholds.level(utilization), stall_level(stall)),
            working_set_bytes=ws,
            cgroup_usage_bytes=usage,
            stall_avg10=stall,
        )


# --- peak per block ---------------------------------------------------------------


def _status_kb(status: bytes, key: bytes) -> int | None:
    i = status.find(key)
    if i < 0:
        return None
    j = status.find(b"\n", i)
    parts = status[i + len(key) : j if j >= 0 else None].split()
    return int(parts[0]) * 1024 if parts else None


class PeakMemoryTracker:
    """Peak resident bytes of THIS process during a ``with`` block.

    Usage::

        with PeakMemoryTracker() as t:
            run_batch()
        t.start_rss_bytes, t.peak_rss_bytes, t.end_rss_bytes, t.peak_delta_bytes

    Methods (``.method``):

    * ``"vmhwm"`` (Linux): writing "5" to ``/proc/self/clear_refs`` resets
      the kernel's RSS high-water mark to the current RSS (kernel docs,
      ``Documentation/filesystems/proc.rst``, "clear_refs", Linux >= 4.0);
      at exit ``VmHWM`` and ``VmRSS`` are read from ``/proc/self/status``.
      No thread, and no peak is missed; "5" only resets a counter (no
      page-table walk). Enter+exit measured by benchmarks/bench_monitor.py:
      ~25-45 us. The high-water mark belongs to the whole process: two
      trackers active at once in one process (nested, or in two threads)
      disturb each other -- the inner reset hides the outer's earlier peak.
      Use ``force_sampling=True`` for concurrent use.
    * ``"sampling"`` (no clear_refs, not permitted, non-Linux, or
      ``force_sampling=True``): a daemon thread reads
      :func:`current_rss_bytes` every ``interval_s`` seconds. A lower bound:
      peaks shorter than ``interval_s`` (or while C code holds the GIL) can
      be missed. Enter+exit (thread start/join) measured by
      benchmarks/bench_monitor.py: ~0.25-0.5 ms.

    Args:
        interval_s: sampling period in seconds (sampling method only; > 0).
        force_sampling: use the sampling thread even where VmHWM works.

    All results are bytes; reading them before the block has ended raises
    ``RuntimeError``. The tracker can be reused for consecutive blocks.
    """

    def __init__(self, interval_s: float = 0.005, *, force_sampling: bool = False) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, numbers.Real) or not interval_s > 0:
            raise ConfigError(f"interval_s={interval_s!r} must be a positive number of seconds, e.g. 0.005")
        self.interval_s = float(interval_s)
        self.force_sampling = bool(force_sampling)
        self.method: str | None = None
        self._start: int | None = None
        self._peak: int | None = None
        self._end: int | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0
        self._active = False

    # -- results
    def _done(self, value: int | None) -> int:
        if value is None:
            raise RuntimeError("PeakMemoryTracker results are available after the with-block ends")
        return value

    @property
    def start_rss_bytes(self) -> int:
        """RSS of this process when the block was entered (bytes)."""
        if self._start is None:
            raise RuntimeError("PeakMemoryTracker has not been entered")
        return self._start

    @property
    def peak_rss_bytes(self) -> int:
        """Highest RSS of this process during the block (bytes; >= start and end)."""
        return self._done(self._peak)

    @property
    def end_rss_bytes(self) -> int:
        """RSS of this process when the block ended (bytes)."""
        return self._done(self._end)

    @property
    def peak_delta_bytes(self) -> int:
        """``max(0, peak_rss_bytes - start_rss_bytes)``: what the block added at its peak (bytes)."""
        return max(0, self._done(self._peak) - self.start_rss_bytes)

    # -- context manager
    def __enter__(self) -> PeakMemoryTracker:
        if self._active:
            raise RuntimeError("PeakMemoryTracker is already active; use one tracker per block")
        self._active = True
        self._peak = self._end = None
        if not self.force_sampling and _HAVE_PROCFS and self._reset_hwm():
            self.method = "vmhwm"
            self._start = current_rss_bytes()
            return self
        self.method = "sampling"
        self._start = current_rss_bytes()
        self._sampled_peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="batchmem-peak-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> bool:
        self._active = False
        if self.method == "vmhwm":
            status = None
            try:
                status = _read_proc(b"/proc/self/status")
            except OSError:
                pass
            hwm = _status_kb(status, b"VmHWM:") if status else None
            end = _status_kb(status, b"VmRSS:") if status else None
            if end is None:
                end = current_rss_bytes()
            self._end = end
            self._peak = max(hwm or 0, end, self._start or 0)
        else:
            assert self._stop is not None and self._thread is not None
            self._stop.set()
            self._thread.join()
            self._thread = self._stop = None
            end = current_rss_bytes()
            self._end = end
            self._peak = max(self._sampled_peak, end, self._start or 0)
        return False

    @staticmethod
    def _reset_hwm() -> bool:
        """Write "5" to /proc/self/clear_refs; False when absent or not permitted."""
        try:
            fd = os.open(b"/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            return False
        try:
            os.write(fd, b"5")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _sample_loop(self) -> None:
        stop, interval = self._stop, self.interval_s
        assert stop is not None
        peak = self._sampled_peak
        while True:
            rss = current_rss_bytes()
            if rss > peak:
                peak = self._sampled_peak = rss
            if stop.wait(interval):
                return
