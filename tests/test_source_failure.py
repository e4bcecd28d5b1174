"""A source that raises part-way: the items it yielded are processed and committed, the error names the
item it failed at, and a resume starts there."""

from __future__ import annotations

import pytest

from batchmem import BatchProcessor
from batchmem.errors import SourceFailedError
from batchmem.io.checkpoint import Checkpoint, checkpoint_path


def breaks_at(n: int, end: int = 1000):
    for i in range(end):
        if i == n:
            raise RuntimeError(f"source broke at {n}")
        yield i


def proc(**options) -> BatchProcessor:
    return BatchProcessor(progress=False, use_history=False, **options)


@pytest.mark.parametrize(
    "options", [{"batch_size": 400, "auto_optimize": False}, {"batch_size": 7}, {"weight": "auto"}]
)
def test_items_before_the_failure_are_committed_and_the_error_names_the_item(tmp_path, options):
    out = tmp_path / "out.jsonl"
    with pytest.raises(
        SourceFailedError, match=r"^source: failed at item 500: RuntimeError: source broke at 500"
    ) as err:
        proc(**options).process(breaks_at(500), lambda x: x, out)
    assert err.value.index == 500 and isinstance(err.value.__cause__, RuntimeError)
    assert "resume=True" in str(err.value)  # the Python API's own syntax
    assert [int(line) for line in out.read_text().splitlines()] == list(range(500))
    assert Checkpoint.load(checkpoint_path(out)).items == 500


def test_a_resume_starts_at_the_failing_item(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceFailedError):
        proc(batch_size=64).process(breaks_at(300, 600), lambda x: x, out)
    seen = []
    result = proc(batch_size=64).process(breaks_at(-1, 600), lambda x: seen.append(x) or x, out, resume=True)
    assert seen[0] == 300 and list(result) == list(range(600))


def test_a_source_that_fails_at_its_first_item_commits_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceFailedError, match="failed at item 0"):
        proc().process(breaks_at(0), lambda x: x, out)
    assert out.read_text() == ""
