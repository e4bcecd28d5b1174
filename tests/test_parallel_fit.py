"""Parallel runs that fit: no more worker processes start than fit under the memory target.

Each process that imports the job's module holds 150 MiB more (a resident ballast), so the parent and
every loky worker hold ~190 MiB before the first batch. Under an 800 MiB limit (a 480 MiB target) one
worker fits beside the parent and two do not: ``n_jobs=3`` runs one worker, says so once with the
figures, and writes every item; with ``n_jobs_strict`` the run is refused with exit 2 instead. Real
processes, measured baselines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

MiB = 1 << 20

MODULE = textwrap.dedent("""
    import os

    BALLAST = os.urandom(1) * (150 << 20)  # resident in every process that imports this module

    def work(x):
        return x * 2
""")

CHILD = textwrap.dedent("""
    import json, sys
    import ballast
    from batchmem import BatchProcessor
    from batchmem.errors import BatchmemError

    n_jobs, limit, strict, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    proc = BatchProcessor(n_jobs=n_jobs, backend="loky", memory_limit=limit, progress=False, use_history=False,
                          n_jobs_strict=strict)
    try:
        r = proc.process(range(3000), ballast.work, out)
    except BatchmemError as exc:
        print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
    else:
        print(json.dumps({"n_jobs": r.stats.n_jobs, "choice": r.stats.n_jobs_choice, "items": r.stats.items}))
""")


def _run(tmp_path: Path, n_jobs: int, limit: int, strict: bool) -> tuple[dict, str]:
    (tmp_path / "ballast.py").write_text(MODULE)
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TMPDIR": str(tmp_path)}
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(n_jobs), str(limit), "1" if strict else "0", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_n_jobs_3_under_a_limit_that_holds_one_worker_runs_one_and_says_so_once(tmp_path):
    got, stderr = _run(tmp_path, 3, 800 * MiB, strict=False)
    assert got["n_jobs"] == 1 and got["items"] == 3000
    assert got["choice"].startswith("n_jobs=3 requested; 1 fits under 800.0MiB (each worker holds ")
    assert stderr.count("n_jobs=3 requested") == 1
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [int(x) for x in lines] == [2 * i for i in range(3000)]


def test_n_jobs_strict_refuses_instead_with_exit_2(tmp_path):
    got, _ = _run(tmp_path, 3, 800 * MiB, strict=True)
    assert got["exit_code"] == 2
    assert "n_jobs=3 requested; 1 fits" in got["error"] and "n_jobs_strict" in got["error"]
    assert not (tmp_path / "out.jsonl").exists()


def test_with_room_for_every_worker_all_run(tmp_path):
    got, stderr = _run(tmp_path, 2, 4096 * MiB, strict=True)
    assert got["n_jobs"] == 2 and got["items"] == 3000 and got["choice"] == ""
    assert "requested" not in stderr
