"""The control law with synthetic measurements: no processes, no real memory, no clock."""

from __future__ import annotations

import random

import pytest

from batchmem.errors import ConfigError
from batchmem.heap.monitor import PressureLevel
from batchmem.optimizer import BatchMeasurement, BatchOptimizer, BatchSizeController, ControlConfig

GB = 1_000_000_000
MB = 1_000_000


def simulate(
    ctrl: BatchSizeController,
    *,
    per_item_bytes: float,
    per_item_s: float = 2e-5,
    baseline: int = 100 * MB,
    batches: int = 15,
    noise: float = 0.05,
    seed: int = 0,
    in_flight: int = 1,
) -> list[int]:
    """Run ``batches`` synthetic batches; return the sizes used, then the final next size."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(batches):
        size = ctrl.next_size()
        sizes.append(size)
        peak = int(per_item_bytes * size * rng.uniform(1 - noise, 1 + noise))
        duration = per_item_s * size * rng.uniform(1 - noise, 1 + noise)
        ctrl.observe(BatchMeasurement(size, duration, peak), baseline_bytes=baseline, in_flight=in_flight)
    sizes.append(ctrl.next_size())
    return sizes


def expected_memory_size(
    limit: int, baseline: int, per_item: float, fraction: float = 0.6, in_flight: int = 1
) -> float:
    return (fraction * limit - baseline) / (per_item * in_flight)


# -- configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_batch_size": 0}, "min_batch_size"),
        ({"min_batch_size": 10, "max_batch_size": 5, "initial_batch_size": 5}, "max_batch_size"),
        ({"initial_batch_size": 0}, "batch_size"),  # checked as the option batch_size of batchmem.options
        ({"max_batch_size": 50}, "batch_size"),
        ({"min_batch_size": 2.5}, "min_batch_size"),
        ({"memory_target_fraction": 0}, "memory_target_fraction"),
        ({"memory_target_fraction": 1.5}, "memory_target_fraction"),
        ({"target_batch_seconds": (2.0, 0.2)}, "target_batch_seconds"),
        ({"target_batch_seconds": (0, 1)}, "target_batch_seconds"),
        ({"target_batch_seconds": (1,)}, "target_batch_seconds"),
        ({"ewma_alpha": 0}, "ewma_alpha"),
        ({"ewma_alpha": 1.2}, "ewma_alpha"),
        ({"growth_factor": 1.0}, "growth_factor"),
        ({"shrink_factor": 1.0}, "shrink_factor"),
        ({"shrink_factor": 0}, "shrink_factor"),
        ({"outlier_ratio": 1}, "outlier_ratio"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        ControlConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_accepts_list_band_and_defaults():
    cfg = ControlConfig(target_batch_seconds=[0.1, 1])
    assert cfg.target_batch_seconds == (0.1, 1.0)
    d = ControlConfig()
    assert (d.memory_target_fraction, d.target_batch_seconds) == (0.6, (0.2, 2.0))


@pytest.mark.parametrize("limit", [0, -5, 1.5, "2GB"])
def test_bad_memory_limit(limit):
    with pytest.raises(ConfigError, match="memory_limit"):
        BatchSizeController(ControlConfig(), limit)


# -- the law -----------------------------------------------------------------


def test_grows_multiplicatively_when_there_is_room():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=10, max_growth_factor=2.0), 64 * GB)
    sizes = simulate(ctrl, per_item_bytes=1_000, per_item_s=1e-5, batches=4)
    assert sizes[:5] == [10, 20, 40, 80, 160]
    assert ctrl.last_decision.reason == "growth"


def test_cold_start_grows_up_to_8x_while_batches_are_far_below_the_time_aim():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=100), 64 * GB)
    sizes = simulate(ctrl, per_item_bytes=100, per_item_s=1e-7, batches=8, noise=0.0)
    assert sizes[:4] == [100, 800, 6400, 51200]  # 8x while a batch takes < aim / 8
    steady = ctrl.config.aim_s / 1e-7  # 2,000,000 items, above max_batch_size
    assert sizes[-1] == min(ctrl.config.max_batch_size, steady)  # steady after 6 batches, not 14 doublings
    near = BatchSizeController(ControlConfig(initial_batch_size=100), 64 * GB)
    near.observe(BatchMeasurement(100, 0.05, 100), baseline_bytes=0)  # a quarter of the aim: x4 only
    assert near.next_size() == 400


@pytest.mark.parametrize(
    ("level", "factor"),
    [(PressureLevel.WARNING, 0.5), (PressureLevel.CRITICAL, 0.25), (PressureLevel.EMERGENCY, 0.125)],
)
def test_shrinks_under_pressure(level, factor):
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=1000), 64 * GB)
    nxt = ctrl.observe(BatchMeasurement(1000, 0.1, 1000 * 100), baseline_bytes=GB, pressure=level)
    assert nxt == int(1000 * factor)
    assert ctrl.last_decision.reason == "pressure"


def test_no_shrink_at_normal_pressure_and_int_levels_accepted():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=1000), 64 * GB)
    assert ctrl.observe(BatchMeasurement(1000, 0.1, 1000), baseline_bytes=GB, pressure=PressureLevel.NORMAL) == 2000
    assert ctrl.observe(BatchMeasurement(2000, 0.2, 2000), baseline_bytes=GB, pressure=1) == 1000


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [GB, 2 * GB])
@pytest.mark.parametrize("per_item", [200_000, 500_000, 1_000_000])
def test_converges_to_memory_target_within_15_batches(seed, limit, per_item):
    baseline = 150 * MB
    expected = expected_memory_size(limit, baseline, per_item)
    # duration = 2e-5 s * size: the time aim (0.2 s) is ~10000 items, above every
    # expected memory size here, so memory is what binds.
    assert expected < 9000
    ctrl = BatchSizeController(ControlConfig(), limit)
    sizes = simulate(ctrl, per_item_bytes=per_item, baseline=baseline, seed=seed, batches=15)
    assert abs(sizes[-1] - expected) <= 0.2 * expected, (sizes, expected)
    assert ctrl.last_decision.reason == "memory"
    # the predicted peak of the chosen size is under the target (within noise)
    assert baseline + sizes[-1] * ctrl.bytes_per_item <= 0.6 * limit * 1.05


def test_time_binds_when_memory_is_ample():
    ctrl = BatchSizeController(ControlConfig(), 2 * GB)
    sizes = simulate(
        ctrl, per_item_bytes=20_000, baseline=150 * MB, batches=15, per_item_s=1e-4
    )  # memory would allow 52500
    assert 0.2 <= sizes[-1] * 1e-4 <= 2.0
    assert sizes[-1] < 10_000


def test_converges_from_above_when_initial_is_too_large():
    limit, baseline, per_item = GB, 100 * MB, 500_000
    expected = expected_memory_size(limit, baseline, per_item)  # 1000
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=20_000), limit)
    sizes = simulate(ctrl, per_item_bytes=per_item, baseline=baseline, batches=3)
    assert abs(sizes[-1] - expected) <= 0.2 * expected


def test_in_flight_divides_the_memory_size():
    limit, baseline, per_item = 2 * GB, 200 * MB, 500_000  # 2000 items alone, 500 with four in flight
    one = BatchSizeController(ControlConfig(), limit)
    four = BatchSizeController(ControlConfig(), limit)
    simulate(one, per_item_bytes=per_item, baseline=baseline, noise=0, in_flight=1, batches=15)
    simulate(four, per_item_bytes=per_item, baseline=baseline, noise=0, in_flight=4, batches=15)
    assert one.memory_target_size(baseline, 4) == one.memory_target_size(baseline, 1) // 4
    expected4 = expected_memory_size(limit, baseline, per_item, in_flight=4)
    assert abs(four.next_size() - expected4) <= 0.05 * expected4
    assert abs(one.next_size() / four.next_size() - 4) < 0.1


def test_no_memory_limit_sizes_by_time_to_the_aim():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=1), None)
    sizes = simulate(ctrl, per_item_bytes=10**9, per_item_s=1e-3, batches=15, noise=0)
    assert ctrl.memory_target_size(0) is None
    final_s = sizes[-1] * 1e-3
    assert 0.2 <= final_s <= 2.0
    assert abs(final_s - ControlConfig().aim_s) < 0.05


def test_long_batches_shrink_to_the_aim_and_inside_band_holds():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=10_000), None)
    nxt = ctrl.observe(BatchMeasurement(10_000, 10.0, 0), baseline_bytes=0)  # 1 ms per item, 10 s batch
    assert nxt == pytest.approx(200, abs=2)  # 0.2 s at 1 ms per item
    assert ctrl.last_decision.reason == "time"
    # A 1.5 s batch is inside the band: the time term does not shrink it.
    hold = BatchSizeController(ControlConfig(initial_batch_size=1500), None)
    assert hold.observe(BatchMeasurement(1500, 1.5, 0), baseline_bytes=0) == 1500
    assert hold.last_decision.reason == "hold"


def _steady(per_item=100_000, limit=GB, baseline=100 * MB) -> BatchSizeController:
    ctrl = BatchSizeController(ControlConfig(), limit)
    simulate(ctrl, per_item_bytes=per_item, baseline=baseline, noise=0, batches=15)
    return ctrl


@pytest.mark.parametrize("factor", [10.0, 100.0, 0.1, 0.0])
def test_one_outlier_does_not_halve_or_double_the_size(factor):
    ctrl = _steady()
    before = ctrl.next_size()
    after = ctrl.observe(
        BatchMeasurement(before, 2e-5 * before * factor, int(100_000 * before * factor)), baseline_bytes=100 * MB
    )
    assert before / 2 < after < before * 2, (before, after)
    # and the next normal batch brings it back near the target
    back = simulate(ctrl, per_item_bytes=100_000, baseline=100 * MB, noise=0, batches=5)[-1]
    assert abs(back - before) <= 0.2 * before


def test_a_level_shift_is_followed_quickly():
    ctrl = _steady()
    for _ in range(2):
        size = ctrl.next_size()
        ctrl.observe(BatchMeasurement(size, 1e-4 * size, 1_000_000 * size), baseline_bytes=100 * MB)
    expected = expected_memory_size(GB, 100 * MB, 1_000_000)  # 500
    assert abs(ctrl.next_size() - expected) <= 0.2 * expected
    assert ctrl.bytes_per_item == pytest.approx(1_000_000)


def test_ceiling_after_memory_error_binds_then_rises_additively():
    ctrl = BatchSizeController(ControlConfig(initial_batch_size=1000, min_batch_size=4), 64 * GB)
    assert ctrl.on_memory_error(1000) == 500
    assert ctrl.ceiling == 500
    sizes = simulate(ctrl, per_item_bytes=1, per_item_s=1e-6, batches=4)
    assert sizes[0] == 500 and ctrl.last_decision.reason == "ceiling"
    assert sizes == sorted(sizes) and max(sizes) <= 500 + 4 * 500 / 8  # an eighth of the cap per success
    ctrl.on_memory_error(ctrl.next_size())
    assert ctrl.next_size() <= 400
    simulate(ctrl, per_item_bytes=1, per_item_s=1e-6, batches=200)
    assert ctrl.ceiling is None  # back past twice the size that failed: the ceiling is gone
    ctrl.on_memory_error(900)
    ctrl.on_memory_error(1800)  # a larger failing size never raises the ceiling
    assert ctrl.ceiling == 450
    ctrl.on_memory_error(5)
    assert ctrl.ceiling == 4 and ctrl.next_size() == 4  # never below min_batch_size


def test_all_failed_batch_does_not_move_estimates():
    ctrl = _steady()
    bpi, spi = ctrl.bytes_per_item, ctrl.seconds_per_item
    ctrl.observe(BatchMeasurement(100, 0.0001, 0, failed=100), baseline_bytes=100 * MB)
    assert (ctrl.bytes_per_item, ctrl.seconds_per_item) == (bpi, spi)


def test_warm_start_seeds_size_and_estimates():
    ctrl = BatchSizeController(
        ControlConfig(), GB, warm_start={"batch_size": 5000, "bytes_per_item": 100_000, "seconds_per_item": 1e-4}
    )
    assert ctrl.next_size() == 5000
    assert ctrl.bytes_per_item == 100_000
    # the learned size is already at the memory target: the first batch keeps it
    nxt = ctrl.observe(BatchMeasurement(5000, 0.5, 5000 * 100_000), baseline_bytes=100 * MB)
    assert abs(nxt - 5000) <= 50
    assert (
        BatchSizeController(ControlConfig(max_batch_size=300), GB, warm_start={"batch_size": 5000}).next_size() == 300
    )
    warm = BatchSizeController(ControlConfig(), GB, warm_start={"batch_size": 5000, "bytes_per_item": 1_000_000})
    assert warm.cap_to_memory(100 * MB) == 500


@pytest.mark.parametrize("seed", range(30))
def test_never_leaves_its_bounds(seed):
    rng = random.Random(seed)
    cfg = ControlConfig(
        min_batch_size=rng.randint(1, 20),
        max_batch_size=rng.randint(50, 100_000),
        initial_batch_size=50,
        growth_factor=rng.choice([1.1, 2.0, 4.0]),
        shrink_factor=rng.choice([0.1, 0.5, 0.9]),
        ewma_alpha=rng.choice([0.05, 0.3, 1.0]),
    )
    ctrl = BatchSizeController(cfg, rng.choice([None, MB, GB, 64 * GB]))
    for _ in range(300):
        size = ctrl.next_size()
        assert cfg.min_batch_size <= size <= cfg.max_batch_size
        if ctrl.ceiling is not None:
            assert size <= ctrl.ceiling
        if rng.random() < 0.03:
            ctrl.on_memory_error(rng.randint(1, 2 * size))
            continue
        actual = rng.randint(1, size)  # the source may run short
        m = BatchMeasurement(
            actual,
            rng.choice([0.0, rng.expovariate(1.0), rng.uniform(0, 100)]),
            rng.choice([0, rng.randint(0, 10**6) * actual, rng.randint(0, 10**12)]),
            failed=rng.randint(0, actual),
        )
        nxt = ctrl.observe(
            m,
            baseline_bytes=rng.randint(0, 2 * 64 * GB),
            pressure=rng.choice(list(PressureLevel)),
            in_flight=rng.randint(1, 16),
        )
        assert nxt == ctrl.next_size()
        assert cfg.min_batch_size <= nxt <= cfg.max_batch_size
        if ctrl.ceiling is not None:
            assert nxt <= ctrl.ceiling


# -- the facade ----------------------------------------------------------------


def test_optimizer_facade_run_without_history():
    opt = BatchOptimizer(memory_limit_bytes=GB, operation="synthetic", use_history=False)
    first = opt.start_run()
    assert first == 100
    size = first
    for _ in range(12):
        size = opt.observe(BatchMeasurement(size, 2e-5 * size, 100_000 * size), baseline_bytes=100 * MB, in_flight=1)
    stats = opt.get_batch_statistics()
    live = stats["current_run"]
    assert live["operation"] == "synthetic" and live["batches"] == 12
    assert live["batch_sizes"][:2] == [100, 800]  # 2 ms batches: 8x growth toward the 0.2 s aim
    assert live["next_batch_size"] == size
    assert any("memory target" in r for r in stats["recommendations"])
    assert opt.calculate_optimal_batch_size(range(10)) == 10
    assert opt.calculate_optimal_batch_size(range(10**6)) == size
    assert opt.calculate_optimal_batch_size(x for x in range(3)) == size  # unsized: no clip
    assert opt.calculate_optimal_batch_size([], operation="other") == 1
    opt.finish_run({"items": 1})  # no history: nothing written, no error


def test_facade_pressure_and_memory_error_recommendations():
    opt = BatchOptimizer(memory_limit_bytes=64 * GB, use_history=False)
    opt.start_run("op")
    opt.observe(BatchMeasurement(100, 0.01, 100), baseline_bytes=MB, pressure=PressureLevel.WARNING)
    opt.on_memory_error(50)
    recs = opt.get_batch_statistics("op")["recommendations"]
    assert any("pressure" in r for r in recs)
    assert any("MemoryError" in r and "25" in r for r in recs)
    assert opt.get_batch_statistics("op")["current_run"]["pressure_batches"] == {"warning": 1}
