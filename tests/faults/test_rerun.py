"""A new user's next steps through the real CLI: run again, Ctrl-C then run again, --resume a finished job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import assert_complete, batchmem, checkpoint, write_job

N_ITEMS = 2000
EXTRA = "batching: {batch_size: 100, auto_optimize: false}\noutput: {path: %s.jsonl, overwrite: true}\n"


def _job(job_dir, name):
    job = write_job(job_dir, name, n=N_ITEMS, extra=EXTRA % name)
    job.write_text(job.read_text().replace(f"output: {{path: {name}.jsonl}}\n", ""))
    return job


def test_resume_of_a_finished_output_touches_no_file(job_dir):
    job = _job(job_dir, "done")
    assert batchmem("run", str(job), "-q", cwd=job_dir).returncode == 0
    before = {p.name: p.read_bytes() for p in job_dir.glob("done.jsonl*")}
    again = batchmem("run", str(job), "--resume", cwd=job_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"already complete: {N_ITEMS:,} items in {job_dir / 'done.jsonl'}"
    assert {p.name: p.read_bytes() for p in job_dir.glob("done.jsonl*")} == before  # stats byte-identical


def test_sigint_then_the_same_command_continues_and_matches_an_uninterrupted_run(job_dir):
    job = _job(job_dir, "part")
    out = job_dir / "part.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", str(job)],
        cwd=job_dir,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (checkpoint(out) or {}).get("items"):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"run again with: batchmem run {job} --resume" in stderr
    committed = checkpoint(out)["items"]
    assert 0 < committed < N_ITEMS
    # The job sets overwrite: true, yet the same command continues the unfinished run instead of discarding it.
    again = batchmem("run", str(job), "-q", cwd=job_dir)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {committed:,} items already committed (--restart to start over)" in again.stderr
    assert_complete(out, N_ITEMS)
    # --restart starts over and writes the same bytes.
    interrupted_then_resumed = out.read_bytes()
    restart = batchmem("run", str(job), "--restart", "-q", cwd=job_dir)
    assert restart.returncode == 0, restart.stderr
    assert out.read_bytes() == interrupted_then_resumed


def test_output_into_new_nested_folders(job_dir):
    job = write_job(job_dir, "nested", n=50)
    job.write_text(job.read_text().replace("output: {path: nested.jsonl}", "output: {path: new/nested/dir/out.jsonl}"))
    done = batchmem("run", str(job), "-q", cwd=job_dir)
    assert done.returncode == 0, done.stderr
    assert_complete(job_dir / "new" / "nested" / "dir" / "out.jsonl", 50)
