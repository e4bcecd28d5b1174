"""The memory limit of this process and size parsing: which limit applies, and where it came from.

:func:`detect_memory_limit` takes the smallest of the cgroup v2 ``memory.max``, the cgroup v1
``memory.limit_in_bytes`` (the Linux kernel's admin-guide, ``Documentation/admin-guide/cgroup-v2.rst``
and ``cgroup-v1/memory.rst``), ``RLIMIT_AS``/``RLIMIT_DATA`` and physical RAM, and says which won;
:func:`resolve_memory_limit` applies a user's ``memory_limit`` (bytes, a size string or a fraction of
the detected limit). Readings of usage live in :mod:`batchmem.heap.monitor`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from batchmem.errors import ConfigError

__all__ = ["MemoryLimit", "detect_memory_limit", "parse_size", "resolve_memory_limit"]

logger = logging.getLogger("batchmem")

#: True when the Linux procfs files this module reads exist.
_HAVE_PROCFS: bool = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")

#: cgroup v1 reports "no limit" as PAGE_COUNTER_MAX rounded to pages
#: (9223372036854771712 on x86-64 with 4 KiB pages); anything at or above
#: 2**60 bytes (1 EiB) is treated as unlimited.
_CGROUP_V1_UNLIMITED: int = 2**60

_SIZE_EXAMPLE = '"512MB", "2GiB" or "1.5GB"'

# "0.5" / ".25" / "1.0": a fraction written as a string (CLI flags, env vars).
_FRACTION_RE = re.compile(r"^\s*(?:0?\.\d+|1\.0*)\s*$")

# Order used to break ties between equal limits: the most specific source wins.
_SOURCE_ORDER = ("cgroup_v2", "cgroup_v1", "rlimit_as", "rlimit_data", "physical")


@dataclass(frozen=True)
class MemoryLimit:
    """An effective memory limit in bytes and where it came from.

    ``source`` is one of "user", "cgroup_v2", "cgroup_v1", "rlimit_as",
    "rlimit_data", "physical".
    """

    bytes: int
    source: str


def parse_size(value: str | int) -> int:
    """Parse a size into bytes (``int``) with :class:`pydantic.ByteSize`.

    Accepts an integer number of bytes or a size string: decimal units
    ("512MB" = 512 * 10**6, "1.5GB") and binary units ("2GiB" = 2 * 2**30),
    case-insensitive; a bare number string is bytes.

    Raises:
        ConfigError: one line naming the value and showing a valid example,
            for unparsable strings, booleans, floats, other types, and sizes
            that are zero or negative.
    """
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise ConfigError(f"memory size {value!r} is not an int or a size string; use bytes or e.g. {_SIZE_EXAMPLE}")
    if isinstance(value, numbers.Integral):
        n = int(value)
    else:
        from pydantic import ByteSize, TypeAdapter, ValidationError  # imported here: workers never parse sizes

        try:
            n = int(TypeAdapter(ByteSize).validate_python(value.strip()))
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid size")
            raise ConfigError(f"memory size {value!r} cannot be parsed ({reason}); use e.g. {_SIZE_EXAMPLE}") from None
    if n <= 0:
        raise ConfigError(f"memory size {value!r} must be positive; use e.g. {_SIZE_EXAMPLE}")
    return n


def _read_text(path: str | Path) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


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


def _min_over_ancestors(start: Path, top: Path, filename: str, parse: Callable[[str], int | None]) -> int | None:
    """Smallest limit in ``filename`` from ``start`` up to ``top`` (ancestors' limits apply too)."""
    best: int | None = None
    d = start
    while True:
        text = _read_text(d / filename)
        if text is not None:
            n = parse(text.strip())
            if n is not None and (best is None or n < best):
                best = n
        if d == top or top not in d.parents:
            break
        d = d.parent
    return best


def _parse_v2_max(text: str) -> int | None:
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _parse_v1_limit(text: str) -> int | None:
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n >= _CGROUP_V1_UNLIMITED or n <= 0 else n


def _cgroup_limits(prefix: str = "") -> dict[str, int]:
    """cgroup v2 and v1 memory limits (bytes) of this process; unlimited ones are absent.

    ``/proc/self/cgroup`` gives the cgroup path per hierarchy ("0::/path" for
    v2, "N:memory:/path" for v1); ``/proc/self/mountinfo`` says where each
    hierarchy is mounted. ``prefix`` is prepended to every absolute path read
    (an empty string on a real system; a temporary directory in tests).
    """
    cgroup_text = _read_text(prefix + "/proc/self/cgroup")
    mountinfo = _read_text(prefix + "/proc/self/mountinfo")
    if not cgroup_text or not mountinfo:
        return {}
    v2_path = v1_path = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    v2_mount, v1_mount = _cgroup_mounts(mountinfo)
    out: dict[str, int] = {}
    if v2_path is not None and v2_mount is not None:
        start, top = _cgroup_dir(v2_mount, v2_path, prefix)
        n = _min_over_ancestors(start, top, "memory.max", _parse_v2_max)
        if n is not None:
            out["cgroup_v2"] = n
    if v1_path is not None and v1_mount is not None:
        start, top = _cgroup_dir(v1_mount, v1_path, prefix)
        n = _min_over_ancestors(start, top, "memory.limit_in_bytes", _parse_v1_limit)
        if n is not None:
            out["cgroup_v1"] = n
    return out


def _rlimit(which: int) -> int | None:
    try:
        soft, _hard = resource.getrlimit(which)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def _physical_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return int(psutil.virtual_memory().total)


def detect_memory_limit() -> MemoryLimit:
    """Detect the memory limit (bytes) this process runs under, and its source.

    Candidates (absent when unlimited or unreadable): cgroup v2
    ``memory.max`` ("max" = no limit), cgroup v1 ``memory.limit_in_bytes``
    (values >= 2**60 = no limit), each the smallest over the process's
    cgroup and its ancestors up to the mount point; the soft ``RLIMIT_AS``
    and ``RLIMIT_DATA`` (``RLIM_INFINITY`` = no limit); physical RAM (always
    present). The smallest wins; ties go to the first in that order.

    Note that ``RLIMIT_AS`` bounds virtual, not resident, memory: a process
    reaches it before its RSS does. It still wins when smallest, because
    allocations fail at that point.

    Reads a few small files; called once per :class:`MemoryMonitor`.
    Never raises for missing files: physical RAM is the floor.
    """
    candidates: dict[str, int] = {}
    if _HAVE_PROCFS:
        candidates.update(_cgroup_limits())
    for name, which in (("rlimit_as", "RLIMIT_AS"), ("rlimit_data", "RLIMIT_DATA")):
        if hasattr(resource, which):
            n = _rlimit(getattr(resource, which))
            if n is not None:
                candidates[name] = n
    candidates["physical"] = _physical_bytes()
    source = min(_SOURCE_ORDER, key=lambda s: (candidates.get(s, math.inf), _SOURCE_ORDER.index(s)))
    limit = MemoryLimit(bytes=int(candidates[source]), source=source)
    logger.debug("memory limit %d bytes from %s (candidates: %s)", limit.bytes, source, candidates)
    return limit


def resolve_memory_limit(value: int | str | float | None, detected: MemoryLimit | None = None) -> MemoryLimit:
    """Turn a user's ``memory_limit`` setting into a :class:`MemoryLimit`.

    * ``None`` -> ``detected`` (or :func:`detect_memory_limit` when not given).
    * ``int`` or size string ("2GB") -> that many bytes, source "user"
      (it overrides detection, even when larger than the detected limit).
    * ``float`` in (0, 1], or a string such as "0.5" -> that fraction of the
      detected limit (at least 1 byte), source "user". Note ``1`` (int) is one
      byte while ``1.0`` (float) is the whole detected limit.

    Raises:
        ConfigError: bad size strings, zero or negative values, floats outside
            (0, 1], other types.
    """
    if value is None:
        return detected if detected is not None else detect_memory_limit()
    if isinstance(value, str) and _FRACTION_RE.match(value):
        value = float(value)
    if isinstance(value, float):
        if not (0.0 < value <= 1.0):
            raise ConfigError(
                f"memory_limit={value!r}: a float is a fraction of the detected limit and must be "
                f'in (0, 1]; for bytes use an int or a size string such as "2GB"'
            )
        base = detected if detected is not None else detect_memory_limit()
        return MemoryLimit(bytes=max(1, int(base.bytes * value)), source="user")
    try:
        return MemoryLimit(bytes=parse_size(value), source="user")
    except ConfigError as exc:
        raise ConfigError(f"memory_limit: {exc}") from None
