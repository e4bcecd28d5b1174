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
    print(result.stats.failed, result.stats.learned_batch_size, ",".join(map(str, result.stats.batch_sizes)))
""")


def _run(tmp_path, home: str, poison: int) -> tuple[int, int, list[int]]:
    env = {**os.environ, "BATCHMEM_HOME": str(tmp_path / home)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(poison), str(tmp_path / f"{home}.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    failed, learned, sizes = done.stdout.split()
    return int(failed), int(learned), [int(s) for s in sizes.split(",")]


def test_a_memory_error_item_is_recorded_and_sets_no_ceiling(tmp_path):
    failed, learned, sizes = _run(tmp_path, "poisoned", 1500)
    assert failed == 1
    errors = [json.loads(line) for line in open(tmp_path / "poisoned.jsonl.errors.jsonl")]
    assert [(e["index"], e["error_type"]) for e in errors] == [(1500, "MemoryError")]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    alone = next(i for i, (st, sz) in enumerate(zip(starts, sizes, strict=True)) if st == 1500 and sz == 1)
    before, after = sizes[:alone], sizes[alone + 1 :]
    assert after and max(after) >= max(before) / 2, (before, after)  # the size recovers: no ceiling stuck at 1
    _, clean_learned, _ = _run(tmp_path, "clean", -1)
    assert learned >= clean_learned / 2  # the history learns the operation, not the one bad item
    stored = json.loads(next((tmp_path / "poisoned" / "history").glob("*.json")).read_text())
    assert stored.get("ceiling") is None
