"""A toy output format defined outside the batchmem package: one ``str(result)`` line per item.

``tests/test_formats.py`` registers it with :func:`batchmem.io.formats.register_format` (Python) and
as a ``batchmem.formats`` entry point (a job file); see docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchmem.io.formats import OutputFormat


class TextSink:
    """Appends ``str(result)`` lines; not resumable, so ``size_bytes`` is informative only."""

    def __init__(self, path: Path, append: bool, fsync: bool):
        self.path = Path(path)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")
        self.size_bytes = 0

    def write_batch(self, batch: Any, start_index: int) -> int:
        text = "".join(f"{r}\n" for r in batch)
        self._f.write(text)
        self.size_bytes += len(text)
        return len(text)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_text(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


#: The whole format: its name, suffix, sink and reader (workers send raw results: encodes=False).
TEXT = OutputFormat("text", (".txt",), TextSink, read_text)
