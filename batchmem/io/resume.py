"""Resuming an output: decided once, from its checkpoint loaded once.

:func:`decide_resume` reads the output's checkpoint and compares its
fingerprint with this run's; the :class:`ResumeDecision` it returns is handed
along (job file -> processor -> files) and nothing reads the checkpoint or
hashes the fingerprint again. :func:`prepare_resume` then cuts the files back
to the committed checkpoint.

Not here: writing the checkpoint after each batch (:mod:`batchmem.io.output`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ResumeMismatchError
from .checkpoint import Checkpoint, checkpoint_path
from .formats import OutputFormat
from .output import file_size, sidecar

__all__ = ["ResumeDecision", "check_resume_mode", "decide_resume", "prepare_resume"]

logger = logging.getLogger("batchmem")

RESUME_MODES = (False, True, "force", "auto")


@dataclass
class ResumeDecision:
    """Whether a run continues its output.

    Attributes:
        fingerprint, fingerprint_fields: this run's (see :func:`batchmem.io.checkpoint.fingerprint`).
        resume: False (start afresh), True (continue) or ``"force"`` (continue although the
            fingerprint differs); ``"auto"`` is resolved to True or False.
        committed: the output's checkpoint as loaded, None when there is no output or no checkpoint.
        complete: resuming a finished run of the same fingerprint, so there is nothing to do.
    """

    fingerprint: str
    fingerprint_fields: dict[str, Any]
    resume: bool | str
    committed: Checkpoint | None
    complete: bool = False

    def fresh_checkpoint(self) -> Checkpoint:
        """An empty checkpoint carrying this run's fingerprint."""
        return Checkpoint(fingerprint=self.fingerprint, fingerprint_fields=self.fingerprint_fields)


def check_resume_mode(resume: Any) -> None:
    """Raise :class:`~batchmem.errors.ConfigError` unless ``resume`` is False, True, ``"force"`` or ``"auto"``."""
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume: {resume!r} must be False, True, 'force' or 'auto'")


def decide_resume(path: Path, fingerprint: tuple[str, dict[str, Any]], resume: bool | str) -> ResumeDecision:
    """Decide, from ``path``'s checkpoint, whether a run with ``fingerprint`` continues it.

    ``resume``: False, True, ``"force"`` or ``"auto"``, which continues only an unfinished run of the
    same fingerprint and otherwise starts afresh; resuming a finished run of the same fingerprint is
    a no-op (``complete``). Raises :class:`~batchmem.errors.ConfigError` for another value.
    """
    check_resume_mode(resume)
    committed = Checkpoint.load(checkpoint_path(path)) if path.exists() else None
    same_job = committed is not None and committed.fingerprint == fingerprint[0]
    if resume == "auto":
        resume = same_job and not committed.complete
    complete = bool(resume) and same_job and committed.complete
    if complete:
        logger.debug("already complete: %d items in %s; nothing to do", committed.items, path)
    return ResumeDecision(fingerprint[0], fingerprint[1], resume, committed, complete)


def _changed_fields(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} ({old.get(k)!r} then, {new.get(k)!r} now)" for k in changed[:3])


def prepare_resume(path: Path, errors_path: Path, decision: ResumeDecision, fmt: OutputFormat) -> Checkpoint:
    """Cut every file back to the checkpoint ``decision`` loaded (torn tails are dropped) and return
    the checkpoint to continue from, carrying this run's fingerprint.

    A different stored fingerprint raises :class:`~batchmem.errors.ResumeMismatchError` naming the
    changed fields, unless the decision is ``"force"``. A format that cannot resume, or an output
    shorter than its checkpoint says (bytes lost without fsync), raises :class:`~batchmem.errors.ConfigError`.
    """
    if not fmt.resumable:
        raise ConfigError(f"resume: {fmt.name} output cannot be resumed; use output.format jsonl or overwrite")
    new = decision.fresh_checkpoint()
    ckpt = decision.committed or new
    if ckpt.fingerprint and ckpt.fingerprint != new.fingerprint:
        what = _changed_fields(ckpt.fingerprint_fields, new.fingerprint_fields) or "function, source or batching"
        if decision.resume != "force":
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
