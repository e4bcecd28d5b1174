"""The checkpoint: how far a run got, replaced atomically after every committed batch.

A run commits a batch by appending its lines to the output (and error) file,
flushing, and then replacing ``<output>.ckpt.json``. On resume the output is
truncated back to the checkpoint's byte offset (cutting any torn tail written
after the last commit) and the committed items are skipped in the source.

With ``fsync`` (the default of :class:`~batchmem.BatchProcessor`) the output is
forced to disk before the checkpoint is replaced, and the checkpoint itself is
written, fsynced and renamed, so the checkpoint never claims bytes the output
does not hold, after a ``kill -9`` or a power cut alike.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..stats import write_json_atomic

__all__ = ["Checkpoint", "checkpoint_path", "fingerprint"]


def fingerprint(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A short hash of the settings that decide what the output holds, and those settings as JSON
    values (kept in the checkpoint to name what changed when a resume is refused)."""
    import hashlib

    fields = {str(k): v for k, v in fields.items()}
    key = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(key).hexdigest()[:16], orjson.loads(key)


def checkpoint_path(output: str | os.PathLike[str]) -> Path:
    """``<output>.ckpt.json``."""
    output = Path(output)
    return output.with_name(output.name + ".ckpt.json")


@dataclass
class Checkpoint:
    """Items committed and the byte offsets of the files that hold them."""

    items: int = 0  # input items committed (lines in the output)
    batches: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    batches_bytes: int = 0
    failed: int = 0
    fingerprint: str = ""  # what produced the output (function, source, batching); resume refuses a mismatch
    complete: bool = False
    #: Input items consumed by the committed batches (resume calls ``source.skip(source_position)``).
    source_position: int = 0
    #: The result-affecting settings the fingerprint hashes (field -> value), to name what changed.
    fingerprint_fields: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        """Replace the checkpoint atomically (temporary file, then rename); ``fsync``: force it to disk first."""
        if not fsync:
            write_json_atomic(path, asdict(self))
            return
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint | None:
        """The saved checkpoint, or None when there is none."""
        try:
            data = orjson.loads(Path(path).read_bytes())
        except FileNotFoundError:
            return None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
