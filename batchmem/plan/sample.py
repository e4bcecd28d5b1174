"""Which items the forecast runs: sample batches spread over the weight distribution.

Pure: an array of item weights in, positions out. Sampling the head of a file is not enough (inputs
sorted by size are common), so the batches are taken where the weights say:

* ``warmup``: median-weight items, run first; it pays one-time costs (imports inside the function,
  caches, a worker's first batch) and sizes the others; the fits leave it out;
* ``light``, ``median``, ``heavy``: ``k`` items around the 10th, 50th and 90th percentile of weight;
* ``heaviest``: the heaviest item alone (the figure the minimum memory limit rests on).

For random-access sources (sequences, a reservoir of items) a batch is the ``k`` items nearest that
rank. For files, whose rows are cheap to read only in runs, it is the run of ``k`` consecutive rows
whose mean weight is at that percentile of the runs' means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QUANTILES", "SampleBatch", "choose", "sample_size"]

#: Percentiles of weight (0..1) of the light, median and heavy sample batches.
QUANTILES = {"light": 0.1, "median": 0.5, "heavy": 0.9}


@dataclass(frozen=True)
class SampleBatch:
    """A sample batch: its label and the positions (0-based input indices, ascending) of its items."""

    label: str
    indices: tuple[int, ...]


def _by_rank(weights: np.ndarray, k: int, q: float) -> tuple[int, ...]:
    order = np.argsort(weights, kind="stable")
    mid = int(round(q * (len(order) - 1)))
    lo = max(0, min(len(order) - k, mid - k // 2))
    return tuple(sorted(int(i) for i in order[lo : lo + k]))


def _by_run(weights: np.ndarray, k: int, q: float) -> tuple[int, ...]:
    starts = np.arange(0, max(1, len(weights) - k + 1), k)
    sums = np.add.reduceat(weights, starts)
    order = np.argsort(sums, kind="stable")
    start = int(starts[order[int(round(q * (len(order) - 1)))]])
    return tuple(range(start, min(len(weights), start + k)))


def choose(
    weights: np.ndarray, k: int, *, contiguous: bool, labels: tuple[str, ...] | None = None
) -> list[SampleBatch]:
    """The sample batches of ``k`` items each over ``weights`` (one per item), plus the heaviest alone.

    ``labels`` picks some of ``warmup``/``light``/``median``/``heavy``/``heaviest`` (all by default).
    Raises ValueError for an empty ``weights`` or ``k < 1``.
    """
    if len(weights) == 0 or k < 1:
        raise ValueError(f"choose: needs items and k >= 1, got {len(weights)} items and k={k}")
    k = min(k, len(weights))
    pick = _by_run if contiguous else _by_rank
    out = []
    for label in labels or ("warmup", *QUANTILES, "heaviest"):
        if label == "heaviest":
            out.append(SampleBatch(label, (int(np.argmax(weights)),)))
        else:
            out.append(SampleBatch(label, pick(weights, k, QUANTILES.get(label, 0.5))))
    return out


def sample_size(first_k: int, first_s: float, aim_s: float, items: int, max_items: int) -> int:
    """Items per sample batch: ``first_k`` scaled so a batch of median items takes about ``aim_s``
    seconds, at most ``items`` and ``max_items``."""
    k = first_k * aim_s / first_s if first_s > 0 else first_k * 8
    return int(max(1, min(k, items, max_items)))
