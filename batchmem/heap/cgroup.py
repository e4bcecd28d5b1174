"""The memory cgroup of this process: where it is, its limits, and what it charges.

Inside a container the kernel does not kill on a process's resident set size (RSS); it kills when
the memory cgroup's charge reaches its limit. The charge also holds files on a tmpfs (``/tmp`` or
``/dev/shm`` in many containers, Kubernetes ``emptyDir`` with ``medium: Memory``), shared memory no
process has touched yet, page cache and kernel memory, none of which shows in any process's RSS.

* **Where** -- ``/proc/self/cgroup`` gives the cgroup path per hierarchy ("0::/path" for v2,
  "N:memory:/path" for v1) and ``/proc/self/mountinfo`` where each hierarchy is mounted (proc(5)).
* **Limits** -- v2 ``memory.max`` and ``memory.high``, v1 ``memory.limit_in_bytes``, each the smallest
  over the cgroup and its ancestors up to the mount point (the kernel's admin-guide,
  ``Documentation/admin-guide/cgroup-v2.rst`` and ``cgroup-v1/memory.rst``).
* **Working set** -- usage minus the inactive file cache the kernel reclaims before it kills:
  v1 ``memory.usage_in_bytes`` - ``total_inactive_file`` (``memory.stat``), v2 ``memory.current`` -
  ``inactive_file``. This is how the kubelet computes its ``memory.available`` eviction signal
  (https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/, and its script
  https://kubernetes.io/examples/admin/resource/memory-available.sh).
* **Pressure stall** -- ``some avg10`` of the cgroup's v2 ``memory.pressure``, else of
  ``/proc/pressure/memory``: the share of the last 10 s in which at least one task waited for memory
  (the kernel's ``Documentation/accounting/psi.rst``).

Readings are meant for a watchdog sampling every 20 ms: each file is opened once and read again
with ``os.pread`` from offset 0 (the kernel renders it anew on every read), one or two small reads a
reading (``benchmarks/bench_monitor.py`` measures them). ``prefix`` arguments prepend a directory to
every absolute path read: a fake root in tests, an empty string on a real system.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MemoryCgroup",
    "find_memory_cgroup",
    "locate_cgroups",
    "parse_psi_some_avg10",
    "physical_bytes",
    "system_stall_avg10",
]

logger = logging.getLogger("batchmem")

#: cgroup v1 reports "no limit" as PAGE_COUNTER_MAX rounded to pages
#: (9223372036854771712 on x86-64 with 4 KiB pages); anything at or above
#: 2**60 bytes (1 EiB) is treated as unlimited.
_CGROUP_V1_UNLIMITED: int = 2**60

#: The system-wide pressure stall file, used where the cgroup has no ``memory.pressure`` of its own.
SYSTEM_PSI = "/proc/pressure/memory"


def read_text(path: str | Path) -> str | None:
    """The text of a small file, or None when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def physical_bytes() -> int:
    """Physical RAM of the machine, bytes (``sysconf``; psutil where that fails)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        import psutil

        return int(psutil.virtual_memory().total)


def _cgroup_mounts(mountinfo: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """Find (root-in-hierarchy, mount point) of the cgroup2 and cgroup v1 memory mounts.

    ``mountinfo`` is the text of ``/proc/self/mountinfo`` (proc(5)): fields
    4 and 5 are the root and the mount point; after the " - " separator come
    the filesystem type and the super-block options.
    """
    v2 = v1 = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or not tail:
            continue
        root, mount_point = fields[3], fields[4].replace("\\040", " ")
        fstype = tail[0]
        if fstype == "cgroup2" and v2 is None:
            v2 = (root, mount_point)
        elif fstype == "cgroup" and v1 is None and len(tail) >= 3:
            if "memory" in tail[2].split(","):
                v1 = (root, mount_point)
    return v2, v1


def _cgroup_dir(mount: tuple[str, str], cgroup_path: str, prefix: str) -> tuple[Path, Path]:
    """Return (directory of this process's cgroup, mount point) on the filesystem."""
    root, mount_point = mount
    rel = cgroup_path
    if root != "/" and (rel == root or rel.startswith(root.rstrip("/") + "/")):
        rel = rel[len(root.rstrip("/")) :]
    top = Path(prefix + mount_point)
    return top / rel.lstrip("/"), top


def locate_cgroups(prefix: str = "") -> dict[int, tuple[Path, Path]]:
    """This process's memory cgroup directories: ``{version: (its directory, the mount point)}``.

    Version 2 is listed when a cgroup2 hierarchy is mounted, version 1 when a v1 hierarchy with the
    memory controller is; a hybrid system lists both. Empty where the files cannot be read.
    """
    cgroup_text = read_text(prefix + "/proc/self/cgroup")
    mountinfo = read_text(prefix + "/proc/self/mountinfo")
    if not cgroup_text or not mountinfo:
        return {}
    paths: dict[int, str] = {}
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            paths[2] = path
        elif "memory" in controllers.split(","):
            paths[1] = path
    v2_mount, v1_mount = _cgroup_mounts(mountinfo)
    found: dict[int, tuple[Path, Path]] = {}
    for version, mount in ((2, v2_mount), (1, v1_mount)):
        if version in paths and mount is not None:
            found[version] = _cgroup_dir(mount, paths[version], prefix)
    return found


def smallest_over_ancestors(
    start: Path, top: Path, filename: str, parse: Callable[[str], int | None]
) -> tuple[int, Path] | None:
    """Smallest limit in ``filename`` from ``start`` up to ``top`` (ancestors' limits apply too), and
    the directory that set it; None when no directory sets one."""
    best: tuple[int, Path] | None = None
    d = start
    while True:
        text = read_text(d / filename)
        if text is not None:
            n = parse(text.strip())
            if n is not None and (best is None or n < best[0]):
                best = (n, d)
        if d == top or top not in d.parents:
            break
        d = d.parent
    return best


def parse_v2_max(text: str) -> int | None:
    """A v2 ``memory.max``/``memory.high`` value in bytes; None for "max" (no limit) or garbage."""
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_v1_limit(text: str) -> int | None:
    """A v1 ``memory.limit_in_bytes`` value in bytes; None for the huge "no limit" value or garbage."""
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n >= _CGROUP_V1_UNLIMITED or n <= 0 else n


def parse_psi_some_avg10(text: bytes | str) -> float | None:
    """``avg10`` of the ``some`` line of a pressure stall file (percent of the last 10 s), or None.

    Format (``Documentation/accounting/psi.rst``): ``some avg10=0.00 avg60=0.00 avg300=0.00 total=0``.
    """
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    for line in raw.splitlines():
        if line.startswith("some "):
            for part in line.split()[1:]:
                key, _, value = part.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def _parse_stat(raw: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in raw.split(b"\n"):
        key, _, value = line.partition(b" ")
        try:
            out[key.decode("ascii")] = int(value)
        except ValueError:
            continue
    return out


def _stat_value(raw: bytes, key: bytes) -> int | None:
    """The value of ``key`` in a ``memory.stat`` text, without parsing every line."""
    needle = key + b" "
    if raw.startswith(needle):
        i = 0
    else:
        i = raw.find(b"\n" + needle) + 1
        if i == 0:
            return None
    j = raw.find(b"\n", i)
    try:
        return int(raw[i + len(needle) : j if j >= 0 else None])
    except ValueError:
        return None


@dataclass
class MemoryCgroup:
    """This process's memory cgroup (v1 or v2), its limits and its readings.

    Attributes:
        version: 1 or 2.
        path: this process's cgroup directory (``Path``; under ``prefix`` in tests).
        limit_bytes: the smallest v2 ``memory.max`` / v1 ``memory.limit_in_bytes`` over the cgroup
            and its ancestors, bytes; None when there is none, or when it is at or above physical RAM
            (such a limit never binds before the machine runs out: ray-project/ray#59796).
        high_bytes: the smallest v2 ``memory.high`` (where the kernel throttles and reclaims), bytes,
            when lower than ``limit_bytes`` and physical RAM; None otherwise and on v1.
        charged_path: the directory whose charge the binding limit compares against (``path`` or the
            ancestor that sets the limit); readings come from it.
        prefix: the fake root the paths are under ("" on a real system).

    Readings keep their files open (``os.pread`` from offset 0); :meth:`close` releases them. A
    pickled copy (a worker) reopens them on first use.
    """

    version: int
    path: Path
    limit_bytes: int | None = None
    high_bytes: int | None = None
    charged_path: Path | None = None
    prefix: str = ""
    _fds: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.charged_path is None:
            self.charged_path = self.path

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}  # descriptors belong to one process
        return state

    @property
    def limited(self) -> bool:
        """True when the cgroup sets a limit below physical RAM (max, limit_in_bytes or high)."""
        return self.limit_bytes is not None or self.high_bytes is not None

    @property
    def effective_limit_bytes(self) -> int | None:
        """The lower of ``limit_bytes`` and ``high_bytes`` (bytes), or None without a limit."""
        limits = [n for n in (self.limit_bytes, self.high_bytes) if n is not None]
        return min(limits) if limits else None

    @property
    def limit_source(self) -> str | None:
        """ "cgroup_v2_high" when ``memory.high`` is the lower limit, else "cgroup_v2"/"cgroup_v1"; None without one."""
        if self.high_bytes is not None and (self.limit_bytes is None or self.high_bytes < self.limit_bytes):
            return "cgroup_v2_high"
        return f"cgroup_v{self.version}" if self.limit_bytes is not None else None

    def _read(self, name: str, size: int = 4096) -> bytes | None:
        """``name`` (relative to ``charged_path``, or absolute) read again with pread; None if unreadable."""
        path = name if name.startswith("/") else str(self.charged_path / name)
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return os.pread(fd, size, 0)
        except OSError:
            if fd is not None:
                self._fds.pop(path, None)
                os.close(fd)
            return None

    def usage_bytes(self) -> int | None:
        """The cgroup's charge, bytes: v2 ``memory.current``, v1 ``memory.usage_in_bytes``; None if unreadable."""
        raw = self._read("memory.current" if self.version == 2 else "memory.usage_in_bytes", 64)
        try:
            return int(raw) if raw else None
        except ValueError:
            return None

    def _stat_raw(self) -> bytes | None:
        return self._read("memory.stat", 16384)

    def stat(self) -> dict[str, int]:
        """``memory.stat`` as ``{name: value}`` (bytes for sizes, counts for events); empty if unreadable."""
        raw = self._stat_raw()
        return _parse_stat(raw) if raw else {}

    def working_set_bytes(self) -> int | None:
        """Usage minus the inactive file cache, bytes (never below 0): v1 ``total_inactive_file``, v2
        ``inactive_file`` of ``memory.stat``, as the kubelet counts a container's working set. None if unreadable."""
        return self.usage_and_working_set()[1]

    def usage_and_working_set(self) -> tuple[int | None, int | None]:
        """(:meth:`usage_bytes`, :meth:`working_set_bytes`) from one read of each file."""
        usage = self.usage_bytes()
        raw = self._stat_raw()
        if usage is None or raw is None:
            return usage, None
        inactive = _stat_value(raw, b"inactive_file" if self.version == 2 else b"total_inactive_file")
        return usage, max(0, usage - (inactive or 0))

    def shmem_bytes(self) -> int | None:
        """Files on tmpfs and shared memory the cgroup holds (``memory.stat`` ``shmem``, v1 ``total_shmem``), bytes."""
        raw = self._stat_raw()
        return _stat_value(raw, b"shmem" if self.version == 2 else b"total_shmem") if raw else None

    def pressure_some_avg10(self) -> float | None:
        """Percent of the last 10 s in which some task waited for memory: the cgroup's v2
        ``memory.pressure``, else ``/proc/pressure/memory``; None where neither exists (psi.rst)."""
        raw = self._read("memory.pressure", 256) if self.version == 2 else None
        if raw is None:
            raw = self._read(self.prefix + SYSTEM_PSI, 256)
        return parse_psi_some_avg10(raw) if raw else None

    def close(self) -> None:
        """Close the files the readings keep open."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def system_stall_avg10(prefix: str = "") -> float | None:
    """``some avg10`` of ``/proc/pressure/memory`` (percent), or None where the kernel has no PSI."""
    text = read_text(prefix + SYSTEM_PSI)
    return parse_psi_some_avg10(text) if text else None


def _below_ram(found: tuple[int, Path] | None, ram: int) -> tuple[int, Path] | None:
    return found if found is not None and found[0] < ram else None


def find_memory_cgroup(prefix: str = "") -> MemoryCgroup | None:
    """This process's memory cgroup, or None (not Linux, no memory controller, unreadable files).

    v2 is taken where its hierarchy has the memory controller (a ``memory.current`` or ``memory.max``
    in the cgroup or an ancestor), else the v1 memory hierarchy. Limits at or above physical RAM are
    left out (``limit_bytes`` None); readings come from the directory that sets the binding limit.
    """
    found = locate_cgroups(prefix)
    ram = physical_bytes()
    v2 = found.get(2)
    if v2 is not None:
        start, top = v2
        chain = [start, *(d for d in start.parents if d == top or top in d.parents)]
        has_memory = any((d / "memory.current").exists() or (d / "memory.max").exists() for d in chain)
        if has_memory:
            limit = _below_ram(smallest_over_ancestors(start, top, "memory.max", parse_v2_max), ram)
            high = _below_ram(smallest_over_ancestors(start, top, "memory.high", parse_v2_max), ram)
            if high is not None and limit is not None and high[0] >= limit[0]:
                high = None
            binding = min((x for x in (limit, high) if x is not None), default=None, key=lambda x: x[0])
            return MemoryCgroup(
                2, start, limit and limit[0], high and high[0], binding[1] if binding else start, prefix
            )
    if 1 in found:
        start, top = found[1]
        limit = _below_ram(smallest_over_ancestors(start, top, "memory.limit_in_bytes", parse_v1_limit), ram)
        return MemoryCgroup(1, start, limit and limit[0], None, limit[1] if limit else start, prefix)
    return None
