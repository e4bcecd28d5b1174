"""Per-item timeouts where a batch runs (``item_timeout``, seconds): Python code is interrupted in place.

Each item gets ``item_timeout`` seconds. An item that runs past them raises
:class:`TimeoutError` (``item 57 ran past item_timeout=2s``) inside the call, which then fails like
any other item under ``on_error`` (never retried: a hung item would hang every attempt):

* in a process's main thread (serial runs; loky and multiprocessing workers), a ``SIGALRM`` timer
  (:func:`signal.setitimer`, ``ITIMER_REAL``) is armed for each item; its handler raises, which also
  ends a blocking :func:`time.sleep`, ``select`` or socket read (a handler that raises ends the
  call instead of retrying it, PEP 475);
* in any other thread (dask workers, ``backend="threading"``, ``process()`` called from a thread), a
  monitor thread raises the exception in the item's thread with ``PyThreadState_SetAsyncExc``
  (https://docs.python.org/3/c-api/init.html#c.PyThreadState_SetAsyncExc); it lands between two
  bytecodes, so it stops a pure-Python loop and a ``while True: time.sleep(1)``, not one long C call.

Not covered here: code stuck inside C (a C extension that never returns to the interpreter, one
blocking call in a thread). In-process nothing can stop it; process workers are killed by the
watchdog at the batch's deadline (:func:`batch_deadline_s`, :mod:`batchmem.backends.watchdog`), and
a dask task is cancelled and its worker restarted (:mod:`batchmem.backends.dask_backend`).
"""

from __future__ import annotations

import ctypes
import itertools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "MARGIN_S",
    "OVERDUE",
    "ItemTimer",
    "batch_deadline_s",
    "is_item_timeout",
    "item_timeout_error",
    "overdue_reason",
]

#: Seconds added to a batch's deadline (``item_timeout x items``) before its worker is killed or its
#: dask task cancelled: the in-place timer, which fires at ``item_timeout``, gets the first chance.
MARGIN_S = 1.0


def batch_deadline_s(item_timeout: float, items: int) -> float:
    """Seconds a batch of ``items`` may run before its process is killed: ``item_timeout x items + MARGIN_S``."""
    return item_timeout * items + MARGIN_S


#: How the reason a worker was stopped past a batch's deadline begins (see :func:`overdue_reason`).
OVERDUE = "item_timeout:"


def overdue_reason(start: int, items: int) -> str:
    """``item_timeout: items 40..59 ran past item_timeout x 20 items + 1s``: why a worker was stopped;
    the run loop knows a timeout by the :data:`OVERDUE` start."""
    return f"{OVERDUE} items {start}..{start + items - 1} ran past item_timeout x {items} items + {MARGIN_S:g}s"


def item_timeout_error(index: int, item_timeout: float) -> TimeoutError:
    """``TimeoutError: item 57 ran past item_timeout=2s``, marked so retries leave it alone."""
    err = TimeoutError(f"item {index} ran past item_timeout={item_timeout:g}s")
    err.item_timeout = item_timeout  # type: ignore[attr-defined]
    return err


def is_item_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is an item's timeout (from :func:`item_timeout_error`)."""
    return isinstance(exc, TimeoutError) and getattr(exc, "item_timeout", None) is not None


class _Expired(BaseException):
    """Raised into the item's code at its deadline; a BaseException, so the user's ``except Exception``
    does not swallow it."""


class ItemTimer:
    """Interrupts each call of :meth:`wrap` that runs past ``seconds``; use as ``with ItemTimer(s) as t``
    around a batch (the handler or monitor thread lives for the batch)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.in_main = threading.current_thread() is threading.main_thread()
        self._armed = False
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._tid = threading.get_ident()
        self._saved: tuple[Any, tuple[float, float]] | None = None
        self._monitor: threading.Thread | None = None

    def __enter__(self) -> ItemTimer:
        if self.in_main:
            self._saved = (signal.signal(signal.SIGALRM, self._on_alarm), signal.getitimer(signal.ITIMER_REAL))
        else:
            self._monitor = threading.Thread(target=self._watch, name="batchmem-item-timeout", daemon=True)
            self._monitor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            handler, (delay, interval) = self._saved
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, handler)
            if delay:  # a timer of the caller's: give it back
                signal.setitimer(signal.ITIMER_REAL, delay, interval)
        if self._monitor is not None:
            self._done.set()
            with self._lock:  # an exception raised too late must not escape the batch
                self._deadline = None
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._tid), None)

    def wrap(self, call: Callable[[Any], Any], first_index: int) -> Callable[[Any], Any]:
        """``call`` timed: its n-th call (item ``first_index + n``; one call per item) runs :meth:`timed`."""
        calls = itertools.count(first_index)
        return lambda item: self.timed(lambda: call(item), next(calls))

    def timed(self, call: Callable[[], Any], index: int) -> Any:
        """``call()``; raises :func:`item_timeout_error` for item ``index`` when it runs past the limit."""
        try:
            self._start()
            try:
                return call()
            finally:
                self._stop()
        except _Expired:
            raise item_timeout_error(index, self.seconds) from None

    def _start(self) -> None:
        if self.in_main:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            with self._lock:
                self._deadline = time.monotonic() + self.seconds

    def _stop(self) -> None:
        if self.in_main:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        else:
            with self._lock:
                self._deadline = None

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._armed:  # a signal that arrives after the item ended is dropped
            self._armed = False
            raise _Expired

    def _watch(self) -> None:
        tick = min(0.05, self.seconds / 10)
        while not self._done.wait(tick):
            with self._lock:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._deadline = None
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._tid), ctypes.py_object(_Expired))
