"""Fail at once, with one line, when the function cannot travel to a worker process.

Process backends (loky, multiprocessing, dask) send the function and the
per-worker setup to their workers with cloudpickle. An object that cannot be
pickled (a lock, an open file, a database connection closed over by the
function) would otherwise fail deep inside the pool, on dask as tracebacks from
its communication threads while the run waits. :func:`check_picklable` pickles
them once, before the first batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, one_line

__all__ = ["check_picklable"]


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def check_picklable(fn: Callable[..., Any], *extra: tuple[str, Any]) -> None:
    """cloudpickle ``fn`` and each ``(field, callable)`` in ``extra``; ConfigError naming the field,
    the callable and the object that could not be pickled (``cannot pickle '_thread.lock' object``)."""
    import cloudpickle

    for field, obj in (("function", fn), *extra):
        if obj is None:
            continue
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            raise ConfigError(
                f"{field}: {_name(obj)} cannot be sent to worker processes: {one_line(exc)}; create that object "
                "inside the function or in a per-worker setup, or run in-process (n_jobs: 1 or backend: threading)"
            ) from None
