"""Where items come from: lazy sources that hand out one batch at a time.

The batcher asks the optimizer for a size just before it cuts each batch, so a
source only has to answer ``take(n)``: the next ``n`` items (fewer at the end),
or ``None`` when it is exhausted. Nothing is read ahead and nothing is
materialised: an iterator of ten million items costs one batch of memory.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from .readers import read_csv, read_jsonl, read_parquet
from .source_base import BatchSource, SourceBase, Weigher

__all__ = [
    "BatchSource",
    "IterableSource",
    "SourceBase",
    "as_source",
    "read_csv",
    "read_jsonl",
    "read_parquet",
]

#: Items pulled at a time while every item seen so far weighed 0 (no mean weight to divide the budget by).
ZERO_WEIGHT_RUN = 256


class IterableSource(SourceBase):
    """Wrap any iterable (list, generator, file, ...) as a :class:`BatchSource`.

    ``total`` is ``len(items)`` when the iterable has a length, else ``None``.
    Items are pulled with :func:`itertools.islice`, one batch at a time.
    """

    def __init__(self, items: Iterable[Any]):
        try:
            self.total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self._it: Iterator[Any] = iter(items)
        self.position = 0
        self._held: list[Any] = []  # items pulled by take_weighted but not handed out (the next batch's first)
        self._held_weights: list[float] | None = None
        self._mean_weight: float | None = None  # weight units per item seen so far
        self._error: Exception | None = None  # the iterator raised after yielding some items: the next pull raises it

    def _fill(self, batch: list[Any], n: int) -> list[Any]:
        """``batch`` topped up to ``n`` items from the iterator. When the iterator raises after
        yielding some items, they are returned and the next call raises the error, so the items
        before a failure are processed and a resume starts at the item that failed."""
        if self._error is not None:
            if batch:
                return batch
            error, self._error = self._error, None
            raise error
        try:
            batch.extend(itertools.islice(self._it, n - len(batch)))  # keeps the items appended before a raise
        except Exception as exc:
            if not batch:
                raise
            self._error = exc
        return batch

    def peek(self) -> None:
        """Pull the next item now; the next :meth:`take` hands it out (e.g. to measure memory with the
        first item held). An error of the iterator is raised by that take."""
        if not self._held and self._error is None:
            try:
                self._held = self._fill([], 1)
            except Exception as exc:
                self._error = exc

    def take(self, n: int) -> list[Any] | None:
        if self._held:
            batch, self._held, self._held_weights = self._held[:n], self._held[n:], None
        else:
            batch = []
        batch = self._fill(batch, n)
        if not batch:
            return None
        self.position += len(batch)
        return batch

    def _pull(self, n: int, weigh: Weigher) -> tuple[list[Any], list[float] | None]:
        """Up to ``n`` items (held ones first) and their weights (None: all 1)."""
        if self._held:
            items, weights = self._held[:n], self._held_weights
            rest_items, self._held = self._held[n:], []
            rest_weights = weights[n:] if weights is not None else None
            weights = weights[:n] if weights is not None else weigh(items)
            self._held, self._held_weights = rest_items, rest_weights
            return items, weights
        items = self._fill([], n)
        return items, (weigh(items) if items else None)

    def take_weighted(
        self, budget: float, weigh: Weigher | None, *, min_items: int = 1, max_items: int = 1_000_000
    ) -> tuple[list[Any] | None, float, list[float] | None]:
        """The next items whose weights sum to at most ``budget`` (weight units), within
        ``[min_items, max_items]`` items; an item that would cross the budget opens the next batch,
        and an item heavier than the whole budget comes alone. Returns ``(items, weight, weights)``
        (``items`` None once exhausted; ``weights`` None when all weighed 1).

        Items are pulled in runs of the expected count (budget over the mean weight seen), weighed
        per run and cut with a cumulative sum and a binary search, so a batch costs one weigher call.
        Without ``weigh`` every item weighs 1 (:meth:`SourceBase.take_weighted`).
        """
        if weigh is None:
            return super().take_weighted(budget, weigh, min_items=min_items, max_items=max_items)
        batch: list[Any] = []
        weights: list[float] | None = None  # None while every item so far weighed 1
        total = 0.0
        while len(batch) < max_items:
            room = budget - total
            mean = self._mean_weight
            if mean in (None, 1.0):  # every item so far weighed 1: the count is exact
                guess = int(room)
            elif mean > 0:
                guess = int(room / mean) + 1
            else:  # weightless items so far (empty texts, empty files): pull a run, weigh, go on
                guess = ZERO_WEIGHT_RUN
            want = max(1, min(max_items - len(batch), guess))
            items, ws = self._pull(want, weigh)
            if not items:
                break
            if ws is None:  # all weigh 1: no sums to search
                run = None
                cum = [total, total + len(items)]
                fit = max(0, min(len(items), int(room)))
            else:
                run = ws
                cum = list(itertools.accumulate(ws, initial=total))
                fit = bisect.bisect_right(cum, budget) - 1  # items of this run that keep the sum <= budget
            fit = min(len(items), max(fit, min_items - len(batch), 0 if batch else 1))
            if ws is not None or weights is not None:
                part = run[:fit] if run is not None else [1.0] * fit
                weights = (weights if weights is not None else [1.0] * len(batch)) + part
            batch += items[:fit]
            total = cum[fit] if run is not None else total + fit
            mean = (cum[-1] - cum[0]) / len(items)
            self._mean_weight = mean if self._mean_weight is None else 0.7 * self._mean_weight + 0.3 * mean
            if fit < len(items):  # the item that would cross the budget opens the next batch
                both = ws is not None and (self._held_weights is not None or not self._held)
                self._held_weights = (ws[fit:] + (self._held_weights or [])) if both else None
                self._held = items[fit:] + self._held
                break
        if not batch:
            return None, 0.0, None
        self.position += len(batch)
        return batch, total, weights

    def skip(self, n: int) -> int:
        """Drop the next ``n`` items without keeping them (used by resume); returns ``n``."""
        held = min(n, len(self._held))
        self._held, self._held_weights = self._held[held:], None
        for _ in itertools.islice(self._it, n - held):
            pass
        self.position += n
        return n


def as_source(items: Iterable[Any] | BatchSource) -> BatchSource:
    """Return ``items`` itself if it already is a :class:`BatchSource`, else wrap it lazily."""
    return items if isinstance(items, BatchSource) else IterableSource(items)
