"""Where items come from: lazy sources that hand out one batch at a time.

The batcher asks the optimizer for a size just before it cuts each batch, so a
source only has to answer ``take(n)``: the next ``n`` items (fewer at the end),
or ``None`` when it is exhausted. Nothing is read ahead and nothing is
materialised: an iterator of ten million items costs one batch of memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from .readers import read_csv, read_jsonl, read_parquet

__all__ = ["BatchSource", "IterableSource", "as_source", "read_csv", "read_jsonl", "read_parquet"]


@runtime_checkable
class BatchSource(Protocol):
    """A lazy source of batches.

    ``take(n)`` returns at most ``n`` items (a list, or a pandas DataFrame of
    rows for the chunked readers) or ``None`` once exhausted. ``total`` is the
    number of items when known cheaply (else ``None``); ``position`` counts the
    items handed out so far.
    """

    total: int | None
    position: int

    def take(self, n: int) -> Sequence[Any] | Any | None: ...


class IterableSource:
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

    def take(self, n: int) -> list[Any] | None:
        batch = list(itertools.islice(self._it, n))
        if not batch:
            return None
        self.position += len(batch)
        return batch

    def skip(self, n: int) -> None:
        """Drop the next ``n`` items without keeping them (used by resume)."""
        for _ in itertools.islice(self._it, n):
            pass
        self.position += n


def as_source(items: Iterable[Any] | BatchSource) -> BatchSource:
    """Return ``items`` itself if it already is a :class:`BatchSource`, else wrap it lazily."""
    if hasattr(items, "take") and hasattr(items, "position"):
        return items  # type: ignore[return-value]
    return IterableSource(items)
