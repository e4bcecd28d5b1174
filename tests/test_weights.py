"""Item weights: the "auto" rule, the batcher's cut at the weight budget, the control law in weight units,
and, end to end with peak RSS watched from outside, items that grow 100x mid-run."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from batchmem.errors import ConfigError
from batchmem.io.sources import IterableSource
from batchmem.optimizer.control import BatchMeasurement, BatchSizeController, ControlConfig
from batchmem.weights import CONTAINER_CAP, auto_weight, make_weigher

MiB = 1 << 20


def test_auto_weight_rule(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1234)
    assert auto_weight("abc") == 3 and auto_weight(b"ab") == 2 and auto_weight(bytearray(5)) == 5
    assert auto_weight(memoryview(b"abcd")) == 4
    assert auto_weight(np.zeros(10, dtype=np.float64)) == 80
    assert auto_weight(path) == 1234 and auto_weight(tmp_path / "missing") == 1
    assert auto_weight({"a": "xx", "b": "yyy"}) == 5 and auto_weight(["ab", b"c", 7]) == 4
    assert auto_weight(7) == 1 and auto_weight(None) == 1 and auto_weight(object()) == 1
    long = ["ab"] * (CONTAINER_CAP * 3)
    assert auto_weight(long) == 2 * len(long)  # values past the cap count at the mean of those weighed


def test_numbers_are_counted_at_no_cost_and_a_bad_callable_names_the_value():
    weigh = make_weigher("auto")
    assert weigh([1, 2.5, None, True]) is None and weigh(["a", 1]) == [1.0, 1.0]
    assert make_weigher(None) is None
    with pytest.raises(ConfigError, match=r"^weight: .* returned -1.0; a weight must be a finite number >= 0"):
        make_weigher(lambda x: -1)(["a"])
    with pytest.raises(ConfigError, match="weight: 3 is not 'auto'"):
        make_weigher(3)


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
    batches = _cut_all(items, 100)
    assert [len(b) for b in batches] == [5, 1, 1, 3]
    assert all(sum(map(len, b)) <= 100 or len(b) == 1 for b in batches)


def test_every_item_handed_out_once_in_order_within_the_item_bounds():
    rng = random.Random(7)
    items = ["x" * int(rng.lognormvariate(4, 2)) for _ in range(3000)]
    batches = _cut_all(items, 5000, min_items=3, max_items=40)
    assert [x for b in batches for x in b] == items
    assert all(len(b) <= 40 for b in batches) and all(len(b) >= 3 for b in batches[:-1])


def test_the_budget_converges_to_the_memory_set_point_and_heavier_items_get_fewer_per_batch():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=10), memory_limit_bytes=1 << 30, weighted=True)
    per_unit = 2_000  # bytes per weight unit
    items_light = []
    for _ in range(30):
        budget = ctrl.next_budget() or 10.0
        ctrl.observe(
            BatchMeasurement(
                size=max(1, int(budget / 100)), duration_s=0.01, peak_bytes=int(budget * per_unit), weight=budget
            ),
            baseline_bytes=100 * MiB,
        )
        items_light.append(budget / 100)  # items of weight 100 that fit
    target = (0.6 * (1 << 30) - 100 * MiB) / per_unit
    assert ctrl.next_budget() == pytest.approx(target, rel=0.05)
    assert math.isclose(ctrl.next_budget() / 1000, items_light[-1] / 10, rel_tol=0.05)  # 10x heavier: 10x fewer


SHIFT = textwrap.dedent("""
    import sys
    import numpy as np
    from batchmem import BatchProcessor
    from batchmem.heap import current_rss_bytes

    def work(batch):
        held = [np.ones(int(mb * (1 << 20)) // 8) for mb in batch]
        return [float(h[0]) for h in held]

    weight = (lambda mb: mb) if sys.argv[1] == "mib" else None
    limit = current_rss_bytes() + (800 << 20)
    print(limit, flush=True)
    proc = BatchProcessor(batch_size=100, batched=True, memory_limit=limit, weight=weight,
                          n_jobs=int(sys.argv[2]), backend="loky" if sys.argv[2] != "1" else None,
                          progress=False, use_history=False)
    result = proc.process([0.05] * 2000 + [5.0] * 600, work, sys.argv[3])
    print(result.stats.items, result.stats.weight_unit, result.stats.bytes_per_weight, flush=True)
""")


def _watch(args: list[str]) -> tuple[int, int, str]:
    child = subprocess.Popen([sys.executable, "-c", SHIFT, *args], stdout=subprocess.PIPE, text=True)
    limit = int(child.stdout.readline())
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.005)
    assert child.returncode == 0
    return peak, limit, child.stdout.read()


@pytest.mark.parametrize("n_jobs", ["1", "2"])
def test_items_that_grow_100x_stay_under_the_limit_when_weighed(tmp_path, n_jobs):
    out = tmp_path / "out.jsonl"
    peak, limit, tail = _watch(["mib", n_jobs, str(out)])
    items, unit, per_weight = tail.split()
    assert int(items) == 2600 and sum(1 for _ in open(out)) == 2600
    assert unit.endswith("<lambda>") and float(per_weight) > 0
    assert peak <= limit, f"peak {peak / MiB:.0f} MiB over the limit {limit / MiB:.0f} MiB"
    records = [line for line in open(str(out) + ".batches.jsonl")]
    assert all('"weight":' in r for r in records)


def test_without_weights_the_same_shift_overshoots(tmp_path):
    peak, limit, _ = _watch(["none", "1", str(tmp_path / "out.jsonl")])
    assert peak > limit  # what weights are for
