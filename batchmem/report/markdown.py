"""The report as Markdown (``batchmem report --markdown``), with the plots as a PNG linked beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .figures import evidence_text, figure_rows, history_rows

if TYPE_CHECKING:
    from .model import Report

__all__ = ["render_markdown"]


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| figure | value |", "| --- | --- |"] + [f"| {_md_cell(a)} | {_md_cell(b)} |" for a, b in rows]


def render_markdown(report: Report, image: str | None = None) -> str:
    """The report as Markdown; ``image`` is a relative path of the plots' PNG to link, if written."""
    out = [f"# batchmem run report: {_md_cell(report.operation)}", "", f"Stats file: `{report.source}`", ""]
    if image:
        out += [f"![memory, batch size and throughput over the run]({image})", ""]
    out += ["## Figures", "", *_table(figure_rows(report))]
    hist = history_rows(report)
    if hist:
        out += ["", f"## History of `{report.operation}`", "", *_table(hist)]
    out += ["", "## Issues", ""]
    if report.issues:
        out += ["| severity | kind | message | evidence |", "| --- | --- | --- | --- |"]
        out += [
            f"| {_md_cell(i.get('severity', ''))} | {_md_cell(i.get('kind', ''))} | {_md_cell(i.get('message', ''))} "
            f"| {_md_cell(evidence_text(i.get('evidence')))} |"
            for i in report.issues
        ]
    else:
        out.append("None reported by the heap analyzer.")
    out += ["", "## Recommendations", ""]
    out += [f"- {_md_cell(r)}" for r in report.recommendations] or ["None."]
    return "\n".join(out) + "\n"
