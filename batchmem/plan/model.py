"""The forecast of a run (:class:`Plan`), as one JSON object and as the lines the CLI prints.

:meth:`Plan.to_dict` holds exactly the keys of ``batchmem plan --json``, documented (with units) in
``docs/plan.md``; bytes and seconds are numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..units import format_bytes
from .fit import CostModel, RunShape, predict

__all__ = ["Plan", "ready_lines"]


@dataclass
class Plan:
    """A forecast of one run, from sample batches of the job's own function.

    Units: bytes (``*_bytes``), seconds (``*_seconds``), items, weight units (``total_weight``, in
    ``weight_unit``). ``confidence``: ``{"level", "bytes_r2", "bytes_spread", "seconds_r2",
    "seconds_spread", "sample_batches"}`` (spread: largest relative miss of a fitted line on the sample).
    ``memory_limit_bytes``/``limit_source``: the limit the run would have now; ``notes``: how the source
    was weighed and anything the figures leave out (not in :meth:`to_dict`).
    """

    items: int | None
    total_weight: float
    weight_unit: str
    sample_items: int
    sample_seconds: float
    predicted_seconds: float
    predicted_seconds_by_n_jobs: dict[int, float]
    predicted_peak_bytes: int
    recommended_memory_limit_bytes: int
    min_memory_limit_bytes: int
    heaviest_item: dict[str, int]
    fits: bool
    confidence: dict[str, Any]
    memory_limit_bytes: int | None = None
    limit_source: str = ""
    n_jobs: int = 1
    notes: list[str] = field(default_factory=list)
    model: CostModel | None = None
    shape: RunShape | None = None
    batch_weight: float = 0.0  # weight units of a batch at the forecast's limit

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``batchmem plan --json`` (keys are part of the interface)."""
        return {
            "items": self.items,
            "total_weight": self.total_weight,
            "weight_unit": self.weight_unit,
            "sample_items": self.sample_items,
            "sample_seconds": self.sample_seconds,
            "predicted_seconds": self.predicted_seconds,
            "predicted_seconds_by_n_jobs": {str(k): v for k, v in self.predicted_seconds_by_n_jobs.items()},
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "recommended_memory_limit_bytes": self.recommended_memory_limit_bytes,
            "min_memory_limit_bytes": self.min_memory_limit_bytes,
            "heaviest_item": dict(self.heaviest_item),
            "fits": self.fits,
            "confidence": dict(self.confidence),
        }

    def at_limit(self, limit_bytes: float, n_jobs: int | None = None) -> tuple[float, float]:
        """``(seconds, peak_bytes)`` predicted under another limit (bytes) and ``n_jobs``."""
        if self.model is None or self.shape is None:
            raise ValueError("at_limit: this plan carries no cost model")
        return predict(self.model, self.shape, limit_bytes, n_jobs or self.n_jobs)

    def lines(self) -> list[str]:
        """The human table, then the ready lines for a scheduler (see :func:`ready_lines`)."""
        c = self.confidence
        limit = format_bytes(self.memory_limit_bytes) + f" ({self.limit_source})" if self.memory_limit_bytes else "-"
        by_jobs = ", ".join(f"{n}: {s:,.1f}s" for n, s in self.predicted_seconds_by_n_jobs.items())
        h = self.heaviest_item
        rows = [
            ("items", f"{self.items:,}" if self.items is not None else "unknown"),
            ("total weight", f"{self.total_weight:,.0f} {self.weight_unit}"),
            ("sample", f"{self.sample_items:,} items in {self.sample_seconds:.2f}s"),
            ("predicted time", f"{self.predicted_seconds:,.1f}s at n_jobs={self.n_jobs} (by n_jobs: {by_jobs})"),
            ("predicted peak", format_bytes(self.predicted_peak_bytes)),
            ("recommended limit", format_bytes(self.recommended_memory_limit_bytes) + " (batches at full speed)"),
            ("minimum limit", format_bytes(self.min_memory_limit_bytes) + " (the run completes, slowly)"),
            ("heaviest item", f"item {h['index']:,}, {format_bytes(h['bytes'])}"),
            ("memory limit now", limit),
            ("fits", "yes" if self.fits else "NO: the limit cannot hold the heaviest item"),
            (
                "confidence",
                f"{c['level']} (bytes r2 {c['bytes_r2']:.2f} spread {c['bytes_spread']:.0%}, "
                f"seconds r2 {c['seconds_r2']:.2f} spread {c['seconds_spread']:.0%})",
            ),
        ]
        out = [f"{name:<18} {value}" for name, value in rows]
        out += [f"note: {n}" for n in self.notes]
        return [*out, "", *ready_lines(self.recommended_memory_limit_bytes)]


def _mib(n: int) -> int:
    return -(-n // (1 << 20))


def ready_lines(limit_bytes: int) -> list[str]:
    """Lines to paste: SLURM, a Kubernetes container's ``resources:``, ``docker run``, the job file."""
    mib = _mib(limit_bytes)
    return [
        f"#SBATCH --mem={mib}M",
        "resources:",
        f"  requests: {{memory: {mib}Mi}}",
        f"  limits: {{memory: {mib}Mi}}",
        f"docker run --memory {mib}m ...",
        f"batching: {{memory_limit: {mib}MiB}}   # in the job file",
    ]
