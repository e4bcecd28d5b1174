"""The figures a report shows, their labels and their formatting: shared by every format.

Sizes are bytes shown in IEC units (:func:`batchmem.units.format_bytes`:
KiB, MiB, GiB), durations seconds (:func:`batchmem.units.format_seconds`),
throughput items per wall second of the run (:func:`batchmem.stats.items_per_second`),
memory cost bytes per item (:func:`batchmem.stats.bytes_per_item`). Keys that
:meth:`batchmem.BatchOptimizer.get_batch_statistics` also reports carry its
names and come from the same formulas, so the two agree on a run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..units import format_bytes, format_seconds

if TYPE_CHECKING:
    from .model import Report

__all__ = [
    "FIGURES",
    "SHARED_FIGURES",
    "evidence_text",
    "figure_rows",
    "format_value",
    "history_rows",
    "issue_line",
]

#: Figures shown for a run: key -> (label, kind). ``kind`` picks the formatting (:func:`format_value`).
#: Keys shared with ``BatchOptimizer.get_batch_statistics()`` use its names.
FIGURES: dict[str, tuple[str, str]] = {
    "status": ("status", "str"),
    "items": ("items", "int"),
    "failed": ("failed items", "int"),
    "resumed": ("resumed", "str"),  # a resumed output: how often, and each part's items and time
    "timeouts": ("items past item_timeout", "int"),
    "batches": ("batches", "int"),
    "duration_s": ("wall time", "seconds"),
    "items_per_s": ("throughput (items / wall s)", "rate"),
    "bytes_per_item": ("memory per item (peak growth)", "bytes"),
    "learned_batch_size": ("learned batch size (items)", "int"),
    "batch_size_min": ("smallest batch (items)", "int"),
    "batch_size_median": ("median batch (items)", "int"),
    "batch_size_max": ("largest batch (items)", "int"),
    "batch_s_median": ("median batch time (fn only)", "seconds"),
    "peak_rss_bytes": ("peak RSS (process tree)", "bytes"),
    "memory_limit_bytes": ("memory limit", "bytes"),
    "peak_utilization": ("peak RSS / limit", "percent"),
    "limit_source": ("limit from", "str"),
    "memory_errors": ("MemoryErrors", "int"),
    "gc_collections": ("GC collections in batches", "int"),
    "gc_pause_s": ("time in GC", "seconds"),
    "n_jobs": ("n_jobs", "int"),
    "backend": ("backend", "str"),
    "started_at": ("started", "time"),
}

#: Figures compared between a run and the operation's history, by the same names.
SHARED_FIGURES = ("items", "batches", "items_per_s", "bytes_per_item", "learned_batch_size", "peak_rss_bytes")


def format_value(value: Any, kind: str) -> str:
    """``value`` as report text; ``kind`` is one of bytes, int, rate, seconds, percent, time, str."""
    if value is None or value == "":
        return "-"
    if kind == "bytes":
        return format_bytes(value)
    if kind == "int":
        return f"{int(round(value)):,}"
    if kind == "rate":
        return f"{value:,.1f} items/s"
    if kind == "seconds":
        return format_seconds(value)
    if kind == "percent":
        return f"{100 * value:.1f} %"
    if kind == "time":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def evidence_text(evidence: Any, limit: int = 300) -> str:
    """An issue's evidence as one short line (``key=value, ...``), cut to ``limit`` characters."""
    if evidence in (None, "", {}, []):
        return ""
    if isinstance(evidence, dict):
        text = ", ".join(f"{k}={v}" for k, v in evidence.items())
    else:
        text = orjson.dumps(evidence, default=str).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def figure_rows(report: Report) -> list[tuple[str, str]]:
    """(label, text) for every figure of :data:`FIGURES`."""
    return [(label, format_value(report.figures.get(key), kind)) for key, (label, kind) in FIGURES.items()]


def history_rows(report: Report) -> list[tuple[str, str]]:
    """(label, text) for the operation's history, or [] without one."""
    h = report.history
    if not h:
        return []
    return [
        ("runs", format_value(h.get("runs"), "int")),
        ("items, all runs", format_value(h.get("items"), "int")),
        ("throughput, all runs (items / wall s)", format_value(h.get("items_per_s"), "rate")),
        ("memory per item, last run", format_value(h.get("bytes_per_item"), "bytes")),
        ("learned batch size (items)", format_value(h.get("learned_batch_size"), "int")),
        ("median batch time, last run", format_value(h.get("batch_s_median"), "seconds")),
        ("peak RSS, all runs", format_value(h.get("peak_rss_bytes"), "bytes")),
        ("last run", format_value(h.get("last_run_at"), "time")),
    ]


def issue_line(issue: dict[str, Any]) -> str:
    """``[severity] kind: message (evidence)``."""
    sev = str(issue.get("severity", "info"))
    kind = str(issue.get("kind", "issue"))
    msg = str(issue.get("message", ""))
    ev = evidence_text(issue.get("evidence"))
    return f"[{sev}] {kind}: {msg}" + (f" ({ev})" if ev else "")
