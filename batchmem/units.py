"""Figures as text, one convention everywhere: bytes in IEC binary units (KiB, MiB, GiB), seconds with ``s``.

The kernel (``/proc``, cgroup files) and psutil count memory in bytes and
``ls -h``/``free -h`` print it in powers of 1024, so every figure batchmem
shows (run summary, reports, plot axes, ``stats``, ``memory``, log lines)
uses the same units. Formatting is pydantic's
:meth:`pydantic.ByteSize.human_readable` (``decimal=False``); parsing sizes
from job files and ``memory_limit`` strings is :class:`pydantic.ByteSize` too.
"""

from __future__ import annotations

import math

__all__ = ["format_bytes", "format_seconds"]


def format_bytes(n: float | None, *, missing: str = "-") -> str:
    """``n`` bytes as IEC text: ``"512B"``, ``"181.7MiB"``, ``"1.0GiB"``; negative sizes keep their sign.

    ``None`` or a non-finite number gives ``missing``.
    """
    if n is None or not math.isfinite(float(n)):
        return missing
    from pydantic import ByteSize

    text = ByteSize(abs(int(n))).human_readable(decimal=False)
    return f"-{text}" if n < 0 else text


def format_seconds(s: float | None, *, missing: str = "-") -> str:
    """``s`` seconds as text: ``"12.35 s"`` (two decimals from 1 s up), ``"0.153 s"`` (three significant
    digits below 1 s). ``None`` or a non-finite number gives ``missing``."""
    if s is None or not math.isfinite(float(s)):
        return missing
    return f"{s:,.2f} s" if s >= 1 else f"{s:.3g} s"
