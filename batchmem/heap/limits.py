"""The memory limit of this process and size parsing: which limit applies, and where it came from.

:func:`detect_memory_limit` takes the smallest of the cgroup v2 ``memory.max`` and ``memory.high``,
the cgroup v1 ``memory.limit_in_bytes`` (the Linux kernel's admin-guide,
``Documentation/admin-guide/cgroup-v2.rst`` and ``cgroup-v1/memory.rst``; found by
:mod:`batchmem.heap.cgroup`), ``RLIMIT_AS``/``RLIMIT_DATA`` and physical RAM, and says which won;
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
from dataclasses import dataclass

from batchmem.errors import ConfigError
from batchmem.heap.cgroup import (
    locate_cgroups,
    parse_v1_limit,
    parse_v2_max,
    physical_bytes,
    smallest_over_ancestors,
)

__all__ = ["MemoryLimit", "detect_memory_limit", "parse_size", "resolve_memory_limit"]

logger = logging.getLogger("batchmem")

#: True when the Linux procfs files this module reads exist.
_HAVE_PROCFS: bool = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")

_SIZE_EXAMPLE = '"512MB", "2GiB" or "1.5GB"'

# "0.5" / ".25" / "1.0": a fraction written as a string (CLI flags, env vars).
#: A string that is a fraction of the detected limit ("0.5", ".25", "1.0"), not a size.
FRACTION_RE = re.compile(r"^\s*(?:0?\.\d+|1\.0*)\s*$")

# Order used to break ties between equal limits: the most specific source wins.
_SOURCE_ORDER = ("cgroup_v2_high", "cgroup_v2", "cgroup_v1", "rlimit_as", "rlimit_data", "physical")


@dataclass(frozen=True)
class MemoryLimit:
    """An effective memory limit in bytes and where it came from.

    ``source`` is one of "user", "cgroup_v2" (``memory.max``), "cgroup_v2_high" (``memory.high``,
    lower than ``memory.max``), "cgroup_v1", "rlimit_as", "rlimit_data", "physical". ``reason`` says
    why where the source alone would mislead (e.g. a cgroup limit at or above physical RAM, ignored);
    empty otherwise.
    """

    bytes: int
    source: str
    reason: str = ""


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


def _cgroup_limits(prefix: str = "") -> dict[str, int]:
    """cgroup v2 and v1 memory limits (bytes) of this process; unlimited ones are absent.

    Keys: "cgroup_v2" (``memory.max``), "cgroup_v2_high" (``memory.high``, only when lower than
    ``memory.max``), "cgroup_v1" (``memory.limit_in_bytes``), each the smallest over the cgroup and its
    ancestors (:func:`batchmem.heap.cgroup.locate_cgroups`). ``prefix`` is prepended to every absolute
    path read (an empty string on a real system; a temporary directory in tests).
    """
    out: dict[str, int] = {}
    for version, (start, top) in locate_cgroups(prefix).items():
        if version == 2:
            found = smallest_over_ancestors(start, top, "memory.max", parse_v2_max)
            high = smallest_over_ancestors(start, top, "memory.high", parse_v2_max)
            if found is not None:
                out["cgroup_v2"] = found[0]
            if high is not None and (found is None or high[0] < found[0]):
                out["cgroup_v2_high"] = high[0]
        else:
            found = smallest_over_ancestors(start, top, "memory.limit_in_bytes", parse_v1_limit)
            if found is not None:
                out["cgroup_v1"] = found[0]
    return out


def _rlimit(which: int) -> int | None:
    try:
        soft, _hard = resource.getrlimit(which)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def _drop_above_ram(candidates: dict[str, int], ram: int) -> str:
    """Remove the cgroup limits at or above physical RAM from ``candidates``; the reason, or ""."""
    ignored = {k: n for k, n in candidates.items() if k.startswith("cgroup") and n >= ram}
    for k in ignored:
        del candidates[k]
    if not ignored:
        return ""
    names = ", ".join(f"{k} {n} bytes" for k, n in ignored.items())
    reason = f"{names} at or above physical RAM ({ram} bytes) is no limit; the limit is RAM (see ray-project/ray#59796)"
    logger.info("batchmem: %s", reason)
    return reason


def detect_memory_limit(prefix: str = "") -> MemoryLimit:
    """Detect the memory limit (bytes) this process runs under, and its source.

    Candidates (absent when unlimited or unreadable): cgroup v2
    ``memory.max`` ("max" = no limit) and ``memory.high`` (when lower than
    ``memory.max``: the kernel throttles and reclaims there), cgroup v1
    ``memory.limit_in_bytes`` (values >= 2**60 = no limit), each the smallest
    over the process's cgroup and its ancestors up to the mount point; the soft
    ``RLIMIT_AS`` and ``RLIMIT_DATA`` (``RLIM_INFINITY`` = no limit); physical RAM
    (always present). A cgroup limit at or above physical RAM is no limit: it is
    dropped, logged, and named in the result's ``reason`` (a container that sets
    its limit to the host's RAM or more; ray-project/ray#59796). The smallest
    wins; ties go to the first in that order.

    Note that ``RLIMIT_AS`` bounds virtual, not resident, memory: a process
    reaches it before its RSS does. It still wins when smallest, because
    allocations fail at that point.

    Reads a few small files; called once per :class:`MemoryMonitor`.
    Never raises for missing files: physical RAM is the floor. ``prefix`` is a fake root for the
    cgroup files (tests).
    """
    candidates: dict[str, int] = {}
    if _HAVE_PROCFS or prefix:
        candidates.update(_cgroup_limits(prefix))
    for name, which in (("rlimit_as", "RLIMIT_AS"), ("rlimit_data", "RLIMIT_DATA")):
        if hasattr(resource, which):
            n = _rlimit(getattr(resource, which))
            if n is not None:
                candidates[name] = n
    candidates["physical"] = physical_bytes()
    reason = _drop_above_ram(candidates, candidates["physical"])
    source = min(_SOURCE_ORDER, key=lambda s: (candidates.get(s, math.inf), _SOURCE_ORDER.index(s)))
    limit = MemoryLimit(bytes=int(candidates[source]), source=source, reason=reason if source == "physical" else "")
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
    if isinstance(value, str) and FRACTION_RE.match(value):
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
