"""Does a job fit under its memory limit at all? The check made before the first batch.

The batches of a run get what is left of the memory target (``memory_target_fraction`` of the limit)
once the process tree holds its baseline: the interpreter, the function's imports, the setup's state,
the first item, and the same again in each worker process. A baseline at or above the target leaves
no batch any room: the run would wait in emergency and stop after an item or two. So it is refused
up front, before anything is dispatched or written, and the first fix named is the one that can help:
a larger ``memory_limit``.
"""

from __future__ import annotations

import math

from ..errors import LimitTooSmallError
from ..units import format_bytes

__all__ = ["check_fits", "suggested_limit_bytes"]

_MiB = 2**20


def suggested_limit_bytes(held_bytes: int, target_fraction: float) -> int:
    """A limit whose memory target holds ``held_bytes`` with as much again for the batches, in bytes
    rounded up to 64 MiB (a value a user types)."""
    need = 2 * held_bytes / target_fraction
    return math.ceil(need / (64 * _MiB)) * 64 * _MiB


def check_fits(
    held_bytes: int, workers: int, limit_bytes: int, target_fraction: float, *, limit_source: str = ""
) -> None:
    """Raise :class:`~batchmem.errors.LimitTooSmallError` when the baseline passes the memory target.

    ``held_bytes``: what this process holds after importing the function, running the setup and
    pulling the first item (bytes). ``workers``: worker processes the run will start; each is counted
    as holding ``held_bytes`` too, a first estimate (a worker imports the same function and runs the
    same setup, but not the parts of this process that only the parent needs). ``limit_bytes`` and
    ``target_fraction`` (of the limit, (0, 1]) give the target. The message names the figures and,
    first, a ``memory_limit`` that fits.
    """
    total = held_bytes * (1 + workers)
    target = target_fraction * limit_bytes
    if total < target:
        return
    each = (
        f" plus about as much in each of its {workers} worker processes, {format_bytes(total)} in all"
        if workers
        else ""
    )
    new = f"{suggested_limit_bytes(total, target_fraction) // _MiB}MiB"
    source = f" ({limit_source})" if limit_source else ""
    raise LimitTooSmallError(
        f"memory_limit: {format_bytes(limit_bytes)}{source} is too small for this job: the process holds "
        f"{format_bytes(held_bytes)} with the function, setup and first item loaded{each}, and its batches "
        f"may fill only {format_bytes(target)} "
        f"({target_fraction:.0%} of the limit); raise memory_limit",
        python_fix=f" (e.g. memory_limit='{new}'), or load less in the setup",
        cli_fix=f" (e.g. --set batching.memory_limit={new}), or load less in the setup",
    )
