"""Embeddings of texts that differ 1000x in length: batchmem (weighted by characters) against
sentence-transformers' own ``model.encode(texts, batch_size=B)`` for B in 8, 32, 128.

    pip install -e ".[embeddings]"
    python benchmarks/bench_embeddings.py [--texts 400]

The texts are the standard library's ``.py`` files (examples/embeddings/embed.py), in path order.
Each system runs in its own subprocess under the same ``memory_limit`` (batchmem plans against it; the
others are measured against it); wall time includes loading the model; peak RSS of the process tree is
watched from this process every 10 ms. A run whose peak passes the limit gets ✘.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "embeddings"
LIMIT = 3 << 30

CHILD = r"""
import sys, tempfile
sys.path.insert(0, sys.argv[1])
import embed
system, n, limit = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
texts = list(embed.stdlib_texts(n))
if system == "batchmem":
    from batchmem import BatchProcessor
    proc = BatchProcessor(batch_size=8, max_batch_size=256, batched=True, weight=embed.text_length,
                          setup=embed.load_model, n_jobs=1, backend="loky", memory_limit=limit,
                          progress=False, use_history=False)
    out = tempfile.mkdtemp() + "/e.parquet"
    result = proc.process(texts, embed.embed, out)
    print(result.stats.items, flush=True)
else:
    model = embed.load_model()
    vectors = model.encode([t["text"] for t in texts], batch_size=int(system), convert_to_numpy=True)
    print(len(vectors), flush=True)
"""


def run(system: str, n: int) -> tuple[float, int, bool]:
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(EXAMPLE), system, str(n), str(LIMIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    out = child.stdout.read().split()
    return time.perf_counter() - t0, peak, child.returncode == 0 and out[-1:] == [str(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400)
    n = parser.parse_args().texts
    results = {system: run(system, n) for system in ("8", "32", "128", "batchmem")}
    safe = {s: r for s, r in results.items() if s != "batchmem" and r[2] and r[1] <= LIMIT}
    best = min(safe, key=lambda s: safe[s][0]) if safe else None
    print(f"\n{n} standard-library texts, memory limit {LIMIT >> 20} MiB\n")
    print("| run | wall s | peak RSS MiB | peak / limit | time vs fastest safe model.encode |")
    print("|---|---|---|---|---|")
    for system, (wall, peak, ok) in results.items():
        name = "batchmem (weight = characters)" if system == "batchmem" else f"model.encode(batch_size={system})"
        mark = "" if ok and peak <= LIMIT else " ✘"
        ratio = f"{wall / safe[best][0]:.2f}" if best else "-"
        print(f"| {name} | {wall:.1f} | {peak >> 20} | {peak / LIMIT:.2f}{mark} | {ratio} |")


if __name__ == "__main__":
    main()
