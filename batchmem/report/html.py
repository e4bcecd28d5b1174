"""The report as one self-contained HTML page (``batchmem report --html``, a job's ``report:`` key).

The page embeds its plot as a base64 PNG and has no external references
(no scripts, stylesheets or images fetched), so it opens offline.
"""

from __future__ import annotations

import base64
import html
import string
from typing import TYPE_CHECKING

from .figures import evidence_text, figure_rows, history_rows
from .plots import png_bytes

if TYPE_CHECKING:
    from .model import Report

__all__ = ["render_html"]

_STYLE = """\
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; }
td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.v { font-variant-numeric: tabular-nums; }
.sev-critical, .sev-error, .sev-emergency { color: #b03a2e; font-weight: bold; }
.sev-warning { color: #b9770e; font-weight: bold; }
img { max-width: 100%; } .muted { color: #666; } code { background: #f4f4f4; padding: 0 .2em; }"""

_HTML = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>batchmem report: $operation</title>
<style>
$style
</style>
</head>
<body>
<h1>batchmem run report: $operation</h1>
<p class="muted">Stats file <code>$source</code>; $n_batches per-batch records.
Sizes in IEC units (1 KiB = 1024 bytes, 1 MiB = 1024 KiB, 1 GiB = 1024 MiB).</p>
$plot
<h2>Figures</h2>
<table>
$figures
</table>
$history
<h2>Issues (heap analyzer)</h2>
$issues
<h2>Recommendations</h2>
$recommendations
</body>
</html>
""")


def _rows_html(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f'<tr><th>{html.escape(a)}</th><td class="v">{html.escape(b)}</td></tr>' for a, b in rows)


def _issues_html(report: Report) -> str:
    if not report.issues:
        return "<p>None reported by the heap analyzer.</p>"
    items = []
    for i in report.issues:
        sev = html.escape(str(i.get("severity", "info")))
        kind, message = html.escape(str(i.get("kind", ""))), html.escape(str(i.get("message", "")))
        ev = html.escape(evidence_text(i.get("evidence")))
        items.append(
            f'<tr><td class="sev-{sev}">{sev}</td><td>{kind}</td><td>{message}</td><td class="muted">{ev}</td></tr>'
        )
    header = "<tr><th>severity</th><th>kind</th><th>message</th><th>evidence</th></tr>"
    return "<table>\n" + header + "\n" + "\n".join(items) + "\n</table>"


def render_html(report: Report, *, plots: bool = True) -> str:
    """One self-contained HTML page: plots (base64 PNG), figures, history, issues, recommendations.

    No external references (no scripts, stylesheets or images fetched), so it
    opens offline. ``plots=False`` leaves the plots out (no matplotlib needed).
    Raises :class:`~batchmem.errors.ConfigError` when ``plots`` and matplotlib is missing.
    """
    plot = ""
    if plots:
        data = base64.b64encode(png_bytes(report)).decode("ascii")
        alt = "RSS and memory limit with pressure bands, batch size and throughput over the run"
        plot = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    history = ""
    if report.history:
        name = html.escape(report.operation)
        history = f"<h2>History of {name}</h2>\n<table>\n{_rows_html(history_rows(report))}\n</table>"
    recs = "<p>None.</p>"
    if report.recommendations:
        recs = "<ul>\n" + "\n".join(f"<li>{html.escape(r)}</li>" for r in report.recommendations) + "\n</ul>"
    return _HTML.substitute(
        operation=html.escape(report.operation),
        style=_STYLE,
        source=html.escape(report.source),
        n_batches=len(report.batches),
        plot=plot,
        figures=_rows_html(figure_rows(report)),
        history=history,
        issues=_issues_html(report),
        recommendations=recs,
    )
