"""`batchmem plan` and BatchProcessor.plan: the forecast's keys, sorted inputs, the fits guard, no output written.

The forecast runs the real function on real sample batches (in-process) and the guard a real
``batchmem run`` subprocess; the fitting arithmetic is checked with synthetic numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from batchmem.plan import CostModel, Line, RunShape, fit_line, forecast_limits, predict
from batchmem.plan.fit import batch_seconds
from batchmem.plan.sample import choose

MiB = 1 << 20
KEYS = {
    "items": int,
    "total_weight": float,
    "weight_unit": str,
    "sample_items": int,
    "sample_seconds": float,
    "predicted_seconds": float,
    "predicted_seconds_by_n_jobs": dict,
    "predicted_peak_bytes": int,
    "recommended_memory_limit_bytes": int,
    "min_memory_limit_bytes": int,
    "heaviest_item": dict,
    "fits": bool,
    "confidence": dict,
}

FNS = textwrap.dedent(
    """
    import time
    import numpy as np

    def sized(n=400, big_mib=0.0):
        # sizes in MiB, ascending: the heaviest items at the end
        sizes = [0.05 + 3.0 * (i / (n - 1)) ** 2 for i in range(n)]
        if big_mib:
            sizes[-1] = big_mib
        return [(i, mb) for i, mb in enumerate(sizes)]

    def weight(item):
        return item[1]

    def work(batch):
        held = [np.ones(int(mb * (1 << 20)) // 8) for _, mb in batch]  # held until the batch returns
        time.sleep(0.0005 + 0.002 * sum(mb for _, mb in batch))  # seconds in proportion to the MiB
        return [i + int(h[0]) - 1 for (i, _), h in zip(batch, held)]
    """
)


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "plan_fns.py").write_text(FNS)
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: plan_test
            source: {type: python, path: "plan_fns:sized", options: {n: 200}}
            function: plan_fns:work
            batched: true
            batching: {weight: "plan_fns:weight", batch_size: 8, memory_limit: 1GiB}
            output: {path: out/results.jsonl}
            progress: false
            """
        )
    )
    return path


def test_json_keys_and_types(job: Path, tmp_path: Path):
    done = _cli("plan", str(job), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert set(plan) == set(KEYS)
    for key, kind in KEYS.items():
        value = plan[key]
        assert isinstance(value, kind) or (kind is float and isinstance(value, int)), (key, value)
    assert plan["items"] == 200 and plan["weight_unit"] == "plan_fns:weight"
    assert set(plan["heaviest_item"]) == {"index", "bytes"} and plan["heaviest_item"]["index"] == 199
    by_jobs = plan["predicted_seconds_by_n_jobs"]
    assert by_jobs["1"] > 0 and all(k.isdigit() and isinstance(v, float) for k, v in by_jobs.items())
    assert {"level", "bytes_r2", "bytes_spread", "seconds_r2", "seconds_spread"} <= set(plan["confidence"])
    assert plan["min_memory_limit_bytes"] <= plan["recommended_memory_limit_bytes"]
    human = _cli("plan", str(job), cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    for ready in ("#SBATCH --mem=", "resources:", "docker run --memory ", "memory_limit:"):
        assert ready in human.stdout
    # the fitted model stays in the history, for the next run's guard and warm start
    from batchmem.optimizer.history import HistoryStore

    entry = HistoryStore().load("plan_test")["runs_detail"][-1]
    assert entry["kind"] == "plan" and entry["plan"]["bytes_per_unit"] >= 0


def test_plan_writes_nothing_to_the_output(job: Path, tmp_path: Path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    done = _cli("plan", str(job), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # no output, no sidecar, no checkpoint, not even the output folder
    assert not (tmp_path / "out").exists()


SORTED_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import plan_fns as fns
from batchmem import BatchProcessor

items = fns.sized(400)
proc = BatchProcessor(batched=True, weight=fns.weight, memory_limit=1 << 30, progress=False, batch_size=8,
                      process_name="plan_sorted")
plan = proc.plan(items, fns.work)
t0 = time.perf_counter()
result = proc.process(items, fns.work, sys.argv[1] + "/out.jsonl")
took = time.perf_counter() - t0
print(json.dumps({"plan": plan.to_dict(), "took": took, "items": result.stats.items,
                  "peak": result.stats.peak_rss_bytes}))
"""


def test_sorted_input_heaviest_at_the_end_is_forecast_within_bounds(tmp_path: Path):
    # a fresh interpreter, as a job runs: a long-lived one can hold free heap left by earlier work, in
    # which a batch's growth hides from its resident-set peak
    (tmp_path / "plan_fns.py").write_text(FNS)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SORTED_CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    plan = got["plan"]
    assert plan["heaviest_item"]["index"] == 399  # the last item: sampling the head would never see it
    # the heaviest item alone holds ~3 MiB (plus the interpreter's own growth in the batch)
    assert 0.5 * 3.05 * MiB <= plan["heaviest_item"]["bytes"] <= 3 * 3.05 * MiB
    assert got["items"] == 400
    assert 0.67 <= got["took"] / plan["predicted_seconds"] <= 1.5, (got["took"], plan["predicted_seconds"])
    assert 0.5 <= got["peak"] / plan["predicted_peak_bytes"] <= 1.25, (got["peak"], plan["predicted_peak_bytes"])


def test_a_heaviest_item_that_cannot_fit_stops_run_before_the_first_batch(tmp_path: Path):
    (tmp_path / "plan_fns.py").write_text(FNS)
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """
            name: plan_guard
            source: {type: python, path: "plan_fns:sized", options: {n: 100, big_mib: 200}}
            function: plan_fns:work
            batched: true
            batching: {weight: "plan_fns:weight", batch_size: 8}
            output: {path: out.jsonl}
            progress: false
            """
        )
    )
    planned = _cli("plan", str(job), "--json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    minimum = json.loads(planned.stdout)["min_memory_limit_bytes"]
    limit = f"{int(minimum * 0.6) // MiB}MiB"  # under the baseline plus the 200 MiB item
    done = _cli("run", str(job), "--set", f"batching.memory_limit={limit}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "fits: false" in lines[0] and "item 99" in lines[0] and "batching.memory_limit" in lines[0]
    assert not (tmp_path / "out.jsonl").exists()  # no batch ran, nothing was written


REUSE_FNS = textwrap.dedent(
    """
    import os

    def setup():
        with open(os.environ["SETUP_LOG"], "a") as fh:  # one line per worker that ran the setup
            fh.write(f"{os.getpid()}\\n")
        return {"factor": 2}

    def work(batch, state):
        return [x * state["factor"] for x in batch]

    def items():
        return list(range(2000))
    """
)


@pytest.mark.parametrize("with_plan", [True, False])
def test_run_with_plan_goes_on_in_the_worker_the_plan_started(tmp_path: Path, with_plan: bool, monkeypatch):
    """``batchmem run --plan``: the plan's loky worker (its setup done) runs the job; the setup runs once."""
    (tmp_path / "reuse_fns.py").write_text(REUSE_FNS)
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """
            name: plan_reuse
            source: {type: python, path: "reuse_fns:items"}
            function: reuse_fns:work
            batched: true
            setup: reuse_fns:setup
            execution: {n_jobs: 1, backend: loky}
            output: {path: out.jsonl}
            progress: false
            """
        )
    )
    log = tmp_path / "setup.log"
    monkeypatch.setenv("SETUP_LOG", str(log))  # the child and its loky worker inherit it
    done = _cli("run", str(job), *(["--plan"] if with_plan else []), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("recommended" in done.stdout) is with_plan  # the forecast came first
    setups = log.read_text().split()
    assert len(setups) == 1, setups  # one worker, set up once, for the plan and the run
    pids = {json.loads(line)["pid"] for line in (tmp_path / "out.jsonl.batches.jsonl").read_text().splitlines()}
    assert pids == {int(setups[0])}
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert results == [2 * i for i in range(2000)]


# ---------------------------------------------------------------- the arithmetic, with synthetic numbers


def test_fit_line_recovers_a_line_and_ignores_one_outlier():
    x = [1.0, 10.0, 20.0, 40.0, 80.0]
    y = [5 + 2 * v for v in x]
    y[2] *= 3  # one disturbed batch
    line = fit_line(x, y)
    assert line.slope == pytest.approx(2.0) and line.intercept == pytest.approx(5.0)
    assert line.spread > 1.0  # the outlier shows in the spread
    flat = fit_line([1.0, 2.0, 3.0], [4.0, 2.0, 0.5])  # falling: no negative cost per unit
    assert flat.slope == 0.0 and flat.intercept == pytest.approx(2.0)


def test_limits_and_prediction_follow_the_control_law():
    model = CostModel(100 * MiB, Line(0.0, float(MiB)), Line(0.0, 0.01), Line(0.0, 0.0), overhead_s=0.0)
    shape = RunShape(total_weight=1000.0, mean_weight=1.0, max_weight=50.0, median_weight=1.0, items=1000)
    recommended, minimum = forecast_limits(model, shape, in_flight=1)
    assert minimum == pytest.approx(max(150 * MiB / 0.95, 101 * MiB / 0.6), rel=0.01)  # heaviest alone; room
    assert recommended == pytest.approx(120 * MiB / 0.6, rel=0.01)  # 20-unit batches (0.2 s) under the target
    seconds, peak = predict(model, shape, recommended, 1)
    assert seconds == pytest.approx(10.0, rel=0.01) and peak == pytest.approx(150 * MiB, rel=0.01)
    slow, _ = predict(model, shape, minimum, 1)  # the target holds batches shorter, seconds unchanged here
    assert slow == pytest.approx(10.0, rel=0.01)


def test_the_run_time_counts_the_round_trip_and_the_output_written():
    """Encoding and shipping results (``wall`` over ``seconds``) and writing them are the run's time too."""
    base = CostModel(0.0, Line(0.0, 0.0), Line(0.001, 0.01), Line(0.0, 0.0), overhead_s=0.002)
    shape = RunShape(total_weight=1000.0, mean_weight=1.0, max_weight=1.0, median_weight=1.0, items=1000)
    batches = 1000 / ((0.2 - 0.001) / 0.01)  # batches of the function's seconds at the 0.2 s aim
    fn_only, _ = predict(base, shape, 1 << 40, 1)
    assert fn_only == pytest.approx(batches * (0.001 + 0.002) + 0.01 * 1000, rel=1e-6)
    full = dataclasses.replace(
        base, wall=Line(0.003, 0.015), output_per_unit=1000.0, write_s_per_byte=1e-9, startup_s=0.5
    )
    seconds, _ = predict(full, shape, 1 << 40, 1)  # batches still sized by the function's own seconds
    assert seconds == pytest.approx(0.5 + batches * (0.003 + 0.002) + 0.015 * 1000 + 1000 * 1000 * 1e-9, rel=1e-6)


def test_the_page_cache_read_at_start_counts_in_the_peak_up_to_the_limit():
    model = CostModel(100 * MiB, Line(0.0, float(MiB)), Line(0.0, 0.01), Line(0.0, 0.0), cold_cache_bytes=150 * MiB)
    shape = RunShape(total_weight=1000.0, mean_weight=1.0, max_weight=50.0, median_weight=1.0, items=1000)
    _, roomy = predict(model, shape, 1 << 40, 1)
    assert roomy == pytest.approx(300 * MiB, rel=0.01)  # 100 baseline + 50 heaviest + 150 cached
    _, tight = predict(model, shape, 200 * MiB, 1)
    assert tight == 200 * MiB  # the kernel reclaims the cache at the limit


def test_a_batch_takes_the_measured_seconds_within_the_sample_and_the_line_beyond():
    """A function whose light batches cost less per unit than heavy ones (heap reuse): a batch at a
    measured weight takes what was measured, not what the straight line says."""
    points = ((2.0, 0.002), (10.0, 0.003), (50.0, 0.05))
    model = CostModel(0.0, Line(0.0, 0.0), Line(0.0, 0.001), Line(0.0, 0.0), wall=Line(0.0, 0.001), timed=points)
    assert batch_seconds(model, 10.0) == pytest.approx(0.003)  # the line says 0.01
    assert batch_seconds(model, 6.0) == pytest.approx(0.0025)
    assert batch_seconds(model, 100.0) == pytest.approx(0.05 + 0.001 * 50)  # the line's slope beyond
    slower_light = dataclasses.replace(model, timed=((2.0, 0.004), (10.0, 0.003), (50.0, 0.05)))
    assert batch_seconds(slower_light, 10.0) == pytest.approx(0.004)  # a heavier batch never takes less
    assert batch_seconds(dataclasses.replace(model, timed=()), 10.0) == pytest.approx(0.01)


def test_sample_batches_spread_over_the_weights_of_a_sorted_source():
    weights = np.arange(1000, dtype=float)
    by_label = {b.label: b for b in choose(weights, 10, contiguous=True)}
    assert by_label["heaviest"].indices == (999,)
    assert max(by_label["light"].indices) < 200 and min(by_label["heavy"].indices) > 800
    ranked = {b.label: b for b in choose(weights[::-1].copy(), 10, contiguous=False)}
    assert ranked["heaviest"].indices == (0,) and min(ranked["light"].indices) > 800
