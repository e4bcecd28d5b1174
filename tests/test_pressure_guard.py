"""The pressure escalation driven by fake memory samples: no allocation, no sleeping beyond the poll."""

from __future__ import annotations

import dataclasses

from batchmem.heap.gc_watch import ThrottledCollector
from batchmem.heap.monitor import MemorySample, PressureLevel, PressureThresholds
from batchmem.heap.pressure import PressureCallbacks, PressureGuard

LIMIT = 1000
THRESHOLDS = PressureThresholds()


def sample(rss: int) -> MemorySample:
    u = rss / LIMIT
    return MemorySample(0.0, rss, 0, LIMIT, "test", u, THRESHOLDS.level(u))


class Feed:
    """``sample()`` returns the queued readings in turn, then the last one forever."""

    def __init__(self, *rss: int):
        self.readings = [sample(r) for r in rss]
        self.taken = 0

    def __call__(self) -> MemorySample:
        self.taken += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def guard(feed: Feed, **kw) -> tuple[PressureGuard, list[str], PressureCallbacks]:
    stops: list[str] = []
    callbacks = PressureCallbacks()
    g = PressureGuard(
        THRESHOLDS,
        feed,
        collector=ThrottledCollector(1.0),
        stop=stops.append,
        stopped=lambda: bool(stops),
        callbacks=callbacks,
        min_batch_size=2,
        **kw,
    )
    g.poll_s = 0.001
    return g, stops, callbacks


def test_warning_runs_callbacks_and_collects_but_does_not_pause():
    g, stops, callbacks = guard(Feed(100))
    fired = []
    callbacks.register("warning", lambda: fired.append("w"), cooldown_s=0)
    g.after_batch(sample(850), items_written=10)
    assert fired == ["w"] and g.collector.runs == 1 and not stops
    assert g.before_dispatch(64) == 64  # warning only shrinks through the control law


def test_critical_pauses_dispatch_until_pressure_falls_then_resumes_full_size():
    feed = Feed(920, 910, 700)  # two critical readings while paused, then normal
    g, stops, _ = guard(feed, max_wait_s=5.0)
    g.after_batch(sample(920), items_written=10)
    assert g.before_dispatch(64) == 64
    assert g.pauses == 1 and feed.taken == 3 and g.last_pressure == PressureLevel.NORMAL


def test_critical_that_does_not_fall_gives_up_at_min_batch_size():
    g, _, _ = guard(Feed(920), max_wait_s=0.02)
    g.after_batch(sample(920), items_written=10)
    assert g.before_dispatch(64) == 2 and g.pause_timeouts == 1
    assert g.before_dispatch(64) == 2  # no second wait while it stays critical


def test_emergency_runs_cleanup_once_and_stops_with_the_reason():
    g, stops, callbacks = guard(Feed(100))
    cleaned = []
    callbacks.register("emergency", lambda: cleaned.append(1), cooldown_s=0)
    g.after_batch(sample(960), items_written=42)
    g.after_batch(sample(970), items_written=43)  # already stopping: no second stop
    assert cleaned == [1, 1] and len(stops) == 1
    assert stops[0].startswith("memory pressure emergency") and "after 42 items" in stops[0]
    kinds = [i.kind for i in g.issues()]
    assert kinds == ["emergency_stop", "pressure"]
    assert dataclasses.asdict(g.issues()[1])["evidence"]["emergency_batches"] == 2
