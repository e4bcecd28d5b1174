"""``kill -9`` of a real ``batchmem run`` at 20 random moments, each followed by ``--resume``.

After every kill the checkpoint must describe whole lines that are exactly
the first items' results; the final ``--resume`` must leave one line per item,
in input order: nothing lost, duplicated or torn.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from conftest import assert_committed_prefix, assert_complete, batchmem, checkpoint, write_job

N_ITEMS = 40_000  # about 0.55 ms each: ~22 s of work in batches of ~50 ms, more than 20 kills interrupt
KILLS = 20


def test_kill_9_at_20_random_moments_then_resume(job_dir):
    rng = random.Random(20240505)
    job = write_job(job_dir, "kills", n=N_ITEMS, extra="batching: {batch_size: 100, auto_optimize: false}\n")
    out = job_dir / "kills.jsonl"
    kills, cut_tails, committed = 0, 0, []
    attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts < 3 * KILLS, "the job kept finishing before it could be killed"
        args = ["run", str(job), "-q"]
        if out.exists():
            # batch sizes may change between runs: they do not change the results
            args += ["--resume", "--set", f"batching.batch_size={rng.choice([37, 100, 173])}"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchmem.cli", *args],
            cwd=job_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # 0.2 s: usually still starting up (before the first commit); up to 1.6 s: mid-run
        time.sleep(rng.uniform(0.2, 1.6))
        if proc.poll() is not None:  # finished (or failed) before the kill: must not happen while work remains
            stderr = proc.stderr.read().decode()
            assert proc.returncode == 0, stderr
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        ck = assert_committed_prefix(out)
        committed.append(ck["items"])
        if out.exists() and out.stat().st_size > ck["output_bytes"]:
            cut_tails += 1  # bytes after the last commit: the next resume must cut them
    assert kills == KILLS
    assert committed == sorted(committed), "a resume lost committed items"
    final = batchmem("run", str(job), "--resume", "-q", cwd=job_dir, timeout=180)
    assert final.returncode == 0, final.stderr
    assert_complete(out, N_ITEMS)
    ck = checkpoint(out)
    assert ck["complete"] and ck["items"] == N_ITEMS
    stats = json.loads((job_dir / "kills.jsonl.stats.json").read_bytes())
    assert stats["status"] == "completed" and stats["failed"] == 0
    assert stats["resumed_from"] + stats["items"] == N_ITEMS
    print(
        f"kills survived: {kills}; committed items after each kill: {committed}; "
        f"uncommitted tails cut by the next resume: {cut_tails}"
    )
