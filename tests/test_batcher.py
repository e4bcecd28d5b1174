"""Batch cutting: size caps are policies in a list, and the strictest answer wins."""

from __future__ import annotations

import dataclasses

from batchmem import BatchProcessor
from batchmem.batcher import Ask, Backpressure, SecondsCap, TailBalance, strictest
from batchmem.io.sources import IterableSource, SourceBase


class _Executor:
    in_flight = 4
    batch_seconds_cap: float | None = 0.05


class _AtMost:
    def __init__(self, n: int):
        self.n = n

    def cap(self, ask: Ask) -> Ask:
        return dataclasses.replace(ask, size=min(ask.size, self.n))


def test_the_strictest_size_and_budget_win():
    ask = Ask(size=1000, budget=500.0, start=0, weighted=True)
    out = strictest(ask, [_AtMost(300), _AtMost(40), SecondsCap(_Executor(), lambda: 0.001)])
    assert (out.size, out.budget) == (40, 50.0)  # 0.05 s / 0.001 s per unit
    assert strictest(ask, []) == ask


def test_tail_balance_shares_the_last_items_and_backpressure_caps():
    source = IterableSource(range(100))
    tail = TailBalance(source, _Executor(), lambda: None)
    assert tail.cap(Ask(50, None, 60, False)).size == 5  # ceil(40 left / (2 x 4 in flight))
    assert Backpressure(lambda n: min(n, 3)).cap(Ask(50, None, 0, False)).size == 3


def test_a_new_cap_is_one_policy_in_the_list(tmp_path, monkeypatch):
    import batchmem.batcher as batcher

    caps = batcher.Batcher.default_caps
    monkeypatch.setattr(batcher.Batcher, "default_caps", lambda self, *a: [*caps(self, *a), _AtMost(7)])
    result = BatchProcessor(batch_size=50, progress=False).process(range(100), abs, output=tmp_path / "o.jsonl")
    assert list(result) == list(range(100))
    assert max(result.stats.batch_sizes) <= 7


class _Countdown(SourceBase):
    """The least a source writes: ``take``; the base class gives skip, take_weighted and the rest."""

    def __init__(self, n: int):
        self.left, self.position = n, 0

    def take(self, n: int) -> list[int] | None:
        batch = list(range(self.position, self.position + min(n, self.left)))
        self.left -= len(batch)
        self.position += len(batch)
        return batch or None


def test_a_source_subclassing_the_base_class_runs(tmp_path):
    source = _Countdown(30)
    assert source.skip(5) == 5 and source.position == 5
    result = BatchProcessor(batch_size=4, progress=False).process(source, abs, output=tmp_path / "o.jsonl")
    assert list(result) == list(range(5, 30))
