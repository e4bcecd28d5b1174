"""Writing a report to a file in the format its name asks for (html, markdown, json, text)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .html import render_html
from .markdown import render_markdown
from .plots import require_matplotlib, save_plot
from .text import render_json, render_text

if TYPE_CHECKING:
    from .model import Report

__all__ = ["write_report"]

logger = logging.getLogger("batchmem")

_SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".json": "json"}


def write_report(report: Report, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``report`` to ``path`` as ``fmt`` ("html", "markdown", "json", "text"; default by suffix).

    Markdown gets the plots as a PNG beside it (``report.md`` -> ``report.png``)
    when matplotlib is installed. Returns the path written. Raises
    :class:`~batchmem.errors.ConfigError` for a missing folder or an unknown format.
    """
    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"report: folder {str(out.parent)!r} does not exist; create it or choose another path")
    fmt = fmt or _SUFFIX_FORMATS.get(out.suffix.lower(), "text")
    if fmt == "html":
        out.write_text(render_html(report), encoding="utf-8")
    elif fmt == "markdown":
        image = None
        try:
            require_matplotlib()
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
