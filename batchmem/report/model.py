"""The :class:`Report` of one run: its stats file, its per-batch records, its history and advice.

A report is built from a ``<output>.stats.json`` file (:class:`~batchmem.stats.RunStats`)
and the per-batch records beside it (``<output>.batches.jsonl``), plus, when
the operation has a history, :meth:`BatchOptimizer.get_batch_statistics`'s
figures. Its recommendations are the heap analyzer's, then
:func:`batchmem.optimizer.advice.run_advice` on the report's own figures and
the run's settings, then the history's trends.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..heap.monitor import PressureThresholds
from ..optimizer.advice import RunFigures, RunSettings, median_or_none, memory_bound_advice, run_advice, trend_advice
from ..optimizer.summary import RunSummary
from ..stats import RunStats, batch_records_frame, items_per_second

__all__ = ["Report", "batches_path_for", "load_report"]

logger = logging.getLogger("batchmem")


@dataclass
class Report:
    """Everything a report shows.

    Attributes:
        stats: the run's :class:`RunStats`.
        raw: the stats JSON as read (keeps keys newer than this module).
        batches: per-batch records, typed (see :func:`batchmem.stats.batch_records_frame`).
        figures: key -> value for :data:`~batchmem.report.figures.FIGURES` (bytes, seconds, items, items/s).
        issues: the heap analyzer's issues (dicts: kind, severity, message, evidence).
        recommendations: plain-language advice: the analyzer's, then advice on this run, then trends.
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

    def pressure_counts(self) -> dict[str, int]:
        """Batches per pressure level after them (normal, warning, ...), levels that occurred only."""
        df = self.batches
        if not len(df):
            return {}
        return {str(k): int(v) for k, v in df["pressure"].value_counts().items() if v}

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
                pressure_counts=self.pressure_counts(),
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
    sizes = sorted(list(stats.batch_sizes) or ([int(x) for x in df["items"]] if len(df) else []))
    limit = stats.memory_limit_bytes or None
    whole = _whole_output(stats)
    return {
        "status": stats.status,
        **whole,
        "batches": max(stats.batches, len(df)),  # the batch records of every part
        "timeouts": stats.timeouts,
        "bytes_per_item": stats.bytes_per_item,
        "learned_batch_size": stats.learned_batch_size,
        "batch_size_min": sizes[0] if sizes else None,
        "batch_size_median": median_or_none(sizes),
        "batch_size_max": sizes[-1] if sizes else None,
        "batch_s_median": median_or_none(df["duration_s"]) if len(df) else None,
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


def _whole_output(stats: RunStats) -> dict[str, Any]:
    """Items, failures, wall time and throughput of the whole output, every part of a resumed one
    included (stats files without parts: the run's own), and how often it was resumed."""
    parts = stats.parts or [stats.part_record()]
    timed = [p["duration_s"] for p in parts if p.get("duration_s") is not None]
    duration = sum(timed)
    items = stats.output_items if stats.parts else stats.items
    resumed = "no"
    if len(parts) > 1:
        each = "; ".join(
            f"{p['items']:,} items"
            + (f" in {p['duration_s']:.1f} s" if p.get("duration_s") is not None else "")
            + (f" ({p['status']})" if p.get("status") not in ("completed", None) else "")
            for p in parts
        )
        resumed = f"{len(parts) - 1} time{'s' if len(parts) > 2 else ''}; parts: {each}"
    return {
        "items": items,
        "failed": stats.output_failed if stats.parts else stats.failed,
        "resumed": resumed,
        "duration_s": duration,
        "items_per_s": items_per_second(sum(p["items"] for p in parts if p.get("duration_s") is not None), duration),
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


def _same_run(runs: list[RunSummary], stats: RunStats) -> RunSummary | dict[str, Any]:
    """The history's summary of this very run (same finish time), or {} (history off, or rotated out)."""
    for run in reversed(runs):
        finished = run.get("finished_at")
        if isinstance(finished, (int, float)) and stats.finished_at and math.isclose(finished, stats.finished_at):
            return run
    return {}


def _run_figures(report: Report, this: RunSummary | dict[str, Any]) -> RunFigures:
    """The advice's view of this run: the report's own figures; what only the optimizer counted
    (batches the memory target sized, the MemoryError ceiling) from the history's summary of it."""
    f, stats = report.figures, report.stats
    pressure = report.pressure_counts()
    bound = this.get("memory_bound_batches")
    return RunFigures(
        when="this run",
        items=stats.items,
        failed=stats.failed,
        batches=stats.batches,
        batch_size_median=f["batch_size_median"],
        batch_size_max=f["batch_size_max"],
        batch_s_median=f["batch_s_median"],
        bytes_per_item=stats.bytes_per_item,
        memory_limit_bytes=stats.memory_limit_bytes or None,
        limit_source=stats.limit_source or None,
        memory_bound_batches=bound if isinstance(bound, int) else None,
        pressure_batches=sum(n for level, n in pressure.items() if level != "normal") if len(report.batches) else None,
        memory_errors=stats.memory_errors,
        ceiling=this.get("ceiling"),
        leaks=sum(1 for i in report.issues if i.get("kind") == "leak"),
    )


def _load_stats(path: Path) -> dict[str, Any]:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"STATS_JSON: {str(path)!r} does not exist; give the <output>.stats.json of a run") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"STATS_JSON: cannot read {str(path)!r} as JSON ({exc}); give the <output>.stats.json of a run"
        ) from None
    if not isinstance(raw, dict) or "process_name" not in raw:
        raise ConfigError(
            f"STATS_JSON: {str(path)!r} is not a batchmem stats file (no process_name); "
            "give the <output>.stats.json of a run"
        )
    return raw


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
        use_history: False leaves out the operation's history and its trends.

    Raises:
        ConfigError: the stats file is missing or is not a batchmem stats file.
    """
    path = Path(stats_path)
    raw = _load_stats(path)
    stats = RunStats.from_dict(raw)
    if batches_path is None:
        beside = batches_path_for(path)
        batches_path = beside if beside.exists() or not stats.batches_path else stats.batches_path
    df = batch_records_frame(batches_path)
    issues = [i for i in (stats.issues or []) if isinstance(i, dict)]
    report = Report(
        stats=stats,
        raw=raw,
        batches=df,
        figures=_figures(stats, df, raw),
        issues=issues,
        thresholds=_thresholds(raw),
        source=str(path),
    )
    runs: list[RunSummary] = []
    if use_history and stats.process_name:
        report.history, runs = _history(stats, history)
    this = _same_run(runs, stats)
    recs = _analyzer_recommendations(raw, issues)
    settings = RunSettings.from_dict(stats.settings or this.get("settings"))
    figures = _run_figures(report, this)
    # A run that was memory-bound says so in its own issues (batchmem.run): not again as a recommendation.
    stated = memory_bound_advice(figures, settings) if any(i.get("kind") == "memory_bound" for i in issues) else None
    for text in run_advice(figures, settings) + trend_advice(runs):
        if text not in recs and text != stated:
            recs.append(text)
    report.recommendations = recs
    return report


def _history(stats: RunStats, history: Any) -> tuple[dict[str, Any] | None, list[RunSummary]]:
    """The operation's history figures (None without runs) and its stored run summaries."""
    from ..optimizer import BatchOptimizer, HistoryStore

    store = history if history is not None else HistoryStore()
    opt = BatchOptimizer(memory_limit_bytes=stats.memory_limit_bytes or None, history=store)
    figures = opt.get_batch_statistics(stats.process_name)["operations"].get(stats.process_name)
    if not figures or not figures.get("runs"):
        return None, []
    return figures, store.runs(stats.process_name)
