"""The files of one run: results, error records, per-batch records and the checkpoint.

Commit protocol, per finished batch (:meth:`RunFiles.commit`): append the
results (and error records), flush (and fsync), append the batch record,
then replace the checkpoint atomically. A crash at any point leaves a
checkpoint that never claims bytes the files do not hold, so a resume cuts
every file back to it (:func:`batchmem.io.resume.prepare_resume`) and continues.

This module does file work only; what to write is decided by the run loop
(:mod:`batchmem.run`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import (
    RESUME_COMMAND,
    OutputExistsError,
    OutputLockedError,
    OutputWriteError,
)
from ..stats import BatchRecordWriter
from .checkpoint import Checkpoint, checkpoint_path
from .formats import OutputFormat
from .sinks import JsonlSink, encode_results

__all__ = ["OutputLock", "RunFiles", "check_output", "file_size", "sidecar"]

logger = logging.getLogger("batchmem")


def sidecar(output: Path, suffix: str) -> Path:
    """``<output><suffix>``, e.g. ``out.jsonl.stats.json``."""
    return output.with_name(output.name + suffix)


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class OutputLock:
    """An exclusive ``flock(2)`` on ``<output>.lock`` for the length of a run, so that a second run on
    the same output fails at once instead of interleaving its lines with the first's.

    The kernel drops the lock when the process exits, ``kill -9`` included, so a stale lock file
    never blocks a later run. Raises :class:`~batchmem.errors.OutputLockedError`.
    """

    def __init__(self, output: Path):
        import fcntl

        self.path = sidecar(output, ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "?"
            self._f.close()
            raise OutputLockedError(
                f"output: {output} is being written by another batchmem run (pid {holder}); "
                "wait for it to finish or choose another output"
            ) from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()

    def release(self) -> None:
        """Unlock (idempotent); the lock file stays, empty locks are harmless."""
        if not self._f.closed:
            self._f.close()


def check_output(path: Path, *, overwrite: bool, resume: bool) -> Path:
    """Refuse an existing ``path`` unless ``overwrite`` or ``resume``; create its folder (parents too).

    Raises :class:`~batchmem.errors.OutputExistsError`.
    """
    if path.exists() and not (overwrite or resume):
        raise OutputExistsError(
            f"output: {str(path)!r} exists",
            python_fix="; pass overwrite=True to replace it, or resume=True to continue the run that wrote it",
            cli_fix="; run with --restart to replace it (or set output.overwrite: true in the job file)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``what`` (output, errors, ...) into a one-line :class:`OutputWriteError`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
        reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
        raise OutputWriteError(
            f"{what}: writing {path} failed: {reason}; the checkpoint still matches the committed output: "
            "free space (or fix the device) and resume",
            exc.errno,
            python_fix=" (process(..., resume=True))",
            cli_fix=f" ({RESUME_COMMAND})",
        ) from exc


def save_checkpoint(ckpt: Checkpoint, path: Path, fsync: bool) -> None:
    """Replace the checkpoint atomically; a failure is an :class:`OutputWriteError` (the old checkpoint stays)."""
    with writing("checkpoint", path):
        ckpt.save(path, fsync=fsync)


class RunFiles:
    """The open files of one run and its checkpoint; :meth:`commit` writes one finished batch.

    ``ckpt`` is the checkpoint to continue from (a fresh one, or what :func:`~batchmem.io.resume.prepare_resume`
    returned); ``append`` opens the files for appending (resume).
    """

    def __init__(
        self,
        path: Path,
        errors_path: Path,
        fmt: OutputFormat,
        ckpt: Checkpoint,
        *,
        append: bool,
        fsync: bool,
        lock: OutputLock | None = None,
    ):
        self.path, self.errors_path, self.fmt, self.ckpt, self.fsync = path, errors_path, fmt, ckpt, fsync
        self.lock = lock
        self.ckpt_path = checkpoint_path(path)
        self.batches_path = sidecar(path, ".batches.jsonl")
        self.stats_path = sidecar(path, ".stats.json")
        mode = "ab" if append else "wb"
        if not append:
            # A fresh output: replace any old checkpoint before the output is truncated,
            # so a crash right after cannot leave an old checkpoint describing a new file.
            save_checkpoint(ckpt, self.ckpt_path, fsync)
        self.sink = fmt.open(path, append, fsync)
        self.records = BatchRecordWriter(self.batches_path, mode=mode)
        self.error_sink: JsonlSink | None = None

    def write_results(self, payload: bytes | bytearray, results: Any, start: int) -> None:
        """Append one batch of results: the encoded lines when the format encodes, else the raw results."""
        with writing("output", self.sink.path):
            self.sink.write_batch(payload if self.fmt.encodes else results, start)
            self.sink.flush()

    def write_errors(self, records: list[dict[str, Any]], start: int) -> None:
        """Append error records (the file is created at the first one)."""
        with writing("errors", self.errors_path):
            if self.error_sink is None:
                mode = "ab" if self.ckpt.errors_bytes else "wb"
                self.error_sink = JsonlSink(self.errors_path, mode=mode, fsync=self.fsync)
            self.error_sink.write(encode_results(records, start, str))
            self.error_sink.flush()

    def write_record(self, record: dict[str, Any]) -> None:
        """Append one per-batch record."""
        self.records.write(record)
        with writing("batch records", self.records.path):
            self.records.flush()

    def checkpoint(self, items: int, source_position: int, failed: int) -> None:
        """Record a committed batch of ``items`` items and replace the checkpoint."""
        ck = self.ckpt
        ck.items += items
        ck.source_position = source_position
        ck.batches += 1
        ck.failed += failed
        ck.output_bytes = self.sink.size_bytes if self.fmt.resumable else 0
        ck.errors_bytes = self.error_sink.size_bytes if self.error_sink else ck.errors_bytes
        ck.batches_bytes = file_size(self.records.path)
        save_checkpoint(ck, self.ckpt_path, self.fsync)

    def mark_complete(self) -> None:
        """The run consumed its whole source: say so in the checkpoint."""
        self.ckpt.complete = True
        save_checkpoint(self.ckpt, self.ckpt_path, self.fsync)

    def close(self) -> None:
        """Close every file and release the output lock; after a failed write the first error stands
        (the checkpoint still matches)."""
        if self.lock is not None:
            self.lock.release()
        for f in (self.sink, self.records, self.error_sink):
            if f is None:
                continue
            try:
                f.close()
            except OSError as exc:
                logger.debug(
                    "closing %s failed: %s (the checkpoint still matches what was committed)",
                    getattr(f, "path", f),
                    exc,
                )
