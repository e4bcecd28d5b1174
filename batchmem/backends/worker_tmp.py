"""A temporary directory of its own for each worker placed in a memory cgroup, removed when it dies.

Files a batch stages on a tmpfs (``/tmp`` or ``/dev/shm`` in many containers, Kubernetes ``emptyDir``
with ``medium: Memory``) are memory charged to the cgroup, and a killed process does not delete them:
a worker the kernel stopped at its cgroup's limit (:mod:`batchmem.backends.worker_cgroups`) in the
middle of a batch would leave its half-staged files charged to the run until the run itself is
killed. So a worker in a group of its own points ``$TMPDIR`` (and :data:`tempfile.tempdir`, which
:func:`tempfile.mkstemp`, :class:`tempfile.TemporaryDirectory` and the programs it starts use) at
``<temp dir>/batchmem-w<pid>`` (:func:`use_private_tmpdir`); the parent removes that directory as soon
as it finds the worker gone (:func:`remove_private_tmpdir`), the worker itself when it exits, and the
next run those of workers of a killed run (:func:`remove_stale_tmpdirs`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import psutil

__all__ = ["remove_private_tmpdir", "remove_stale_tmpdirs", "use_private_tmpdir"]

_NAME = re.compile(r"^batchmem-w(\d+)$")
_own: str | None = None  # this worker's directory, once made


def _path(root: str, pid: int) -> str:
    return os.path.join(root, f"batchmem-w{pid}")


def use_private_tmpdir() -> str | None:
    """In a worker: make ``<temp dir>/batchmem-w<pid>`` this process's temporary directory (once;
    removed when it exits); its path, or None when it cannot be made (the temp dir is then left as is)."""
    global _own
    if _own is not None:
        return _own
    path = _path(tempfile.gettempdir(), os.getpid())
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    from multiprocessing.util import Finalize

    # multiprocessing's exit function runs these in loky's and the standard library's workers alike
    Finalize(None, shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, exitpriority=10)
    os.environ["TMPDIR"] = tempfile.tempdir = _own = path
    return path


def remove_private_tmpdir(pid: int, root: str | None = None) -> None:
    """In the parent: remove the directory of worker ``pid``, which is gone (with what it staged)."""
    shutil.rmtree(_path(root or tempfile.gettempdir(), pid), ignore_errors=True)


def remove_stale_tmpdirs(root: str | None = None) -> int:
    """Remove the worker directories whose process is gone (a run killed before it could); how many."""
    removed = 0
    try:
        entries = list(Path(root or tempfile.gettempdir()).iterdir())
    except OSError:
        return 0
    for entry in entries:
        found = _NAME.match(entry.name)
        if found and not psutil.pid_exists(int(found.group(1))) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed

    return True
