"""The source contract: what the batcher (:mod:`batchmem.batcher`) asks of a source of items.

:class:`BatchSource` is the whole protocol, and :class:`SourceBase` gives the
defaults a simple source does not need to write (as joblib's
``ParallelBackendBase`` does for backends): ``skip`` by taking, ``take_weighted``
by count, no weight of its own, nothing to close. Subclass it for a source of
your own; :func:`batchmem.io.sources.as_source` wraps any other iterable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["FIRST_FRAME_ROWS", "BatchSource", "SourceBase", "Weigher"]

#: Rows of the first chunk of a CSV/JSONL source cut to a weight budget before any row was read (its bytes
#: per row are not known yet): a warm-started run's budget in bytes must not be taken as a row count.
FIRST_FRAME_ROWS = 1000

#: ``weigh(items) -> weights`` (a list of numbers >= 0, or None when every item weighs 1); see batchmem.weights.
Weigher = Callable[[Sequence[Any]], "list[float] | None"]


@runtime_checkable
class BatchSource(Protocol):
    """A lazy source of batches.

    Attributes:
        total: the number of items when known cheaply, else None.
        position: items handed out (or skipped) so far.
        chunked: True for sources that hand out DataFrame chunks of a file, whose weight is
            rows x :meth:`bytes_per_row` (the file readers); False when items are weighed one by one.
    """

    total: int | None
    position: int
    chunked: bool

    def take(self, n: int) -> Sequence[Any] | Any | None:
        """At most ``n`` items (a list, or a DataFrame of rows), or None once exhausted."""
        ...

    def take_weighted(
        self, budget: float, weigh: Weigher | None, *, min_items: int = 1, max_items: int = 1_000_000
    ) -> tuple[Any, float, list[float] | None]:
        """The next batch cut to ``budget`` weight units, within ``[min_items, max_items]`` items:
        ``(items or None, weight, per-item weights or None)``."""
        ...

    def skip(self, n: int) -> int:
        """Pass over the next ``n`` items (resume); returns the items passed over."""
        ...

    def peek(self) -> None:
        """Pull the next item now, to be handed out by the next ``take`` (the memory check before a
        run measures this process holding it); a no-op where nothing is worth pulling early."""
        ...

    def bytes_per_row(self) -> float | None:
        """Weight units (bytes in the file) per row of a chunked source; None when unknown or not chunked."""
        ...

    def close(self) -> None:
        """Release files and readers; idempotent."""
        ...


class SourceBase:
    """Defaults for the parts of :class:`BatchSource` a simple source does not need; write ``take``."""

    total: int | None = None
    position: int = 0
    chunked: bool = False

    def take(self, n: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def bytes_per_row(self) -> float | None:
        return None

    def take_weighted(
        self, budget: float, weigh: Weigher | None, *, min_items: int = 1, max_items: int = 1_000_000
    ) -> tuple[Any, float, list[float] | None]:
        """Cut by count: ``budget / bytes_per_row()`` rows (each item weighs 1 without a rate), within
        ``[min_items, max_items]``; the first chunk of a chunked source, before its bytes per row are
        known, takes :data:`FIRST_FRAME_ROWS` rows. The batch weighs its rows at the rate that includes
        them, so a chunk whose rows grew weighs what it holds."""
        first = self.chunked and self.bytes_per_row() is None and not self.position
        n = int(
            min(max_items, max(min_items, FIRST_FRAME_ROWS) if first else max(min_items, budget // self._rate(), 1))
        )
        batch = self.take(n)
        return batch, (len(batch) * self._rate() if batch is not None else 0.0), None

    def _rate(self) -> float:
        rate = self.bytes_per_row()
        return rate if rate and rate > 0 else 1.0

    def skip(self, n: int) -> int:
        """Take and drop ``n`` items; returns how many there were."""
        skipped = 0
        while skipped < n:
            batch = self.take(n - skipped)
            if batch is None:
                break
            skipped += len(batch)
        return skipped

    def peek(self) -> None:
        return None

    def close(self) -> None:
        return None
