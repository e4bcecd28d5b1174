"""Output formats: one registry decides the format for the API and job files alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import toy_format

from batchmem import BatchProcessor
from batchmem.io.formats import FORMATS, format_for, register_format

pytest.importorskip("pyarrow")

TESTS = Path(__file__).parent
SUFFIXES = sorted((suffix, fmt.name) for fmt in FORMATS.values() for suffix in fmt.suffixes)


def record(i: int) -> dict[str, int]:
    return {"i": i, "square": i * i}


def numbers(n: int = 30) -> range:
    return range(n)


EXPECTED = [record(i) for i in range(30)]


def _is_parquet(path: Path) -> bool:
    data = path.read_bytes()
    return data[:4] == b"PAR1" and data[-4:] == b"PAR1"


def test_api_writes_parquet_to_a_pq_path(tmp_path):
    """The API chose JSONL for ``.pq`` (only ``.parquet`` was looked at) while a job file chose Parquet."""
    out = tmp_path / "x.pq"
    result = BatchProcessor(batch_size=7, progress=False).process(range(30), record, output=out)
    assert _is_parquet(out)
    assert result.output_format == "parquet"
    assert list(result) == EXPECTED


@pytest.mark.parametrize(("suffix", "name"), SUFFIXES)
def test_every_suffix_through_the_api(tmp_path, suffix, name):
    out = tmp_path / f"out{suffix}"
    result = BatchProcessor(batch_size=7, progress=False).process(range(30), record, output=out)
    assert result.output_format == name == format_for(out).name
    assert list(FORMATS[name].read(out)) == EXPECTED == list(result)
    assert _is_parquet(out) == (name == "parquet")


def _entry_point_site(site: Path) -> None:
    """An installed distribution declaring the toy format in the ``batchmem.formats`` group."""
    info = site / "toy_format_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-format-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[batchmem.formats]\ntext = toy_format:TEXT\n")


def _run_job(tmp_path: Path, output: str) -> subprocess.CompletedProcess:
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""
            source: {{type: python, path: "test_formats:numbers"}}
            function: "test_formats:record"
            output: {{path: {output}}}
            batching: {{batch_size: 7}}
            progress: false
            """
        )
    )
    site = tmp_path / "site"
    _entry_point_site(site)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(TESTS), str(site)])}
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", "run", str(job)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(("suffix", "name"), SUFFIXES)
def test_every_suffix_through_a_job_file(tmp_path, suffix, name):
    proc = _run_job(tmp_path, f"out{suffix}")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / f"out{suffix}"
    assert list(FORMATS[name].read(out)) == EXPECTED
    assert _is_parquet(out) == (name == "parquet")


@pytest.fixture
def text_format():
    register_format(toy_format.TEXT)
    yield toy_format.TEXT
    FORMATS.pop("text", None)


def test_toy_format_through_the_api(tmp_path, text_format):
    out = tmp_path / "out.txt"
    result = BatchProcessor(batch_size=7, progress=False).process(range(30), record, output=out)
    assert result.output_format == "text"
    assert out.read_text().splitlines() == [str(r) for r in EXPECTED] == list(result)
    named = BatchProcessor(batch_size=7, progress=False).process(
        range(3), record, output=tmp_path / "named.log", output_format="text"
    )
    assert list(named) == [str(r) for r in EXPECTED[:3]]


def test_toy_format_refuses_a_resume(tmp_path, text_format):
    out = tmp_path / "out.txt"
    BatchProcessor(batch_size=7, progress=False).process(range(30), record, output=out)
    out.with_name("out.txt.ckpt.json").write_text(json.dumps({"items": 7, "batches": 1}))
    with pytest.raises(Exception, match="resume: text output cannot be resumed"):
        BatchProcessor(batch_size=7, progress=False).process(range(30), record, output=out, resume=True)


def test_toy_format_through_a_job_file(tmp_path):
    proc = _run_job(tmp_path, "out.txt")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text().splitlines() == [str(r) for r in EXPECTED]


def test_unknown_format_names_the_registered_ones(tmp_path):
    with pytest.raises(Exception, match="output.format: 'xml' is not a registered format; use one of jsonl, parquet"):
        BatchProcessor(progress=False).process(range(3), record, output=tmp_path / "o.xml", output_format="xml")
