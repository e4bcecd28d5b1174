"""SIGINT and SIGTERM to a real ``batchmem run``: batches in flight are committed, checkpoint and
stats (status "interrupted") written, exit 130; ``--resume`` then completes the output exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_committed_prefix, assert_complete, batchmem, checkpoint, write_job

N_ITEMS = 3000


@pytest.mark.parametrize(
    ("sig", "n_jobs", "group"),
    [(signal.SIGINT, 1, False), (signal.SIGTERM, 1, False), (signal.SIGTERM, 2, False), (signal.SIGINT, 2, True)],
    ids=["SIGINT-serial", "SIGTERM-serial", "SIGTERM-loky", "SIGINT-loky-process-group"],
)
def test_signal_stops_cleanly_with_130_and_resume_completes(job_dir, sig, n_jobs, group):
    """``group``: the signal goes to the whole process group, workers included, as a terminal's Ctrl-C does."""
    job = write_job(
        job_dir,
        "sig",
        n=N_ITEMS,
        extra=f"batching: {{batch_size: 100, auto_optimize: false}}\nexecution: {{n_jobs: {n_jobs}}}\n",
    )
    out = job_dir / "sig.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", str(job)],
        cwd=job_dir,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell may start jobs with SIGINT ignored
        start_new_session=group,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((checkpoint(out) or {}).get("items", 0) > 0):
            time.sleep(0.02)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    name = signal.Signals(sig).name
    assert f"interrupted by {name}:" in stderr and "--resume" in stderr
    ck = assert_committed_prefix(out)
    assert 0 < ck["items"] < N_ITEMS and not ck["complete"]
    assert out.stat().st_size == ck["output_bytes"], "the batches in flight were committed, nothing torn"
    stats = json.loads((job_dir / "sig.jsonl.stats.json").read_bytes())
    assert stats["status"] == "interrupted" and stats["items"] == ck["items"]
    assert stats["stop_reason"].startswith(f"{name} received")

    again = batchmem("run", str(job), "--resume", "-q", cwd=job_dir)
    assert again.returncode == 0, again.stderr
    assert_complete(out, N_ITEMS)


def test_handlers_are_restored_after_process(tmp_path):
    from batchmem import BatchProcessor

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        BatchProcessor(progress=False, use_history=False).process(range(10), str, tmp_path / "o.jsonl")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the signal mask from /proc")
def test_loky_workers_start_with_sigint_blocked(job_dir):
    """A Ctrl-C reaching a loky worker while it imports (before it can ignore SIGINT) printed a
    KeyboardInterrupt traceback: workers start with SIGINT blocked. In a fresh interpreter, since the
    first submit also starts the resource trackers, and the standard library's launch unblocks SIGINT
    in the submitting thread."""
    code = (
        "import faultfns, orjson, os\n"
        "from batchmem import BatchProcessor\n"
        "p = BatchProcessor(batch_size=5, n_jobs=2, backend='loky', progress=False, use_history=False)\n"
        "print(orjson.dumps([os.getpid(), list(p.process(range(40), faultfns.sigint_mask))]).decode())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=job_dir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    parent, seen = json.loads(run.stdout)
    assert parent not in {r["pid"] for r in seen}, "the batches ran in worker processes"
    assert all(r["sigint_blocked"] for r in seen), seen
