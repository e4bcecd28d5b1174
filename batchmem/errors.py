"""Errors a user can cause. Each message is one line that names the field and the fix.

Like click's exceptions (``click/exceptions.py``), each error carries its
``exit_code``, so the command line only asks the error: ``sys.exit(exc.exit_code)``.
The exit codes of ``batchmem run`` (:data:`EXIT_CODES`):

* 0 -- every item was committed and none failed;
* 1 -- some items failed, or the run stopped on an error (the function, the source, a write);
* 2 -- a usage or job-file error, or a memory limit the job cannot fit in: nothing was run;
* 3 -- stopped, incomplete and resumable: memory pressure (an emergency, a leak) stopped the run
  before every item was committed; what was committed stands and a resume continues;
* 130 -- interrupted by SIGINT or SIGTERM (the checkpoint is written; a resume continues).
 An error
whose fix is spelled differently for a job file than for Python (``on_error:
skip`` / ``--set on_error=skip`` versus ``on_error="skip"``) carries both:
``str(exc)`` is the Python form, :meth:`BatchmemError.cli_message` the job-file form.
A fix that says how to continue a run names :data:`RESUME_COMMAND`; the ``batchmem run``
command sets ``resume_command`` to the command the user typed, so the message
prints exactly what to type.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: Each exit code of ``batchmem run`` and what it means, as ``run --help`` prints them.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "some items failed, or the function, the source or a write stopped the run",
    EXIT_USAGE: "usage or job-file error, or a memory limit the job does not fit in (nothing ran)",
    EXIT_STOPPED: "stopped: incomplete, resumable (memory pressure stopped the run; --resume continues)",
    EXIT_INTERRUPTED: "interrupted (SIGINT/SIGTERM; --resume continues)",
}

#: How a command-line fix names "continue this run" until the CLI fills in the exact command.
RESUME_COMMAND = "batchmem run JOB --resume"


def one_line(text: object) -> str:
    """``text`` (or an exception's message) with its whitespace, newlines included, folded to single
    spaces; an exception with an empty message gives its type name."""
    folded = " ".join(str(text).split())
    if not folded and isinstance(text, BaseException):
        return type(text).__name__
    return folded


class BatchmemError(Exception):
    """Base class of every error batchmem raises on purpose; the CLI prints it and exits ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str = "", *, cli_fix: str | None = None, python_fix: str | None = None):
        super().__init__(message + (python_fix or ""))
        self.base_message, self.cli_fix = message, cli_fix
        #: The command that continues the run, as the user typed it (set by ``batchmem run``).
        self.resume_command: str | None = None

    def __reduce__(self) -> tuple:
        # Errors raised in worker processes travel back pickled; the default reduce calls
        # ``cls(*args)`` and would lose the keyword-only fixes (and fail for subclasses with other
        # signatures): rebuild from args and attributes instead.
        state = dict(self.__dict__)
        if isinstance(self, OSError):  # errno lives in OSError's own slot, not in __dict__
            state["errno"] = self.errno
        return _rebuild, (type(self), self.args, state)

    def cli_message(self) -> str:
        """The message for a command-line user: the fix in job-file and ``--set`` syntax where it differs,
        with :data:`RESUME_COMMAND` replaced by :attr:`resume_command` when the CLI set it."""
        text = one_line(self.base_message + self.cli_fix) if self.cli_fix is not None else one_line(self)
        return text.replace(RESUME_COMMAND, self.resume_command) if self.resume_command else text


def _rebuild(cls: type[BatchmemError], args: tuple, state: dict) -> BatchmemError:
    err = cls.__new__(cls)
    err.args = args
    for name, value in state.items():
        setattr(err, name, value)
    return err


class ConfigError(BatchmemError, ValueError):
    """A bad option value (batch sizes, memory limit, thresholds, ...)."""


class OptionError(ConfigError):
    """A bad option value: ``option`` names it as the caller spelt it, ``problem`` is the rest of the message.

    A job file reports ``problem`` under the option's job-file key (``batching.batch_size``),
    the Python API under the keyword (``batch_size``), so each user reads the name they wrote.
    """

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


class JobFileError(ConfigError):
    """A job file that cannot be read or does not validate."""


class SerializationError(BatchmemError, TypeError):
    """A result that cannot be written as JSON; names its type and the item index.

    Exit code 1: the run stopped part-way (what was committed before stands)."""

    exit_code = 1


class BatchFunctionError(BatchmemError):
    """The user function broke its contract (e.g. a batched fn returned the wrong number of results)."""

    exit_code = 1


class OutputExistsError(BatchmemError, FileExistsError):
    """The output file exists and neither overwrite nor resume was asked for."""


class OutputLockedError(BatchmemError):
    """Another batchmem run is writing the same output (it holds ``<output>.lock``)."""


class ItemFailedError(BatchmemError):
    """An item failed under ``on_error="raise"``; names the item index. The original error is ``__cause__``."""

    exit_code = 1

    def __init__(self, message: str, index: int, **fixes: str | None):
        super().__init__(message, **fixes)
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

    exit_code = 1

    def __init__(self, message: str, errno_: int | None = None, **fixes: str | None):
        BatchmemError.__init__(self, message, **fixes)
        self.errno = errno_

    def __str__(self) -> str:
        return str(self.args[0])


class WorkerDiedError(BatchmemError):
    """A worker process died (``os._exit``, a signal such as the OOM killer's SIGKILL, a segfault)
    while running one item on its own; the item is recorded as failed with this error (a run
    failure: exit code 1)."""

    exit_code = 1


class RunStopped(BatchmemError):
    """The run stopped before every item was committed (a memory pressure emergency, e.g. a leak), and
    can be resumed. Not raised by :meth:`~batchmem.BatchProcessor.process`, which returns a result whose
    ``stats.status`` is ``"stopped"``; it carries the stop's message in both syntaxes and exit code 3."""

    exit_code = EXIT_STOPPED


class LimitTooSmallError(ConfigError):
    """The memory the process (and the workers it would start) holds before the first batch already
    passes the memory target: no batch could fit. Raised before anything is dispatched or written."""


class SourceFailedError(BatchmemError):
    """The source raised while items were read; ``index`` is the item it failed at (the first item a
    resume runs). The items it yielded before are committed. The original error is ``__cause__``."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, index: int, **fixes: str | None):
        super().__init__(message, **fixes)
        self.index = index

    @classmethod
    def at(cls, index: int, exc: Exception) -> SourceFailedError:
        """The error of a source that raised ``exc`` when item ``index`` was asked for."""
        err = cls(
            f"source: failed at item {index}: {type(exc).__name__}: {one_line(exc)}; the items before it are "
            f"committed and a resume starts at item {index}",
            index,
            python_fix=" (fix the source, then process(..., resume=True))",
            cli_fix=f" (fix the source, then {RESUME_COMMAND})",
        )
        err.__cause__ = exc
        return err
