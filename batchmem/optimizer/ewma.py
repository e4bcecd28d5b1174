"""Exponentially weighted moving average of a non-negative cost, robust to one outlier.

Pure; used by the control law (:mod:`.control`) for bytes and seconds per unit and by the throughput
hill-climb (:mod:`.climb`) for seconds per unit of one octave of batch weight. Why the clipping and
the reset: see "Estimates" in ``docs/internals.md``.
"""

from __future__ import annotations

__all__ = ["Ewma"]


class Ewma:
    """EWMA (weight ``alpha`` on the newest sample) with outlier clipping and level-shift reset.

    A sample further than ``ratio`` from the estimate is clipped to ``[estimate / ratio,
    estimate * ratio]``; two such samples in a row on the same side are a level shift, and the
    estimate jumps to the newest one. ``value`` is None before the first sample.
    """

    __slots__ = ("alpha", "ratio", "value", "_pending")

    def __init__(self, alpha: float, ratio: float, value: float | None = None):
        self.alpha = alpha
        self.ratio = ratio
        self.value = value
        self._pending = 0  # +1 / -1: the previous sample was clipped high / low

    def update(self, sample: float) -> float:
        """Add one sample (negative ones count as 0); return the new estimate."""
        sample = max(0.0, float(sample))
        est = self.value
        if est is None or est <= 0.0:
            # Nothing to compare against (cold start, or all-zero so far): take the sample.
            self.value = sample if est is None else est + self.alpha * (sample - est)
            self._pending = 0
            return self.value
        hi, lo = est * self.ratio, est / self.ratio
        side = 1 if sample > hi else (-1 if sample < lo else 0)
        if side and side == self._pending:
            self.value = sample  # level shift confirmed by two batches in a row
            self._pending = 0
            return self.value
        self._pending = side
        clipped = min(max(sample, lo), hi)
        self.value = est + self.alpha * (clipped - est)
        return self.value
