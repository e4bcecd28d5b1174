"""A stop that always lands on process pools: SIGTERM while a batch never returns, ``n_jobs=2``.

The first SIGTERM cuts no new batch and gives the batches in flight ``stop_grace_seconds``; then the
pool cancels them (its worker processes are killed), the checkpoint stays at the last committed batch
and ``batchmem run`` exits 130. A resume with a function that returns completes the output exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import assert_committed_prefix, assert_complete, batchmem, checkpoint, write_job

GRACE_S = 2


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the run and its loky workers), zombies left out."""
    members = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return members


def _wait_for(condition, timeout_s: float) -> bool:
    """Poll ``condition()`` every 20 ms until it holds (True) or ``timeout_s`` seconds pass (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_sigterm_during_a_batch_that_never_returns_exits_130_kills_the_workers_and_resume_completes(
    job_dir, backend, monkeypatch
):
    out = job_dir / "hang.jsonl"
    started = job_dir / "item300.started"
    monkeypatch.setenv("FAULTFNS_STARTED", str(started))  # faultfns.forever creates it when item 300 starts
    job = write_job(
        job_dir,
        "hang",
        n=1000,
        function="faultfns:forever",  # item 300 never returns
        extra=(
            "batching: {batch_size: 50, auto_optimize: false}\n"
            f"execution: {{n_jobs: 2, backend: {backend}, stop_grace_seconds: {GRACE_S}}}\n"
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", str(job)],
        cwd=job_dir,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own session: every process it leaves behind can be found
    )
    try:
        assert _wait_for(lambda: (checkpoint(out) or {}).get("items", 0) >= 300 and started.exists(), 60)
        proc.send_signal(signal.SIGTERM)  # the batch holding item 300 is running and will not return
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=GRACE_S + 5 + 10)
        waited = time.monotonic() - t0
        _wait_for(lambda: not _session_members(proc.pid), 5)  # loky's workers notice their parent is gone
        leftovers = _session_members(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert waited < GRACE_S + 5, waited
    assert "stop_grace_seconds" in stderr and "Traceback" not in stderr
    assert f"run again with: batchmem run {job} --resume" in stderr
    assert leftovers == [], "the hung worker outlived the run"
    ck = assert_committed_prefix(out)
    assert ck["items"] == 300 and not ck["complete"]  # everything before the hung batch, nothing after it
    stats = json.loads((job_dir / "hang.jsonl.stats.json").read_bytes())
    assert stats["status"] == "interrupted" and stats["items"] == 300

    # The hang was one bad item: with a function that returns, resume completes the output.
    job.write_text(job.read_text().replace("faultfns:forever", "faultfns:expected"))
    again = batchmem("run", str(job), "--resume", "--force-resume", "-q", cwd=job_dir)
    assert again.returncode == 0, again.stderr
    assert_complete(out, 1000)
    assert json.loads((job_dir / "hang.jsonl.stats.json").read_bytes())["resumed_from"] == 300
