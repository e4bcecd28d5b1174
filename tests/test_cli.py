"""The ``batchmem`` command line, run as a real subprocess (``python -m batchmem.cli``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest

JOBS_BAD = Path(__file__).parent / "jobs_bad"
BAD_FILES = sorted(JOBS_BAD.glob("*.yaml"))


def batchmem(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def expected_of(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# expect: ")
    return first[len("# expect: ") :].strip()


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A folder with a small JSONL input, a module of functions and a job that doubles a number."""
    (tmp_path / "numbers.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(1, 11)))
    (tmp_path / "cli_fns.py").write_text(
        textwrap.dedent(
            """
            import itertools, time

            def double(item):
                return {"n": item["n"], "double": item["n"] * 2}

            def fail_on_seven(item):
                if item["n"] == 7:
                    raise ValueError("seven is not allowed")
                return item["n"]

            def forever():
                return itertools.count()

            def slow(x):
                time.sleep(0.01)
                return x
            """
        )
    )
    (tmp_path / "job.yaml").write_text(
        textwrap.dedent(
            """
            name: cli_doubling
            source: {type: jsonl, path: numbers.jsonl}
            function: cli_fns:double
            batching: {batch_size: 4}
            output: {path: out/doubled.jsonl}
            progress: false
            """
        )
    )
    (tmp_path / "out").mkdir()
    return tmp_path


# --------------------------------------------------------------------------- version and help


def test_version():
    proc = batchmem("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"batchmem {version('batchmem')}"


@pytest.mark.parametrize("command", [[], ["run"], ["validate"]])
def test_help_on_every_command(command):
    proc = batchmem(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: batchmem" in proc.stdout
    assert "Examples:" in proc.stdout
    if command:
        assert "--set" in proc.stdout and "-v, --verbose" in proc.stdout


def test_usage_error_exits_2():
    proc = batchmem("run")
    assert proc.returncode == 2
    assert "Missing argument 'JOB'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- validate


def test_validate_ok(job_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")
    proc = batchmem("validate", str(job_dir / "job.yaml"), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: cli_doubling: jsonl source")
    assert str(job_dir / "out" / "doubled.jsonl") in proc.stdout
    assert proc.stderr == ""


def test_validate_with_overrides(job_dir):
    proc = batchmem(
        "validate", "job.yaml", "--set", "batching.memory_limit=1GiB", "--set", "execution.n_jobs=2", cwd=job_dir
    )
    assert proc.returncode == 0, proc.stderr
    assert "memory limit 1.0GiB" in proc.stdout and "n_jobs 2" in proc.stdout
    proc = batchmem("validate", "job.yaml", "--set", "batching.memory_limt=1GB", cwd=job_dir)
    assert proc.returncode == 2
    assert_one_error_line(proc, "batching.memory_limt", "did you mean 'batching.memory_limit'")


def test_corpus_has_at_least_25_files():
    assert len(BAD_FILES) >= 25


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """``batchmem validate`` on every malformed job file, run concurrently (one subprocess each)."""
    cwd = tmp_path_factory.mktemp("corpus_cwd")
    env = dict(os.environ, BATCHMEM_HOME=str(tmp_path_factory.mktemp("corpus_home")))
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        procs = pool.map(lambda p: batchmem("validate", str(p), cwd=cwd, env=env), BAD_FILES)
        return {p.name: proc for p, proc in zip(BAD_FILES, procs, strict=True)}


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_validate_malformed_job_file_exits_2_with_one_line(corpus_results, path):
    proc = corpus_results[path.name]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert_one_error_line(proc, expected_of(path))


# --------------------------------------------------------------------------- run


def test_run_end_to_end(job_dir):
    proc = batchmem("run", "job.yaml", cwd=job_dir)
    assert proc.returncode == 0, proc.stderr
    out = job_dir / "out" / "doubled.jsonl"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [{"n": i, "double": 2 * i} for i in range(1, 11)]
    summary = proc.stdout
    assert "done: cli_doubling: 10 items, 0 failed" in summary
    assert "items/s" in summary and "peak RSS" in summary and " limit" in summary
    assert f"output: {out}" in summary
    assert "stats:" in summary
    assert "Traceback" not in proc.stderr

    # A second run refuses to overwrite the output: a job-file error, exit 2.
    again = batchmem("run", "job.yaml", cwd=job_dir)
    assert again.returncode == 2
    assert_one_error_line(again, "output.path", "already exists")
    # ... unless told to.
    forced = batchmem("run", "job.yaml", "--set", "output.overwrite=true", "-q", cwd=job_dir)
    assert forced.returncode == 0, forced.stderr


def test_run_with_failed_items_exits_1(job_dir):
    proc = batchmem(
        "run",
        "job.yaml",
        "--set",
        "function=cli_fns:fail_on_seven",
        "--set",
        "on_error=skip",
        "--no-progress",
        cwd=job_dir,
    )
    assert proc.returncode == 1, proc.stderr
    assert "10 items, 1 failed" in proc.stdout
    assert re.search(
        r"^1 failed; first: item \d+, ValueError: seven is not allowed; all in \S+errors\.jsonl$", proc.stdout, re.M
    ), proc.stdout


def test_run_stopped_by_the_function_exits_1_with_one_line(job_dir):
    proc = batchmem("run", "job.yaml", "--set", "function=cli_fns:fail_on_seven", "--no-progress", cwd=job_dir)
    assert proc.returncode == 1
    line = assert_one_error_line(proc, "seven is not allowed", "on_error: skip", "--set on_error=skip")
    assert "on_error='skip'" not in line  # the job-file form, not the Python keyword


def test_run_job_file_error_exits_2(job_dir):
    proc = batchmem("run", "job.yaml", "--set", "batching.batch_size=0", cwd=job_dir)
    assert proc.returncode == 2
    assert_one_error_line(proc, "batching.batch_size")


def test_interrupt_exits_130(job_dir):
    (job_dir / "forever.yaml").write_text(
        "source: {type: python, path: 'cli_fns:forever'}\nfunction: cli_fns:slow\n"
        "batching: {batch_size: 5, auto_optimize: false}\noutput: {path: out/forever.jsonl}\nprogress: false\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", "forever.yaml"],
        cwd=job_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell may start background jobs with SIGINT ignored; give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out = job_dir / "out" / "forever.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
