"""Cutting batches: the next batch's size (or weight budget), asked just before the cut.

:class:`Batcher` asks the optimizer for the next size (items) or weight budget,
then asks every size policy in a list and takes the strictest answer, then cuts
the batch from the source (:meth:`batchmem.io.source_base.BatchSource.take` or
``take_weighted``). Each cap is a small policy object, as Ray Data's
``backpressure_policy/`` directory keeps each limit on what may run next
(``python/ray/data/_internal/execution/backpressure_policy/``):

* :class:`SecondsCap`: no batch longer than the executor's ``batch_seconds_cap``;
* :class:`TailBalance`: the tail of a sized source shared by every worker;
* :class:`Backpressure`: pause at critical memory pressure, then ``min_batch_size``.

A new cap is one class added to :meth:`Batcher.policies`, not a branch in the run loop.
Not here: what a batch costs (the optimizer, :mod:`batchmem.optimizer`) and what
happens to it once cut (the run loop, :mod:`batchmem.run`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .backends import BatchTask, Executor
from .errors import BatchmemError, SourceFailedError
from .io.source_base import BatchSource
from .optimizer import BatchOptimizer
from .options import Batching
from .weights import make_weigher, weight_unit

__all__ = ["Ask", "Backpressure", "Batcher", "SecondsCap", "SizePolicy", "TailBalance", "strictest"]

#: Shortest batch the tail balance cuts (seconds of work, from the run's seconds per item): the
#: last worker to finish idles at most about this long, while shrinking on to single items pays a
#: round trip per item (benchmarks/bench_peers.py).
TAIL_MIN_BATCH_S = 0.01


@dataclass(frozen=True)
class Ask:
    """The next batch as asked: ``size`` items, or up to ``budget`` weight units (None: cut by count).

    ``start`` is the input index of its first item; ``weighted`` says whether the run budgets in weight.
    """

    size: int
    budget: float | None
    start: int
    weighted: bool


class SizePolicy(Protocol):
    """A cap on the next batch: returns ``ask`` or a smaller one (never larger)."""

    def cap(self, ask: Ask) -> Ask: ...


def strictest(ask: Ask, policies: list[SizePolicy]) -> Ask:
    """Ask every policy about ``ask`` and keep the smallest size and the smallest budget."""
    answers = [p.cap(ask) for p in policies]
    size = min((a.size for a in answers), default=ask.size)
    budget = None if ask.budget is None else min((a.budget for a in answers), default=ask.budget)
    return dataclasses.replace(ask, size=min(size, ask.size), budget=budget)


class SecondsCap:
    """No batch longer than the executor's ``batch_seconds_cap`` (``n_jobs="auto"`` while its workers
    start), predicted from the seconds per item (or weight unit) measured so far. No cap without an
    estimate, or for the first batch of a weighted run, which is cut by count."""

    def __init__(self, executor: Executor, seconds_per_unit: Callable[[], float | None]):
        self.executor, self.seconds_per_unit = executor, seconds_per_unit

    def cap(self, ask: Ask) -> Ask:
        cap_s = self.executor.batch_seconds_cap
        if cap_s is None or (ask.weighted and ask.budget is None):
            return ask
        per_unit = self.seconds_per_unit()
        if not per_unit:
            return ask
        if ask.budget is not None:
            return dataclasses.replace(ask, budget=min(ask.budget, cap_s / per_unit))
        return dataclasses.replace(ask, size=min(ask.size, max(1, int(cap_s / per_unit))))


class TailBalance:
    """Share the tail of a sized source among the workers.

    With ``W`` batches in flight and ``R`` items left, no batch takes more than ``ceil(R / (2 W))``
    items, so the last batches shrink geometrically instead of one worker running a full-size last
    batch while the others idle (benchmarks/bench_core.py parallel). They stop shrinking at
    :data:`TAIL_MIN_BATCH_S` of work. Serial runs and sources of unknown length are not capped.
    """

    def __init__(self, source: BatchSource, executor: Executor, seconds_per_unit: Callable[[], float | None]):
        self.source, self.executor, self.seconds_per_unit = source, executor, seconds_per_unit

    def cap(self, ask: Ask) -> Ask:
        total, width = self.source.total, self.executor.in_flight
        if total is None or width <= 1:
            return ask
        left = total - ask.start
        per_item = None if ask.weighted else self.seconds_per_unit()
        floor = int(TAIL_MIN_BATCH_S / per_item) if per_item else 1
        return dataclasses.replace(ask, size=max(1, min(ask.size, max(floor, -(-left // (2 * width))))))


class Backpressure:
    """Pause while memory pressure is critical; then cut at most ``min_batch_size`` items
    (:meth:`batchmem.heap.pressure.PressureGuard.before_dispatch`)."""

    def __init__(self, before_dispatch: Callable[[int], int]):
        self.before_dispatch = before_dispatch

    def cap(self, ask: Ask) -> Ask:
        return dataclasses.replace(ask, size=self.before_dispatch(ask.size))


class Batcher:
    """Cuts the batches of one run from ``source``, lazily, each sized just before its cut.

    ``weighted`` says whether batches are budgeted in weight units (item weights, or bytes in the
    file for chunked sources); with ``weight="auto"`` over items that all weigh 1 that is decided on
    the first batch, and ``on_weighting()`` is called when it turns out they differ. ``asked`` maps
    the input index of a batch's first item to the size asked at its cut (items), for the batch records.
    """

    def __init__(
        self,
        source: BatchSource,
        batching: Batching,
        *,
        optimizer: BatchOptimizer,
        lock: threading.Lock,
        executor: Executor,
        before_dispatch: Callable[[int], int],
        stop_requested: Callable[[], bool],
        on_weighting: Callable[[], None],
    ):
        self.source, self.batching, self.optimizer, self.lock = source, batching, optimizer, lock
        self.stop_requested, self.on_weighting = stop_requested, on_weighting
        self.fixed_size = None if batching.auto_optimize else batching.batch_size
        self.weigher = make_weigher(batching.weight)
        chunked = source.chunked
        weighted = batching.auto_optimize and (self.weigher is not None or (chunked and batching.weight is not None))
        # weight="auto" over items that all weigh 1 (numbers) is counting: decided on the first batch.
        self._probe = weighted and batching.weight == "auto" and not chunked
        self.weighted = weighted and not self._probe
        self.weight_unit = weight_unit(batching.weight, chunked) if self.weighted else "items"
        self.caps = self.default_caps(executor, before_dispatch)
        self.asked: dict[int, int] = {}
        #: What the source raised while a batch was cut (None: nothing), for the run loop to raise.
        self.source_error: BaseException | None = None

    def default_caps(self, executor: Executor, before_dispatch: Callable[[int], int]) -> list[SizePolicy]:
        """The caps asked before every cut: seconds and tail balance (not for a fixed size), backpressure."""
        if self.fixed_size is not None:
            return [Backpressure(before_dispatch)]
        rate = self.seconds_per_unit
        return [SecondsCap(executor, rate), TailBalance(self.source, executor, rate), Backpressure(before_dispatch)]

    def seconds_per_unit(self) -> float | None:
        """The optimizer's seconds per item (or weight unit) so far; None before a measurement."""
        with self.lock:
            return self.optimizer.seconds_per_unit

    def tasks(self, index: int, start: int) -> Iterator[BatchTask]:
        """Batches from input index ``start`` (batch number ``index``) until the source ends or a stop."""
        while not self.stop_requested():
            ask = strictest(self._ask(start), self.caps)
            if self.stop_requested():
                return
            task = self._cut(index, start, ask)
            if task is None:
                return
            self.asked[start] = ask.size if ask.budget is None else len(task)
            yield task
            index += 1
            start += len(task)

    def _ask(self, start: int) -> Ask:
        if self.fixed_size is not None:
            return Ask(self.fixed_size, None, start, self.weighted)
        with self.lock:
            budget = self.optimizer.next_batch_budget() if self.weighted else None
            size = self.optimizer.next_batch_size() if budget is None else self.batching.max_batch_size
        return Ask(size, budget, start, self.weighted)

    def _cut(self, index: int, start: int, ask: Ask) -> BatchTask | None:
        """The next task, or None at the end of the source or when it raised (kept in ``source_error``:
        the batches cut before are committed first, then the run loop raises it)."""
        try:
            batch, weight, weights = self._take(ask)
        except Exception as exc:
            self.source_error = exc if isinstance(exc, BatchmemError) else SourceFailedError.at(start, exc)
            return None
        if batch is None or len(batch) == 0:
            return None
        return BatchTask(index, start, batch, weight=weight, weights=weights)

    def _take(self, ask: Ask) -> tuple[Any, float, list[float] | None]:
        """Weighted: items up to the budget, at most ``ask.size`` items. Otherwise (and for the first
        weighted batch, whose weight seeds the budget): ``ask.size`` items."""
        if ask.budget is not None:
            warm = self._first_rows(ask.size)  # a warm start: the rows the last run's batches held
            least = warm or min(self.batching.min_batch_size, ask.size)
            batch, weight, weights = self.source.take_weighted(
                ask.budget, self.weigher, min_items=least, max_items=warm or ask.size
            )
        else:
            batch = self.source.take(ask.size)
            weight, weights = float(len(batch)) if batch is not None else 0.0, None
            if self._probe and batch is not None and len(batch):
                self._start_weighting(batch)
            if self.weighted and batch is not None and len(batch):
                weight, weights = self._weigh(batch)
        return batch, weight, weights

    def _first_rows(self, asked: int) -> int | None:
        """The first cut of a warm-started weighted run takes the items the last run's batches held at
        this budget (at most ``asked``): a CSV reader weighs rows only after its first read, and an
        iterable pulls items by count until it has seen their mean weight. None when not warm."""
        with self.lock:
            learned = self.optimizer.take_warm_items()
        return min(asked, learned) if learned else None

    def _start_weighting(self, batch: Any) -> None:
        """First batch of a ``weight="auto"`` run: budget in weight units if its items differ in size."""
        self._probe = False
        if self.weigher is None or self.weigher(batch) is None:
            return
        self.weighted = True
        self.weight_unit = "auto"
        self.on_weighting()

    def _weigh(self, batch: Any) -> tuple[float, list[float] | None]:
        """Weight of a batch cut by count: its items' weights, or rows x bytes per row for a DataFrame chunk."""
        if self.source.chunked:
            return len(batch) * (self.source.bytes_per_row() or 1.0), None
        ws = self.weigher(batch) if self.weigher is not None else None
        return (float(sum(ws)), ws) if ws is not None else (float(len(batch)), None)
