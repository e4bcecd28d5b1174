"""Runs that tell the truth on the command line: exit codes of a stopped run, CLI-syntax hints, limits
checked up front, missing extras caught before the work, sources that fail part-way. Real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FNS = """
import os

import numpy as np

_LEAK = []


def leaky(item):
    # LEAK=1: keep 2 MiB per item (touched, so resident) -- a leak memory pressure must stop.
    if os.environ.get("LEAK") == "1":
        _LEAK.append(np.ones(2 * 1024 * 1024 // 8))
    return item


def ident(item):
    return item


def numbers():
    return range(300)


def breaks_at_500():
    for i in range(1000):
        if i == 500:
            raise RuntimeError("source broke at 500")
        yield i
"""


def batchmem(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    full = {**os.environ, "TMPDIR": str(cwd), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def job_dir(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "truth_fns.py").write_text(FNS)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path / "home"))
    return tmp_path


def write_job(folder: Path, name: str, body: str) -> str:
    (folder / name).write_text(textwrap.dedent(body))
    return name


LEAK_JOB = """
    name: leak_stop
    source: {type: python, path: 'truth_fns:numbers'}
    function: truth_fns:leaky
    batching: {batch_size: 4, memory_limit: %dMiB, use_history: false}
    pressure: {pressure_max_wait_s: 0.2}
    output: {path: out/leak.jsonl}
    progress: false
"""


def rss_mib() -> int:
    import psutil

    return psutil.Process().memory_info().rss // 2**20


def test_a_leak_stop_exits_3_and_resumes_to_completion_with_cli_hints(job_dir):
    # A limit that fits this process tree with room (the up-front check passes) and a leak of
    # 2 MiB per item that reaches the emergency level long before the 300 items are done.
    limit = max(rss_mib(), 80) * 2 + 100
    job = write_job(job_dir, "leak.yaml", LEAK_JOB % limit)
    stopped = batchmem("run", job, "-q", cwd=job_dir, env={"LEAK": "1"})
    assert stopped.returncode == 3, (stopped.stdout, stopped.stderr)
    out = job_dir / "out" / "leak.jsonl"
    written = len(out.read_text().splitlines())
    assert 0 < written < 300
    everything = stopped.stdout + stopped.stderr
    assert "resume=True" not in everything
    assert f"stopped: leak_stop: {written:,} items, 0 failed, {300 - written:,} remain" in stopped.stdout
    assert f"batchmem run {job} --resume" in stopped.stdout
    assert everything.count("memory pressure emergency") == 1, everything  # one voice: not logged and summed up
    issues = [line.split(": ", 1)[1] for line in stopped.stdout.splitlines() if line.startswith("issue [")]
    assert issues and not any(message in stopped.stderr for message in issues), stopped.stderr  # also with -q
    saved = json.loads((job_dir / "out" / "leak.jsonl.stats.json").read_text())
    assert saved["status"] == "stopped" and saved["remaining"] == 300 - written

    resumed = batchmem("run", job, "--resume", cwd=job_dir, env={"LEAK": "0"})
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert [json.loads(line) for line in out.read_text().splitlines()] == list(range(300))
    assert "resume=True" not in resumed.stdout + resumed.stderr


def test_run_help_documents_exit_code_3(job_dir):
    proc = batchmem("run", "--help", cwd=job_dir)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "3 stopped: incomplete, resumable" in text and "130 interrupted" in text


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_source_that_raises_at_item_500_leaves_500_lines_and_names_item_500(job_dir, n_jobs):
    job = write_job(
        job_dir,
        "breaks.yaml",
        """
        name: breaks
        source: {type: python, path: 'truth_fns:breaks_at_500'}
        function: truth_fns:ident
        batching: {batch_size: 400, auto_optimize: false, use_history: false}
        output: {path: out/breaks.jsonl}
        progress: false
        """,
    )
    proc = batchmem("run", job, "--set", f"execution.n_jobs={n_jobs}", cwd=job_dir)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = (job_dir / "out" / "breaks.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == list(range(500))
    assert proc.stderr.startswith("error: source: failed at item 500: RuntimeError: source broke at 500"), proc.stderr
    assert f"batchmem run {job} --set execution.n_jobs={n_jobs} --resume" in proc.stderr
    assert "resume=True" not in proc.stderr + proc.stdout


SMALL_JOB = """
    name: tiny_limit
    source: {type: python, path: 'truth_fns:numbers'}
    function: truth_fns:ident
    batching: {memory_limit: 50MiB, use_history: false}
    output: {path: out/tiny.jsonl}
    progress: false
"""


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_50mib_limit_exits_2_at_once_with_nothing_written(job_dir, command, n_jobs):
    job = write_job(job_dir, "tiny.yaml", SMALL_JOB)
    t0 = time.monotonic()
    proc = batchmem(command, job, "--set", f"execution.n_jobs={n_jobs}", cwd=job_dir)
    took = time.monotonic() - t0
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert took < 5, took
    assert not (job_dir / "out").exists() or not any((job_dir / "out").iterdir())
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: memory_limit: 50.0MiB"), proc.stderr
    assert "raise memory_limit (e.g. --set batching.memory_limit=" in lines[0]
    assert ("worker process" in lines[0]) == (n_jobs == 2)
    suggested = lines[0].split("--set batching.memory_limit=")[1].split(")")[0]
    fits = batchmem("validate", job, "--set", f"batching.memory_limit={suggested}", cwd=job_dir)
    assert fits.returncode == 0, fits.stderr  # the suggested limit passes the same check


NO_MATPLOTLIB = """
import importlib.abc
import sys


class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None


sys.meta_path.insert(0, _Missing())
"""


def test_validate_of_a_job_with_a_report_fails_with_the_install_command_without_matplotlib(job_dir):
    shim = job_dir / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_MATPLOTLIB)
    job = write_job(
        job_dir,
        "report.yaml",
        """
        name: with_report
        source: {type: python, path: 'truth_fns:numbers'}
        function: truth_fns:ident
        output: {path: out/rep.jsonl}
        report: out/report.html
        progress: false
        """,
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    hidden = subprocess.run([sys.executable, "-c", "import matplotlib"], env={**os.environ, **env}, cwd=job_dir)
    assert hidden.returncode != 0  # the shim works
    for command in ("validate", "run"):
        proc = batchmem(command, job, cwd=job_dir, env=env)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert (
            proc.stderr.strip()
            == 'error: report: plots need matplotlib, which is not installed; pip install "batchmem[report]"'
        )
    assert not (job_dir / "out" / "rep.jsonl").exists()  # the run failed before the work
    assert batchmem("validate", job, cwd=job_dir).returncode == 0  # with matplotlib the job is fine
