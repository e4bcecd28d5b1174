"""Errors a user can cause. Each message is one line that names the field and the fix."""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` (or an exception's message) with its whitespace, newlines included, folded to single
    spaces; an exception with an empty message gives its type name."""
    folded = " ".join(str(text).split())
    if not folded and isinstance(text, BaseException):
        return type(text).__name__
    return folded


class BatchmemError(Exception):
    """Base class of every error batchmem raises on purpose; the CLI prints it and exits 2."""


class ConfigError(BatchmemError, ValueError):
    """A bad option value (batch sizes, memory limit, thresholds, ...)."""


class JobFileError(ConfigError):
    """A job file that cannot be read or does not validate."""


class SerializationError(BatchmemError, TypeError):
    """A result that cannot be written as JSON; names its type and the item index."""


class BatchFunctionError(BatchmemError):
    """The user function broke its contract (e.g. a batched fn returned the wrong number of results)."""


class OutputExistsError(BatchmemError, FileExistsError):
    """The output file exists and neither overwrite nor resume was asked for."""


class ItemFailedError(BatchmemError):
    """An item failed under ``on_error="raise"``; names the item index. The original error is ``__cause__``."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


class ResumeMismatchError(ConfigError):
    """``resume`` was asked for an output written by a different job (function, source or batching);
    names what changed. Force it with ``resume="force"`` (``--force-resume``)."""


class OutputWriteError(BatchmemError, OSError):
    """Writing the output, error or checkpoint file failed (disk full, I/O error, ...).

    What was committed before stays on disk with a matching checkpoint, so the run
    can be resumed once the cause is fixed. The CLI prints it and exits 1 (the run
    stopped part-way), not 2 (a usage error). ``errno`` is the OS error number.
    """

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_

    def __str__(self) -> str:
        return str(self.args[0])


class WorkerDiedError(BatchmemError):
    """A worker process died (``os._exit``, a signal such as the OOM killer's SIGKILL, a segfault)
    while running one item on its own; the item is recorded as failed with this error."""
