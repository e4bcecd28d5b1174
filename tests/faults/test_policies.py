"""Error policies (raise, skip, retry then skip/raise), results orjson cannot encode, fsync by default,
resume refusing a changed job, and the torn tail a resume cuts."""

from __future__ import annotations

import json
import os

import faultfns
import pytest
from conftest import assert_committed_prefix, assert_complete, batchmem, checkpoint, expected_line, write_job

from batchmem import BatchProcessor
from batchmem.errors import ItemFailedError, OutputExistsError, ResumeMismatchError, SerializationError
from batchmem.job import load_job, run_job


@pytest.fixture(autouse=True)
def _clean_fns():
    faultfns.FAIL_AT.clear()
    faultfns.ATTEMPTS.clear()
    yield
    faultfns.FAIL_AT.clear()
    faultfns.ATTEMPTS.clear()


def proc(**kw) -> BatchProcessor:
    return BatchProcessor(**{"batch_size": 10, "auto_optimize": False, "progress": False, "use_history": False, **kw})


def test_raise_stops_naming_the_item_with_the_checkpoint_intact_then_resume_cuts_a_torn_tail(tmp_path):
    out = tmp_path / "o.jsonl"
    faultfns.FAIL_AT.add(57)
    with pytest.raises(
        ItemFailedError,
        match=r"^item 57 failed: ValueError: item 57 is bad; on_error raise stops the run \(use on_error='skip'",
    ) as info:
        proc().process(range(100), faultfns.fail_some, out)
    assert info.value.index == 57
    ck = assert_committed_prefix(out)
    assert ck["items"] == 50 and out.stat().st_size == ck["output_bytes"]
    assert json.loads((tmp_path / "o.jsonl.stats.json").read_bytes())["status"] == "failed"

    with open(out, "ab") as f:  # a crash in the middle of a write leaves a torn line
        f.write(b'{"i":50,"v"')
    faultfns.FAIL_AT.clear()  # the function is fixed (same reference): resume continues
    result = proc().process(range(100), faultfns.fail_some, out, resume=True)
    assert result.stats.resumed_from == 50 and result.stats.items == 50
    assert_complete(out, 100)


def test_skip_writes_an_error_record_and_goes_on(tmp_path):
    faultfns.FAIL_AT.update({3, 42})
    long_items = ["x" * 2000 if i == 42 else i for i in range(60)]

    def fn(x):
        return faultfns.fail_some(42 if isinstance(x, str) else x)

    result = proc(on_error="skip").process(long_items, fn, tmp_path / "o.jsonl")
    lines = (tmp_path / "o.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 60 and lines[3] == lines[42] == b"null\n" and lines[4] == expected_line(4)
    assert result.stats.failed == 2 and result.stats.status == "completed"
    records = list(result.errors())
    assert [r["index"] for r in records] == [3, 42]
    r = records[1]
    assert set(r) == {"index", "item", "error_type", "message", "traceback", "attempts"}
    assert r["error_type"] == "ValueError" and r["message"] == "item 42 is bad" and r["attempts"] == 1
    assert len(r["item"]) == 500 and r["item"].endswith("...")  # truncated repr
    assert "Traceback (most recent call last)" in r["traceback"] and "fail_some" in r["traceback"]


def test_retry_with_backoff_then_skip(tmp_path):
    faultfns.FAIL_AT.add(33)
    result = proc(on_error="retry", max_retries=2).process(range(40), faultfns.flaky, tmp_path / "o.jsonl")
    # items 0, 10, 20, 30 failed once and succeeded on the retry; 33 failed all 3 attempts and was skipped
    assert faultfns.ATTEMPTS[10] == 2 and faultfns.ATTEMPTS[33] == 3 and faultfns.ATTEMPTS[11] == 1
    lines = (tmp_path / "o.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[33] == b"null\n" and lines[10] == expected_line(10) and len(lines) == 40
    (record,) = result.errors()
    assert record["index"] == 33 and record["attempts"] == 3 and record["error_type"] == "ConnectionError"


def test_retry_then_raise(tmp_path):
    faultfns.FAIL_AT.add(15)
    p = proc(on_error="retry", max_retries=1, retry_exhausted="raise")
    with pytest.raises(
        ItemFailedError,
        match=r"item 15 failed: ConnectionError: .* after 2 attempts; retrying with retry_exhausted raise stops",
    ):
        p.process(range(40), faultfns.flaky, tmp_path / "o.jsonl")
    assert checkpoint(tmp_path / "o.jsonl")["items"] == 10


def test_unserialisable_result_names_type_and_item_unless_json_default(tmp_path):
    with pytest.raises(
        SerializationError,
        match=r"result of item 5 is not JSON-serialisable \(dict: Type is not JSON serializable: set\)",
    ):
        proc().process(range(20), faultfns.unserialisable, tmp_path / "a.jsonl")
    result = proc(json_default=str).process(range(20), faultfns.unserialisable, tmp_path / "b.jsonl")
    assert list(result)[5] == {"i": 5, "v": "{1, 2}"}


def test_job_keys_json_default_retry_exhausted_fsync(job_dir):
    job_path = write_job(
        job_dir, "keys", n=20, function="faultfns:unserialisable", extra="on_error: retry\nretry_exhausted: raise\n"
    )
    job_path.write_text(
        job_path.read_text().replace(
            "output: {path: keys.jsonl}", "output: {path: keys.jsonl, json_default: str, fsync: false}"
        )
    )
    job = load_job(job_path)
    config = job.run_config()
    assert config.output.json_default is str and config.output.fsync is False
    assert config.errors.retry_exhausted == "raise"
    result = run_job(job)
    assert list(result)[5] == {"i": 5, "v": "{1, 2}"}
    assert load_job(write_job(job_dir, "defaults", n=1)).run_config().output.fsync is True


def test_fsync_per_batch_by_default(tmp_path, monkeypatch):
    assert BatchProcessor().config.output.fsync is True
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    result = proc().process(range(50), faultfns.expected, tmp_path / "o.jsonl")
    assert result.stats.batches == 5 and len(calls) >= 10  # output + checkpoint, every batch


def test_existing_output_is_refused_without_overwrite_or_resume(tmp_path):
    out = tmp_path / "o.jsonl"
    proc().process(range(5), faultfns.expected, out)
    with pytest.raises(OutputExistsError, match="exists; pass overwrite=True"):
        proc().process(range(5), faultfns.expected, out)
    proc().process(range(5), faultfns.expected, out, overwrite=True)
    assert_complete(out, 5)


def test_resume_with_another_function_is_refused_unless_forced(tmp_path):
    out = tmp_path / "o.jsonl"
    faultfns.FAIL_AT.add(25)
    with pytest.raises(ItemFailedError):
        proc().process(range(40), faultfns.fail_some, out)
    with pytest.raises(
        ResumeMismatchError, match=r"changed function \('faultfns:fail_some' then, 'faultfns:expected' now\)"
    ):
        proc().process(range(40), faultfns.expected, out, resume=True)
    assert checkpoint(out)["items"] == 20  # the refusal changed nothing
    proc().process(range(40), faultfns.expected, out, resume="force")
    assert_complete(out, 40)


def test_cli_resume_of_a_changed_job_exits_2_naming_the_field_and_force_resume(job_dir):
    job = write_job(
        job_dir, "chg", n=400, function="faultfns:fail_some", extra="batching: {batch_size: 50, auto_optimize: false}\n"
    )
    first = batchmem("run", str(job), "-q", cwd=job_dir)
    assert first.returncode == 0, first.stderr
    changed = batchmem("run", str(job), "--resume", "--set", "source.options.n=500", cwd=job_dir)
    assert changed.returncode == 2
    (line,) = changed.stderr.splitlines()
    assert line.startswith("error: resume:") and "source.options" in line and "--force-resume" in line
    ok = batchmem(
        "run", str(job), "--resume", "--set", "batching.batch_size=7", "-q", cwd=job_dir
    )  # batch size: allowed
    assert ok.returncode == 0, ok.stderr
    forced = batchmem("run", str(job), "--force-resume", "--set", "source.options.n=500", "-q", cwd=job_dir)
    assert forced.returncode == 0, forced.stderr
    assert_complete(job_dir / "chg.jsonl", 500)


def test_malformed_job_corpus_has_at_least_25_files():
    from pathlib import Path

    corpus = sorted((Path(__file__).parents[1] / "jobs_bad").glob("*.yaml"))
    assert len(corpus) >= 25  # each is checked (exit 2, one line naming the field) by tests/test_cli.py
