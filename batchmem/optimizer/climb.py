"""The throughput hill-climb of weighted runs: a strategy the control law asks for a size cap.

Seconds per weight unit need not be flat in the batch size: batches that fit in the heap pages the
allocator keeps skip the page faults of larger ones, which the time band does not see
(``benchmarks/bench_weighted.py``). The climb is perturb and observe, the hill-climbing search for a
maximum power point (Esram and Chapman, "Comparison of Photovoltaic Array Maximum Power Point
Tracking Techniques", IEEE Trans. Energy Conversion 22(2), 2007), with the extra measurement of the
dP-P&O variant that tells a change of conditions from the effect of a perturbation (Sera et al.,
"Optimized Maximum Power Point Tracker for Fast-Changing Environmental Conditions", IEEE Trans.
Industrial Electronics 55(7), 2008). How it moves, with the measurements behind its constants:
``docs/internals.md``, "The throughput hill-climb".

Pure, like :mod:`.control`: measurements in, an answer out. Not covered here: the memory target,
pressure and the MemoryError ceiling, which the control law applies after the climb's answer.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batchmem.optimizer.ewma import Ewma

if TYPE_CHECKING:  # pragma: no cover - typing only
    from batchmem.optimizer.control import BatchMeasurement, ControlConfig

__all__ = ["ClimbState", "ThroughputClimb"]

#: Batches the climb waits for a probe (or the confirmation) to come back before it gives up on it:
#: with batches in flight, those cut before it report first, and memory or the tail may cut it smaller.
PROBE_WAIT = 4
#: Octaves the descent halves below the first batch on no evidence; below them it goes on only while
#: the smallest octave measured is the cheapest, so a fresh run is not cut to single items blind.
FREE_OCTAVES = 2


class ClimbState(enum.Enum):
    """Where the climb is; ``value`` is the name stored in a run's history."""

    DOWN = "down"  #: halving the budget from the first batch's, while that is not clearly dearer
    CONFIRM = "confirm"  #: measuring the largest octave once more before capping below it
    CAPPED = "capped"  #: holding the cheapest octave found, probing the octaves next to it
    OFF = "off"  #: no clear gain: the control law runs alone


class _Octave:
    """Seconds per unit of the batches in one octave of weight: an EWMA and the last three costs."""

    __slots__ = ("ewma", "recent", "count")

    def __init__(self, alpha: float, ratio: float):
        self.ewma = Ewma(alpha, ratio)
        self.recent: list[float] = []
        self.count = 0

    def add(self, cost: float) -> None:
        self.ewma.update(cost)
        self.recent = [*self.recent[-2:], cost]
        self.count += 1

    @property
    def score(self) -> float:
        """The least of the last three costs: the least disturbed by other work on the machine."""
        return min(self.recent)


def octave(units: float) -> int:
    """The octave ``k`` of a batch of ``units`` weight units: ``(2^k, 2^(k+1)]``; up to 1 unit is -1."""
    return math.ceil(math.log2(units)) - 1 if units > 1 else -1


class ThroughputClimb:
    """Asked after every weighted batch: "which budget (weight units) instead of the law's?".

    The cost of a batch is ``(duration_s + batch_overhead_s) / units`` seconds per unit. Costs are
    kept per octave of batch weight, so batches may report in any order (batches in flight). An
    octave is scored by the least of its last three costs.

    Args:
        config: the control law's tuning (``ewma_alpha``, ``outlier_ratio``, ``batch_overhead_s``,
            ``probe_margin``, ``probe_every``).
        state: where to start: :attr:`ClimbState.DOWN` for a fresh run; a warm start resumes the
            previous run's :attr:`ClimbState.CAPPED` (with ``cap``) or :attr:`ClimbState.OFF`.
        cap: the budget to hold when starting capped, weight units.
    """

    def __init__(self, config: ControlConfig, state: ClimbState = ClimbState.DOWN, cap: float | None = None):
        self.config = config
        self.state = state
        self._octaves: dict[int, _Octave] = {}
        self._cap_octave: int | None = None  # the octave the cap fills batches up to
        if state is ClimbState.CAPPED:
            if cap is None or cap <= 0:
                self.state = ClimbState.DOWN
            else:
                self._cap_octave = octave(cap)
        self._first: int | None = None  # the first scored batch's octave: where the descent starts
        self._since_probe = 0
        self._probe = 0  # +1 / -1: a batch one octave above / below the cap is on its way
        self._probe_wait = 0  # batches observed since that probe (or the confirmation) was asked for
        self._confirm = (0, 0)  # CONFIRM: the largest octave measured and its batch count then
        self._warm_up: int | None = None  # first batches not scored: one per process running them

    @property
    def cap(self) -> float | None:
        """The budget the climb holds batches at (weight units), or None."""
        return None if self._cap_octave is None else float(2 ** (self._cap_octave + 1))

    def propose(self, m: BatchMeasurement, units: float, law: float, in_flight: int) -> tuple[float, str] | None:
        """A budget (weight units) and its reason (``"probe"`` or ``"throughput"``) for the batch
        after ``m`` (weighing ``units``), or None to leave the law's ``law`` units alone."""
        if units <= 0 or m.failed or m.duration_s < 0 or self.state is ClimbState.OFF:
            return None
        if self._warm_up is None:  # worker processes start cold; batches in this process run in a warm one
            self._warm_up = in_flight if in_flight > 1 else 0
        if self._warm_up > 0:  # a worker's first batch pays its cold start: hold the size, score the next
            self._warm_up -= 1
            return units, "probe"
        k = octave(units)
        cost = (m.duration_s + self.config.batch_overhead_s) / units
        self._octaves.setdefault(k, _Octave(self.config.ewma_alpha, self.config.outlier_ratio)).add(cost)
        if self._first is None:
            self._first = k
        if self.state is ClimbState.DOWN:
            return self._descend(k, m.size)
        if self.state is ClimbState.CONFIRM and not self._confirmed():
            return None if self.state is ClimbState.OFF else (float(2 ** (self._confirm[0] + 1)), "probe")
        return self._capped(k, cost, law)

    def _scores(self) -> tuple[dict[int, float], int, float]:
        scores = {o: oc.score for o, oc in self._octaves.items()}
        return scores, min(scores, key=scores.__getitem__), 1.0 + self.config.probe_margin

    def _descend(self, k: int, size: int) -> tuple[float, str] | None:
        """Halve the budget (into the next octave down) while the smallest octave measured is not
        dearer than the cheapest by more than ``probe_margin``: freely for :data:`FREE_OCTAVES`
        octaves, then only while it is the cheapest. One batch dearer than that runs once more."""
        scores, best, worse = self._scores()
        low = min(scores)
        if low >= 0 and (k != low or size > 1):
            assert self._first is not None
            within = scores[low] <= scores[best] * worse
            if within and (self._first - low < FREE_OCTAVES or low == best):
                return float(2**low), "probe"  # budget 2^low: batches in the octave below
            if not within and self._octaves[low].count < 2:
                return float(2 ** (low + 1)), "probe"  # dearer on one batch: once more to be sure
        top = max(scores)
        if not _clearly_cheaper(scores, best, top, worse):
            self.state = ClimbState.OFF
            return None
        # Measure the largest octave once more before capping below it: its costs are the run's
        # first, and a fresh worker's first batches (and the parent's start-up) read dear.
        self.state, self._confirm, self._probe_wait = ClimbState.CONFIRM, (top, self._octaves[top].count), 0
        return float(2 ** (top + 1)), "probe"

    def _confirmed(self) -> bool:
        """CONFIRM: True once the largest octave was measured again (the state is then CAPPED or OFF
        when it is no longer clearly dearer); False while its batch is on its way."""
        scores, best, worse = self._scores()
        top, count = self._confirm
        self._probe_wait += 1
        if max(scores) == top and self._octaves[top].count == count and self._probe_wait <= PROBE_WAIT:
            return False  # on its way (or cut smaller, by memory or the tail)
        if not _clearly_cheaper(scores, best, max(scores), worse):
            self.state = ClimbState.OFF
            return False
        self.state, self._cap_octave, self._since_probe = ClimbState.CAPPED, best, 0
        return True

    def _capped(self, k: int, cost: float, law: float) -> tuple[float, str] | None:
        """CAPPED: hold the cap, move it after a probe, and send one probe each way every
        ``probe_every`` batches; let go once the law's own size is no larger than the cap."""
        if self._cap_octave is None:
            return None
        self._since_probe += 1
        self._probe_back(k, cost)
        every, c = self.config.probe_every, self._cap_octave
        cap = float(2 ** (c + 1))
        if cap >= law:
            self.state, self._cap_octave = ClimbState.OFF, None
            return None
        if not self._probe and self._since_probe >= every:
            self._probe, self._probe_wait, self._since_probe = 1, 0, 0
            return min(2 * cap, law), "probe"
        if not self._probe and self._since_probe == every // 2 and c > 0:
            self._probe, self._probe_wait = -1, 0
            return cap / 2, "probe"
        return cap, "throughput"

    def _probe_back(self, k: int, cost: float) -> None:
        """Move the cap up when the probe above cost no more per unit than the cap's own batches
        (an EWMA of them), down when the probe below was cheaper by more than the margin."""
        c = self._cap_octave
        assert c is not None
        if self._probe and (k - c) * self._probe > 0:  # the probe (or a batch as far out) came back
            cap_cost = self._octaves[c].ewma.value if c in self._octaves else None
            up, self._probe = self._probe > 0, 0
            worse = 1.0 + self.config.probe_margin
            if cap_cost is not None and (cost <= cap_cost if up else cost * worse < cap_cost):
                self._cap_octave = c + (1 if up else -1)
                if up:
                    self._since_probe = self.config.probe_every  # as cheap above: try higher still
        elif self._probe:
            self._probe_wait += 1
            if self._probe_wait > PROBE_WAIT:  # its batch was cut smaller (memory, the tail): give up on it
                self._probe = 0


def _clearly_cheaper(scores: Mapping[int, float], best: int, top: int, worse: float) -> bool:
    """Whether octave ``best`` is below ``top`` and cheaper per unit by more than the margin (``worse``: 1 + it)."""
    return best < top and scores[best] * worse < scores[top]
