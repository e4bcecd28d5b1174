"""``batchmem stats``: every operation's history as a table, or one operation in detail.

The figures are :meth:`batchmem.BatchOptimizer.get_batch_statistics`'s over the
stored history (no live run), formatted as in the run report
(:func:`batchmem.report.figures.format_value`).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .figures import format_value

__all__ = ["HISTORY_COLUMNS", "operation_statistics", "render_operation_detail", "render_operations_table"]

#: Columns of the per-operation table: key of get_batch_statistics figures -> (header, kind).
HISTORY_COLUMNS: dict[str, tuple[str, str]] = {
    "runs": ("runs", "int"),
    "items": ("items", "int"),
    "items_per_s": ("items/s", "rate_short"),
    "bytes_per_item": ("bytes/item", "bytes"),
    "learned_batch_size": ("learned batch", "int"),
    "peak_rss_bytes": ("peak RSS", "bytes"),
    "leaks": ("leaks", "int"),
    "last_run_at": ("last run", "time"),
}

#: Rows of one operation's detail: (label, key of get_batch_statistics figures, kind).
_DETAIL_ROWS = (
    ("runs", "runs", "int"),
    ("runs that resumed an output", "resumes", "int"),  # each part of a resumed output is a run
    ("items, all runs", "items", "int"),
    ("failed items, all runs", "failed", "int"),
    ("items past item_timeout, all runs", "timeouts", "int"),
    ("batches, all runs", "batches", "int"),
    ("wall time, all runs", "duration_s", "seconds"),
    ("throughput, all runs (items / wall s)", "items_per_s", "rate"),
    ("memory per item, last run", "bytes_per_item", "bytes"),
    ("learned batch size (items)", "learned_batch_size", "int"),
    ("median batch time, last run", "batch_s_median", "seconds"),
    ("peak RSS, all runs", "peak_rss_bytes", "bytes"),
    ("leaks flagged, all runs", "leaks", "int"),
    ("first run", "first_run_at", "time"),
    ("last run", "last_run_at", "time"),
)


def operation_statistics(operation: str | None = None, *, history: Any = None) -> dict[str, Any]:
    """``BatchOptimizer.get_batch_statistics(operation)`` over the stored history (no live run).

    Raises :class:`ConfigError` when ``operation`` has no history.
    """
    from ..optimizer import BatchOptimizer, HistoryStore

    store = history if history is not None else HistoryStore()
    data = BatchOptimizer(history=store).get_batch_statistics(operation)
    if operation is not None and operation not in data["operations"]:
        known = ", ".join(store.operations()) or "none yet"
        raise ConfigError(f"OPERATION: no history for {operation!r} (operations with history: {known})")
    return data


def _cell(value: Any, kind: str) -> str:
    if kind == "rate_short":
        return "-" if value is None else f"{value:,.1f}"
    return format_value(value, kind)


def render_operations_table(stats: dict[str, Any]) -> str:
    """A text table, one row per operation, of :func:`operation_statistics`' figures."""
    ops = stats["operations"]
    if not ops:
        return "no operations in the history yet (they are recorded when a run finishes)\n"
    header = ["operation"] + [h for h, _ in HISTORY_COLUMNS.values()]
    rows = [[name] + [_cell(fig.get(k), kind) for k, (_, kind) in HISTORY_COLUMNS.items()] for name, fig in ops.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]) + "\n"


def render_operation_detail(name: str, fig: dict[str, Any]) -> str:
    """One operation's figures, its last run and its recommendations, as text."""
    rows = [(label, format_value(fig.get(key), kind)) for label, key, kind in _DETAIL_ROWS]
    w = max(len(a) for a, _ in rows)
    lines = [f"operation {name!r}"] + [f"  {a:<{w}}  {b}" for a, b in rows]
    recs = fig.get("recommendations") or []
    lines += ["", "recommendations:" if recs else "recommendations: none"] + [f"  - {r}" for r in recs]
    return "\n".join(lines) + "\n"
