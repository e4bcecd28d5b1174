"""Per-operation run history: the only I/O of the optimizer package.

One JSON file per operation (the ``process_name`` of a run) under
:func:`history_dir`. Each file holds aggregates over all runs and the
summaries of the last :data:`MAX_RUNS` runs. Writes are atomic: the new
content goes to a temporary file in the same directory, is flushed and
fsync'ed, then ``os.replace``'d over the old file, so a reader sees the old
or the new file, never half of one. Two processes finishing the same
operation at the same moment race (last writer wins, one run's summary is
lost); nothing is corrupted.

A file that cannot be parsed is ignored with a warning (and replaced on the
next write): history is a cache of advice, never a reason to fail a run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import platformdirs

from batchmem.errors import ConfigError
from batchmem.optimizer.summary import RunSummary
from batchmem.stats import items_per_second

__all__ = ["HISTORY_VERSION", "MAX_RUNS", "HistoryStore", "history_dir", "history_file_name", "summaries"]

logger = logging.getLogger("batchmem")

#: Format version written into every history file.
HISTORY_VERSION = 1
#: Run summaries kept per operation (older ones only count in the aggregates).
MAX_RUNS = 50
#: Environment variable that overrides the cache root (read at call time).
ENV_HOME = "BATCHMEM_HOME"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def history_dir() -> Path:
    """Directory of the history files: ``$BATCHMEM_HOME/history`` if set, else
    ``platformdirs.user_cache_dir("batchmem")/history``. Read at every call."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser() / "history"
    return Path(platformdirs.user_cache_dir("batchmem")) / "history"


def history_file_name(operation: str) -> str:
    """A file name that is safe on every platform and unique per operation name.

    Unsafe characters become ``_``, the readable part is cut to 60
    characters, and a short hash of the exact name keeps distinct names
    (``"a/b"`` vs ``"a_b"``) in distinct files.
    """
    if not isinstance(operation, str) or not operation.strip():
        raise ConfigError(f"process_name={operation!r} is empty: give the operation a name, e.g. 'embed_docs'")
    slug = _UNSAFE.sub("_", operation).strip("._")[:60] or "op"
    digest = hashlib.blake2b(operation.encode("utf-8"), digest_size=4).hexdigest()
    return f"{slug}-{digest}.json"


def summaries(record: Mapping[str, Any] | None) -> list[RunSummary]:
    """The run summaries of a history record (as :meth:`HistoryStore.load` returns it), oldest first."""
    runs = (record or {}).get("runs_detail")
    return [RunSummary.from_dict(r) for r in runs if isinstance(r, Mapping)] if isinstance(runs, list) else []


def _dumps(data: Any) -> bytes:
    return orjson.dumps(
        data,
        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        default=str,
    )


class HistoryStore:
    """Per-operation history files under ``root`` (default: :func:`history_dir`, resolved per call)."""

    def __init__(self, root: Path | str | None = None):
        self._root = Path(root) if root is not None else None

    @property
    def root(self) -> Path:
        """The directory in use now (``$BATCHMEM_HOME`` is re-read when no root was given)."""
        return self._root if self._root is not None else history_dir()

    def path_for(self, operation: str) -> Path:
        """The history file of ``operation``."""
        return self.root / history_file_name(operation)

    def load(self, operation: str) -> dict | None:
        """The stored record of ``operation``, or None if there is none or it is unreadable."""
        path = self.path_for(operation)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("batchmem: cannot read history file %s (%s); starting without history", path, exc)
            return None
        return self._parse(raw, path, operation)

    def _parse(self, raw: bytes, path: Path, operation: str | None) -> dict | None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            logger.warning("batchmem: ignoring corrupt history file %s (%s)", path, exc)
            return None
        if (
            not isinstance(data, dict)
            or data.get("version") != HISTORY_VERSION
            or not isinstance(data.get("operation"), str)
            or not isinstance(data.get("runs_detail", []), list)
        ):
            logger.warning("batchmem: ignoring history file %s: not a version-%d history record", path, HISTORY_VERSION)
            return None
        if operation is not None and data["operation"] != operation:
            logger.warning("batchmem: ignoring history file %s: it belongs to %r", path, data["operation"])
            return None
        return data

    def runs(self, operation: str) -> list[RunSummary]:
        """The stored run summaries of ``operation``, oldest first (none without a readable file)."""
        return summaries(self.load(operation))

    def last_run(self, operation: str) -> RunSummary | None:
        """The summary of ``operation``'s last recorded run, or None."""
        runs = self.runs(operation)
        return runs[-1] if runs else None

    def record_run(self, operation: str, summary: RunSummary | Mapping[str, Any]) -> None:
        """Add one run's summary (a :class:`RunSummary`, or a dict of its keys) to ``operation``'s
        record and write it atomically. ``finished_at`` is filled in if missing; keys that are not
        figures of :class:`RunSummary` are dropped (``resumed``: 1 when the run continued an output).
        Raises OSError if the directory cannot be written.
        """
        run = RunSummary.of(summary).to_dict()
        run.setdefault("finished_at", time.time())
        old = self.load(operation) or {}
        runs = [r for r in old.get("runs_detail", []) if isinstance(r, dict)]
        runs.append(run)
        runs = runs[-MAX_RUNS:]

        def num(value: Any) -> float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            return value if ok else 0

        def total(key: str, kind: type = int) -> Any:
            return kind(num(old.get(key)) + run.get(key, 0))

        items, duration = total("items"), total("duration_s", float)
        record: dict[str, Any] = {
            "version": HISTORY_VERSION,
            "operation": operation,
            "runs": int(num(old.get("runs"))) + 1,
            "items": items,
            "duration_s": duration,
            "items_per_s": items_per_second(items, duration) if duration > 0 else None,
            "failed": total("failed"),
            "timeouts": total("timeouts"),  # items past item_timeout, all runs
            "batches": total("batches"),
            "leaks": total("leaks"),  # leaks the heap analyzer flagged, all runs
            "resumes": total("resumed"),  # runs that continued an output another run began
            "peak_rss_bytes": int(max(num(old.get("peak_rss_bytes")), run.get("peak_rss_bytes", 0))),
            "first_run_at": old.get("first_run_at", run["finished_at"]),
            "last_run_at": run["finished_at"],
            # Latest run's figures. bytes_per_item is the run's measured figure
            # (batchmem.stats.bytes_per_item, the one the reports show); the
            # controller's EWMA estimates are what the next run warm-starts from.
            "learned_batch_size": run.get("learned_batch_size", old.get("learned_batch_size")),
            "bytes_per_item": run.get("bytes_per_item", run.get("ewma_bytes_per_item", old.get("bytes_per_item"))),
            "ewma_bytes_per_item": run.get(
                "ewma_bytes_per_item", run.get("bytes_per_item", old.get("ewma_bytes_per_item"))
            ),
            "seconds_per_item": run.get(
                "ewma_seconds_per_item", run.get("seconds_per_item", old.get("seconds_per_item"))
            ),
            # what a warm start checks and reads (BatchOptimizer.start_run): the unit and a weighted budget
            "weight_unit": run.get("weight_unit", old.get("weight_unit", "items")),
            "learned_budget": run.get("learned_budget", old.get("learned_budget")),
            "runs_detail": runs,
        }
        self._write_atomic(self.path_for(operation), _dumps(record))

    def _write_atomic(self, path: Path, payload: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def operations(self) -> list[str]:
        """Names of the operations with a readable history file, sorted."""
        root = self.root
        if not root.is_dir():
            return []
        names = set()
        for path in root.glob("*.json"):
            try:
                data = self._parse(path.read_bytes(), path, None)
            except OSError:
                continue
            if data is not None and path.name == history_file_name(data["operation"]):
                names.add(data["operation"])
        return sorted(names)

    def clear(self, operation: str | None = None) -> bool:
        """Delete ``operation``'s history (all operations when None). True if a file was removed."""
        if operation is not None:
            try:
                self.path_for(operation).unlink()
            except FileNotFoundError:
                return False
            return True
        removed = False
        root = self.root
        if root.is_dir():
            for path in root.glob("*.json"):
                try:
                    path.unlink()
                    removed = True
                except FileNotFoundError:
                    pass
        return removed
