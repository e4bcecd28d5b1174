"""The report's plots: memory, batch size and throughput over the run, as one matplotlib figure.

Needs matplotlib (``pip install "batchmem[report]"``); built on the object
API (:class:`matplotlib.figure.Figure`, Agg canvas), so no pyplot state is
touched. Byte axes tick at round IEC sizes (multiples of a KiB, MiB or GiB;
powers of two on a log axis) labelled with :func:`batchmem.units.format_bytes`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..units import format_bytes

if TYPE_CHECKING:
    from .model import Report

__all__ = ["byte_axis", "plot_report", "png_bytes", "require_matplotlib", "save_plot"]

_MISSING_MPL = 'plots need matplotlib, which is not installed; pip install "batchmem[report]"'
_BAND_COLORS = {"warning": "#f6d55c", "critical": "#f39c3c", "emergency": "#e74c3c"}
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "borderaxespad": 0.0}


def require_matplotlib() -> Any:
    """The matplotlib module; :class:`ConfigError` naming the extra to install when it is missing."""
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
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8.4), dpi=100, layout="constrained")
    ax_mem, ax_size, ax_rate = fig.subplots(3, 1, sharex=True, height_ratios=[1.3, 1, 1])
    fig.suptitle(f"batchmem run report: {report.operation}", fontsize=13, fontweight="bold")
    x = _elapsed_end_s(report) if len(report.batches) else []
    edges = [0.0] + [float(v) for v in x]  # batch i spans edges[i]..edges[i+1] (s)
    _memory_panel(ax_mem, report, x)
    _size_panel(ax_size, report, edges)
    _rate_panel(ax_rate, report, x, edges)
    return fig


def _memory_panel(ax: Any, report: Report, x: Any) -> None:
    """RSS after each batch, the run's peak, the limit and the pressure bands."""
    df, limit, t, peak = report.batches, report.stats.memory_limit_bytes, report.thresholds, report.stats.peak_rss_bytes
    if len(df):
        if "worker_peak_bytes" in df and "worker" in df:  # remote workers: each worker's batch peaks
            for worker, rows in df.groupby("worker"):
                ax.plot(
                    x[rows.index], rows["worker_peak_bytes"], marker=".", ms=4, lw=1.0, label=f"peak in worker {worker}"
                )
            label = "RSS of this machine after each batch"
        else:
            label = "RSS after each batch"
        ax.plot(x, df["rss_after_bytes"], marker="o", ms=3.5, lw=1.6, color="#1f4e9c", label=label)
    if peak:
        ax.axhline(peak, color="#1f4e9c", ls=":", lw=1, label=f"run peak RSS {format_bytes(peak)}")
    top = max([peak or 0] + ([float(df["rss_after_bytes"].max())] if len(df) else []))
    log = False
    if limit:
        bands = (
            ("warning", t.warning, t.critical),
            ("critical", t.critical, t.emergency),
            ("emergency", t.emergency, 1.0),
        )
        for name, lo, hi in bands:
            ax.axhspan(
                lo * limit,
                hi * limit,
                color=_BAND_COLORS[name],
                alpha=0.35,
                lw=0,
                label=f"{name} ({lo:.0%}-{hi:.0%} of limit)",
            )
        ax.axhline(
            limit, color="#c0392b", lw=2, label=f"memory limit {format_bytes(limit)} ({report.stats.limit_source})"
        )
        log = bool(top and limit > 8 * top)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(top / 4, limit * 1.15)
            ax.set_title("log scale: the limit is far above the run's RSS", fontsize=9, loc="right", color="#555")
        else:
            ax.set_ylim(0, limit * 1.08)
    elif top:
        ax.set_ylim(0, top * 1.2)
    byte_axis(ax.yaxis, ax.get_ylim()[1], log=log)
    ax.set_ylabel("resident memory")
    ax.legend(**_LEGEND)
    ax.grid(True, alpha=0.3)


def byte_axis(axis: Any, top: float, *, log: bool = False) -> None:
    """Tick a matplotlib axis of bytes up to ``top`` bytes at round IEC sizes, labelled in KiB/MiB/GiB.

    Linear: multiples of the power of two that gives at most 7 steps (0, 256MiB, 512MiB, 768MiB,
    1.0GiB); log: powers of two.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MultipleLocator, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v) if v >= 0 else ""))
    axis.set_minor_formatter(NullFormatter())
    if log:
        axis.set_major_locator(LogLocator(base=2))
        return
    step = 2 ** math.ceil(math.log2(top / 7)) if top > 7 else 1
    axis.set_major_locator(MultipleLocator(step))


def _size_panel(ax: Any, report: Report, edges: list[float]) -> None:
    """Items per batch, the size asked where it differs, and the learned size."""
    from matplotlib.ticker import FuncFormatter

    df = report.batches
    if len(df):
        ax.stairs(df["items"], edges, lw=1.8, color="#27864a", label="items in batch")
        if (df["batch_size"] != df["items"]).any():
            ax.stairs(df["batch_size"], edges, ls="--", color="#8e44ad", label="size asked of the optimizer")
    learned = report.stats.learned_batch_size
    if learned:
        ax.axhline(learned, color="#555", ls=":", lw=1, label=f"learned size {learned:,}")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.set_ylabel("batch size (items)")
    ax.legend(**_LEGEND)
    ax.grid(True, alpha=0.3)


def _rate_panel(ax: Any, report: Report, x: Any, edges: list[float]) -> None:
    """Pipeline and function-only throughput per batch against the run's average."""
    from matplotlib.ticker import FuncFormatter

    df = report.batches
    if len(df):
        # Pipeline throughput: items of a batch over the wall seconds since the previous batch ended
        # (reading, fn and writing), the same definition as the run's items/s.
        gaps = x.diff()
        gaps.iloc[0] = x.iloc[0]
        pipeline = df["items"] / gaps.where(gaps > 0)
        ax.stairs(
            pipeline.fillna(0.0),
            edges,
            lw=1.8,
            color="#d35400",
            label="pipeline (items / wall s since the previous batch)",
        )
        compute = df["items"] / df["duration_s"].where(df["duration_s"] > 0)
        ax.plot(
            x, compute, lw=0, marker="x", ms=5, color="#a04000", alpha=0.6, label="function only (items / batch wall s)"
        )
    rate = report.stats.items_per_s
    if rate:
        ax.axhline(rate, color="#555", ls=":", lw=1.2, label=f"run average {rate:,.0f} items/s (items / run wall s)")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.set_ylabel("throughput (items/s)")
    ax.set_xlabel("time since the run started (s)")
    ax.legend(**_LEGEND)
    ax.grid(True, alpha=0.3)


def png_bytes(report: Report, dpi: int = 100) -> bytes:
    """The report's plots as PNG bytes."""
    fig = plot_report(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_plot(report: Report, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write the report's plots as a PNG file; returns the path."""
    out = Path(path)
    out.write_bytes(png_bytes(report, dpi))
    return out
