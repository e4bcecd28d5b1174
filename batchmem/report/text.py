"""``batchmem report`` on the terminal: the report as plain text, or as JSON (``--json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .figures import figure_rows, history_rows, issue_line

if TYPE_CHECKING:
    from .model import Report

__all__ = ["render_json", "render_text"]


def render_text(report: Report) -> str:
    """A plain-text report for the terminal: figures, per-batch summary, history, issues, recommendations."""
    lines = [f"batchmem run report: {report.operation}", f"stats: {report.source}", ""]
    rows = figure_rows(report)
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    if len(report.batches):
        counts = report.pressure_counts()
        lines += [
            "",
            f"per-batch records: {len(report.batches)} ({report.stats.batches_path or ''})",
            "  pressure after batches: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        ]
    hist = history_rows(report)
    if hist:
        w = max(len(label) for label, _ in hist)
        lines += ["", f"history of {report.operation!r}:"] + [f"  {label:<{w}}  {value}" for label, value in hist]
    lines += ["", "issues:" if report.issues else "issues: none reported by the heap analyzer"]
    lines += [f"  - {issue_line(i)}" for i in report.issues]
    lines += ["", "recommendations:" if report.recommendations else "recommendations: none"]
    lines += [f"  - {r}" for r in report.recommendations]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The report as indented JSON (figures in bytes, seconds, items, items/s)."""
    return orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
