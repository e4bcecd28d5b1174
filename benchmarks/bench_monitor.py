"""Cost of batchmem's memory readings, in microseconds per call.

Run: ``python benchmarks/bench_monitor.py [--repeat 7]``

The memory cgroup's working set (:meth:`batchmem.heap.cgroup.MemoryCgroup.working_set_bytes`, what
the OOM watchdog reads every 20 ms inside a limited cgroup) is timed beside one ``/proc/PID/statm``
reading (:class:`batchmem.backends.watchdog.StatmReader`), both on files kept open. ``--watchdog 60``
instead runs the OOM watchdog over two idle workers for 60 s and prints the CPU time of its thread
as a share of one core (``/proc/self/task/TID/stat``, utime + stime).

Prints one row per reading: the best and the median of ``--repeat`` rounds,
each round timing ``n`` calls with ``time.perf_counter`` (seconds) and
reporting microseconds per call. The numbers quoted in the docstrings of
``batchmem/heap/monitor.py`` come from this script.

``MemoryMonitor.rss_bytes`` with children scans every process on the machine
(psutil ``children(recursive=True)``), so the row depends on the process
count, which is printed too.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable

import psutil

from batchmem.backends.watchdog import OomWatchdog, StatmReader, cgroup_charge
from batchmem.heap.cgroup import find_memory_cgroup
from batchmem.heap.monitor import (
    MemoryMonitor,
    PeakMemoryTracker,
    current_rss_bytes,
    detect_memory_limit,
)


def _idle_child(stop) -> None:
    stop.wait(600)


def _time_us(fn: Callable[[], object], n: int, repeat: int) -> tuple[float, float]:
    """(best, median) microseconds per call of ``fn`` over ``repeat`` rounds of ``n`` calls."""
    fn()  # warm up
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return min(rounds), statistics.median(rounds)


def _tracker(force_sampling: bool) -> Callable[[], None]:
    t = PeakMemoryTracker(force_sampling=force_sampling)

    def enter_exit() -> None:
        with t:
            pass
        _ = t.peak_delta_bytes

    return enter_exit


def _thread_cpu_s(tid: int) -> float:
    """utime + stime of one thread of this process, seconds (proc(5), fields 14 and 15)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watchdog_share(seconds: float, level: int) -> None:
    """Run the OOM watchdog over two idle workers for ``seconds`` and print its thread's CPU share;
    the cgroup's ``memory.stat`` is read once its usage reaches ``level`` bytes (0: at every reading)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stop = ctx.Event()
    children = [ctx.Process(target=_idle_child, args=(stop,), daemon=True) for _ in range(2)]
    for c in children:
        c.start()
    cgroup = find_memory_cgroup()
    # the working set is read as inside a limited cgroup, also where the cgroup sets no limit
    charge = cgroup_charge(cgroup, level) if cgroup is not None else None
    dog = OomWatchdog(lambda: [c.pid for c in children], 2**62, charge=charge).start()
    try:
        time.sleep(0.5)
        tid = dog._thread.native_id
        cpu0, t0 = _thread_cpu_s(tid), time.perf_counter()
        time.sleep(seconds)
        cpu, wall = _thread_cpu_s(tid) - cpu0, time.perf_counter() - t0
    finally:
        dog.stop()
        stop.set()
        for c in children:
            c.join(10)
    reads = "tree only (no memory cgroup)"
    if charge is not None:
        reads = "tree + cgroup usage" + (" + memory.stat" if level == 0 else "")
    print(
        f"OOM watchdog ({reads}, every {dog.poll_s * 1000:.0f} ms, 2 workers): {cpu:.3f} s CPU in {wall:.1f} s "
        f"= {100 * cpu / wall:.2f}% of one core"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds per row (default 7)")
    ap.add_argument("--watchdog", type=float, metavar="SECONDS", help="measure the watchdog's CPU share instead")
    ap.add_argument(
        "--near-limit",
        action="store_true",
        help="with --watchdog: read memory.stat at every reading, as near the limit (else only the usage)",
    )
    args = ap.parse_args()
    if args.watchdog:
        _watchdog_share(args.watchdog, 0 if args.near_limit else 2**62)
        return

    tree = MemoryMonitor(include_children=True)
    statm = StatmReader()
    rows: list[tuple[str, Callable[[], object], int]] = [
        ("current_rss_bytes()", current_rss_bytes, 20000),
        ("/proc/PID/statm, kept open (StatmReader)", lambda: statm(os.getpid()), 20000),
        ("detect_memory_limit()", detect_memory_limit, 500),
        ("MemoryMonitor.rss_bytes(), 0 children", tree.rss_bytes, 2000),
    ]
    cgroup = find_memory_cgroup()
    if cgroup is not None:
        rows.append((f"cgroup v{cgroup.version} working set, kept open", cgroup.working_set_bytes, 20000))
        rows.append(("cgroup pressure stall (some avg10)", cgroup.pressure_some_avg10, 20000))
    results = []
    for name, fn, n in rows:
        results.append((name, *_time_us(fn, n, args.repeat)))

    # fork (where available) starts no resource-tracker process, so the tree is exactly parent + 2
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stop = ctx.Event()
    children = [ctx.Process(target=_idle_child, args=(stop,), daemon=True) for _ in range(2)]
    for c in children:
        c.start()
    try:
        time.sleep(1.0)  # let the interpreters start
        n_children = len(psutil.Process().children(recursive=True))
        label = f"MemoryMonitor.rss_bytes(), {n_children} children"
        results.append((label, *_time_us(tree.rss_bytes, 2000, args.repeat)))
        results.append((f"MemoryMonitor.sample(), {n_children} children", *_time_us(tree.sample, 2000, args.repeat)))
    finally:
        stop.set()
        for c in children:
            c.join(10)
    time.sleep(0.2)

    results.append(("MemoryMonitor.sample(), 0 children", *_time_us(tree.sample, 2000, args.repeat)))
    vmhwm = _tracker(False)
    with PeakMemoryTracker() as probe:
        pass
    results.append((f"PeakMemoryTracker enter+exit ({probe.method})", *_time_us(vmhwm, 5000, args.repeat)))
    results.append(("PeakMemoryTracker enter+exit (sampling)", *_time_us(_tracker(True), 1000, args.repeat)))

    print(
        f"# {platform.system()} {platform.release()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {psutil.cpu_count()} CPUs, {len(psutil.pids())} processes"
    )
    width = max(len(r[0]) for r in results)
    print(f"{'reading':<{width}}  {'best us':>9}  {'median us':>9}")
    for name, best, med in results:
        print(f"{name:<{width}}  {best:9.1f}  {med:9.1f}")


if __name__ == "__main__":
    main()
