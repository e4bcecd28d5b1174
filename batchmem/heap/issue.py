"""An issue: one verdict about a run (a leak, GC trouble, memory pressure, ...), with its figures.

The analyzer, the pressure escalation and the run loop each find issues of their own; they share this
record, which is what ``RunStats.issues`` stores and the reports print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Issue"]


@dataclass
class Issue:
    """One verdict of the analyzer.

    kind: "leak", "gc_cycles", "gc_pauses", "gc_overhead", "uncollectable", "pressure",
        "emergency_stop", "worker_recycling", "memory_bound" (the run's; the memory target held most
        batches shorter than the time band: :func:`batchmem.optimizer.advice.memory_bound_advice`) or
        "cgroup_charge" (the memory cgroup's charge outside RSS set most batch sizes:
        :class:`batchmem.heap.pressure.ChargeWatch`).
    severity: "info", "warning" or "critical".
    message: one or two plain sentences with the figures.
    evidence: the figures, numbers only (bytes, items, seconds, ratios; ``None`` when unknown).
    culprits: top source lines by growth (``{"line": "file:lineno", "size_bytes", "count"}``), leaks only.
    recommendation: what to do about it.
    """

    kind: str
    severity: str
    message: str
    evidence: dict[str, float | int | None] = field(default_factory=dict)
    culprits: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the form stored in ``RunStats.issues``)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "evidence": dict(self.evidence),
            "culprits": [dict(c) for c in self.culprits],
            "recommendation": self.recommendation,
        }
