"""How good is `batchmem plan`? Forecast a job, then run it inside a real memory cgroup and compare.

    python benchmarks/bench_plan.py                        # flights, embeddings (if torch imports), lognormal
    python benchmarks/bench_plan.py --workloads lognormal

For each workload: `batchmem plan JOB --json` in a subprocess (a fresh BATCHMEM_HOME, so the plan is the
only history), then `batchmem run JOB` in a new cgroup v1 memory group (no swap) whose limit is its
`recommended_memory_limit_bytes`; then, as a user would, `batchmem plan` again with the job's memory_limit
set to 1.15 x the first plan's `min_memory_limit_bytes` and the run in a cgroup of that limit. The runs
leave the job's memory_limit unset, so batchmem detects the cgroup's limit (source cgroup_v1); each starts
from its plan's history. Checked per run: exit 0; no kernel OOM kill (memory.oom_control oom_kill); the
run's duration_s (its stats: process() from executor start to the last commit, imports excluded) within
0.67-1.5x its plan's predicted_seconds; the cgroup's peak charge (memory.max_usage_in_bytes: resident
memory and page cache of the whole process tree) within 0.5-1.25x its plan's predicted_peak_bytes; what
the plan adds to a `batchmem run --plan` at most 15 % of the run's duration_s: its sample_seconds (weighing the source,
starting the executor, the sample batches; imports excluded) less the executor's start, since that run
goes on in the workers the plan started (tests/test_plan.py checks they are the same processes). The
page cache is dropped before the plan and before each run (--warm-cache keeps it): the kernel charges a
cached page to the cgroup that read it first, so a warm cache hides a job's libraries and model files
from its cgroup's charge, as it would not on a fresh node. Process wall times (imports included) are
printed too. Cgroup runs are skipped, with the reason, where no memory cgroup can be made (not root, no
cgroup v1 memory controller).

Workloads:
  flights     examples/flights/flights_job.yaml: 336,776 CSV rows from a zip, pandas transform, JSONL out
  embeddings  examples/embeddings/embeddings_job.yaml, all ~870 texts (needs torch: skipped without it)
  lognormal   8,000 items of log-normal size (median 0.3 MiB, at most 20 MiB, shuffled), a batched numpy
              function that holds each item's memory and passes over it four times
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIERARCHY = Path("/sys/fs/cgroup/memory")

LOGNORMAL_MODULE = """
import random
import numpy as np

def items(n=8000):
    rng = random.Random(1)
    return [(i, min(20.0, rng.lognormvariate(-1.2, 1.6))) for i in range(n)]

def weight(item):
    return item[1]

def work(batch):
    held = [np.ones(int(mb * (1 << 20)) // 8) for _, mb in batch]
    for h in held:
        for _ in range(4):
            h *= 1.0001
    return [i for i, _ in batch]
"""

LOGNORMAL_JOB = """
name: bench_plan_lognormal
source: {type: python, path: "lognormal_items:items"}
function: lognormal_items:work
batched: true
batching: {weight: "lognormal_items:weight", batch_size: 16}
output: {path: out.jsonl, overwrite: true}
progress: false
"""


def cgroup_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    if not (HIERARCHY / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory"
    if not os.access(HIERARCHY, os.W_OK):
        return "the cgroup v1 memory hierarchy is not writable"
    return None


def workloads(tmp: Path) -> dict[str, tuple[Path, list[str]] | str]:
    """name -> (job file, --set overrides), or the reason the workload is skipped."""
    out_sets = ["batching.memory_limit=null", "progress=false"]
    found: dict[str, tuple[Path, list[str]] | str] = {
        "flights": (ROOT / "examples/flights/flights_job.yaml", [*out_sets, f"output.path={tmp}/flights.jsonl"]),
    }
    try:
        import torch  # noqa: F401

        found["embeddings"] = (
            ROOT / "examples/embeddings/embeddings_job.yaml",
            [*out_sets, f"output.path={tmp}/embeddings.parquet"],
        )
    except ImportError:
        found["embeddings"] = "torch is not installed (pip install -e '.[embeddings]')"
    folder = tmp / "lognormal"
    folder.mkdir(exist_ok=True)
    (folder / "lognormal_items.py").write_text(LOGNORMAL_MODULE)
    (folder / "job.yaml").write_text(LOGNORMAL_JOB)
    found["lognormal"] = (folder / "job.yaml", [*out_sets, f"output.path={tmp}/lognormal.jsonl"])
    return found


def drop_page_cache(cold: bool) -> None:
    """Start cold, as a job on a fresh node: the kernel charges a page of the page cache (a shared
    library, the model's weights, the input) to the cgroup that first reads it, so pages cached by an
    earlier process would be missing from the run's charge (memory-cgroup-v1 docs, section 2.3)."""
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")


def plan(job: Path, sets: list[str], env: dict[str, str]) -> tuple[dict, float]:
    args = [sys.executable, "-c", "from batchmem.cli import main; main()", "plan", str(job), "--json", "-q"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"plan of {job} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout), time.perf_counter() - t0


def startup_seconds(name: str, home: Path) -> float:
    """The seconds the plan in ``home`` spent starting the executor (workers and their setup)."""
    from batchmem.optimizer.history import HistoryStore

    record = HistoryStore(home / "history").load(name)
    return next(r["plan"] for r in reversed(record["runs_detail"]) if "plan" in r)["model"]["startup_s"]


def run_in_cgroup(job: Path, sets: list[str], env: dict[str, str], limit: int) -> dict:
    group = HIERARCHY / f"batchmem-bench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    args = [sys.executable, "-c", "import sys; sys.stdin.readline(); from batchmem.cli import main; main()"]
    args += ["run", str(job), "-q", "--restart"]
    for s in sets:
        args += ["--set", s]
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            try:
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
            except OSError:
                pass
        t0 = time.perf_counter()
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        (group / "cgroup.procs").write_text(str(child.pid))
        out, err = child.communicate(b"go\n", timeout=900)
        wall = time.perf_counter() - t0
        kills = next(
            (int(x.split()[1]) for x in (group / "memory.oom_control").read_text().splitlines() if "oom_kill " in x), 0
        )
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        return {"rc": child.returncode, "wall": wall, "oom_kills": kills, "peak": peak, "stderr": err.decode()[-500:]}
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def job_name(job: Path) -> str:
    import yaml

    return yaml.safe_load(job.read_text())["name"]


def stats_duration(sets: list[str]) -> float:
    out = next(s.split("=", 1)[1] for s in sets if s.startswith("output.path="))
    return json.loads(Path(out + ".stats.json").read_text())["duration_s"]


def bench(name: str, job: Path, sets: list[str], tmp: Path, why_not: str | None, cold: bool) -> list[dict]:
    home = tmp / f"home-{name}"
    env = {**os.environ, "BATCHMEM_HOME": str(home), "TMPDIR": str(tmp)}
    drop_page_cache(cold)
    first, first_wall = plan(job, sets, env)
    print(f"{name}: plan {json.dumps(first)}", file=sys.stderr)
    if why_not:
        return [{"workload": name, "skipped": why_not, "plan": first}]
    limits = [first["recommended_memory_limit_bytes"], int(1.15 * first["min_memory_limit_bytes"])]
    rows = []
    for label, limit in zip(("recommended", "1.15x min"), [-(-x // 4096) * 4096 for x in limits], strict=True):
        if label == "recommended":  # planned without a limit: forecast at the recommended one
            forecast, plan_wall = first, first_wall
        else:  # planned again, as a user would, at the limit the job will get
            shutil.rmtree(home)
            drop_page_cache(cold)
            forecast, plan_wall = plan(job, [*sets, f"batching.memory_limit={limit}"], env)
        startup_s = startup_seconds(job_name(job), home)
        saved = tmp / f"history-{name}-{label}"
        shutil.copytree(home, saved)
        shutil.rmtree(home)
        shutil.copytree(saved, home)  # the run starts from its plan's history only
        drop_page_cache(cold)
        r = run_in_cgroup(job, sets, env, limit)
        actual_s = stats_duration(sets) if r["rc"] == 0 else float("nan")
        p_s, p_peak = forecast["predicted_seconds"], forecast["predicted_peak_bytes"]
        rows.append(
            {
                "workload": name,
                "limit": label,
                "limit_bytes": limit,
                "rc": r["rc"],
                "oom_kills": r["oom_kills"],
                "predicted_s": p_s,
                "actual_s": actual_s,
                "time_ratio": actual_s / p_s,
                "predicted_peak": p_peak,
                "cgroup_peak": r["peak"],
                "peak_ratio": r["peak"] / p_peak,
                "plan_s": forecast["sample_seconds"],
                # what the plan adds to `batchmem run --plan`, whose run goes on in the workers it started
                "plan_added_s": forecast["sample_seconds"] - startup_s,
                "plan_share": (forecast["sample_seconds"] - startup_s) / actual_s,
                "plan_wall": plan_wall,
                "run_wall": r["wall"],
                "stderr": r["stderr"],
            }
        )
    return rows


def verdict(row: dict) -> str:
    ok = (
        row["rc"] == 0
        and row["oom_kills"] == 0
        and 0.67 <= row["time_ratio"] <= 1.5
        and 0.5 <= row["peak_ratio"] <= 1.25
        and row["plan_share"] <= 0.15
    )
    return "ok" if ok else "MISS"


def table(rows: list[dict]) -> str:
    mib = 1 << 20
    lines = [
        "| workload | limit | exit | OOM kills | time: predicted / actual (ratio) | peak: predicted / cgroup (ratio) "
        "| plan s: all / added to run --plan (share of run) | process walls: plan / run | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['workload']} | - | - | - | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['limit']} {r['limit_bytes'] / mib:,.0f} MiB | {r['rc']} | {r['oom_kills']} "
            f"| {r['predicted_s']:.2f} / {r['actual_s']:.2f} s ({r['time_ratio']:.2f}x) "
            f"| {r['predicted_peak'] / mib:,.0f} / {r['cgroup_peak'] / mib:,.0f} MiB ({r['peak_ratio']:.2f}x) "
            f"| {r['plan_s']:.2f} / {r['plan_added_s']:.2f} s ({r['plan_share']:.0%}) "
            f"| {r['plan_wall']:.1f} / {r['run_wall']:.1f} s "
            f"| {verdict(r)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["flights", "embeddings", "lognormal"])
    ap.add_argument("--warm-cache", action="store_true", help="keep the page cache (default: drop it first)")
    args = ap.parse_args()
    why_not = cgroup_unavailable()
    cold = not args.warm_cache and why_not is None
    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    rows: list[dict] = []
    try:
        found = workloads(tmp)
        for name in args.workloads:
            spec = found[name]
            if isinstance(spec, str):
                rows.append({"workload": name, "skipped": spec})
                continue
            rows += bench(name, *spec, tmp, why_not, cold)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows))
    for r in rows:
        if r.get("rc"):
            print(f"{r['workload']} {r['limit']}: {r['stderr']}", file=sys.stderr)


if __name__ == "__main__":
    main()
