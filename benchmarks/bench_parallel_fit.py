"""Parallel runs under a memory limit: does ``n_jobs=2`` fit, and is it at least as fast as one process?

A CSV of 2,000,000 sales rows (generated once into a temporary folder, ~80 MB) is cleaned and
enriched by a pandas transform, chunk by chunk, into JSONL by ``batchmem run`` under
``memory_limit: 1GiB``, with ``execution.n_jobs`` 1, 2, 4 and ``"auto"``. Each run is a fresh
subprocess with a fresh ``BATCHMEM_HOME`` (a first run, as a user's first run is); repeats are
interleaved. Wall time is from spawn to exit; the peak is the highest sum of resident bytes over the
process and its children, polled with psutil every 10 ms from this process (from outside, so
batchmem's own readings are not what is checked).

    python benchmarks/bench_parallel_fit.py [--repeats 3] [--rows 2000000] [--limit 1GiB]

Prints a Markdown table: median wall time, its ratio to ``n_jobs=1``, the workers the run used and
what it said about them, the highest outside peak against the limit, and the batches of one row.
The target: ``n_jobs=2`` takes <= 1.0x the wall time of ``n_jobs=1`` or runs 1 worker and says so;
no peak passes the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from batchmem.heap.limits import parse_size

POLL_S = 0.010

TRANSFORM = textwrap.dedent('''
    import pandas as pd

    def transform(chunk: pd.DataFrame) -> pd.DataFrame:
        """Revenue, a discount band and the weekday of each sale; rows with no quantity dropped to 0."""
        out = chunk.copy()
        out["qty"] = out["qty"].fillna(0).astype("int64")
        out["revenue"] = (out["qty"] * out["price"]).round(2)
        out["band"] = pd.cut(out["price"], [0, 5, 20, 100, 1e9], labels=["low", "mid", "high", "luxury"]).astype(str)
        out["weekday"] = pd.to_datetime(out["date"]).dt.day_name()
        return out
''')

JOB = textwrap.dedent("""
    name: sales_etl
    source: {{path: {csv}, type: csv}}
    function: sales:transform
    batched: true
    batching: {{memory_limit: {limit}, batch_size: 5000, max_batch_size: 200000}}
    execution: {{n_jobs: {n_jobs}, backend: loky}}
    output: {{path: {out}, overwrite: true}}
    progress: false
""")


def make_csv(folder: Path, rows: int) -> Path:
    """``rows`` sales rows: date, store, product, qty (some missing), price; fixed seed."""
    path = folder / "sales.csv"
    rng = np.random.default_rng(7)
    dates = pd.date_range("2024-01-01", periods=730).strftime("%Y-%m-%d").to_numpy()
    frame = pd.DataFrame(
        {
            "date": dates[rng.integers(0, len(dates), rows)],
            "store": rng.integers(1, 500, rows),
            "product": rng.integers(1, 20_000, rows),
            "qty": np.where(rng.random(rows) < 0.02, np.nan, rng.integers(1, 12, rows)),
            "price": np.round(rng.lognormal(2.5, 1.0, rows), 2),
        }
    )
    frame.to_csv(path, index=False)
    return path


def run_once(folder: Path, csv: Path, n_jobs: str, limit: str, tag: str) -> dict:
    """One ``batchmem run`` in a fresh subprocess: wall s, outside peak bytes, exit code, stats."""
    out = folder / f"out-{tag}.jsonl"
    job = folder / f"job-{tag}.yaml"
    job.write_text(JOB.format(csv=csv, limit=limit, n_jobs=n_jobs, out=out))
    home = tempfile.mkdtemp(prefix="home-", dir=folder)
    env = {**os.environ, "BATCHMEM_HOME": home, "TMPDIR": str(folder), "PYTHONPATH": str(folder)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", str(job), "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stats_path = Path(str(out) + ".stats.json")
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return {"wall": wall, "peak": peak, "rc": proc.returncode, "stats": stats, "said": (stdout + stderr).strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--limit", default="1GiB")
    args = ap.parse_args()
    limit_bytes = parse_size(args.limit)
    with tempfile.TemporaryDirectory(prefix="bench-parallel-fit-") as tmp:
        folder = Path(tmp)
        (folder / "sales.py").write_text(TRANSFORM)
        csv = make_csv(folder, args.rows)
        runs: dict[str, list[dict]] = {"1": [], "2": [], "4": [], "auto": []}
        for r in range(args.repeats):
            for n_jobs in runs:
                res = run_once(folder, csv, n_jobs, args.limit, f"{n_jobs}-{r}")
                runs[n_jobs].append(res)
                print(f"# n_jobs={n_jobs} repeat {r}: {res['wall']:.1f} s, exit {res['rc']}", file=sys.stderr)
        base = statistics.median(x["wall"] for x in runs["1"])
        print(f"{args.rows:,} rows, memory_limit {args.limit}, {args.repeats} interleaved repeats, medians\n")
        print(
            "| n_jobs | wall s | / n_jobs=1 | workers used | outside peak MiB | peak / limit | 1-row batches | exit |"
        )
        print("|---|---:|---:|---|---:|---:|---:|---|")
        for n_jobs, rs in runs.items():
            wall = statistics.median(x["wall"] for x in rs)
            peak = max(x["peak"] for x in rs)
            st = rs[-1]["stats"]
            ones = sum(1 for s in st.get("batch_sizes", []) if s == 1)
            used = st.get("n_jobs", "?")
            print(
                f"| {n_jobs} | {wall:.1f} | {wall / base:.2f} | {used} | {peak / 2**20:,.0f} | "
                f"{peak / limit_bytes:.2f} | {ones} of {st.get('batches', '?')} | {sorted({x['rc'] for x in rs})} |"
            )
        said = {x["said"] for x in runs["2"] if x["said"]}
        if said:
            print("\nn_jobs=2 said:", *sorted(said), sep="\n  ")


if __name__ == "__main__":
    main()
