"""Extension points: a backend registered from outside the package runs through the API and a job file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import toy_backend

from batchmem import BatchProcessor
from batchmem.backends import BACKENDS, register_backend

TESTS = Path(__file__).parent


@pytest.fixture
def toy_registered():
    register_backend("toy", toy_backend.toy_factory)
    yield
    BACKENDS.pop("toy", None)


def test_toy_backend_runs_through_the_api(tmp_path, toy_registered):
    proc = BatchProcessor(batch_size=10, auto_optimize=False, backend="toy", progress=False)
    result = proc.process(range(50), toy_backend.double, output=tmp_path / "out.jsonl")
    assert list(result) == [2 * i for i in range(50)]
    assert result.stats.backend == "toy"
    assert result.stats.n_jobs_choice == "toy: 5 batches"


def _installed_plugin(site: Path) -> None:
    """A distribution on ``site`` that declares ``toy`` in the ``batchmem.backends`` entry-point group,
    as ``pip install`` of a package with ``[project.entry-points."batchmem.backends"]`` would leave it."""
    info = site / "toy_backend_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[batchmem.backends]\ntoy = toy_backend:toy_factory\n")


def _job(tmp_path: Path, backend: str) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""
            source: {{type: python, path: "toy_backend:numbers"}}
            function: "toy_backend:double"
            output: {{path: out.jsonl}}
            batching: {{batch_size: 10, auto_optimize: false}}
            execution: {{backend: {backend}}}
            progress: false
            """
        )
    )
    return job


def _batchmem(tmp_path: Path, *args: str, plugin: bool = True) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    if plugin and not site.exists():
        _installed_plugin(site)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(TESTS), str(site)])}
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_toy_backend_runs_a_job_file(tmp_path):
    proc = _batchmem(tmp_path, "run", str(_job(tmp_path, "toy")))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [2 * i for i in range(50)]
    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text())
    assert stats["backend"] == "toy" and stats["n_jobs_choice"] == "toy: 5 batches"


def test_unregistered_backend_is_a_job_file_error(tmp_path):
    proc = _batchmem(tmp_path, "validate", str(_job(tmp_path, "nope")), plugin=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "execution.backend: 'nope' is not a registered backend; use one of dask, loky" in proc.stderr
    assert "toy" not in proc.stderr
