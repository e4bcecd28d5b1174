"""Items that differ in size: weighted batches against the best fixed batch size, under a memory limit.

    python benchmarks/bench_weighted.py            # both workloads, serial and n_jobs=2, plus the fixed sweep

Workloads (a batched numpy function holding each item's transient memory for the batch):
  shift      2,000 items of 0.05 MiB, then 2,000 of 5 MiB (the size learned on light items meets heavy ones)
  lognormal  the same sizes drawn log-normally and shuffled
Each run is its own subprocess; its peak RSS (process tree) is watched from this process every 5 ms.
memory_limit = the child's starting RSS + 800 MiB. batchmem runs with weight = the item's MiB; the
fixed runs (auto_optimize=False, weight=None) sweep batch sizes to find the fastest that stays under
the limit. Every run's output is checked: one line per item, in order.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MiB = 1 << 20
TMP = Path(tempfile.mkdtemp(prefix="batchmem-weighted-"))

CHILD = r"""
import random, sys
import numpy as np
from batchmem import BatchProcessor
from batchmem.heap import current_rss_bytes

def work(batch):
    held = [np.ones(int(mb * (1 << 20)) // 8) for mb in batch]
    return [float(h[0]) for h in held]

workload, mode, n_jobs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
items = [0.05] * 2000 + [5.0] * 2000
if workload == "lognormal":
    rng = random.Random(1)
    items = [min(20.0, rng.lognormvariate(-1.2, 1.6)) for _ in range(4000)]
limit = current_rss_bytes() + (800 << 20)
print(limit, flush=True)
if mode == "weighted":
    kw = dict(weight=lambda mb: mb)
else:
    kw = dict(batch_size=int(mode), auto_optimize=False, weight=None)
proc = BatchProcessor(batched=True, memory_limit=limit, n_jobs=n_jobs, backend="loky" if n_jobs > 1 else None,
                      progress=False, use_history=False, **kw)
result = proc.process(items, work, out, overwrite=True)
print(result.stats.items, result.stats.status, flush=True)
"""


def run(workload: str, mode: str, n_jobs: int) -> dict:
    out = TMP / f"{workload}-{mode}-{n_jobs}.jsonl"
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, workload, mode, str(n_jobs), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    limit = int(child.stdout.readline() or 0)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    rest, _ = child.communicate()
    lines = sum(1 for _ in open(out)) if out.exists() else 0
    return {"wall": wall, "peak": peak, "limit": limit, "ok": child.returncode == 0 and lines == 4000}


def main() -> None:
    rows = []
    for workload in ("shift", "lognormal"):
        for n_jobs in (1, 2):
            fixed = {size: run(workload, str(size), n_jobs) for size in (8, 32, 128, 512)}
            safe = {s: r for s, r in fixed.items() if r["ok"] and r["peak"] <= r["limit"]}
            best_size = min(safe, key=lambda s: safe[s]["wall"]) if safe else None
            weighted = run(workload, "weighted", n_jobs)
            for label, r in [(f"fixed {s}", fixed[s]) for s in fixed] + [("batchmem weighted", weighted)]:
                ratio = safe[best_size]["wall"] / r["wall"] if best_size else float("nan")
                mark = "" if r["peak"] <= r["limit"] and r["ok"] else " ✘"
                rows.append(
                    [
                        workload,
                        n_jobs,
                        label,
                        f"{r['wall']:.2f}",
                        f"{r['peak'] / r['limit']:.2f}{mark}",
                        "yes" if r["ok"] else "no",
                        f"{ratio:.2f}",
                        f"best safe: fixed {best_size}" if label == "batchmem weighted" else "",
                    ]
                )
    print("\n| workload | n_jobs | run | wall s | peak / limit | every item once | throughput vs best safe fixed | |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
