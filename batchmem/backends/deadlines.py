"""Batch deadlines reported by worker processes, for the watchdog that kills a worker stuck past one.

The per-item timer (:mod:`batchmem.backends.item_timeout`) interrupts Python code in place; code stuck
inside C never returns to it. For that, a worker process reports each batch to the parent when it starts
(its pid, first item, items and deadline: now + :func:`~batchmem.backends.item_timeout.batch_deadline_s`,
on ``CLOCK_MONOTONIC``, which every process of a Linux machine shares) and when it ends. The reports are
datagrams on a Unix socket in Linux's abstract namespace (unix(7)): no file, nothing to remove, gone
with the parent. The OOM watchdog's thread drains them (:meth:`DeadlineBoard.drain`) and kills the
worker of a batch past its deadline (:mod:`batchmem.backends.watchdog`); the batch then goes through
the worker-death path (halves, then the item alone).

Not covered: platforms without the abstract namespace (the board is not created; the per-item timer
still interrupts Python code), and dask workers (see :mod:`batchmem.backends.dask_backend`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["DeadlineBoard", "Running", "reporting"]

#: pid, first item, items, deadline (CLOCK_MONOTONIC seconds; 0: the batch ended).
_REPORT = struct.Struct("=iqqd")
#: Longest a worker waits to hand in a report when the parent's queue is full, seconds.
_SEND_TIMEOUT_S = 1.0


class Running(NamedTuple):
    """A batch a worker reported as started: its deadline (monotonic seconds), first item, items."""

    deadline: float
    start: int
    items: int


class DeadlineBoard:
    """Parent side: the batches the workers run now, by pid, from their reports."""

    def __init__(self) -> None:
        self.address = f"\0batchmem-deadlines-{os.getpid()}-{secrets.token_hex(6)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.setblocking(False)
        self.running: dict[int, Running] = {}

    @staticmethod
    def available() -> bool:
        """Whether this platform has the abstract socket namespace (Linux)."""
        return sys.platform.startswith("linux")

    def drain(self) -> None:
        """Read every report waiting; a batch that ended leaves :attr:`running`."""
        while True:
            try:
                data = self._sock.recv(_REPORT.size)
            except (BlockingIOError, OSError):
                return
            pid, start, items, deadline = _REPORT.unpack(data)
            if deadline:
                self.running[pid] = Running(deadline, start, items)
            else:
                self.running.pop(pid, None)

    def overdue(self, pids: Iterable[int], now: float | None = None) -> list[tuple[int, Running]]:
        """``(pid, batch)`` of the workers in ``pids`` whose batch is past its deadline; reports of
        other pids (workers gone) are forgotten."""
        now = time.monotonic() if now is None else now
        live = set(pids)
        for pid in self.running.keys() - live:
            del self.running[pid]
        return [(pid, r) for pid, r in self.running.items() if now > r.deadline]

    def forget(self, pid: int) -> None:
        self.running.pop(pid, None)

    def close(self) -> None:
        self._sock.close()


def _send(address: str, start: int, items: int, deadline: float) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(_SEND_TIMEOUT_S)
            s.sendto(_REPORT.pack(os.getpid(), start, items, deadline), address)
    except OSError:  # the parent is gone or its queue stayed full: the batch runs unguarded
        pass


@contextlib.contextmanager
def reporting(address: str | None, start: int, items: int, deadline_s: float) -> Iterator[None]:
    """In a worker: report the batch (first item ``start``, ``items``) as running until ``deadline_s``
    seconds from now, and as ended when the block exits; nothing without an ``address``."""
    if address is None or not items:
        yield
        return
    _send(address, start, items, time.monotonic() + deadline_s)
    try:
        yield
    finally:
        _send(address, start, items, 0.0)
