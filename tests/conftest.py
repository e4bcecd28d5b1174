"""Suite-wide fixtures: a private history folder per test, and a private temporary folder for the
session that must be empty again when the session ends.

Runs without ``output`` spool to ``tempfile.gettempdir()``, and a test whose processes are killed
cannot remove what they left there. The session therefore points ``TMPDIR`` (inherited by every
subprocess and worker) at a folder of its own, under pytest's base temporary folder, and
:func:`pytest_sessionfinish` fails the suite if anything is left in it but dask's
``dask-scratch-space``, a shared folder dask keeps by design and purges of stale worker folders itself
(``distributed.diskutils``). A new ``batchmem-*`` entry in the system temporary folder (a path that
bypassed ``TMPDIR``) fails it under CI (``CI`` set); elsewhere it is a warning, since other programs on a
shared machine write there too.
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest

#: dask's shared scratch folder under the temporary folder (``temporary-directory``), kept by design.
DASK_SCRATCH = "dask-scratch-space"
_LEFT_KEY = pytest.StashKey[tuple[Path, Path, frozenset[str]]]()


@pytest.fixture(autouse=True)
def _isolated_history(tmp_path_factory, monkeypatch):
    """Every test gets its own history folder (BATCHMEM_HOME), so runs never see each other's learned sizes."""
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path_factory.mktemp("batchmem_home")))


def _system_entries(system: Path) -> frozenset[str]:
    return frozenset(p.name for p in system.glob("batchmem-*"))


@pytest.fixture(scope="session", autouse=True)
def _private_temp_dir(request, tmp_path_factory):
    """``TMPDIR`` points at ``<basetemp>/tmp`` for the whole session (subprocesses and workers inherit it)."""
    system = Path(tempfile.gettempdir())
    private = tmp_path_factory.getbasetemp() / "tmp"
    private.mkdir()
    request.config.stash[_LEFT_KEY] = (private, system, _system_entries(system))
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    try:
        yield private
    finally:
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_LEFT_KEY, None)
    if state is None:  # collection failed before the session fixture ran
        return
    private, system, before = state
    gc.collect()  # results nobody holds remove their spool folders now, not at interpreter exit
    left = sorted(str(p) for p in private.iterdir() if p.name != DASK_SCRATCH) if private.exists() else []
    new = sorted(str(system / name) for name in _system_entries(system) - before)
    strict = bool(os.environ.get("CI"))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for paths, fails in ((left, True), (new, strict)):
        if not paths:
            continue
        if reporter is not None:
            label = "ERROR" if fails else "WARNING"
            message = f"the suite left {len(paths)} file(s) in the temporary folder: {', '.join(paths[:10])}"
            reporter.write_line(f"{label}: {message}", red=fails, yellow=not fails)
        if fails:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
