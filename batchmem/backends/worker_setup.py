"""Per-worker setup: a callable run once per worker process whose result reaches the function as ``state=``.

Used by every executor (serial, threading, loky, dask): the setup result (a
loaded model, a large lookup table) outlives a batch, so it is cached per
process under a token, and torn down when the worker is done with it.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..callables import import_callable
from ..errors import BatchFunctionError, ConfigError

logger = logging.getLogger("batchmem")

__all__ = ["WorkerSetup", "accepts_state", "check_accepts_state", "make_worker_setup"]


class _WorkerStates:
    """Per-process cache of worker-setup results: setup token -> (state, teardown).

    This is the library's one piece of process-global mutable state, on
    purpose: the point of worker setup is that its result (a loaded model, a
    lookup table) outlives a batch, and in a loky or dask worker nothing
    outlives a task but the process itself. A single instance (``_STATES``
    below) holds it; a lock makes the first batches of several threads in
    one process (dask threads, the threading backend) run the setup once.
    Teardown empties it: :meth:`release` (end of an in-process run, dask
    worker-plugin teardown) or, for loky workers, at interpreter exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Any, Callable[[Any], Any] | None]] = {}
        self._atexit_registered = False

    def get(self, setup: WorkerSetup) -> Any:
        """The state of ``setup`` in this process, running ``setup.setup()`` the first time."""
        entry = self._entries.get(setup.token)
        if entry is not None:
            return entry[0]
        with self._lock:
            entry = self._entries.get(setup.token)
            if entry is None:
                try:
                    state = setup.setup()
                except Exception as exc:
                    raise BatchFunctionError(
                        f"setup: {setup.name} raised {type(exc).__name__}: {exc}; fix the setup function"
                    ) from exc
                entry = self._entries[setup.token] = (state, setup.teardown)
                if setup.teardown is not None and not self._atexit_registered:
                    atexit.register(self.release_all)
                    self._atexit_registered = True
                logger.debug("worker setup %s ran in process %d", setup.name, os.getpid())
            return entry[0]

    def release(self, token: str) -> bool:
        """Forget the state of ``token`` in this process and run its teardown; False if there was none."""
        with self._lock:
            entry = self._entries.pop(token, None)
        if entry is None:
            return False
        state, teardown = entry
        if teardown is not None:
            try:
                teardown(state)
            except Exception:  # teardown must not turn a finished run into a failed one
                logger.exception("worker teardown failed in process %d", os.getpid())
        return True

    def release_all(self) -> None:
        """Tear down every state this process holds (registered with :mod:`atexit`)."""
        for token in list(self._entries):
            self.release(token)


#: The one per-process cache worker setup needs (see :class:`_WorkerStates`).
_STATES = _WorkerStates()


@dataclass(frozen=True)
class WorkerSetup:
    """A setup callable run once per worker process; its result reaches ``fn`` as ``state=``.

    ``token`` identifies the setup across pickling (one per
    :class:`~batchmem.BatchProcessor`), so every worker process runs
    ``setup()`` once, before its first batch and outside the batch's time
    and memory measurement, and keeps the result for later batches and runs
    of the same processor. ``teardown(state)`` runs when the state is
    released: at the end of an in-process run (serial, threading), at the
    end of a dask run (worker plugin teardown), at worker exit for loky.
    """

    setup: Callable[[], Any]
    teardown: Callable[[Any], Any] | None = None
    name: str = "setup"
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def state(self) -> Any:
        """This process's state, set up on first use."""
        return _STATES.get(self)

    def release(self) -> bool:
        """Run the teardown for this process's state, if it has one; False if it had none."""
        return _STATES.release(self.token)


def _callable_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def make_worker_setup(
    setup: Callable[[], Any] | str | None, teardown: Callable[[Any], Any] | str | None = None
) -> WorkerSetup | None:
    """Build the :class:`WorkerSetup` for ``BatchProcessor(setup=..., teardown=...)``.

    Each may be a callable or a ``"module:callable"`` string (imported here,
    in this process; workers unpickle it by reference). ``setup()`` takes no
    arguments; ``teardown(state)`` takes its result. None without a setup.

    Raises ConfigError naming ``setup``/``teardown`` for bad references, a
    teardown without a setup, or a value that is not callable.
    """
    if setup is None:
        if teardown is not None:
            raise ConfigError("teardown: there is no setup to tear down; pass setup= too, or drop teardown")
        return None
    resolved = []
    for name, value in (("setup", setup), ("teardown", teardown)):
        if isinstance(value, str):
            value = import_callable(value, field=name)
        elif value is not None and not callable(value):
            raise ConfigError(f"{name}: {value!r} is not callable; pass a function or 'module:callable'")
        resolved.append(value)
    return WorkerSetup(resolved[0], resolved[1], name=_callable_name(resolved[0]))


def accepts_state(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes the keyword argument ``state`` (a parameter of that name that is not
    positional-only, or ``**kwargs``); True when :func:`inspect.signature` cannot tell (builtins, C
    callables), so that the call decides."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == "state" and p.kind is not p.POSITIONAL_ONLY) for p in params)


def check_accepts_state(fn: Callable[..., Any]) -> None:
    """With a setup, ``fn`` must accept the keyword argument ``state``; ConfigError naming ``function`` otherwise."""
    if accepts_state(fn):
        return
    raise ConfigError(
        f"function: {_callable_name(fn)} has no parameter 'state', but a setup is configured; "
        "add a keyword parameter state=None to receive the setup's result"
    )
