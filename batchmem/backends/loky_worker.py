"""What a loky worker process does differently from the parent: ignore SIGINT, exit without teardown.

loky starts each worker as a fresh interpreter whose main module ends with ``sys.exit(exitcode)``
(``joblib/externals/loky/backend/popen_loky_posix.py``), so a worker that shuts down cleanly runs
the interpreter's whole finalization: after the :mod:`atexit` handlers, every module is torn down
and its objects freed. With torch and a model loaded that teardown took 0.95 s of a worker's exit
(sentence-transformers, all-MiniLM-L6-v2; the atexit handlers themselves took 8 ms), and the parent
waits for it when it shuts the pool down. Workers of the standard library's fork start method skip
it: ``multiprocessing/popen_fork.py`` ends the child with ``os._exit(code)``. batchmem's loky workers
do the same once every atexit handler has run (the setup's teardown among them), but only after a
clean exit (exit code 0); a worker that fails exits as loky made it.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import threading

from .lifeline import die_with_parent

__all__ = ["prepare_loky_worker", "start_loky_worker"]

_exiting_cleanly = False


def prepare_loky_worker() -> bool:
    """In a loky worker (call once): ignore SIGINT and exit without the interpreter's teardown; True there.

    SIGINT: a terminal's Ctrl-C reaches the whole process group, and the parent (see
    :mod:`batchmem.signals`) decides to finish the batches in flight, not the workers. Does nothing
    in other processes, and returns False.
    """
    if not multiprocessing.current_process().name.startswith("LokyProcess"):
        return False
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    # multiprocessing runs its finalizers in a ``finally`` after the worker's loop (BaseProcess._bootstrap):
    # there an exception on its way out (loky's ``sys.exit(1)``) is still visible.
    multiprocessing.util.Finalize(None, _note_exit, exitpriority=0)
    # Registered before the function's module and the setup register theirs: atexit runs handlers in
    # reverse order of registration, so this one runs after them.
    atexit.register(_exit_without_teardown)
    return True


def start_loky_worker(parent: int, sig: int) -> None:
    """loky's ``initializer`` for batchmem's pools, run in each worker before its first task: tie the
    worker's life to the parent's (:func:`~batchmem.backends.lifeline.die_with_parent`), and note again
    how it exits. Its module was imported while loky unpickled the worker's process object, before
    ``BaseProcess._bootstrap`` cleared the finalizers registered so far (``multiprocessing/process.py``)."""
    die_with_parent(parent, sig)
    multiprocessing.util.Finalize(None, _note_exit, exitpriority=0)


def _note_exit() -> None:
    global _exiting_cleanly
    _exiting_cleanly = sys.exc_info()[0] is None


def _exit_without_teardown() -> None:
    """The last of our atexit handlers: flush what the teardown would have flushed, then ``os._exit(0)``."""
    if not _exiting_cleanly:
        return
    logging.shutdown()  # registered with atexit before this handler, so it would run after it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # C extensions' stdio buffers, which exit(3) would flush
    except (OSError, AttributeError):
        pass
    os._exit(0)
