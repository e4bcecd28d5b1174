"""Items that differ in size: weighted batches against the best fixed batch size, under a memory limit.

    python benchmarks/bench_weighted.py                  # both workloads, serial and n_jobs=2, 5 repeats
    python benchmarks/bench_weighted.py --repeats 1 --workloads shift --jobs 1

Workloads (a batched numpy function holding each item's transient memory until the batch returns):
  shift      2,000 items of 0.05 MiB, then 2,000 of 5 MiB (the size learned on light items meets heavy ones)
  lognormal  4,000 sizes drawn log-normally (median 0.3 MiB, mean 1.1 MiB, at most 20 MiB) and shuffled
Each run is its own subprocess; the peak RSS of its process tree is watched from this process every 5 ms.
memory_limit = the child's RSS after imports + 800 MiB. batchmem runs with weight = the item's MiB (a
callable); the fixed runs (auto_optimize=False, weight=None) sweep batch sizes upward until one crosses the
limit, to find the fastest size that stays under it. Every run's output is checked: item i's line is i,
once, in order. Time is the child's process() call (imports excluded), CPU the child's and its workers'
user + system seconds (imports included); the table shows the best of the repeats (runs interleaved, so
load drift hits every mode alike; on a shared machine the minimum is the least disturbed figure: the
log-normal runs take ~0.5 s, and one fixed size took 0.53-0.89 s over six best-of-3 runs, hence 5) and the
highest peak of any repeat. Below the table: how far one weighted batch's seconds per MiB (its overhead of
3 ms included) stray from their median, the noise the throughput hill-climb's probe_margin must clear.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MiB = 1 << 20
N = 4000
FIXED_SIZES = (8, 16, 32, 64, 128, 256, 512)

CHILD = r"""
import json, random, statistics, sys, time
import numpy as np
from batchmem import BatchProcessor
from batchmem.heap import current_rss_bytes

def work(batch):
    held = [np.ones(int(mb * (1 << 20)) // 8) for _, mb in batch]
    return [i + int(h[0]) - 1 for (i, _), h in zip(batch, held)]

workload, mode, n_jobs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sizes = [0.05] * 2000 + [5.0] * 2000
if workload == "lognormal":
    rng = random.Random(1)
    sizes = [min(20.0, rng.lognormvariate(-1.2, 1.6)) for _ in range(4000)]
items = list(enumerate(sizes))
limit = current_rss_bytes() + (800 << 20)
print(limit, flush=True)
if mode == "weighted":
    kw = dict(weight=lambda item: item[1])
else:
    kw = dict(batch_size=int(mode), auto_optimize=False, weight=None)
proc = BatchProcessor(batched=True, memory_limit=limit, n_jobs=n_jobs, backend="loky" if n_jobs > 1 else None,
                      progress=False, use_history=False, **kw)
t0 = time.perf_counter()
s = proc.process(items, work, out, overwrite=True).stats
took = time.perf_counter() - t0
spread = None
if mode == "weighted":  # seconds per MiB of each batch after the first 8, the one overhead included
    recs = [json.loads(line) for line in open(out + ".batches.jsonl")]
    costs = [(r["duration_s"] + 0.003) / r["weight"] for r in recs[8:] if r["weight"]]
    if len(costs) >= 10:
        q = statistics.quantiles(costs, n=10)
        spread = [q[0] / statistics.median(costs), q[-1] / statistics.median(costs)]
print(json.dumps({"time": took, "status": s.status, "batches": s.batches,
                  "median_batch": statistics.median(s.batch_sizes), "bytes_per_weight": s.bytes_per_weight,
                  "spread": spread}),
      flush=True)
"""


def run(tmp: Path, workload: str, mode: str, n_jobs: int) -> dict:
    out = tmp / f"{workload}-{mode}-{n_jobs}.jsonl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    rest, err = child.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and its reaped workers
    info = json.loads(rest.strip().splitlines()[-1]) if child.returncode == 0 and rest.strip() else {}
    once = out.exists() and [int(line) for line in out.open()] == list(range(N))
    if not info:
        print(f"  {workload} {mode} n_jobs={n_jobs}: exit {child.returncode}: {err.strip()[-300:]}", file=sys.stderr)
    return {
        "time": info.get("time", float("nan")),
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "sys": after.ru_stime - before.ru_stime,
        "peak": peak,
        "limit": limit,
        "once": bool(once and info.get("status") == "completed"),
        "batches": info.get("batches", 0),
        "median_batch": info.get("median_batch", 0),
        "spread": info.get("spread"),
    }


def safe(r: dict) -> bool:
    return r["once"] and r["peak"] <= r["limit"]


def one_repeat(tmp: Path, workload: str, n_jobs: int) -> dict[str, dict]:
    """The weighted run, then fixed sizes upward until one crosses the limit (larger ones would too)."""
    runs = {"weighted": run(tmp, workload, "weighted", n_jobs)}
    for size in FIXED_SIZES:
        r = runs[f"fixed {size}"] = run(tmp, workload, str(size), n_jobs)
        if not safe(r):
            break
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workloads", nargs="+", default=["shift", "lognormal"])
    ap.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="batchmem-weighted-"))
    cells = [(w, j) for w in args.workloads for j in args.jobs]
    seen: dict[tuple[str, int], dict[str, list[dict]]] = {c: {} for c in cells}
    for rep in range(args.repeats):
        for cell in cells:
            for mode, r in one_repeat(tmp, *cell).items():
                seen[cell].setdefault(mode, []).append(r)
            print(f"repeat {rep + 1}/{args.repeats}: {cell[0]} n_jobs={cell[1]} done", file=sys.stderr, flush=True)
    print(
        f"\n{N:,} items, memory_limit = start + 800 MiB, best of {args.repeats} (time, CPU), highest peak; "
        f"{psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| workload | n_jobs | run | time s | CPU s (sys) | peak / limit | batches | median batch | every item once |"
        " throughput vs best safe fixed |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for (workload, n_jobs), modes in seen.items():
        summary = {
            mode: {
                "time": min(r["time"] for r in rs),
                "cpu": min(r["cpu"] for r in rs),
                "sys": min(r["sys"] for r in rs),
                "peak": max(r["peak"] / r["limit"] for r in rs),
                "once": all(r["once"] for r in rs),
                "safe": all(safe(r) for r in rs),
                "batches": statistics.median(r["batches"] for r in rs),
                "median_batch": statistics.median(r["median_batch"] for r in rs),
            }
            for mode, rs in modes.items()
        }
        fixed_safe = [m for m in summary if m.startswith("fixed") and summary[m]["safe"]]
        best = min(fixed_safe, key=lambda m: summary[m]["time"]) if fixed_safe else None
        order = sorted((m for m in summary if m != "weighted"), key=lambda m: int(m.split()[1])) + ["weighted"]
        for mode in order:
            s = summary[mode]
            ratio = summary[best]["time"] / s["time"] if best else float("nan")
            label = "batchmem weighted" if mode == "weighted" else mode + (" (best safe)" if mode == best else "")
            print(
                f"| {workload} | {n_jobs} | {label} | {s['time']:.2f} | {s['cpu']:.1f} ({s['sys']:.1f}) "
                f"| {s['peak']:.2f}{'' if s['safe'] else ' ✘'} | {s['batches']:.0f} | {s['median_batch']:.0f} "
                f"| {'yes' if s['once'] else 'no'} | {ratio:.2f} |"
            )
    for (workload, n_jobs), modes in seen.items():  # the noise the hill-climb's probe_margin must clear
        spreads = [r["spread"] for r in modes.get("weighted", []) if r["spread"]]
        if spreads:
            lo, hi = min(s[0] for s in spreads), max(s[1] for s in spreads)
            print(
                f"\n{workload}, n_jobs={n_jobs}, batchmem weighted: seconds per MiB of one batch (+3 ms), "
                f"10th / 90th percentile over the median: {lo:.2f} / {hi:.2f}"
            )


if __name__ == "__main__":
    main()
