"""BatchResult: what :meth:`batchmem.BatchProcessor.process` returns, the results read back from disk."""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunStopped
from .io.formats import JSONL, OutputFormat, get_format
from .io.sinks import iter_jsonl
from .stats import RunStats

__all__ = ["BatchResult"]


class BatchResult:
    """The outcome of :meth:`BatchProcessor.process`.

    ``path`` is the results file (one line per input item, in input order;
    ``null`` for items that failed under ``on_error="skip"``), ``stats`` the
    :class:`RunStats`, ``errors_path`` the error records (or None). Iterating
    reads the results back lazily from disk; ``len()`` is the number of items.

    A run without ``output`` spools to a private temporary folder that is removed
    when the result is closed (``with proc.process(...) as result:``), garbage
    collected, or at interpreter exit; pass ``output=`` to keep the files.
    """

    def __init__(
        self,
        path: Path,
        stats: RunStats,
        errors_path: Path | None,
        output_format: OutputFormat | str = JSONL,
        *,
        spool: Path | None = None,
        already_complete: bool = False,
    ):
        self.path, self.stats, self.errors_path = path, stats, errors_path
        self.format = get_format(output_format) if isinstance(output_format, str) else output_format
        self.output_format = output_format.name  #: the format's name ("jsonl", "parquet", ...)
        #: True when ``resume`` found the output complete and touched nothing.
        self.already_complete = already_complete
        #: Why the run stopped before every item was committed (``stats.status == "stopped"``), or None.
        self.stop: RunStopped | None = None
        # output=None: the run's private spool folder, removed on close(), garbage collection or exit.
        self._cleanup = weakref.finalize(self, shutil.rmtree, spool, ignore_errors=True) if spool else None

    def close(self) -> None:
        """Remove the temporary spool folder of a run without ``output`` (results are gone after this).
        A result with an ``output`` path keeps its files; closing it does nothing."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> BatchResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.stats.items + self.stats.resumed_from

    def __iter__(self) -> Iterator[Any]:
        yield from self.format.read(self.path)

    def errors(self) -> Iterator[dict[str, Any]]:
        """The error records (index, item repr, error type, message, traceback, attempts)."""
        if self.errors_path and self.errors_path.exists():
            yield from iter_jsonl(self.errors_path)

    def __repr__(self) -> str:
        return f"BatchResult(path={str(self.path)!r}, items={len(self)}, failed={self.stats.failed})"
