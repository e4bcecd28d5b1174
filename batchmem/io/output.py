"""The files of one run: results, error records, per-batch records and the checkpoint.

Commit protocol, per finished batch (:meth:`RunFiles.commit`): append the
results (and error records), flush (and fsync), append the batch record,
then replace the checkpoint atomically. A crash at any point leaves a
checkpoint that never claims bytes the files do not hold, so a resume cuts
every file back to it (:func:`prepare_resume`) and continues.

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
    ConfigError,
    OutputExistsError,
    OutputLockedError,
    OutputWriteError,
    ResumeMismatchError,
)
from ..stats import BatchRecordWriter
from .checkpoint import Checkpoint, checkpoint_path
from .formats import OutputFormat
from .sinks import JsonlSink, encode_results

__all__ = ["OutputLock", "RunFiles", "check_output", "file_size", "prepare_resume", "sidecar"]

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


def _changed_fields(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} ({old.get(k)!r} then, {new.get(k)!r} now)" for k in changed[:3])


def prepare_resume(
    path: Path, errors_path: Path, new: Checkpoint, fmt: OutputFormat, *, force: bool = False
) -> Checkpoint:
    """Load the checkpoint of ``path`` and cut every file back to it (torn tails are dropped).

    ``new`` carries this run's fingerprint. A different stored fingerprint raises
    :class:`~batchmem.errors.ResumeMismatchError` naming the changed fields, unless ``force``.
    An output shorter than its checkpoint says (bytes lost without fsync) raises
    :class:`~batchmem.errors.ConfigError`.
    """
    if not fmt.resumable:
        raise ConfigError(f"resume: {fmt.name} output cannot be resumed; use output.format jsonl or overwrite")
    ckpt = Checkpoint.load(checkpoint_path(path))
    ckpt = ckpt or Checkpoint(fingerprint=new.fingerprint, fingerprint_fields=new.fingerprint_fields)
    if ckpt.fingerprint and ckpt.fingerprint != new.fingerprint:
        what = _changed_fields(ckpt.fingerprint_fields, new.fingerprint_fields) or "function, source or batching"
        if not force:
            raise ResumeMismatchError(
                f"resume: {str(path)!r} was written by a different job: changed {what}; resuming would mix "
                "results; undo the change, set overwrite to start again, or force it (--force-resume, resume='force')"
            )
        logger.warning("resume forced although the job changed: %s", what)
    ckpt.fingerprint, ckpt.fingerprint_fields = new.fingerprint, new.fingerprint_fields
    if not ckpt.source_position and ckpt.items:  # a checkpoint written before source_position existed
        ckpt.source_position = ckpt.items
    size = file_size(path)
    if size < ckpt.output_bytes:
        raise ConfigError(
            f"resume: {str(path)!r} holds {size} bytes but its checkpoint says {ckpt.output_bytes} were committed "
            "(written without fsync before a crash?); it cannot be resumed: set overwrite to start again"
        )
    cuts = (
        (path, ckpt.output_bytes),
        (errors_path, ckpt.errors_bytes),
        (sidecar(path, ".batches.jsonl"), ckpt.batches_bytes),
    )
    for p, keep in cuts:
        if p.exists() and p.stat().st_size > keep:
            logger.info("resume: cutting %d bytes of torn or uncommitted tail from %s", p.stat().st_size - keep, p)
            os.truncate(p, keep)
    logger.debug("resuming %s after %d committed items", path, ckpt.items)
    return ckpt


class RunFiles:
    """The open files of one run and its checkpoint; :meth:`commit` writes one finished batch.

    ``ckpt`` is the checkpoint to continue from (a fresh one, or what :func:`prepare_resume`
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
