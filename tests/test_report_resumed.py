"""A resumed output's stats, report and history describe the whole output: every part's items and
failures, each part's time, and how often it was resumed."""

from __future__ import annotations

import json
import re

import pytest

from batchmem import BatchProcessor
from batchmem.errors import SourceFailedError
from batchmem.report import load_report, render_text
from batchmem.stats import RunStats


def numbers(n: int, broken_at: int | None = None):
    for i in range(n):
        if i == broken_at:
            raise RuntimeError(f"source broke at {i}")
        yield i


def fail_sevens(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"{x} is a multiple of 7")
    return x


def proc() -> BatchProcessor:
    return BatchProcessor(batch_size=32, on_error="skip", progress=False)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path / "home"))


def test_a_resumed_runs_report_counts_every_item_and_failure_of_the_output(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceFailedError):
        proc().process(numbers(600, broken_at=250), fail_sevens, out)
    with pytest.raises(SourceFailedError):
        proc().process(numbers(600, broken_at=400), fail_sevens, out, resume=True)
    last = proc().process(numbers(600), fail_sevens, out, resume=True)
    assert last.stats.status == "completed" and last.stats.items == 200  # this part's own figures stay

    failures = sum(1 for x in range(600) if x % 7 == 0)
    stats = RunStats.load(tmp_path / "out.jsonl.stats.json")
    assert (stats.output_items, stats.output_failed, stats.resumes) == (600, failures, 2)
    assert [p["items"] for p in stats.parts] == [250, 150, 200]
    assert [p["status"] for p in stats.parts] == ["failed", "failed", "completed"]
    assert sum(p["failed"] for p in stats.parts) == failures and all(p["duration_s"] > 0 for p in stats.parts)

    report = load_report(stats.stats_path)
    assert report.figures["items"] == 600 and report.figures["failed"] == failures
    assert report.figures["batches"] == len(report.batches) > stats.batches  # the batch records of every part
    text = render_text(report)
    assert re.search(r"^  items +600$", text, re.M) and re.search(rf"^  failed items +{failures}$", text, re.M)
    assert "resumed" in text and "2 times; parts: 250 items in" in text
    data = json.loads(json.dumps(report.figures, default=str))
    assert data["items"] == 600


def test_a_part_that_died_before_writing_its_stats_is_counted_from_the_checkpoint(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceFailedError):
        proc().process(numbers(300, broken_at=100), fail_sevens, out)
    (tmp_path / "out.jsonl.stats.json").unlink()  # as after kill -9
    proc().process(numbers(300), fail_sevens, out, resume=True)
    stats = RunStats.load(tmp_path / "out.jsonl.stats.json")
    assert stats.output_items == 300 and stats.output_failed == sum(1 for x in range(300) if x % 7 == 0)
    assert stats.parts[0] == {
        "items": 100,
        "failed": 15,
        "batches": None,
        "duration_s": None,
        "status": "unrecorded",
        "started_at": None,
    }
    assert "1 time; parts: 100 items (unrecorded); 200 items in" in render_text(load_report(stats.stats_path))


def test_a_fresh_run_is_one_part(tmp_path):
    result = proc().process(range(100), fail_sevens, tmp_path / "out.jsonl")
    stats = RunStats.load(result.stats.stats_path)
    assert stats.resumes == 0 and len(stats.parts) == 1 and stats.output_items == 100
    assert load_report(stats.stats_path).figures["resumed"] == "no"


def test_batchmem_stats_counts_the_parts_and_the_resumes(tmp_path):
    from batchmem.report import operation_statistics, render_operation_detail

    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceFailedError):
        proc().process(numbers(300, broken_at=120), fail_sevens, out)
    proc().process(numbers(300), fail_sevens, out, resume=True)
    fig = operation_statistics("default")["operations"]["default"]
    assert (fig["runs"], fig["resumes"], fig["items"]) == (2, 1, 300)
    assert fig["failed"] == sum(1 for x in range(300) if x % 7 == 0)
    assert re.search(r"^  runs that resumed an output +1$", render_operation_detail("default", fig), re.M)
