"""Item weights: the "auto" rule, the batcher's cut at the weight budget, the control law in weight units,
and, end to end with peak RSS watched from outside, items that grow 100x mid-run."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from batchmem import BatchProcessor
from batchmem.errors import ConfigError
from batchmem.io.sources import IterableSource
from batchmem.optimizer.control import BatchMeasurement, BatchSizeController, ControlConfig
from batchmem.weights import CONTAINER_CAP, auto_weight, make_weigher

MiB = 1 << 20


# -- the "auto" rule ----------------------------------------------------------------------------------


def test_auto_weight_rule(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1234)
    assert auto_weight("abc") == 3 and auto_weight(b"ab") == 2 and auto_weight(bytearray(5)) == 5
    assert auto_weight(memoryview(b"abcd")) == 4 and auto_weight("") == 0
    assert auto_weight(np.zeros(10, dtype=np.float64)) == 80 and auto_weight(np.zeros((3, 4), np.int32)) == 48
    assert auto_weight(path) == 1234 and auto_weight(tmp_path / "missing") == 1
    for unit in (7, 2.5, True, None, 1j, object(), {1, 2}):
        assert auto_weight(unit) == 1
    # one level deep: the values' own rule; a nested container weighs 1
    assert auto_weight({"a": "xx", "b": np.zeros(4, np.uint8)}) == 6
    assert auto_weight(["ab", b"c", 7]) == 4 and auto_weight(("abc", path)) == 3 + 1234
    assert auto_weight([["a" * 100]]) == 1 and auto_weight([]) == 1 and auto_weight({}) == 1


def test_container_values_past_the_cap_count_at_the_mean_of_those_weighed():
    head, tail = ["ab"] * CONTAINER_CAP, ["abcdefgh"] * (2 * CONTAINER_CAP)
    assert auto_weight(head + tail) == 2 * 3 * CONTAINER_CAP  # the tail is not looked at
    assert auto_weight(tail + head) == 8 * 3 * CONTAINER_CAP
    assert auto_weight(dict(enumerate(head + tail))) == 2 * 3 * CONTAINER_CAP


def test_unit_types_are_counted_at_no_cost():
    weigh = make_weigher("auto")
    assert weigh([1, 2.5, None, True, 3j]) is None  # every item weighs 1: batches count items
    assert weigh(["a", 1]) == [1.0, 1.0] and weigh(["abc", b"de"]) == [3.0, 2.0]
    assert make_weigher(None) is None and make_weigher("none") is None
    assert make_weigher(len)(["ab", "cde"]) == [2.0, 3.0]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_a_callable_weight_that_is_not_a_finite_number_above_zero_is_a_one_line_error(bad):
    def weight(item):
        return bad if item == "b" else 1

    with pytest.raises(ConfigError) as info:
        make_weigher(weight)(["a", "b"])
    message = str(info.value)
    assert "\n" not in message and message.startswith("weight: ")
    assert "<locals>.weight returned " in message and repr(float(bad)) in message and "finite number >= 0" in message
    with pytest.raises(ConfigError, match="weight: 3 is not 'auto'"):
        make_weigher(3)


# -- the cut at the budget ----------------------------------------------------------------------------


def _cut_all(items, budget, **kw):
    src, weigh, batches = IterableSource(items), make_weigher("auto"), []
    while True:
        batch, weight, weights = src.take_weighted(budget, weigh, **kw)
        if batch is None:
            return batches
        assert weight == pytest.approx(sum(weights) if weights is not None else len(batch))
        batches.append(batch)


def test_the_item_that_would_cross_the_budget_opens_the_next_batch_and_a_heavy_one_runs_alone():
    items = ["a" * 10] * 5 + ["b" * 1000] * 2 + ["c" * 10] * 3
    assert [len(b) for b in _cut_all(items, 100)] == [5, 1, 1, 3]
    assert [len(b) for b in _cut_all(items, 45)] == [4, 1, 1, 1, 3]  # 4 x 10 <= 45 < 5 x 10
    assert [len(b) for b in _cut_all(items, 100, min_items=2)] == [5, 2, 3]  # min_items outranks the budget
    assert [len(b) for b in _cut_all(items, 10_000, max_items=4)] == [4, 4, 2]


def test_every_item_handed_out_once_in_order_and_each_cut_at_the_crossing_item():
    """Random budgets, item bounds and items (numbers that weigh 1, texts of log-normal length, empty
    texts that weigh 0), with plain take(n) calls in between, from a generator of unknown length."""
    rng = random.Random(7)
    items = []
    for i in range(6000):
        kind = rng.random()
        items.append(i if kind < 0.3 else "" if kind < 0.35 else "x" * int(rng.lognormvariate(4, 2)))
    weights = [auto_weight(x) for x in items]
    src, weigh, out = IterableSource(x for x in items), make_weigher("auto"), []
    while True:
        start = len(out)
        if rng.random() < 0.1:
            batch = src.take(rng.randint(1, 50))
            if batch is None:
                break
            out += batch
            continue
        budget, lo = rng.lognormvariate(7, 2), rng.randint(1, 5)
        hi = rng.randint(lo, 200)
        batch, weight, ws = src.take_weighted(budget, weigh, min_items=lo, max_items=hi)
        if batch is None:
            break
        out += batch
        mine = weights[start : len(out)]
        assert batch == items[start : len(out)] and weight == pytest.approx(sum(mine))
        assert ws is None or ws == mine
        assert len(batch) <= hi
        more = len(out) < len(items)
        assert len(batch) >= lo or not more
        if len(batch) > lo:
            assert weight <= budget or len(batch) == 1  # over the budget only alone or at min_items
        if more and len(batch) < hi:
            assert weight + weights[len(out)] > budget  # the next item would have crossed it
    assert out == items and src.position == len(items)


# -- the control law in weight units (synthetic measurements) -----------------------------------------


LIMIT, BASELINE, PER_UNIT = 1 << 30, 100 * MiB, 2_000  # bytes, bytes, bytes per weight unit
SET_POINT = 0.6 * LIMIT - BASELINE  # bytes a batch may hold (the memory target, Dask's 0.6)


def _drive(weighted: bool, light: int = 3000, heavy: int = 600) -> list[tuple[int, float, float]]:
    """Items weighing 100 units then 1000 (10x heavier); each batch holds PER_UNIT bytes per unit and
    takes 1 ns per unit (the time term never binds). Returns (items, weight, peak bytes) per batch."""
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=10), memory_limit_bytes=LIMIT, weighted=weighted)
    src, weigh = IterableSource([100.0] * light * 10 + [1000.0] * heavy * 10), make_weigher(float)
    batches = []
    while True:
        budget = ctrl.next_budget() if weighted else None
        if budget is None:
            batch = src.take(ctrl.next_size())
            weight = sum(batch) if batch else 0.0
        else:
            batch, weight, _ = src.take_weighted(budget, weigh)
        if batch is None:
            return batches
        peak = weight * PER_UNIT
        batches.append((len(batch), weight, peak))
        m = BatchMeasurement(size=len(batch), duration_s=weight * 1e-9, peak_bytes=int(peak), weight=weight)
        ctrl.observe(m, baseline_bytes=BASELINE)


def test_the_budget_converges_to_the_memory_set_point_in_weight_units():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=10), memory_limit_bytes=LIMIT, weighted=True)
    assert ctrl.next_budget() is None and ctrl.next_size() == 10  # the first batch is cut by count
    for _ in range(30):
        budget = ctrl.next_budget() or 10.0
        m = BatchMeasurement(size=max(1, int(budget / 100)), duration_s=0.01, peak_bytes=int(budget * PER_UNIT))
        ctrl.observe(BatchMeasurement(m.size, m.duration_s, m.peak_bytes, weight=budget), baseline_bytes=BASELINE)
    assert ctrl.next_budget() == pytest.approx(SET_POINT / PER_UNIT, rel=0.01)
    assert ctrl.bytes_per_item == pytest.approx(PER_UNIT) and ctrl.last_decision.reason == "memory"


def test_a_baseline_above_the_set_point_keeps_one_item_batches_until_memory_frees():
    # The embeddings example on a fresh machine: the model in the tree already filled the set-point. A budget
    # of 0 cut one item, and the next decision took 0 for "no budget yet" and cut initial_batch_size again.
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=8), memory_limit_bytes=LIMIT, weighted=True)
    full = int(0.6 * LIMIT) + 10 * MiB  # resident already: above the set-point
    budgets = []
    for size in [8] + [1] * 6:
        ctrl.observe(BatchMeasurement(size, 0.05, size * 1000 * PER_UNIT, weight=size * 1000.0), baseline_bytes=full)
        budgets.append(ctrl.next_budget())
    assert budgets == [0.0] * 7 and ctrl.last_decision.reason == "memory"
    ctrl.observe(BatchMeasurement(1, 0.05, 1000 * PER_UNIT, weight=1000.0), baseline_bytes=BASELINE)
    assert ctrl.next_budget() >= 2 * 1000.0 and ctrl.last_decision.reason != "memory"  # room: growth from what ran


def test_items_ten_times_heavier_get_ten_times_fewer_per_batch_and_the_first_heavy_batch_fits():
    batches = _drive(weighted=True)
    light = [n for n, w, _ in batches if w / n == 100]
    heavy = [n for n, w, _ in batches if w / n == 1000]
    assert max(peak for *_, peak in batches) <= SET_POINT  # also the first batch of heavy items
    steady_light = light[len(light) // 2 : -1]
    assert np.median(steady_light) == pytest.approx(10 * np.median(heavy[:-1]), rel=0.02)
    assert math.isclose(np.median(steady_light), SET_POINT / PER_UNIT / 100, rel_tol=0.02)
    # Counted in items, the size learned on light items meets the heavy ones: 7x the set-point here.
    counted = _drive(weighted=False)
    assert max(peak for *_, peak in counted) > 5 * SET_POINT


# -- end to end: a 100x shift, peak RSS watched from another process ----------------------------------


SHIFT = textwrap.dedent("""
    import sys
    import numpy as np
    from batchmem import BatchProcessor
    from batchmem.heap import current_rss_bytes

    def work(batch):  # each item holds its MiB of transient memory until the batch returns
        held = [np.ones(int(mb * (1 << 20)) // 8) for _, mb in batch]
        return [i + int(h[0]) - 1 for (i, _), h in zip(batch, held)]

    weight = (lambda item: item[1]) if sys.argv[1] == "mib" else None
    limit = current_rss_bytes() + (800 << 20)
    print(limit, flush=True)
    proc = BatchProcessor(batch_size=100, batched=True, memory_limit=limit, weight=weight,
                          n_jobs=int(sys.argv[2]), backend="loky" if sys.argv[2] != "1" else None,
                          progress=False, use_history=False)
    items = list(enumerate([0.05] * 2000 + [5.0] * 600))
    s = proc.process(items, work, sys.argv[3]).stats
    print(s.items, s.weight, s.bytes_per_weight, s.weight_unit, flush=True)
""")
SHIFT_MIB = [0.05] * 2000 + [5.0] * 600


def _watch(args: list[str], kill_above: float | None = None) -> tuple[int, int, str]:
    """Run SHIFT with ``args``; return (peak RSS of its process tree, its memory limit, its stdout).
    With ``kill_above`` (a fraction of the limit) the child is killed once the tree crosses that level."""
    child = subprocess.Popen([sys.executable, "-c", SHIFT, *args], stdout=subprocess.PIPE, text=True)
    limit = int(child.stdout.readline())
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
        if kill_above is not None and peak > kill_above * limit:
            child.kill()
            child.wait()
            return peak, limit, ""
        time.sleep(0.005)
    assert child.returncode == 0
    return peak, limit, child.stdout.read()


@pytest.mark.parametrize("n_jobs", ["1", "2"])
def test_items_that_grow_100x_stay_under_the_limit_when_weighed(tmp_path, n_jobs):
    out = tmp_path / "out.jsonl"
    peak, limit, tail = _watch(["mib", n_jobs, str(out)])
    assert peak <= limit, f"peak {peak / MiB:.0f} MiB over the limit {limit / MiB:.0f} MiB"
    items, weight, per_weight, unit = tail.split()
    assert [int(line) for line in out.open()] == list(range(len(SHIFT_MIB)))  # every item once, in order
    assert int(items) == len(SHIFT_MIB) and float(weight) == pytest.approx(sum(SHIFT_MIB))
    assert unit.endswith("<lambda>")
    assert 0.5 * MiB < float(per_weight) < 2 * MiB  # each MiB of weight held about a MiB
    records = [json.loads(line) for line in open(f"{out}.batches.jsonl")]
    start = 0
    for r in records:  # each record's weight is the sum of its items' MiB
        assert r["weight"] == pytest.approx(sum(SHIFT_MIB[start : start + r["items"]]))
        start += r["items"]
    assert start == len(SHIFT_MIB)
    light = [r["items"] for r in records if r["weight"] < 0.1 * r["items"]]
    heavy = [r for r in records if r["weight"] > 4 * r["items"]]
    # Every batch of heavy items holds less than the 800 MiB room, and fewer items than the light ones
    # had: the batches are cut by weight at the shift (counted in items, the size learned on light items
    # meets the heavy ones: test_without_weights_the_same_shift_overshoots). How large the light batches
    # grow is the time band's and the machine's: 100-160 items under load, thousands on an idle machine.
    assert max(r["weight"] for r in heavy) < 800
    assert max(r["items"] for r in heavy) < max(light)


def test_without_weights_the_same_shift_overshoots(tmp_path):
    peak, limit, _ = _watch(["none", "1", str(tmp_path / "out.jsonl")], kill_above=1.0)
    assert peak > limit  # what weights are for (the child is killed as soon as it crosses)


# -- a DataFrame chunk source whose text column grows 100x --------------------------------------------


CSV_GROWS = textwrap.dedent("""
    import sys, time
    import batchmem

    def work(df):  # 1 us per character: a chunk's cost follows its text, not its rows
        time.sleep(1e-6 * float(df["text"].str.len().sum()))
        return df[["id"]]

    proc = batchmem.BatchProcessor(batched=True, max_batch_size=500, progress=False, use_history=False)
    s = proc.process(batchmem.read_csv(sys.argv[1]), work, sys.argv[2]).stats
    print(s.items, s.weight_unit, flush=True)
""")


def test_a_csv_whose_text_grows_100x_gets_fewer_rows_per_chunk_weighed_by_their_bytes(tmp_path):
    light, heavy = 20_000, 1_000
    rows = [f"{i},{'a' * (30 if i < light else 3000)}\n" for i in range(light + heavy)]
    csv = tmp_path / "grows.csv"
    csv.write_text("id,text\n" + "".join(rows))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", CSV_GROWS, str(csv), str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [str(light + heavy), "bytes in the file\n"]
    assert [json.loads(line)["id"] for line in out.open()] == list(range(light + heavy))
    records = [json.loads(line) for line in Path(f"{out}.batches.jsonl").open()]
    before, after, start = [], [], 0
    for r in records:
        if start + r["items"] <= light:
            before.append(r["items"])
        elif start >= light:  # chunks of grown rows only: weighed at their own bytes in the file
            after.append(r["items"])
            assert r["weight"] == pytest.approx(sum(map(len, rows[start : start + r["items"]])), rel=0.5)
        start += r["items"]
    assert len(after) >= 3, records
    assert np.median(after) < np.median(before[len(before) // 2 :]) / 3, (before, after)


@pytest.mark.parametrize(
    "weigh",
    [lambda x: 0, lambda x: 0 if x < 500 else 1.0, lambda x: 1.0 if x < 500 else 0],
    ids=["all-weightless", "weightless-first", "weightless-last"],
)
def test_items_that_weigh_nothing_are_batched_and_written(tmp_path, weigh):
    # empty texts or files weigh 0: no mean weight to divide a budget by, and a first batch of weight 0
    # gives no budget to grow (both raised ZeroDivisionError on the embeddings example)
    proc = BatchProcessor(weight=weigh, batched=True, progress=False, use_history=False, memory_limit="2GiB")
    result = proc.process(range(1000), lambda batch: batch, tmp_path / "out.jsonl")
    assert list(result) == list(range(1000)) and result.stats.weight == sum(weigh(x) for x in range(1000))


# -- the throughput hill-climb (synthetic measurements) and the reused free heap (real allocations) --


def _climb(
    seconds_per_unit, batches: int = 200, in_flight: int = 1
) -> tuple[BatchSizeController, list[float], list[str]]:
    """Feed a weighted controller batches of unit-weight items costing ``seconds_per_unit(budget, i)``
    per unit; with ``in_flight`` > 1 each batch reports only after the next ones were cut, as with
    workers. Returns the controller, each batch's weight and each decision's reason."""
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=100), memory_limit_bytes=LIMIT, weighted=True)
    weights, reasons, running = [], [], []
    for i in range(batches):
        budget = ctrl.next_budget()
        running.append(float(ctrl.next_size()) if budget is None else float(max(1, int(budget))))
        if len(running) < in_flight:
            continue
        w = running.pop(0)
        m = BatchMeasurement(int(w), seconds_per_unit(w, i) * w, int(w * PER_UNIT), weight=w)
        ctrl.observe(m, baseline_bytes=BASELINE, in_flight=in_flight)
        weights.append(w)
        reasons.append(ctrl.last_decision.reason)
    return ctrl, weights, reasons


def _cliff(w: float, i: int = 0) -> float:
    """Batches of up to 32 units reuse the allocator's pages: 4x cheaper per unit than larger ones."""
    return 1e-4 if w <= 32 else 4e-4


def _noisy_cliff(w: float, i: int) -> float:
    """The cliff, with the first batch below it six times dearer (another process took the CPU)."""
    return _cliff(w) * (6 if i == 2 else 1)


@pytest.mark.parametrize(
    "cost, in_flight", [(_cliff, 1), (_noisy_cliff, 1), (_cliff, 2)], ids=["serial", "noise", "in-flight"]
)
def test_the_climb_moves_to_the_cheaper_size_below_a_cost_cliff_and_probes_above_it_rarely(cost, in_flight):
    ctrl, weights, _ = _climb(cost, in_flight=in_flight)
    tail = weights[50:]
    # The time band alone would aim at 0.2 s / 4e-4 = 500 units; the climb holds the cheap side.
    assert ctrl.throughput_cap is not None and 16 <= ctrl.throughput_cap <= 32
    assert sum(w <= 32 for w in tail) >= 0.9 * len(tail)
    probes = [w for w in tail if w > 32]
    assert 1 <= len(probes) <= len(tail) / ControlConfig().probe_every + 1  # one probe up per 16 batches
    spent = sum(w * _cliff(w) + ControlConfig().batch_overhead_s for w in tail) / sum(tail)
    law = (500 * 4e-4 + ControlConfig().batch_overhead_s) / 500  # per unit in the time band's 500-unit batch
    assert spent < 0.7 * law


def test_without_a_cheaper_size_the_climb_leaves_the_law_alone():
    ctrl, weights, reasons = _climb(lambda w, i: 4e-4)
    assert ctrl.throughput_cap is None
    assert weights[-1] == pytest.approx(ControlConfig().aim_s / 4e-4, rel=0.01)  # the time band's aim
    assert "throughput" not in reasons[20:]


def test_a_dear_start_does_not_cap_the_budget_once_the_first_size_measures_cheap_again():
    # The first three batches cost 3x (one fresh worker warming up while the parent starts), then
    # the cost is flat: smaller batches look cheaper only against that start. Measuring the first
    # size again before capping finds no cheaper size (the embeddings example, n_jobs=1 on loky,
    # capped at one text without it). With batches in flight the warm-up hold already re-measures it.
    ctrl, weights, reasons = _climb(lambda w, i: 4e-4 * (3 if i < 3 else 1))
    assert ctrl.throughput_cap is None
    assert "throughput" not in reasons
    assert weights[-1] == pytest.approx(ControlConfig().aim_s / 4e-4, rel=0.01)  # the time band's aim


def test_the_cap_is_lifted_once_larger_batches_are_as_cheap():
    ctrl, weights, _ = _climb(lambda w, i: _cliff(w) if i < 60 else 1e-4, batches=160)
    assert max(weights[:60][20:]) <= 64  # capped while the cliff lasts (probes at twice the cap)
    assert ctrl.throughput_cap is None
    assert weights[-1] == pytest.approx(ControlConfig().aim_s / 1e-4, rel=0.01)


def test_a_fresh_descent_halves_at_most_two_octaves_before_a_measurement_asks_for_more():
    # Flat costs: nothing says smaller batches pay, so the descent stops two octaves below the first
    # batch (100 units) instead of halving until the per-batch overhead shows (it went down to 12).
    _, weights, _ = _climb(lambda w, i: 4e-4, batches=10)
    assert min(weights) >= 100 / 4, weights


def test_falling_costs_lead_the_descent_further_down():
    # Each halving is cheaper: the measurements ask for smaller batches, down to the cheap 8 units.
    _, weights, _ = _climb(lambda w, i: 1e-4 if w <= 8 else 1e-4 * w / 8, batches=40)
    assert min(weights[:12]) <= 8, weights


@pytest.mark.parametrize("state, cap", [("capped", 32.0), ("off", None)])
def test_a_warm_start_resumes_the_climb_where_the_last_run_left_it(state, cap):
    warm = {"batch_size": 500, "climb": state, "throughput_cap": cap, "seconds_per_item": 4e-4}
    ctrl = BatchSizeController(ControlConfig(), memory_limit_bytes=LIMIT, warm_start=warm, weighted=True)
    assert ctrl.next_budget() == 500  # the learned budget, weight units
    sizes, reasons = [], []
    for _ in range(8):
        w = float(max(1, int(ctrl.next_budget())))
        ctrl.observe(BatchMeasurement(int(w), _cliff(w) * w, int(w * PER_UNIT), weight=w), baseline_bytes=BASELINE)
        sizes.append(w)
        reasons.append(ctrl.last_decision.reason)
    if state == "capped":  # held at the cap from the first decision, no descent from 500 first
        assert sizes[1:] == [32.0] * 7 and ctrl.throughput_cap == 32.0
    else:  # the last run found no cheaper size: no probing this time either
        assert "probe" not in reasons and ctrl.throughput_cap is None


REUSE_CHILD = r"""
import ctypes, json
from batchmem.backends.serial import SerialExecutor
from batchmem.backends.worker import BatchTask, RunOptions, run_batch
from batchmem.heap import current_rss_bytes

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
block, count, pins = 100 << 10, 300, []  # blocks under glibc's 128 KiB mmap threshold: heap chunks

def touch_and_free(items, count=count):
    ptrs = [libc.malloc(block) for _ in range(count)]
    for p in ptrs:
        ctypes.memset(p, 1, block)
    pins.append(libc.malloc(block))  # after the blocks: from the top of the heap, which it pins
    for p in ptrs:
        libc.free(p)
    return items

opts, seen = RunOptions(batched=True), {}
for name in ("first", "again"):
    o = run_batch(touch_and_free, BatchTask(0, 0, [1, 2]), opts)
    seen[name] = [o.peak_bytes, o.free_heap_bytes, o.free_heap_end_bytes]
seen["baseline"] = SerialExecutor(touch_and_free, opts).memory_plan(o, 500 << 20, 0, None)[0]
touch_and_free(None, 6 * count)  # 180 MiB freed outside any batch: more than twice the last batch's peak
before = current_rss_bytes()
o = run_batch(lambda items: items, BatchTask(2, 4, [5, 6]), opts)
seen["foreign"] = [o.peak_bytes, o.free_heap_bytes, before - current_rss_bytes()]
print(json.dumps(seen))
"""


def test_a_batch_that_reuses_free_heap_counts_it_in_its_peak():
    """Real allocations in a fresh process: a batch touches 30 MiB of heap blocks and frees them (a
    block allocated after them pins the heap top, so glibc keeps the pages); the next batch mallocs
    the same blocks again, barely moves RSS, and its peak must still read ~30 MiB. Free heap left by
    work outside the batches goes back to the kernel instead of being counted in every peak."""
    from batchmem.heap.malloc import heap_free_bytes

    if heap_free_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    out = subprocess.run([sys.executable, "-c", REUSE_CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen, used = json.loads(out.stdout), 300 * (100 << 10)
    peak, _, left = seen["first"]
    assert peak >= 0.9 * used and left >= 0.9 * used  # its blocks, then left free for the next batch
    peak, counted, left = seen["again"]
    assert counted >= 0.9 * used  # what the first batch left free
    assert peak - counted < 0.5 * used  # RSS hardly moved: the pages were reused
    assert peak >= 0.9 * used  # and still the batch's peak counts them
    # The optimizer's baseline leaves out what the next batch here may reuse: counted in its peak.
    assert seen["baseline"] == 500 * MiB - left
    peak, counted, released = seen["foreign"]
    assert counted == 0 and peak < 0.5 * used  # 180 MiB of older free heap is not counted ...
    assert released > 4 * used  # ... but handed back to the kernel


LIGHT_AFTER_HEAVY_CHILD = (
    REUSE_CHILD.split("opts, seen")[0]
    + r"""
opts = RunOptions(batched=True)
heavy = run_batch(touch_and_free, BatchTask(0, 0, [1, 2], weight=30.0), opts)
light = [run_batch(lambda items: items, BatchTask(i, i + 2, [i], weight=0.1), opts) for i in range(1, 4)]
print(json.dumps({"heavy": heavy.peak_bytes, "light": [o.peak_bytes for o in light]}))
"""
)


def test_light_batches_after_a_heavy_one_do_not_count_its_free_heap():
    """The heavy batch's 30 MiB of freed heap is no light batch's peak: counted, each light batch's
    peak would keep it counted for the next, and batches under a tight limit would stay at one item."""
    from batchmem.heap.malloc import heap_free_bytes

    if heap_free_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    out = subprocess.run([sys.executable, "-c", LIGHT_AFTER_HEAVY_CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen, used = json.loads(out.stdout), 300 * (100 << 10)
    assert seen["heavy"] >= 0.9 * used
    assert all(peak < 0.1 * used for peak in seen["light"]), seen["light"]
