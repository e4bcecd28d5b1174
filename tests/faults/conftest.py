"""Helpers of the fault-injection suite: a job folder, the CLI as a subprocess, output checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def batchmem(*args: str, cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m batchmem.cli ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw
    )


def expected_line(i: int) -> bytes:
    return json.dumps({"i": i, "v": 3 * i + 1}, separators=(",", ":")).encode() + b"\n"


def checkpoint(out: Path) -> dict | None:
    path = out.with_name(out.name + ".ckpt.json")
    return json.loads(path.read_bytes()) if path.exists() else None


def assert_committed_prefix(out: Path) -> dict:
    """The bytes the checkpoint claims are whole lines, one per item, ``line i == expected(i)``."""
    ck = checkpoint(out)
    if ck is None or not out.exists():
        return {"items": 0, "output_bytes": 0}
    data = out.read_bytes()
    assert len(data) >= ck["output_bytes"], "the checkpoint claims bytes the output does not hold"
    lines = data[: ck["output_bytes"]].splitlines(keepends=True)
    assert len(lines) == ck["items"] == ck["source_position"]
    for i, line in enumerate(lines):
        assert line == expected_line(i), (i, line)
    return ck


def assert_complete(out: Path, n: int) -> None:
    """Exactly one line per input item, in input order, nothing torn, lost or duplicated."""
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == n, f"{len(lines)} lines for {n} items"
    bad = [i for i, line in enumerate(lines) if line != expected_line(i)]
    assert not bad, f"{len(bad)} wrong lines, first {bad[:5]}: {lines[bad[0]]!r}"


def pytest_collection_modifyitems(config, items):
    """Every test of this folder is ``slow``: ``pytest -m "not slow"`` is the fast inner loop."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A folder holding faultfns.py, with ``write_job(name, **keys)`` to add job files."""
    shutil.copy(HERE / "faultfns.py", tmp_path / "faultfns.py")
    return tmp_path


def write_job(folder: Path, name: str, *, n: int, function: str = "faultfns:slow", extra: str = "") -> Path:
    """A job over ``faultfns:numbers(n)`` writing ``<name>.jsonl`` in ``folder``."""
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        f"source: {{type: python, path: 'faultfns:numbers', options: {{n: {n}}}}}\n"
        f"function: {function}\n"
        f"output: {{path: {name}.jsonl}}\n"
        "progress: false\n" + extra
    )
    return path


def env_without_tty() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")
