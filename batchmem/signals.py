"""SIGINT and SIGTERM during a run: stop cleanly, keep everything committed, exit 130.

While :meth:`batchmem.BatchProcessor.process` runs on the main thread it
installs :class:`StopOnSignals` (and restores the previous handlers when it
returns). The first SIGINT or SIGTERM asks the run to stop: no new batch is
cut, the batches already in flight are finished and committed, the output is
flushed, the checkpoint and the stats (status ``"interrupted"``) are written,
and :class:`RunInterrupted` (a :class:`KeyboardInterrupt`) is raised, so the
``batchmem`` CLI exits with 130 and ``--resume`` continues where it stopped.
A second signal abandons the batches in flight at once (a plain
:class:`KeyboardInterrupt`); the checkpoint still matches the output, whose
torn tail (if any) a resume cuts off.

A signal whose handler was ``SIG_IGN`` when the run started (``nohup``, a
shell's background job) stays ignored; one whose handler was not installed
from Python is left alone.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .errors import RESUME_COMMAND

__all__ = ["RunInterrupted", "StopOnSignals", "signal_name"]

logger = logging.getLogger("batchmem")

#: The signals a run stops on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for ``signal.SIGINT`` (the number as text for an unknown signal)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM after committing the batches in flight.

    ``signum`` is the signal, ``items`` the input items committed in total
    (earlier runs included), ``output`` the output path. Everything up to
    ``items`` is on disk with a matching checkpoint: resume continues.
    ``resume_command`` is what a command-line user types to continue (the
    ``batchmem run`` command sets it: the job file as the user typed it and its
    ``--set`` overrides). Like :class:`~batchmem.errors.BatchmemError` it carries
    its ``exit_code`` (130, the shell's code for SIGINT) and a :meth:`cli_message`.
    """

    exit_code = 130

    def __init__(self, signum: int, items: int, output: str):
        self.signum, self.items, self.output = signum, items, output
        self.resume_command: str | None = None
        super().__init__(self._message("process(..., resume=True)"))

    def _message(self, how: str) -> str:
        return (
            f"interrupted by {signal_name(self.signum)}: {self.items:,} items committed to {self.output}; "
            f"run again with: {how}"
        )

    def cli_message(self) -> str:
        """The message with the command that continues the run."""
        return self._message(self.resume_command or RESUME_COMMAND)

    def __str__(self) -> str:
        return str(self.args[0])


class StopOnSignals:
    """Context manager: SIGINT/SIGTERM call ``stop()`` once; a second signal raises KeyboardInterrupt.

    Only on the main thread (Python delivers signals there); elsewhere it does
    nothing. ``signum`` is the first signal received (None if none). After
    :meth:`finishing` further signals are only logged, so the checkpoint and
    stats are written whole.
    """

    def __init__(self, stop: Callable[[], None], signals: tuple[int, ...] = STOP_SIGNALS):
        self._stop, self._signals = stop, signals
        self._previous: dict[int, Any] = {}
        self._finishing = False
        self.signum: int | None = None

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self._signals:
            previous = signal.getsignal(sig)
            if previous is None or previous == signal.SIG_IGN:  # not set from Python, or deliberately ignored
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def finishing(self) -> None:
        """From now on the run is writing its checkpoint and stats: signals no longer abandon anything."""
        self._finishing = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        if self._finishing:
            logger.warning("%s received while writing the checkpoint and stats; finishing them first", name)
            return
        if self.signum is None:
            self.signum = signum
            logger.warning(
                "%s received: finishing the batches in flight, then stopping "
                "(send it again to abandon them; resume continues either way)",
                name,
            )
            self._stop()
            return
        logger.warning("%s received again: abandoning the batches in flight", name)
        raise KeyboardInterrupt
