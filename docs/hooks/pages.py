"""mkdocs hooks: pages whose content is defined elsewhere are filled in at build time, so they cannot drift.

- The home page is the README. The README links to pages as ``docs/<page>.md`` (they work on a code
  host); on the site the home page sits inside ``docs/``, so the prefix is dropped.
- The job-file reference table is generated from the job-file models
  (:func:`batchmem.job.job_reference_markdown`), where the marker ``<!-- job-reference -->`` stands.

Hooks are documented at https://www.mkdocs.org/user-guide/configuration/#hooks.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
JOB_REFERENCE = "<!-- job-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return re.sub(r"\]\(docs/", "](", README.read_text(encoding="utf-8"))
    if JOB_REFERENCE in markdown:
        from batchmem.job import job_reference_markdown

        return markdown.replace(JOB_REFERENCE, job_reference_markdown())
    return markdown
