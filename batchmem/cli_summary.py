"""What ``batchmem run`` prints when a run ends: the summary lines, and the log records they replace.

Every finding of a run prints once on the command line: the summary says it, so the log records that
say the same (``extra={"in_summary": True}``: the run's issues, an emergency stop) are held back by
:data:`HELD_FOR_SUMMARY`, and printed only when the run ends in an error without a summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import one_line
from .units import format_bytes

__all__ = ["HELD_FOR_SUMMARY", "summary_lines"]


class _HeldForSummary(logging.Filter):
    """What a run's summary prints (its issues, the stop) is logged for library users; on the command
    line the summary says it once. Held back here, and printed only if the run ends without a summary."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "in_summary", False):
            self.held.append(record)
            return False
        return True

    def release(self, handler: logging.Handler | None) -> None:
        """Print what was held (the run ended in an error, before its summary)."""
        for record in self.held if handler is not None else ():
            if record.levelno >= handler.level:
                handler.emit(record)
        self.held.clear()


#: The filter on the CLI's log handler.
HELD_FOR_SUMMARY = _HeldForSummary()


def summary_lines(job: Any, result: Any, stats: Any) -> list[str]:
    """The end-of-run summary: a few plain lines for the terminal."""
    get = lambda name, default=None: getattr(stats, name, default) if stats is not None else default  # noqa: E731
    items = int(get("items", 0) or 0)
    failed = int(get("failed", 0) or 0)
    timeouts = int(get("timeouts", 0) or 0)
    batches = int(get("batches", 0) or 0)
    sizes = list(get("batch_sizes", []) or [])
    size_range = (
        "-" if not sizes else f"{min(sizes):,}" if min(sizes) == max(sizes) else f"{min(sizes):,}–{max(sizes):,}"
    )
    duration = float(get("duration_s", 0.0) or 0.0)
    rate = float(get("items_per_s", 0.0) or 0.0)
    peak = get("peak_rss_bytes")
    limit = get("memory_limit_bytes")
    source = get("limit_source")
    limit_text = f" of {format_bytes(limit)} limit" + (f" ({source})" if source else "") if limit else ""
    share = f", {peak / limit:.1%}" if peak and limit else ""
    remaining = get("remaining")
    left = f", {remaining:,} remain" if get("status") == "stopped" and remaining is not None else ""
    lines = [
        f"{'stopped' if get('status') == 'stopped' else 'done'}: {job.name}: {items:,} items, {failed:,} failed"
        f"{f' ({timeouts:,} past item_timeout)' if timeouts else ''}{left}, "
        f"{batches:,} batch{'' if batches == 1 else 'es'} "
        f"(size {size_range}), {rate:,.0f} items/s in {duration:.1f}s",
        f"memory: peak RSS {format_bytes(peak)}{limit_text}{share}",
        f"output: {getattr(result, 'path', job.output.path)}",
    ]
    if get("resumed_from") and get("parts"):  # a resumed output: what all its parts hold
        runs = len(get("parts"))
        lines.append(
            f"resumed: the output holds {get('output_items'):,} items, {get('output_failed'):,} failed, "
            f"written by {runs} runs"
        )
    stats_path = get("stats_path")
    if stats_path:
        lines.append(f"stats:  {stats_path}")
    errors_path = getattr(result, "errors_path", None)
    if failed and errors_path:
        lines.append(_first_failure(failed, errors_path))
    if get("stop_reason"):
        lines.append(f"stopped: {get('stop_reason')}")
    for issue in get("issues", []) or []:  # HeapAnalyzer verdicts (batchmem.heap.analyzer.Issue.to_dict())
        if issue.get("kind") == "emergency_stop" and get("stop_reason"):
            continue  # the stopped: line above says it, with how to continue
        lines.append(f"issue [{issue.get('severity')}] {issue.get('kind')}: {issue.get('message')}")
        if issue.get("recommendation") and issue.get("severity") != "info":
            lines.append(f"    -> {issue['recommendation']}")
    return lines


def _first_failure(failed: int, errors_path: Path) -> str:
    """``100 failed; first: item 7, ValueError: bad record 7; all in out.jsonl.errors.jsonl``."""
    from .io.sinks import iter_jsonl

    first = next(iter(iter_jsonl(errors_path)), None) if Path(errors_path).exists() else None
    what = f"item {first['index']}, {first['error_type']}: {one_line(first['message'])}" if first else "?"
    return f"{failed:,} failed; first: {what}; all in {errors_path}"
