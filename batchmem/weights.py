"""Item weights: what one item costs, in a unit the control law can budget.

Items rarely cost the same: texts of 200 and 200,000 characters, files
sorted by size. The optimizer learns bytes and seconds per *weight unit*
and hands the batcher a weight budget per batch, so a shift from light to
heavy items shrinks the next batch before it runs.

``weight=`` of :class:`~batchmem.BatchProcessor` takes

* ``"auto"`` (the default): an item's input size, by :func:`auto_weight`:
  ``len()`` of ``str``/``bytes``/``bytearray``/``memoryview``; ``.nbytes`` of
  arrays (numpy, Arrow, anything with an integer ``nbytes``); the file size of
  an existing ``os.PathLike``; for a ``dict``/``list``/``tuple`` the sum of
  those over its values, one level deep, counting at most
  :data:`CONTAINER_CAP` values (the rest at their mean); 1 for anything else.
  Cost: a batch whose items are all of a unit type (int, float, bool, None)
  is checked with one ``set(map(type, batch))`` (C speed, tens of
  nanoseconds per item) and weighs its item count; other items cost one
  Python call each (about 0.2 microseconds; a ``stat`` for paths).
* a callable ``item -> number >= 0`` in the user's unit (characters,
  tokens, pixels, bytes);
* ``None``: every item weighs 1 (batches are counted in items).

A weigher returns the weights of a list of items (a list of floats), or
``None`` when every item weighs 1, so count-based batches pay nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from .callables import import_callable, is_reference
from .errors import ConfigError

__all__ = ["CONTAINER_CAP", "Weigher", "auto_weight", "make_weigher", "weight_unit"]

#: Values of a dict/list/tuple weighed one by one; the rest count at the mean of those.
CONTAINER_CAP = 64
_UNIT_TYPES = frozenset({int, float, bool, type(None), complex})
_SIZED = (str, bytes, bytearray, memoryview)


def _flat_weight(x: Any) -> float:
    if isinstance(x, _SIZED):
        return float(len(x))
    nbytes = getattr(x, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(nbytes, bool):
        return float(nbytes)
    if isinstance(x, os.PathLike):
        try:
            return float(os.stat(x).st_size)
        except OSError:
            return 1.0
    return 1.0


def auto_weight(item: Any) -> float:
    """An item's input size (characters, bytes, or 1); see the module docstring for the rule."""
    if type(item) in _UNIT_TYPES:
        return 1.0
    if isinstance(item, (dict, list, tuple)):
        values = item.values() if isinstance(item, dict) else item
        n = len(values)
        if n == 0:
            return 1.0
        head = [_flat_weight(v) for v, _ in zip(values, range(CONTAINER_CAP), strict=False)]
        total = sum(head)
        if n > len(head):
            total += (n - len(head)) * total / len(head)
        return max(1.0, total)
    return _flat_weight(item)


Weigher = Callable[[Sequence[Any]], "list[float] | None"]


def _auto(items: Sequence[Any]) -> list[float] | None:
    if set(map(type, items)) <= _UNIT_TYPES:
        return None
    return list(map(auto_weight, items))


def _user(fn: Callable[[Any], float]) -> Weigher:
    name = getattr(fn, "__qualname__", repr(fn))

    def weigh(items: Sequence[Any]) -> list[float]:
        weights = [float(w) for w in map(fn, items)]
        # min() and max() skip a NaN unless it comes first; a NaN or an inf anywhere makes the sum non-finite
        if weights and not (min(weights) >= 0 and math.isfinite(sum(weights))):
            bad = next((w for w in weights if not (w >= 0 and math.isfinite(w))), None)
            if bad is not None:  # None: finite weights whose sum overflows, which are fine
                raise ConfigError(f"weight: {name} returned {bad!r}; a weight must be a finite number >= 0")
        return weights

    return weigh


def make_weigher(spec: str | Callable[[Any], float] | None) -> Weigher | None:
    """The weigher for a ``weight=`` option: ``"auto"``, a callable, or None (count items: returns None).

    Raises :class:`~batchmem.errors.ConfigError` for anything else.
    """
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return _auto
    if callable(spec):
        return _user(spec)
    if is_reference(spec):
        return _user(import_callable(spec, field="weight"))
    raise ConfigError(f"weight: {spec!r} is not 'auto', None, a callable item -> number or 'module:callable'")


def weight_unit(spec: str | Callable[[Any], float] | None, frames: bool = False) -> str:
    """The name of a weight's unit, for stats and history: ``"items"``, ``"bytes in the file"``
    (chunked pandas sources), ``"auto"``, or the callable's ``module:qualname``."""
    if spec is None or spec == "none":
        return "items"
    if frames:
        return "bytes in the file"
    if spec == "auto" or is_reference(spec):
        return str(spec)
    return f"{getattr(spec, '__module__', '')}:{getattr(spec, '__qualname__', repr(spec))}"
