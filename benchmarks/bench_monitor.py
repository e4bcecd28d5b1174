"""Cost of batchmem's memory readings, in microseconds per call.

Run: ``python benchmarks/bench_monitor.py [--repeat 7]``

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
import platform
import statistics
import time
from collections.abc import Callable

import psutil

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds per row (default 7)")
    args = ap.parse_args()

    tree = MemoryMonitor(include_children=True)
    rows: list[tuple[str, Callable[[], object], int]] = [
        ("current_rss_bytes()", current_rss_bytes, 20000),
        ("detect_memory_limit()", detect_memory_limit, 500),
        ("MemoryMonitor.rss_bytes(), 0 children", tree.rss_bytes, 2000),
    ]
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
