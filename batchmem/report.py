"""Run reports: what one run cost, as text, JSON, Markdown or a self-contained HTML page.

A report is built from a ``<output>.stats.json`` file (:class:`~batchmem.stats.RunStats`)
and the per-batch records beside it (``<output>.batches.jsonl``), plus, when
the operation has a history, :meth:`BatchOptimizer.get_batch_statistics`'s
figures and recommendations::

    from batchmem.report import load_report, render_html
    report = load_report("out.jsonl.stats.json")
    Path("report.html").write_text(render_html(report), encoding="utf-8")

Units: sizes in bytes (shown in IEC binary units, KiB/MiB/GiB), durations in seconds,
throughput in items per second (items over the run's wall seconds, the one
definition of :func:`batchmem.stats.items_per_second`), memory cost in bytes
per item (:func:`batchmem.stats.bytes_per_item`). The figures a report shares
with ``get_batch_statistics`` carry the same names and come from the same
formulas, so the two always agree on a run.

Plots need matplotlib (``pip install "batchmem[report]"``); text, JSON and
Markdown do not. The HTML page embeds its plot as a base64 PNG and has no
external references, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .units import format_bytes
from .errors import ConfigError
from .heap.monitor import PressureThresholds
from .stats import RunStats, batch_records_frame

__all__ = [
    "Report",
    "load_report",
    "batches_path_for",
    "format_bytes",
    "plot_report",
    "render_text",
    "render_json",
    "render_markdown",
    "render_html",
    "write_report",
    "save_plot",
    "operation_statistics",
    "render_operations_table",
    "render_operation_detail",
    "memory_status",
    "render_memory",
]

logger = logging.getLogger("batchmem")

#: Figures shown for a run: key -> (label, kind). ``kind`` picks the formatting.
#: Keys shared with ``BatchOptimizer.get_batch_statistics()`` use its names.
FIGURES: dict[str, tuple[str, str]] = {
    "status": ("status", "str"),
    "items": ("items", "int"),
    "failed": ("failed items", "int"),
    "batches": ("batches", "int"),
    "duration_s": ("wall time", "seconds"),
    "items_per_s": ("throughput (items / wall s)", "rate"),
    "bytes_per_item": ("memory per item (peak growth)", "bytes"),
    "learned_batch_size": ("learned batch size (items)", "int"),
    "batch_size_min": ("smallest batch (items)", "int"),
    "batch_size_median": ("median batch (items)", "int"),
    "batch_size_max": ("largest batch (items)", "int"),
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

_MISSING_MPL = 'plots need matplotlib, which is not installed; pip install "batchmem[report]"'
_BAND_COLORS = {"warning": "#f6d55c", "critical": "#f39c3c", "emergency": "#e74c3c"}


# --------------------------------------------------------------------------- formatting


def _format(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "-"
    if kind == "bytes":
        return format_bytes(value)
    if kind == "int":
        return f"{int(round(value)):,}"
    if kind == "rate":
        return f"{value:,.1f} items/s"
    if kind == "seconds":
        return f"{value:,.2f} s" if value >= 1 else f"{value:.3g} s"
    if kind == "percent":
        return f"{100 * value:.1f} %"
    if kind == "time":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def _evidence_text(evidence: Any, limit: int = 300) -> str:
    if evidence in (None, "", {}, []):
        return ""
    if isinstance(evidence, dict):
        text = ", ".join(f"{k}={v}" for k, v in evidence.items())
    else:
        text = orjson.dumps(evidence, default=str).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the model


@dataclass
class Report:
    """Everything a report shows.

    Attributes:
        stats: the run's :class:`RunStats`.
        raw: the stats JSON as read (keeps keys newer than this module).
        batches: per-batch records, typed (see :func:`batchmem.stats.batch_records_frame`).
        figures: key -> value for :data:`FIGURES` (bytes, seconds, items, items/s).
        issues: the heap analyzer's issues (dicts: kind, severity, message, evidence).
        recommendations: plain-language advice: the analyzer's, then the optimizer's.
        history: ``get_batch_statistics(operation)["operations"][operation]`` or None.
        thresholds: pressure thresholds (fractions of the limit) used for the bands.
        source: path of the stats JSON.
    """

    stats: RunStats
    raw: dict[str, Any]
    batches: Any
    figures: dict[str, Any]
    issues: list[dict[str, Any]] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    history: dict[str, Any] | None = None
    thresholds: PressureThresholds = field(default_factory=PressureThresholds)
    source: str = ""

    @property
    def operation(self) -> str:
        """The run's operation name (``process_name``)."""
        return self.stats.process_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: figures, issues, recommendations, history and a per-batch summary."""
        df = self.batches
        per_batch: dict[str, Any] = {"records": int(len(df)), "path": self.stats.batches_path}
        if len(df):
            per_batch.update(
                duration_s_median=float(df["duration_s"].median()),
                duration_s_max=float(df["duration_s"].max()),
                peak_bytes_max=int(df["peak_bytes"].max()),
                rss_after_bytes_max=int(df["rss_after_bytes"].max()),
                pressure_counts={str(k): int(v) for k, v in df["pressure"].value_counts().items() if v},
            )
        return {
            "operation": self.operation,
            "stats_path": self.source,
            "figures": self.figures,
            "pressure_thresholds": {
                "warning": self.thresholds.warning,
                "critical": self.thresholds.critical,
                "emergency": self.thresholds.emergency,
            },
            "batches": per_batch,
            "issues": self.issues,
            "recommendations": self.recommendations,
            "history": self.history,
        }


def batches_path_for(stats_path: str | os.PathLike[str]) -> Path:
    """The ``.batches.jsonl`` beside a ``.stats.json`` (``out.jsonl.stats.json`` -> ``out.jsonl.batches.jsonl``)."""
    p = Path(stats_path)
    name = p.name[: -len(".stats.json")] if p.name.endswith(".stats.json") else p.stem
    return p.with_name(name + ".batches.jsonl")


def _thresholds(raw: dict[str, Any]) -> PressureThresholds:
    t = raw.get("pressure_thresholds")
    if isinstance(t, dict):
        try:
            return PressureThresholds(**{k: float(t[k]) for k in ("warning", "critical", "emergency") if k in t})
        except (ConfigError, TypeError, ValueError):
            logger.warning("batchmem: ignoring bad pressure_thresholds in the stats file; using the defaults")
    return PressureThresholds()


def _figures(stats: RunStats, df: Any, raw: dict[str, Any]) -> dict[str, Any]:
    sizes = list(stats.batch_sizes) or ([int(x) for x in df["items"]] if len(df) else [])
    sizes_sorted = sorted(sizes)
    median = None
    if sizes_sorted:
        mid = len(sizes_sorted) // 2
        median = sizes_sorted[mid] if len(sizes_sorted) % 2 else (sizes_sorted[mid - 1] + sizes_sorted[mid]) / 2
    limit = stats.memory_limit_bytes or None
    return {
        "status": stats.status,
        "items": stats.items,
        "failed": stats.failed,
        "batches": stats.batches,
        "duration_s": stats.duration_s,
        "items_per_s": stats.items_per_s,
        "bytes_per_item": stats.bytes_per_item,
        "learned_batch_size": stats.learned_batch_size,
        "batch_size_min": sizes_sorted[0] if sizes_sorted else None,
        "batch_size_median": median,
        "batch_size_max": sizes_sorted[-1] if sizes_sorted else None,
        "peak_rss_bytes": stats.peak_rss_bytes,
        "memory_limit_bytes": stats.memory_limit_bytes,
        "peak_utilization": (stats.peak_rss_bytes / limit) if limit else None,
        "limit_source": stats.limit_source,
        "memory_errors": stats.memory_errors,
        "gc_collections": stats.gc_collections,
        "gc_pause_s": raw.get("gc_pause_s"),
        "n_jobs": stats.n_jobs,
        "backend": stats.backend,
        "started_at": stats.started_at or None,
    }


def _analyzer_recommendations(raw: dict[str, Any], issues: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for rec in raw.get("recommendations") or []:
        out.append(rec if isinstance(rec, str) else str(rec.get("message", rec)) if isinstance(rec, dict) else str(rec))
    for issue in issues:
        for key in ("recommendation", "advice", "fix"):
            value = issue.get(key)
            if isinstance(value, str) and value and value not in out:
                out.append(value)
    return out


def load_report(
    stats_path: str | os.PathLike[str],
    *,
    batches_path: str | os.PathLike[str] | None = None,
    history: Any = None,
    use_history: bool = True,
) -> Report:
    """Build the :class:`Report` of one run.

    Args:
        stats_path: a ``<output>.stats.json`` written by :class:`~batchmem.BatchProcessor`.
        batches_path: the per-batch records; default: the ``.batches.jsonl``
            beside ``stats_path`` (falling back to the path inside the stats file).
        history: a :class:`~batchmem.optimizer.HistoryStore`; default the
            user's (``$BATCHMEM_HOME``).
        use_history: False leaves out the operation's history and the
            optimizer's recommendations.

    Raises:
        ConfigError: the stats file is missing or is not a batchmem stats file.
    """
    path = Path(stats_path)
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"STATS_JSON: {str(path)!r} does not exist; give the <output>.stats.json of a run") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"STATS_JSON: cannot read {str(path)!r} as JSON ({exc}); give the <output>.stats.json of a run") from None
    if not isinstance(raw, dict) or "process_name" not in raw:
        raise ConfigError(f"STATS_JSON: {str(path)!r} is not a batchmem stats file (no process_name); give the <output>.stats.json of a run")
    stats = RunStats.from_dict(raw)
    if batches_path is None:
        beside = batches_path_for(path)
        batches_path = beside if beside.exists() or not stats.batches_path else stats.batches_path
    df = batch_records_frame(batches_path)
    issues = [i for i in (stats.issues or []) if isinstance(i, dict)]
    recs = _analyzer_recommendations(raw, issues)
    hist = None
    if use_history and stats.process_name:
        from .optimizer import BatchOptimizer

        opt = BatchOptimizer(memory_limit_bytes=stats.memory_limit_bytes or None, history=history)
        figures = opt.get_batch_statistics(stats.process_name)["operations"].get(stats.process_name)
        if figures and figures.get("runs"):
            hist = figures
            recs.extend(r for r in figures.get("recommendations", []) if r not in recs)
    return Report(
        stats=stats,
        raw=raw,
        batches=df,
        figures=_figures(stats, df, raw),
        issues=issues,
        recommendations=recs,
        history=hist,
        thresholds=_thresholds(raw),
        source=str(path),
    )


# --------------------------------------------------------------------------- plots


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(_MISSING_MPL) from None
    return matplotlib


def _elapsed_end_s(report: Report) -> Any:
    """Seconds from the run's start to the end of each batch."""
    df = report.batches
    start = report.stats.started_at
    ends = df["start_time"].astype("int64") / 1e9 + df["duration_s"]
    if not start:
        start = float(df["start_time"].astype("int64").min()) / 1e9 if len(df) else 0.0
    return (ends - start).clip(lower=0.0)


def plot_report(report: Report) -> Any:
    """The report's figure (a matplotlib ``Figure``, Agg canvas, no pyplot state).

    Three panels over seconds since the run started: process-tree RSS after
    each batch with the memory limit and the pressure bands (warning /
    critical / emergency fractions of the limit) shaded; items per batch
    (and the size asked, when it differs); throughput (items per wall second
    since the previous batch ended, and items per second of the function
    alone) against the run's average (items / run wall s).
    Raises :class:`ConfigError` when matplotlib is missing.
    """
    _require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    df = report.batches
    fig = Figure(figsize=(11, 8.4), dpi=100, layout="constrained")
    ax_mem, ax_size, ax_rate = fig.subplots(3, 1, sharex=True, height_ratios=[1.3, 1, 1])
    fig.suptitle(f"batchmem run report: {report.operation}", fontsize=13, fontweight="bold")
    x = _elapsed_end_s(report) if len(df) else []
    edges = [0.0] + [float(v) for v in x]  # batch i spans edges[i]..edges[i+1] (s)
    bytes_fmt = FuncFormatter(lambda v, _pos: (format_bytes(v) if v > 0 else "0 B") if v >= 0 else "")
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "borderaxespad": 0.0}

    # Memory: RSS, limit, bands.
    limit = report.stats.memory_limit_bytes
    t = report.thresholds
    peak = report.stats.peak_rss_bytes
    if len(df):
        ax_mem.plot(x, df["rss_after_bytes"], marker="o", ms=3.5, lw=1.6, color="#1f4e9c", label="RSS after each batch")
    if peak:
        ax_mem.axhline(peak, color="#1f4e9c", ls=":", lw=1, label=f"run peak RSS {format_bytes(peak)}")
    top = max([peak or 0] + ([float(df["rss_after_bytes"].max())] if len(df) else []))
    if limit:
        bands = (("warning", t.warning, t.critical), ("critical", t.critical, t.emergency), ("emergency", t.emergency, 1.0))
        for name, lo, hi in bands:
            ax_mem.axhspan(lo * limit, hi * limit, color=_BAND_COLORS[name], alpha=0.35, lw=0,
                           label=f"{name} ({lo:.0%}-{hi:.0%} of limit)")
        ax_mem.axhline(limit, color="#c0392b", lw=2, label=f"memory limit {format_bytes(limit)} ({report.stats.limit_source})")
        if top and limit > 8 * top:
            ax_mem.set_yscale("log")
            ax_mem.set_ylim(top / 4, limit * 1.15)
            ax_mem.set_title("log scale: the limit is far above the run's RSS", fontsize=9, loc="right", color="#555")
        else:
            ax_mem.set_ylim(0, limit * 1.08)
    elif top:
        ax_mem.set_ylim(0, top * 1.2)
    ax_mem.yaxis.set_major_formatter(bytes_fmt)
    ax_mem.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: ""))
    ax_mem.set_ylabel("resident memory (bytes)")
    ax_mem.legend(**outside)
    ax_mem.grid(True, alpha=0.3)

    # Batch size.
    if len(df):
        ax_size.stairs(df["items"], edges, lw=1.8, color="#27864a", label="items in batch")
        if (df["batch_size"] != df["items"]).any():
            ax_size.stairs(df["batch_size"], edges, ls="--", color="#8e44ad", label="size asked of the optimizer")
    if report.stats.learned_batch_size:
        ax_size.axhline(report.stats.learned_batch_size, color="#555", ls=":", lw=1,
                        label=f"learned size {report.stats.learned_batch_size:,}")
    ax_size.set_ylim(bottom=0)
    ax_size.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax_size.set_ylabel("batch size (items)")
    ax_size.legend(**outside)
    ax_size.grid(True, alpha=0.3)

    # Throughput.
    if len(df):
        # Pipeline throughput: items of a batch over the wall seconds since the previous batch ended
        # (reading, fn and writing), the same definition as the run's items/s.
        gaps = x.diff()
        gaps.iloc[0] = x.iloc[0]
        pipeline = df["items"] / gaps.where(gaps > 0)
        ax_rate.stairs(pipeline.fillna(0.0), edges, lw=1.8, color="#d35400",
                       label="pipeline (items / wall s since the previous batch)")
        compute = df["items"] / df["duration_s"].where(df["duration_s"] > 0)
        ax_rate.plot(x, compute, lw=0, marker="x", ms=5, color="#a04000", alpha=0.6,
                     label="function only (items / batch wall s)")
    if report.stats.items_per_s:
        ax_rate.axhline(report.stats.items_per_s, color="#555", ls=":", lw=1.2,
                        label=f"run average {report.stats.items_per_s:,.0f} items/s (items / run wall s)")
    ax_rate.set_ylim(bottom=0)
    ax_rate.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax_rate.set_ylabel("throughput (items/s)")
    ax_rate.set_xlabel("time since the run started (s)")
    ax_rate.legend(**outside)
    ax_rate.grid(True, alpha=0.3)
    return fig


def _png_bytes(report: Report, dpi: int = 100) -> bytes:
    fig = plot_report(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_plot(report: Report, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write the report's plots as a PNG file; returns the path."""
    out = Path(path)
    out.write_bytes(_png_bytes(report, dpi))
    return out


# --------------------------------------------------------------------------- text renderings


def _figure_rows(report: Report) -> list[tuple[str, str]]:
    return [(label, _format(report.figures.get(key), kind)) for key, (label, kind) in FIGURES.items()]


def _history_rows(report: Report) -> list[tuple[str, str]]:
    h = report.history
    if not h:
        return []
    return [
        ("runs", _format(h.get("runs"), "int")),
        ("items, all runs", _format(h.get("items"), "int")),
        ("throughput, all runs (items / wall s)", _format(h.get("items_per_s"), "rate")),
        ("memory per item, last run", _format(h.get("bytes_per_item"), "bytes")),
        ("learned batch size (items)", _format(h.get("learned_batch_size"), "int")),
        ("peak RSS, all runs", _format(h.get("peak_rss_bytes"), "bytes")),
        ("last run", _format(h.get("last_run_at"), "time")),
    ]


def _issue_line(issue: dict[str, Any]) -> str:
    sev = str(issue.get("severity", "info"))
    kind = str(issue.get("kind", "issue"))
    msg = str(issue.get("message", ""))
    ev = _evidence_text(issue.get("evidence"))
    return f"[{sev}] {kind}: {msg}" + (f" ({ev})" if ev else "")


def render_text(report: Report) -> str:
    """A plain-text report for the terminal."""
    lines = [f"batchmem run report: {report.operation}", f"stats: {report.source}", ""]
    rows = _figure_rows(report)
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    df = report.batches
    if len(df):
        counts = {str(k): int(v) for k, v in df["pressure"].value_counts().items() if v}
        lines += ["", f"per-batch records: {len(df)} ({report.stats.batches_path or ''})",
                  "  pressure after batches: " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    hist = _history_rows(report)
    if hist:
        w = max(len(label) for label, _ in hist)
        lines += ["", f"history of {report.operation!r}:"] + [f"  {label:<{w}}  {value}" for label, value in hist]
    lines += ["", "issues:" if report.issues else "issues: none reported by the heap analyzer"]
    lines += [f"  - {_issue_line(i)}" for i in report.issues]
    lines += ["", "recommendations:" if report.recommendations else "recommendations: none"]
    lines += [f"  - {r}" for r in report.recommendations]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The report as indented JSON (figures in bytes, seconds, items, items/s)."""
    return orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, image: str | None = None) -> str:
    """The report as Markdown; ``image`` is a relative path of the plots' PNG to link, if written."""
    out = [f"# batchmem run report: {_md_cell(report.operation)}", "", f"Stats file: `{report.source}`", ""]
    if image:
        out += [f"![memory, batch size and throughput over the run]({image})", ""]
    out += ["## Figures", "", "| figure | value |", "| --- | --- |"]
    out += [f"| {_md_cell(label)} | {_md_cell(value)} |" for label, value in _figure_rows(report)]
    hist = _history_rows(report)
    if hist:
        out += ["", f"## History of `{report.operation}`", "", "| figure | value |", "| --- | --- |"]
        out += [f"| {_md_cell(label)} | {_md_cell(value)} |" for label, value in hist]
    out += ["", "## Issues", ""]
    if report.issues:
        out += ["| severity | kind | message | evidence |", "| --- | --- | --- | --- |"]
        out += [
            f"| {_md_cell(i.get('severity', ''))} | {_md_cell(i.get('kind', ''))} | {_md_cell(i.get('message', ''))} "
            f"| {_md_cell(_evidence_text(i.get('evidence')))} |"
            for i in report.issues
        ]
    else:
        out.append("None reported by the heap analyzer.")
    out += ["", "## Recommendations", ""]
    out += [f"- {_md_cell(r)}" for r in report.recommendations] or ["None."]
    return "\n".join(out) + "\n"


_HTML = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>batchmem report: $operation</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.v { font-variant-numeric: tabular-nums; }
.sev-critical, .sev-error, .sev-emergency { color: #b03a2e; font-weight: bold; } .sev-warning { color: #b9770e; font-weight: bold; }
img { max-width: 100%; } .muted { color: #666; } code { background: #f4f4f4; padding: 0 .2em; }
</style>
</head>
<body>
<h1>batchmem run report: $operation</h1>
<p class="muted">Stats file <code>$source</code>; $n_batches per-batch records. Sizes in binary units (KiB, MiB, GiB).</p>
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
    return "\n".join(f"<tr><th>{html.escape(a)}</th><td class=\"v\">{html.escape(b)}</td></tr>" for a, b in rows)


def render_html(report: Report, *, plots: bool = True) -> str:
    """One self-contained HTML page: plots (base64 PNG), figures, history, issues, recommendations.

    No external references (no scripts, stylesheets or images fetched), so it
    opens offline. ``plots=False`` leaves the plots out (no matplotlib needed).
    Raises :class:`ConfigError` when ``plots`` and matplotlib is missing.
    """
    plot = ""
    if plots:
        data = base64.b64encode(_png_bytes(report)).decode("ascii")
        alt = "RSS and memory limit with pressure bands, batch size and throughput over the run"
        plot = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    history = ""
    if report.history:
        history = f"<h2>History of {html.escape(report.operation)}</h2>\n<table>\n{_rows_html(_history_rows(report))}\n</table>"
    if report.issues:
        items = []
        for i in report.issues:
            sev = str(i.get("severity", "info"))
            ev = _evidence_text(i.get("evidence"))
            items.append(
                f'<tr><td class="sev-{html.escape(sev)}">{html.escape(sev)}</td><td>{html.escape(str(i.get("kind", "")))}</td>'
                f"<td>{html.escape(str(i.get('message', '')))}</td><td class=\"muted\">{html.escape(ev)}</td></tr>"
            )
        issues = "<table>\n<tr><th>severity</th><th>kind</th><th>message</th><th>evidence</th></tr>\n" + "\n".join(items) + "\n</table>"
    else:
        issues = "<p>None reported by the heap analyzer.</p>"
    if report.recommendations:
        recs = "<ul>\n" + "\n".join(f"<li>{html.escape(r)}</li>" for r in report.recommendations) + "\n</ul>"
    else:
        recs = "<p>None.</p>"
    return _HTML.substitute(
        operation=html.escape(report.operation),
        source=html.escape(report.source),
        n_batches=len(report.batches),
        plot=plot,
        figures=_rows_html(_figure_rows(report)),
        history=history,
        issues=issues,
        recommendations=recs,
    )


def write_report(report: Report, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``report`` to ``path`` as ``fmt`` ("html", "markdown", "json", "text"; default by suffix).

    Markdown gets the plots as a PNG beside it (``report.md`` -> ``report.png``)
    when matplotlib is installed. Returns the path written.
    """
    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"report: folder {str(out.parent)!r} does not exist; create it or choose another path")
    fmt = fmt or {".html": "html", ".htm": "html", ".md": "markdown", ".json": "json"}.get(out.suffix.lower(), "text")
    if fmt == "html":
        out.write_text(render_html(report), encoding="utf-8")
    elif fmt == "markdown":
        image = None
        try:
            _require_matplotlib()
            png = out.with_suffix(".png")
            save_plot(report, png)
            image = png.name
        except ConfigError:
            logger.info("batchmem: matplotlib missing; the Markdown report has no plots")
        out.write_text(render_markdown(report, image), encoding="utf-8")
    elif fmt == "json":
        out.write_text(render_json(report) + "\n", encoding="utf-8")
    elif fmt == "text":
        out.write_text(render_text(report), encoding="utf-8")
    else:
        raise ConfigError(f"report format {fmt!r} is not one of html, markdown, json, text")
    return out


# --------------------------------------------------------------------------- per-operation history (batchmem stats)

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


def operation_statistics(operation: str | None = None, *, history: Any = None) -> dict[str, Any]:
    """``BatchOptimizer.get_batch_statistics(operation)`` over the stored history (no live run).

    Raises :class:`ConfigError` when ``operation`` has no history.
    """
    from .optimizer import BatchOptimizer, HistoryStore

    store = history if history is not None else HistoryStore()
    data = BatchOptimizer(history=store).get_batch_statistics(operation)
    if operation is not None and operation not in data["operations"]:
        known = ", ".join(store.operations()) or "none yet"
        raise ConfigError(f"OPERATION: no history for {operation!r} (operations with history: {known})")
    return data


def _cell(value: Any, kind: str) -> str:
    if kind == "rate_short":
        return "-" if value is None else f"{value:,.1f}"
    return _format(value, kind)


def render_operations_table(stats: dict[str, Any]) -> str:
    """A text table, one row per operation, of :func:`operation_statistics`' figures."""
    ops = stats["operations"]
    if not ops:
        return "no operations in the history yet (they are recorded when a run finishes)\n"
    header = ["operation"] + [h for h, _ in HISTORY_COLUMNS.values()]
    rows = [[name] + [_cell(fig.get(k), kind) for k, (_, kind) in HISTORY_COLUMNS.items()] for name, fig in ops.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines) + "\n"


def render_operation_detail(name: str, fig: dict[str, Any]) -> str:
    """One operation's figures, its last run and its recommendations, as text."""
    rows = [
        ("runs", _format(fig.get("runs"), "int")),
        ("items, all runs", _format(fig.get("items"), "int")),
        ("failed items, all runs", _format(fig.get("failed"), "int")),
        ("batches, all runs", _format(fig.get("batches"), "int")),
        ("wall time, all runs", _format(fig.get("duration_s"), "seconds")),
        ("throughput, all runs (items / wall s)", _format(fig.get("items_per_s"), "rate")),
        ("memory per item, last run", _format(fig.get("bytes_per_item"), "bytes")),
        ("learned batch size (items)", _format(fig.get("learned_batch_size"), "int")),
        ("typical batch (s)", _format(fig.get("typical_batch_s"), "seconds")),
        ("peak RSS, all runs", _format(fig.get("peak_rss_bytes"), "bytes")),
        ("leaks flagged, all runs", _format(fig.get("leaks"), "int")),
        ("first run", _format(fig.get("first_run_at"), "time")),
        ("last run", _format(fig.get("last_run_at"), "time")),
    ]
    w = max(len(a) for a, _ in rows)
    lines = [f"operation {name!r}"] + [f"  {a:<{w}}  {b}" for a, b in rows]
    recs = fig.get("recommendations") or []
    lines += ["", "recommendations:" if recs else "recommendations: none"] + [f"  - {r}" for r in recs]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- memory now (batchmem memory)


def memory_status(verbose: bool = False) -> dict[str, Any]:
    """What memory looks like now, for this process (bytes; utilization a fraction of the limit).

    Keys: rss_bytes, available_bytes, limit_bytes, limit_source, utilization,
    pressure, thresholds; with ``verbose`` also ``gc`` (count, threshold,
    stats per generation, enabled) and ``heap`` (tracemalloc tracing and its
    current/peak bytes, and psutil's ``memory_full_info`` fields such as uss,
    pss, swap where the platform has them).
    """
    import gc
    import tracemalloc

    import psutil

    from .heap.monitor import MemoryMonitor

    mon = MemoryMonitor()
    s = mon.sample()
    out: dict[str, Any] = s.to_dict()
    out["thresholds"] = {"warning": mon.thresholds.warning, "critical": mon.thresholds.critical,
                         "emergency": mon.thresholds.emergency}
    if not verbose:
        return out
    out["gc"] = {
        "enabled": gc.isenabled(),
        "count": list(gc.get_count()),
        "threshold": list(gc.get_threshold()),
        "stats": gc.get_stats(),
        "tracked_objects": len(gc.get_objects()),
    }
    heap: dict[str, Any] = {"tracemalloc_tracing": tracemalloc.is_tracing()}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        heap.update(tracemalloc_current_bytes=current, tracemalloc_peak_bytes=peak)
    try:
        info = psutil.Process().memory_full_info()
        heap.update({f"{k}_bytes": int(v) for k, v in info._asdict().items()})
    except (psutil.Error, AttributeError, OSError) as exc:  # not permitted or not on this platform
        heap["memory_full_info"] = f"unavailable ({type(exc).__name__})"
    try:
        heap["swap_used_bytes_system"] = int(psutil.swap_memory().used)
    except (psutil.Error, OSError, RuntimeError):
        pass
    out["heap"] = heap
    return out


def render_memory(status: dict[str, Any]) -> str:
    """:func:`memory_status` as text lines for the terminal."""
    t = status["thresholds"]
    lines = [
        f"rss:       {format_bytes(status['rss_bytes'])} (this process and its children)",
        f"available: {format_bytes(status['available_bytes'])} (system)",
        f"limit:     {format_bytes(status['limit_bytes'])} from {status['limit_source']}",
        f"pressure:  {status['pressure']} ({status['utilization']:.1%} of the limit; warning at {t['warning']:.0%}, "
        f"critical at {t['critical']:.0%}, emergency at {t['emergency']:.0%})",
    ]
    g = status.get("gc")
    if g:
        lines += ["", f"gc:        {'enabled' if g['enabled'] else 'DISABLED'}; "
                  f"{g['tracked_objects']:,} tracked objects",
                  "  count / threshold per generation: "
                  + ", ".join(f"gen{i} {c}/{th}" for i, (c, th) in enumerate(zip(g["count"], g["threshold"])))]
        for i, st in enumerate(g["stats"]):
            lines.append(f"  gen{i}: {st.get('collections', 0):,} collections, {st.get('collected', 0):,} collected, "
                         f"{st.get('uncollectable', 0):,} uncollectable")
    h = status.get("heap")
    if h:
        lines += ["", "heap:"]
        tracing = h.get("tracemalloc_tracing")
        lines.append("  tracemalloc: " + (
            f"tracing, {format_bytes(h['tracemalloc_current_bytes'])} now, {format_bytes(h['tracemalloc_peak_bytes'])} peak"
            if tracing else "not tracing (set PYTHONTRACEMALLOC=1 to trace allocations)"))
        for key, value in h.items():
            if key.endswith("_bytes") and not key.startswith("tracemalloc"):
                lines.append(f"  {key[:-6]}: {format_bytes(value)}")
            elif key == "memory_full_info":
                lines.append(f"  memory_full_info: {value}")
    return "\n".join(lines) + "\n"
