"""Errors a user can cause. Each message is one line that names the field and the fix."""

from __future__ import annotations


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
