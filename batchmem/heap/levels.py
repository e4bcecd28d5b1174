"""Pressure levels: how close memory is to the limit, from utilization and from pressure stall.

:class:`PressureThresholds` maps utilization (usage / limit) to a :class:`PressureLevel`;
:func:`stall_level` maps the kernel's memory pressure stall (``some avg10``, percent) to the level
it raises the reading to. The escalation at each level is :mod:`batchmem.heap.pressure`'s.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from batchmem.errors import OptionError

__all__ = ["STALL_CRITICAL_AVG10", "STALL_WARNING_AVG10", "PressureLevel", "PressureThresholds", "stall_level"]

#: ``some avg10`` (percent of the last 10 s in which at least one task waited for memory: reclaim,
#: refaults, swap-in; the kernel's ``Documentation/accounting/psi.rst``) from which a reading is at
#: least ``WARNING``: one second in ten lost to memory is reclaim working hard, before any kill.
STALL_WARNING_AVG10 = 10.0
#: ``some avg10`` from which a reading is at least ``CRITICAL`` (dispatch pauses): below the 60 % at
#: which systemd-oomd kills a cgroup by default (``DefaultMemoryPressureLimit=``, oomd.conf(5)).
STALL_CRITICAL_AVG10 = 40.0


class PressureLevel(enum.IntEnum):
    """How close memory use is to the limit; ordered, so ``level >= WARNING`` works.

    The escalation attached to each level (:mod:`batchmem.heap.pressure`):
    shrink batches and collect garbage at ``WARNING``, pause dispatch at
    ``CRITICAL``, run cleanup callbacks and stop cleanly at ``EMERGENCY``. ``str(level)`` is the
    lower-case label ("warning").
    """

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3

    @property
    def label(self) -> str:
        """Lower-case name: "normal", "warning", "critical" or "emergency"."""
        return self.name.lower()

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)


def _check_fraction(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise OptionError(f"PressureThresholds.{field}", f"{value!r} is not a number; give a fraction such as 0.9")
    return float(value)


@dataclass(frozen=True)
class PressureThresholds:
    """Utilization fractions (usage / limit, dimensionless) at which pressure escalates.

    Defaults 0.80 / 0.90 / 0.95: warning where distributed's worker starts to
    spill (``distributed.worker.memory.spill: 0.70``, raised to leave the
    optimizer's 0.60 target room), critical where it pauses
    (``distributed.worker.memory.pause: 0.80``, raised by the same margin) and
    emergency at its terminate level (``distributed.worker.memory.terminate:
    0.95``); https://distributed.dask.org/en/stable/worker-memory.html.

    Raises:
        ConfigError: naming the field unless ``0 < warning < critical < emergency <= 1``.
    """

    warning: float = field(default=0.80, metadata={"doc": "Shrink batches and collect garbage from here."})
    critical: float = field(default=0.90, metadata={"doc": "Pause dispatch (backpressure) from here."})
    emergency: float = field(default=0.95, metadata={"doc": "Run cleanup callbacks and stop cleanly from here."})

    def __post_init__(self) -> None:
        w = _check_fraction("warning", self.warning)
        c = _check_fraction("critical", self.critical)
        e = _check_fraction("emergency", self.emergency)
        hint = "0 < warning < critical < emergency <= 1, e.g. 0.80, 0.90, 0.95"
        if not 0 < w:
            raise OptionError("PressureThresholds.warning", f"{w} must be greater than 0; {hint}")
        if not w < c:
            raise OptionError("PressureThresholds.critical", f"{c} must be greater than warning ({w}); {hint}")
        if not c < e:
            raise OptionError("PressureThresholds.emergency", f"{e} must be greater than critical ({c}); {hint}")
        if not e <= 1:
            raise OptionError("PressureThresholds.emergency", f"{e} must be at most 1; {hint}")

    def level(self, utilization: float) -> PressureLevel:
        """Map ``utilization`` (usage / limit; may exceed 1) to a :class:`PressureLevel`.

        A level is reached when utilization is greater than or equal to its
        threshold. NaN maps to ``NORMAL``.
        """
        if utilization >= self.emergency:
            return PressureLevel.EMERGENCY
        if utilization >= self.critical:
            return PressureLevel.CRITICAL
        if utilization >= self.warning:
            return PressureLevel.WARNING
        return PressureLevel.NORMAL


def stall_level(some_avg10: float | None) -> PressureLevel:
    """The level a memory pressure stall of ``some_avg10`` percent raises a reading to (``NORMAL``
    for None or below :data:`STALL_WARNING_AVG10`; never ``EMERGENCY``: a stall slows the run, it
    does not stop it)."""
    if some_avg10 is None or not some_avg10 >= STALL_WARNING_AVG10:
        return PressureLevel.NORMAL
    return PressureLevel.CRITICAL if some_avg10 >= STALL_CRITICAL_AVG10 else PressureLevel.WARNING
