"""A write that fails (disk full): one clear line, exit 1, the checkpoint still matches the output,
nothing committed is lost, and ``--resume`` completes the output exactly."""

from __future__ import annotations

import json
import os
import sys

from conftest import assert_committed_prefix, assert_complete, batchmem, checkpoint, write_job

# Run the CLI with JsonlSink.write failing with ENOSPC on the output's 5th batch.
FAIL_ON_BATCH_5 = """
import errno, os, sys
import batchmem.io.sinks as sinks
real_write, calls = sinks.JsonlSink.write, {"n": 0}
def write(self, payload):
    if self.path.name == "full.jsonl":
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, payload)
sinks.JsonlSink.write = write
from batchmem.cli import main
main(sys.argv[1:])
"""


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_write_failure_on_batch_5_then_resume(job_dir):
    job = write_job(
        job_dir,
        "full",
        n=1000,
        function="faultfns:fail_some",
        extra="batching: {batch_size: 50, auto_optimize: false}\n",
    )
    out = job_dir / "full.jsonl"
    proc = batchmem_python(job_dir, FAIL_ON_BATCH_5, "run", str(job))
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"output: writing {out} failed: No space left on device (ENOSPC)" in line and "--resume" in line
    ck = assert_committed_prefix(out)
    assert ck["items"] == 200 and out.stat().st_size == ck["output_bytes"]
    stats = json.loads((job_dir / "full.jsonl.stats.json").read_bytes())
    assert stats["status"] == "failed" and stats["items"] == 200

    again = batchmem("run", str(job), "--resume", "-q", cwd=job_dir)
    assert again.returncode == 0, again.stderr
    assert_complete(out, 1000)


def test_output_on_dev_full_gives_one_line_and_a_consistent_checkpoint(job_dir):
    """/dev/full accepts open() and fails every write with ENOSPC, like a full disk."""
    out = job_dir / "devfull.jsonl"
    os.symlink("/dev/full", out)  # the sidecars (checkpoint, stats) stay in job_dir
    job = write_job(
        job_dir,
        "devfull",
        n=500,
        function="faultfns:fail_some",
        extra="batching: {batch_size: 50, auto_optimize: false}\n",
    )
    proc = batchmem("run", str(job), "--set", "output.overwrite=true", cwd=job_dir)
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "output: writing" in line and "No space left on device (ENOSPC)" in line
    ck = checkpoint(out)
    assert ck["items"] == 0 and ck["output_bytes"] == 0  # nothing was committed, and nothing is claimed


def batchmem_python(cwd, code: str, *args: str):
    import subprocess

    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
