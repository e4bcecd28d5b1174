"""Run reports: what one run cost, as text, JSON, Markdown or a self-contained HTML page.

::

    from batchmem.report import load_report, render_html
    report = load_report("out.jsonl.stats.json")
    Path("report.html").write_text(render_html(report), encoding="utf-8")

One module per command or format:

- :mod:`~batchmem.report.model`: :class:`Report` and :func:`load_report` (stats
  file, per-batch records, history, recommendations);
- :mod:`~batchmem.report.figures`: the figures shown, their labels and units,
  shared by every format (bytes in IEC KiB/MiB/GiB, seconds, items/s);
- :mod:`~batchmem.report.text` (terminal text and JSON),
  :mod:`~batchmem.report.markdown`, :mod:`~batchmem.report.html`,
  :mod:`~batchmem.report.plots` (matplotlib), :mod:`~batchmem.report.write`
  (a file in the format its name asks for);
- :mod:`~batchmem.report.operations`: ``batchmem stats`` (history per operation);
- :mod:`~batchmem.report.memory`: ``batchmem memory`` (memory now).

Plots need matplotlib (``pip install "batchmem[report]"``); text, JSON and
Markdown do not.
"""

from __future__ import annotations

from .figures import FIGURES, SHARED_FIGURES
from .html import render_html
from .markdown import render_markdown
from .memory import memory_status, render_memory
from .model import Report, batches_path_for, load_report
from .operations import HISTORY_COLUMNS, operation_statistics, render_operation_detail, render_operations_table
from .plots import plot_report, save_plot
from .text import render_json, render_text
from .write import write_report

__all__ = [
    "FIGURES",
    "HISTORY_COLUMNS",
    "SHARED_FIGURES",
    "Report",
    "batches_path_for",
    "load_report",
    "memory_status",
    "operation_statistics",
    "plot_report",
    "render_html",
    "render_json",
    "render_markdown",
    "render_memory",
    "render_operation_detail",
    "render_operations_table",
    "render_text",
    "save_plot",
    "write_report",
]
