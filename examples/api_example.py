"""batchmem from Python: word counts over a stream of generated sentences.

    python examples/api_example.py [N_SENTENCES]

The sentences come from a generator -- never a list -- so only the batch being
processed is in memory; results stream to a JSONL file and are read back lazily.
The first ``BatchProcessor(autoOptimize=True).process(items, fn)`` call is the
form the Node.js module documents (its option names are accepted as aliases);
the second uses the Python names and a batched function.
"""

from __future__ import annotations

import collections
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from batchmem import BatchProcessor

WORDS = (
    "memory batch stream chunk optimizer heap leak garbage collector worker "
    "pandas arrow parquet json line record item result limit pressure"
).split()


def sentences(n: int, seed: int = 13) -> Iterator[str]:
    """``n`` pseudo-random sentences of 5-20 words (deterministic for a given seed)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20)))


def count_words(sentence: str) -> dict[str, int]:
    """One item -> one JSON-friendly result: word -> occurrences in the sentence."""
    return dict(collections.Counter(sentence.split()))


def count_words_batched(batch: list[str]) -> list[dict[str, int]]:
    """A batch of items -> one result per item, same length and order (``batched=True``)."""
    return [dict(collections.Counter(s.split())) for s in batch]


def main(n: int = 200_000) -> None:
    out_dir = Path(tempfile.mkdtemp(prefix="batchmem-example-"))

    # 1. As in the Node module's README: camelCase options are aliases of the Python names.
    result = BatchProcessor(autoOptimize=True, progress=False).process(sentences(n), count_words)
    totals: collections.Counter[str] = collections.Counter()
    for counts in result:  # read back lazily from result.path, one line per input item
        totals.update(counts)
    s = result.stats
    print(
        f"{s.items:,} sentences in {s.batches} batches ({min(s.batch_sizes)}-{max(s.batch_sizes)} items), "
        f"{s.items_per_s:,.0f} items/s, peak RSS {s.peak_rss_bytes / 2**20:.0f} MiB"
    )
    print("top words:", ", ".join(f"{w} {c:,}" for w, c in totals.most_common(5)))
    print("results:", result.path)

    # 2. Python names, a batched function, an explicit output file and memory limit.
    proc = BatchProcessor(
        batch_size=1_000,
        auto_optimize=True,
        memory_limit="512MB",
        process_name="word_counts",  # history key: the next run starts from what this one learned
        batched=True,
        progress=False,
    )
    result = proc.process(sentences(n), count_words_batched, output=out_dir / "word_counts.jsonl", overwrite=True)
    assert sum(sum(c.values()) for c in result) == sum(totals.values())
    print(f"batched: {result.stats.items:,} items -> {result.path} (stats: {result.stats.stats_path})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
