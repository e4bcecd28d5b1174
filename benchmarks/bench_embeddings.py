"""Embeddings of texts whose lengths differ 1000x: the example job (batchmem, batches weighed by model cost)
against sentence-transformers' own ``model.encode(texts, batch_size=B)`` for B in 8, 32, 128.

    pip install torch==2.13.0 && pip install -e ".[embeddings]"
    python benchmarks/bench_embeddings.py [--texts 200] [--memory-limit 2GiB] [--repeat 1] [--runs FILE]

The texts are the first N standard-library ``.py`` files in path order (examples/embeddings/embed.py).
batchmem runs the shipped job file, ``examples/embeddings/embeddings_job.yaml``, through ``batchmem run``
with ``--set`` for the slice, the limit and the output (history off, so every run starts cold). Two more
batchmem rows change one thing each: the texts sorted by length (``model.encode`` sorts its input by length
by itself before cutting batches), and the naive weight, characters, instead of ``embed:model_cost``.
Each run is a subprocess of its own; this process samples the RSS of its whole process tree (loky worker
included) every 10 ms. "wall s" runs from start to exit, importing sentence-transformers (about 10 s here)
and loading the model included; "after model load s" leaves those out: ``model.encode`` alone, and batchmem
from the start of its first batch (setup done in the worker) to the end of the run. batchmem plans against
the limit; the others are only measured against it. A row whose peak passes the limit, or whose vectors
differ from ``model.encode(batch_size=32)`` (cosine < 0.999), is marked ✘. The ratio columns divide by the
fastest ``model.encode`` row under the limit (target for batchmem: <= 1.00). With ``--repeat`` the rows are
interleaved and each keeps its fastest wall time. ``--runs FILE`` adds this invocation's runs to those kept in
FILE (JSON) and prints the fastest of all of them: repeats split over several commands.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import psutil

from batchmem.heap.monitor import parse_size

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embeddings"
JOB = EXAMPLE / "embeddings_job.yaml"
SIZES = (8, 32, 128)
BATCHMEM_ROWS = (  # row name, source order, batching.weight
    ("batchmem job (shipped: weight = model cost, texts by length)", "length", "embed:model_cost"),
    ("batchmem job, texts in path order", "path", "embed:model_cost"),
    ("batchmem job, weight = characters", "path", "embed:text_length"),
)

ENCODE = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import embed
n, batch_size, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
texts = [item["text"] for item in embed.stdlib_texts(n)]
model = embed.load_model()
t0 = time.time()
np.save(out, model.encode(texts, batch_size=batch_size, convert_to_numpy=True))
print(time.time() - t0)
"""


def watch(cmd: list[str]) -> tuple[float, int, int, str]:
    """Run ``cmd``; wall seconds, peak RSS bytes of its process tree (sampled every 10 ms), exit code, stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root, tree, listed, peak = psutil.Process(child.pid), [], 0.0, 0
    while child.poll() is None:
        now = time.perf_counter()
        if now - listed > 0.2:  # listing the tree scans /proc (ms); reading known pids' RSS costs us
            try:
                tree, listed = [root, *root.children(recursive=True)], now
            except psutil.NoSuchProcess:
                pass
        total = 0
        for process in tree:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    if child.returncode:
        print(f"{' '.join(cmd[:4])} ... exited {child.returncode}:\n{child.stderr.read()[-2000:]}", file=sys.stderr)
    return wall, peak, child.returncode, child.stdout.read()


# wall s, s after the model loaded, peak RSS bytes, vectors in path order, batches
Run = tuple[float, float, int, "np.ndarray | None", str]


def run_encode(n: int, batch_size: int, work: Path) -> Run:
    out = work / f"encode{batch_size}.npy"
    wall, peak, code, stdout = watch([sys.executable, "-c", ENCODE, str(EXAMPLE), str(n), str(batch_size), str(out)])
    if code != 0:
        return wall, wall, peak, None, "-"
    return wall, float(stdout.split()[-1]), peak, np.load(out), f"{-(-n // batch_size)} of {min(n, batch_size)}"


def run_batchmem(n: int, limit: str, order: str, weight: str, paths: list[str], work: Path) -> Run:
    import pyarrow.parquet as pq

    out = work / f"batchmem_{order}_{weight.replace(':', '_')}.parquet"
    sets = {
        "source.options.limit": n,
        "source.options.order": order,
        "batching.weight": weight,
        "batching.memory_limit": limit,
        "batching.use_history": "false",
        "output.path": str(out),
        "output.overwrite": "true",
    }
    cmd = [sys.executable, "-m", "batchmem.cli", "run", str(JOB), "--no-progress", "-q"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    wall, peak, code, _ = watch(cmd)
    if code != 0:
        return wall, wall, peak, None, "-"
    stats = json.loads(Path(f"{out}.stats.json").read_text())
    first = json.loads(Path(f"{out}.batches.jsonl").read_text().splitlines()[0])
    loaded = stats["finished_at"] - first["start_time"]  # from the first batch (setup done) to the end
    sizes = stats["batch_sizes"]
    table = pq.read_table(out, columns=["path", "vector"]).to_pydict()
    where = {path: i for i, path in enumerate(table["path"])}  # back to path order, to compare with encode
    vectors = np.array(table["vector"], dtype=np.float32)[[where[p] for p in paths]] if len(where) == n else None
    return (
        wall,
        loaded,
        peak,
        vectors,
        f"{len(sizes)} of {min(sizes)}-{max(sizes)}, median {statistics.median(sizes):g}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200, help="first N standard-library files (default 200)")
    parser.add_argument("--memory-limit", default="2GiB", help="memory_limit (default 2GiB, the job file's)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is kept (default 1)")
    parser.add_argument("--runs", type=Path, help="JSON file of earlier runs (same --texts) to add these to")
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import embed

    texts = list(embed.stdlib_texts(args.texts))
    paths = [text["path"] for text in texts]
    lengths = [len(t["text"]) for t in texts]
    limit = parse_size(args.memory_limit)

    jobs: dict[str, Callable[[Path], Run]] = {
        f"model.encode(batch_size={b})": partial(run_encode, args.texts, b) for b in SIZES
    }
    for name, order, weight in BATCHMEM_ROWS:
        jobs[name] = partial(run_batchmem, args.texts, args.memory_limit, order, weight, paths)
    names = list(jobs)
    rows: dict[str, Run] = {}
    done = json.loads(args.runs.read_text())["repeats"] if args.runs is not None and args.runs.exists() else 0
    with tempfile.TemporaryDirectory(prefix="bench_embeddings_") as tmp:
        for repeat in range(done, done + args.repeat):  # interleaved, each repeat starting one row later:
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # the machine's speed drifts
                run = jobs[name](Path(tmp))
                if name not in rows or run[0] < rows[name][0]:
                    rows[name] = run
    rows = {name: rows[name] for name in names}

    reference = rows["model.encode(batch_size=32)"][3]

    def same(vectors: np.ndarray | None) -> bool:
        if vectors is None or reference is None or vectors.shape != reference.shape:
            return False
        cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        return bool(cos.min() >= 0.999)

    ok = {name: same(v) and peak <= limit for name, (_, _, peak, v, _) in rows.items()}
    repeats = args.repeat
    if args.runs is not None:  # earlier commands' runs: each row keeps its fastest wall time over all of them
        kept = json.loads(args.runs.read_text()) if args.runs.exists() else {"texts": args.texts, "repeats": 0}
        if kept["texts"] != args.texts:
            raise SystemExit(f"{args.runs} holds runs of {kept['texts']} texts, not {args.texts}")
        for name, (wall, loaded, peak, _, batches) in rows.items():
            old = kept.get(name)
            if old is None or wall < old["wall"]:
                kept[name] = {"wall": wall, "loaded": loaded, "peak": peak, "batches": batches, "ok": ok[name]}
        kept["repeats"] += args.repeat
        args.runs.write_text(json.dumps(kept, indent=1))
        repeats = kept["repeats"]
        rows = {n: (kept[n]["wall"], kept[n]["loaded"], kept[n]["peak"], None, kept[n]["batches"]) for n in names}
        ok = {name: kept[name]["ok"] for name in names}
    safe = [name for name in rows if name.startswith("model.encode") and ok[name]]
    best = min(safe, key=lambda name: rows[name][0]) if safe else None
    best_loaded = min(safe, key=lambda name: rows[name][1]) if safe else None
    print(
        f"\n{args.texts} standard-library texts, {min(lengths):,} to {max(lengths):,} characters "
        f"({sum(lengths):,} in all); memory_limit {limit / 2**30:.2f} GiB; {os.cpu_count()} cores; "
        f"fastest of {repeats} run(s)\n"
    )
    print(
        "| run | batches (texts) | wall s | after model load s | peak RSS MiB | peak / limit "
        "| wall / fastest safe encode | after load / fastest safe encode |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (wall, loaded, peak, _, batches) in rows.items():
        mark = "" if ok[name] else " ✘"
        ratios = (
            f"{wall / rows[best][0]:.2f} | {loaded / rows[best_loaded][1]:.2f}" if best and best_loaded else "- | -"
        )
        print(
            f"| {name} | {batches} | {wall:.1f} | {loaded:.1f} | {peak / 2**20:,.0f} | {peak / limit:.2f}{mark} "
            f"| {ratios} |"
        )
    print(f"\nfastest model.encode under the limit: {best or 'none'} (wall), {best_loaded or 'none'} (after load)")


if __name__ == "__main__":
    main()
