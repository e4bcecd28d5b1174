"""What one batch of the embeddings example costs besides the model: per-text time by batch size, and the
price of the ``malloc_trim`` a loky worker ran after every batch whose peak passed 16 MiB (until a batch's
peak counted the free heap it may reuse instead, ``batchmem/backends/worker.py``).

    python benchmarks/bench_embeddings_batches.py [--texts 192]

One process, the model loaded once (examples/embeddings/embed.py), the first N standard-library texts in
path order (the job's order), cut into blocks of 32. Every block is embedded with batches of 4, 8, 16 and
32 texts, three times in rotating order, and each size keeps its fastest pass: on a shared machine a pass
that another process slowed down is dropped, not averaged. Then the job's own batches (6 texts) are run
twice each, alternately after ``malloc_trim(0)`` (what the workers did after a batch whose peak grew by
16 MiB or more) and without it: the difference is the trim's call plus the page faults
of the next batch, which touches again the pages the trim handed back.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embeddings"
SIZES = (4, 8, 16, 32)
BLOCK = 32
JOB_BATCH = 6  # texts per batch of the shipped job before this benchmark (docs/performance.md, "Embeddings": median 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=192, help="first N standard-library files (default 192)")
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import embed

    texts = list(embed.stdlib_texts(args.texts))
    model = embed.load_model()
    embed.embed(texts[:8], model)  # warm-up, as the job's first batch
    n = len(texts) // BLOCK * BLOCK

    per_size = dict.fromkeys(SIZES, 0.0)
    for k, start in enumerate(range(0, n, BLOCK)):
        block = texts[start : start + BLOCK]
        best = dict.fromkeys(SIZES, float("inf"))
        for rep in range(3):
            shift = (k + rep) % len(SIZES)
            for size in SIZES[shift:] + SIZES[:shift]:
                t0 = time.perf_counter()
                for j in range(0, BLOCK, size):
                    embed.embed(block[j : j + size], model)
                best[size] = min(best[size], time.perf_counter() - t0)
        for size in SIZES:
            per_size[size] += best[size]

    trim = ctypes.CDLL(None).malloc_trim
    spent = {"after malloc_trim": 0.0, "without": 0.0}
    trim_call = 0.0
    batches = [texts[i : i + JOB_BATCH] for i in range(0, n, JOB_BATCH)]
    for k, batch in enumerate(batches):
        for case in ("after malloc_trim", "without") if k % 2 else ("without", "after malloc_trim"):
            if case == "after malloc_trim":
                t0 = time.perf_counter()
                trim(0)
                trim_call += time.perf_counter() - t0
            t0 = time.perf_counter()
            embed.embed(batch, model)
            spent[case] += time.perf_counter() - t0

    print(f"\n{n} standard-library texts in path order, blocks of {BLOCK}, fastest of 3 passes per size\n")
    print("| texts per batch | batches | s for all texts | ms per text | vs 8 |")
    print("|---:|---:|---:|---:|---:|")
    for size in SIZES:
        print(
            f"| {size} | {n // size} | {per_size[size]:.2f} | {1000 * per_size[size] / n:.1f} "
            f"| {per_size[size] / per_size[8]:.2f} |"
        )
    m = len(batches)
    extra = spent["after malloc_trim"] - spent["without"]
    print(
        f"\n{m} batches of {JOB_BATCH} texts: {spent['without']:.2f} s without a trim before them, "
        f"{spent['after malloc_trim']:.2f} s after malloc_trim(0); per batch: the call {1000 * trim_call / m:.1f} ms, "
        f"the page faults it causes {1000 * extra / m:.1f} ms, together {1000 * (trim_call + extra) / m:.1f} ms "
        f"({(trim_call + extra) / spent['without'] * 100:.1f}% of the batches' own time)"
    )


if __name__ == "__main__":
    main()
