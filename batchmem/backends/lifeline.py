"""Worker processes die with their parent: no loky worker or resource tracker outlives a killed run.

When the parent is killed (the kernel's OOM killer, ``kill -9``), its worker processes would wait
for their next task until loky's idle timeout (300 s), holding their memory; inside a memory cgroup
it stays charged against the run that resumes. On Linux each worker asks the kernel for a signal when
its parent dies, with ``prctl(PR_SET_PDEATHSIG, sig)`` (prctl(2),
https://man7.org/linux/man-pages/man2/prctl.2.html), then compares :func:`os.getppid` with the
parent's pid: a parent that died before the call is seen there ("the race" the man page leaves to the
caller). Elsewhere a daemon thread polls the parent every :data:`WATCH_S` seconds.

prctl(2) warns that the "parent" is the *thread* that created the process: the signal comes when that
thread ends, even though the process lives on. Workers a pool starts from the main thread therefore
get SIGKILL, which ends them at once, in any state. Workers started from another thread (a pool built
in ``n_jobs="auto"``'s start-up thread, or a run driven from a thread of the user's) get a signal
they catch instead (:data:`CHECK_SIGNAL`): its handler kills the worker only if :func:`os.getppid`
changed, so the end of that thread does not end them. The handler runs between bytecodes of the
worker's main thread, so a worker inside one long C call exits when the call returns.

The resource trackers (the standard library's and loky's) need nothing: each reads a pipe whose write
ends the parent and its workers hold, and exits at end of file, once they are all gone
(``multiprocessing/resource_tracker.py``, ``main``). prctl cannot be set on them from outside: it
acts on the calling process only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

__all__ = ["CHECK_SIGNAL", "WATCH_S", "die_with_parent", "parent_death_signal"]

#: ``prctl`` option number, ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the parent where there is no prctl.
WATCH_S = 0.25
#: The catchable parent-death signal of workers started from a thread other than the main one: a
#: real-time signal, which no library installs a handler for by default (signal(7)).
CHECK_SIGNAL = int(getattr(signal, "SIGRTMIN", 34)) + 2


def parent_death_signal() -> int:
    """The death signal for workers a pool starts now, from the calling thread: SIGKILL from the
    main thread (which lives as long as the process), :data:`CHECK_SIGNAL` from any other."""
    return int(signal.SIGKILL) if threading.current_thread() is threading.main_thread() else CHECK_SIGNAL


def die_with_parent(parent: int | None, sig: int = int(signal.SIGKILL)) -> str:
    """In a worker (a pool's initializer): end this process when ``parent`` dies.

    ``parent`` is the pid of the process that started the pools' workers (None: this process's parent
    now, for a fork server's children). ``sig`` is from :func:`parent_death_signal`. Returns how:
    ``"pdeathsig"`` (Linux) or ``"watch"`` (a polling thread). Kills this process at once when the
    parent is already gone. Never raises.
    """
    parent = os.getppid() if parent is None else parent
    how = "pdeathsig" if sys.platform.startswith("linux") and _set_pdeathsig(parent, sig) else "watch"
    if os.getppid() != parent:  # it died before the prctl call: no signal will come
        _die()
    if how == "watch":
        threading.Thread(target=_watch, args=(parent,), name="batchmem-parent-watch", daemon=True).start()
    return how


def _set_pdeathsig(parent: int, sig: int) -> bool:
    if sig != signal.SIGKILL and threading.current_thread() is threading.main_thread():
        signal.signal(sig, _check_parent(parent))
    elif sig != signal.SIGKILL:  # a handler can only be installed from the main thread
        sig = int(signal.SIGKILL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _check_parent(parent: int):  # noqa: ANN202 - a signal handler
    def handler(signum: int, frame: object) -> None:
        if os.getppid() != parent:  # the process died, not only the thread that started this worker
            _die()

    return handler


def _watch(parent: int) -> None:
    import time

    while True:
        time.sleep(WATCH_S)
        if os.getppid() != parent or not _alive(parent):
            _die()


def _alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:  # pragma: no cover - a dependency
        return True


def _die() -> None:
    """End now, without the interpreter's teardown or any atexit handler: nobody waits for this worker."""
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)  # pragma: no cover - no SIGKILL (Windows)
