"""Leak detection: false-positive rate, detection delay, tracemalloc overhead.

Run:  /work/venv/bin/python benchmarks/bench_leaks.py [--runs 20]

* False positives: ``--runs`` clean runs of 60 batches each of a function that
  allocates and frees blocks of random sizes (1 B .. 400 KB, 1..20 per batch,
  plus lists of up to 20k ints), judged by the HeapAnalyzer on malloc in-use
  bytes (what BatchProcessor uses in-process) and, for comparison, on RSS.
* Detection delay: batches until a planted leak keeping 100 KB per batch is
  flagged, through BatchProcessor (serial), untraced and traced.
* Tracing overhead: wall time of the same runs with ``trace_allocations=True``
  over without (best of 3), for an allocation-heavy and a light function.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time

from batchmem import BatchProcessor, HeapAnalyzer
from batchmem.heap.monitor import current_rss_bytes

_KEPT: list[bytes] = []


def noisy(batch: list[int]) -> list[int]:
    rng = random.Random(batch[0] * 7919 + len(batch))
    junk = [bytes(rng.randint(1, 400_000)) for _ in range(rng.randint(1, 20))]
    lists = [list(range(rng.randint(10, 20_000))) for _ in range(3)]
    del junk, lists
    return [x + 1 for x in batch]


def leak(batch: list[int]) -> list[int]:
    _KEPT.append(b"x" * 100_000)
    return [x + 1 for x in batch]


def dicts(batch: list[int]) -> list[dict]:
    return [{"i": x, "s": str(x), "l": [x] * 8} for x in batch]


def light(batch: list[int]) -> list[int]:
    return [x * x for x in batch]


def false_positives(runs: int, batches: int = 60) -> tuple[int, int]:
    """(flagged runs on malloc in-use bytes, flagged runs on RSS) out of ``runs``."""
    heap_fp = rss_fp = 0
    for r in range(runs):
        on_heap = HeapAnalyzer(memory_limit="64GB")
        on_rss = HeapAnalyzer(memory_limit="64GB")
        for b in range(batches):
            noisy(list(range(r * 10_000 + b * 10, r * 10_000 + b * 10 + 10)))
            on_heap.observe_batch(pid=None, items=10)
            on_rss.observe_batch(pid=-1, items=10, baseline_bytes=current_rss_bytes(), tree_rss_bytes=0)
        heap_fp += bool(on_heap.issues)
        rss_fp += bool(on_rss.issues)
    return heap_fp, rss_fp


def run(fn, n: int, size: int, trace: bool):
    proc = BatchProcessor(
        batch_size=size, auto_optimize=False, batched=True, progress=False, use_history=False, trace_allocations=trace
    )
    t0 = time.perf_counter()
    result = proc.process(range(n), fn)
    return time.perf_counter() - t0, result.stats


def detection_delay(trace: bool, repeats: int = 5) -> list[int]:
    delays = []
    for _ in range(repeats):
        _KEPT.clear()
        _, st = run(leak, 600, 10, trace)
        leaks = [i for i in st.issues if i["kind"] == "leak"]
        delays.append(leaks[0]["evidence"]["detected_after_batches"] if leaks else -1)
    _KEPT.clear()
    return delays


def overhead(fn, n: int, size: int) -> tuple[float, float]:
    plain = min(run(fn, n, size, False)[0] for _ in range(3))
    traced = min(run(fn, n, size, True)[0] for _ in range(3))
    return plain, traced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="clean runs for the false-positive rate (>= 20)")
    args = ap.parse_args()
    logging.getLogger("batchmem").setLevel(logging.ERROR)

    heap_fp, rss_fp = false_positives(args.runs)
    plain_delay = detection_delay(False)
    traced_delay = detection_delay(True)
    rows = [
        (
            "false positives, clean noisy runs (malloc in-use bytes)",
            f"{heap_fp}/{args.runs} = {heap_fp / args.runs:.0%}",
        ),
        ("false positives, same runs judged on RSS", f"{rss_fp}/{args.runs} = {rss_fp / args.runs:.0%}"),
        (
            "detection delay, 100 KB/batch leak (batches)",
            f"median {statistics.median(plain_delay)}, max {max(plain_delay)}  {plain_delay}",
        ),
        (
            "detection delay, traced (batches)",
            f"median {statistics.median(traced_delay)}, max {max(traced_delay)}  {traced_delay}",
        ),
    ]
    for name, fn, n, size in (
        ("allocation-heavy (3 objects/item)", dicts, 200_000, 1000),
        ("noisy blocks", noisy, 600, 10),
        ("light (int arithmetic)", light, 1_000_000, 10_000),
    ):
        plain, traced = overhead(fn, n, size)
        rows.append((f"tracemalloc overhead, {name}", f"{traced / plain:.2f}x  ({plain:.2f} s -> {traced:.2f} s)"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    print("-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
