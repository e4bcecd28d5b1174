"""One item that raises MemoryError on its own is that item's failure, not a property of the operation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, time
    from batchmem import BatchProcessor

    def work(x):
        if x == int(sys.argv[1]):
            raise MemoryError("this one item does not fit")
        time.sleep(0.0002)
        return x

    result = BatchProcessor(batch_size=20, on_error="skip", process_name="poison", progress=False).process(
        range(3000), work, sys.argv[2])
    print(result.stats.failed, result.stats.memory_errors)
""")
POISON = 1500


def _run(tmp_path, home: str, poison: int) -> tuple[list[str], list[dict], dict]:
    """Run SCRIPT under its own BATCHMEM_HOME; return its printed figures, its per-batch records and the
    history it stored for the operation."""
    env = {**os.environ, "BATCHMEM_HOME": str(tmp_path / home)}
    out = tmp_path / f"{home}.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(poison), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in open(f"{out}.batches.jsonl")]
    (stored,) = (tmp_path / home / "history").glob("poison-*.json")
    return done.stdout.split(), records, json.loads(stored.read_text())


def test_a_memory_error_item_is_recorded_and_leaves_the_size_and_the_history_alone(tmp_path):
    (failed, memory_errors), records, history = _run(tmp_path, "poisoned", POISON)
    assert int(failed) == 1 and int(memory_errors) >= 1
    errors = [json.loads(line) for line in open(tmp_path / "poisoned.jsonl.errors.jsonl")]
    assert [(e["index"], e["error_type"]) for e in errors] == [(POISON, "MemoryError")]
    assert [json.loads(line) for line in open(tmp_path / "poisoned.jsonl")].count(None) == 1

    # The batch that held the item was retried in halves; its first piece's record carries the size asked.
    starts = [sum(r["items"] for r in records[:i]) for i in range(len(records))]
    hit = next(i for i, r in enumerate(records) if r["batch_size"] > r["items"])
    hit_start, hit_size = starts[hit], records[hit]["batch_size"]
    assert hit_start <= POISON < hit_start + hit_size
    before = [r["batch_size"] for r in records[:hit]]
    after = [r["batch_size"] for r, s in zip(records, starts, strict=True) if s >= hit_start + hit_size][:-1]
    assert after, records  # batches cut after the poisoned one (the last, clipped at the end, left out)
    assert min(after) >= max(before[-1], hit_size) / 2, (before, hit_size, after)  # no ceiling from one item

    # The history learns the operation, not the one bad item: a clean run of it learns about the same size.
    _, _, clean = _run(tmp_path, "clean", -1)
    assert history["failed"] == 1 and clean["failed"] == 0
    ratio = history["learned_batch_size"] / clean["learned_batch_size"]
    assert 0.5 <= ratio <= 2, (history["learned_batch_size"], clean["learned_batch_size"])
