"""``batchmem memory``: what memory looks like now for this process, as a dict and as text.

Sizes are bytes, shown in IEC units (:func:`batchmem.units.format_bytes`);
the limit and its source are :class:`batchmem.MemoryMonitor`'s.
"""

from __future__ import annotations

from typing import Any

from ..units import format_bytes

__all__ = ["memory_status", "render_memory"]


def memory_status(verbose: bool = False) -> dict[str, Any]:
    """What memory looks like now, for this process (bytes; utilization a fraction of the limit).

    Keys: rss_bytes, available_bytes, limit_bytes, limit_source, limit_reason, utilization,
    pressure, stall_avg10, thresholds, accounting ("cgroup working set" or "process tree RSS") and
    cgroup (None outside a memory cgroup; else its version, path, limit, memory.high, usage, working
    set, tmpfs/shared memory and whether it counts); with ``verbose`` also ``gc`` (count, threshold,
    stats per generation, enabled) and ``heap`` (tracemalloc tracing and its
    current/peak bytes, and psutil's ``memory_full_info`` fields such as uss,
    pss, swap where the platform has them).
    """
    import gc
    import tracemalloc

    import psutil

    from ..heap.monitor import MemoryMonitor

    mon = MemoryMonitor()
    s = mon.sample()
    out: dict[str, Any] = s.to_dict()
    out["thresholds"] = {
        "warning": mon.thresholds.warning,
        "critical": mon.thresholds.critical,
        "emergency": mon.thresholds.emergency,
    }
    out["limit_reason"] = mon.limit.reason
    out["accounting"] = "cgroup working set" if mon.cgroup is not None else "process tree RSS"
    out["cgroup"] = _cgroup_status(mon)
    if not verbose:
        return out
    out["gc"] = {
        "enabled": gc.isenabled(),
        "count": list(gc.get_count()),
        "threshold": list(gc.get_threshold()),
        "stats": gc.get_stats(),
        "tracked_objects": len(gc.get_objects()),
    }
    heap: dict[str, Any] = {"tracemalloc_tracing": tracemalloc.is_tracing()}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        heap.update(tracemalloc_current_bytes=current, tracemalloc_peak_bytes=peak)
    try:
        info = psutil.Process().memory_full_info()
        heap.update({f"{k}_bytes": int(v) for k, v in info._asdict().items()})
    except (psutil.Error, AttributeError, OSError) as exc:  # not permitted or not on this platform
        heap["memory_full_info"] = f"unavailable ({type(exc).__name__})"
    try:
        heap["swap_used_bytes_system"] = int(psutil.swap_memory().used)
    except (psutil.Error, OSError, RuntimeError):
        pass
    out["heap"] = heap
    return out


def _cgroup_status(mon: Any) -> dict[str, Any] | None:
    """The memory cgroup's figures (bytes), or None outside one."""
    from ..heap.cgroup import find_memory_cgroup

    cg = mon.cgroup or find_memory_cgroup()
    if cg is None:
        return None
    usage, ws = cg.usage_and_working_set()
    return {
        "version": cg.version,
        "path": str(cg.path),
        "limit_bytes": cg.limit_bytes,
        "high_bytes": cg.high_bytes,
        "usage_bytes": usage,
        "working_set_bytes": ws,
        "shmem_bytes": cg.shmem_bytes(),
        "counted": mon.cgroup is not None,
    }


def _size(n: int | None, none: str = "none") -> str:
    return format_bytes(n) if n is not None else none


def _cgroup_lines(status: dict[str, Any]) -> list[str]:
    cg = status.get("cgroup")
    stall = status.get("stall_avg10")
    lines = [f"stall:     {f'{stall:.2f}% some avg10' if stall is not None else 'no pressure stall information'}"]
    lines.append(f"counted:   {status['accounting']}")
    if cg is None:
        return [*lines, "cgroup:    none (no memory cgroup found)"]
    why = "it sets the limit" if cg["counted"] else "it sets no limit below RAM, so only RSS counts"
    return [
        *lines,
        f"cgroup:    v{cg['version']} {cg['path']} ({why})",
        f"  usage {_size(cg['usage_bytes'], '?')}, working set {_size(cg['working_set_bytes'], '?')}, "
        f"tmpfs/shmem {_size(cg['shmem_bytes'], '?')}",
        f"  limit {_size(cg['limit_bytes'])}, memory.high {_size(cg['high_bytes'])}",
    ]


def render_memory(status: dict[str, Any]) -> str:
    """:func:`memory_status` as text lines for the terminal."""
    t = status["thresholds"]
    lines = [
        f"rss:       {format_bytes(status['rss_bytes'])} (this process and its children)",
        f"available: {format_bytes(status['available_bytes'])} (system)",
        f"limit:     {format_bytes(status['limit_bytes'])} from {status['limit_source']}"
        + (f" ({status['limit_reason']})" if status.get("limit_reason") else ""),
        f"pressure:  {status['pressure']} ({status['utilization']:.1%} of the limit; warning at {t['warning']:.0%}, "
        f"critical at {t['critical']:.0%}, emergency at {t['emergency']:.0%})",
        *(_cgroup_lines(status) if "accounting" in status else []),
    ]
    if status.get("gc"):
        lines += ["", *_gc_lines(status["gc"])]
    if status.get("heap"):
        lines += ["", *_heap_lines(status["heap"])]
    return "\n".join(lines) + "\n"


def _gc_lines(g: dict[str, Any]) -> list[str]:
    generations = zip(g["count"], g["threshold"], strict=False)
    lines = [
        f"gc:        {'enabled' if g['enabled'] else 'DISABLED'}; {g['tracked_objects']:,} tracked objects",
        "  count / threshold per generation: " + ", ".join(f"gen{i} {c}/{th}" for i, (c, th) in enumerate(generations)),
    ]
    for i, st in enumerate(g["stats"]):
        lines.append(
            f"  gen{i}: {st.get('collections', 0):,} collections, {st.get('collected', 0):,} collected, "
            f"{st.get('uncollectable', 0):,} uncollectable"
        )
    return lines


def _heap_lines(h: dict[str, Any]) -> list[str]:
    if h.get("tracemalloc_tracing"):
        now, peak = format_bytes(h["tracemalloc_current_bytes"]), format_bytes(h["tracemalloc_peak_bytes"])
        tracing = f"tracing, {now} now, {peak} peak"
    else:
        tracing = "not tracing (set PYTHONTRACEMALLOC=1 to trace allocations)"
    lines = ["heap:", f"  tracemalloc: {tracing}"]
    for key, value in h.items():
        if key.endswith("_bytes") and not key.startswith("tracemalloc"):
            lines.append(f"  {key[:-6]}: {format_bytes(value)}")
        elif key == "memory_full_info":
            lines.append(f"  memory_full_info: {value}")
    return lines
