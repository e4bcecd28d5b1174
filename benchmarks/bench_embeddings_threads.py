"""Inter-op against intra-op parallelism for the embeddings example, in one process, without batchmem.

    python benchmarks/bench_embeddings_threads.py [--texts 400] [--rounds 3]

One process loads the model once (examples/embeddings/embed.py) and embeds the first N standard-library
texts, sorted by length as ``model.encode`` sorts them, in two ways: ``model.encode(texts, batch_size=8)``
with one batch at a time on every core (PyTorch's intra-op threads), and batches of 8 on two Python
threads at once (``ThreadPoolExecutor(2)``), each with one intra-op thread (``torch.set_num_threads(1)``).
Then the tokenizer's single-threaded part overlaps with the other batch's forward pass. PyTorch's notes
on CPU threading weigh the two kinds of parallelism:
https://pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html. The rounds rotate the
order and the table gives each way's fastest and slowest round: a shared machine moves single runs by
more than the ways differ. This is what a threading job (``backend: threading``, ``n_jobs: 2``) could
reach; the "Embeddings" paragraph of docs/performance.md says why the shipped job does not run that way yet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embeddings"
BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400, help="first N standard-library files (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both ways (default 3)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(EXAMPLE))
    import embed
    import torch

    texts = [item["text"] for item in embed.stdlib_texts(args.texts, order="length")]
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    model = embed.load_model()
    cores = torch.get_num_threads()
    model.encode(texts[:BATCH], batch_size=BATCH)  # warm-up

    def intra_op() -> None:
        torch.set_num_threads(cores)
        model.encode(texts, batch_size=BATCH)

    def inter_op() -> None:
        torch.set_num_threads(1)  # process-wide: every thread's first parallel region picks it up
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda batch: model.encode(batch, batch_size=BATCH), batches))

    ways: dict[str, Callable[[], None]] = {
        f"model.encode(batch_size={BATCH}), {cores} intra-op threads": intra_op,
        f"2 threads x batches of {BATCH}, 1 intra-op thread each": inter_op,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            t0 = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - t0)
    base = min(times[names[0]])
    print(f"\n{len(texts)} texts sorted by length, {os.cpu_count()} cores, {args.rounds} rounds\n")
    print("| way | fastest s | slowest s | fastest / fastest encode |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.1f} | {max(ts):.1f} | {min(ts) / base:.2f} |")


if __name__ == "__main__":
    main()
