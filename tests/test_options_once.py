"""Each option is defined once: a bad value fails the same way in Python and in a job file.

The options are walked from the option groups' fields (not from a list kept here): every option gets
a value of the wrong type and, where its spec has bounds or choices, a value outside them. Python
(``BatchProcessor(...)``) and a job file (``batchmem validate`` and ``batchmem run``, through the
console entry point in this process) must both refuse it with a ConfigError, exit code 2, in one
line naming the option as that user wrote it: the keyword in Python, the dotted key in the job file.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchmem import BatchProcessor
from batchmem.cli import main
from batchmem.errors import ConfigError, JobFileError
from batchmem.job import load_job
from batchmem.options import GROUPS

#: A value no option accepts: not a number, flag, string, callable, mapping or [low, high] pair.
WRONG_TYPE = [1, 2, 3]


def _options() -> list[tuple[str, Any]]:
    """(keyword, spec) of every option of every group."""
    return [(f.name, f.metadata["spec"]) for cls in GROUPS.values() for f in dataclasses.fields(cls)]


def _out_of_range(spec: Any) -> Any:
    """A value of the option's own type just outside its bounds or choices (None: it has neither)."""
    if spec.choices:
        return "no_such_choice"
    step = 1 if spec.kind is int else 0.5
    if spec.gt is not None:
        return spec.gt if spec.kind is int else float(spec.gt)
    if spec.ge is not None:
        return spec.ge - step
    if spec.le is not None:
        return spec.le + step
    return None


def _cases() -> list[Any]:
    cases = []
    for name, spec in _options():
        cases.append(pytest.param(name, spec.job, WRONG_TYPE, id=f"{name}-wrong_type"))
        bad = _out_of_range(spec)
        if bad is not None:
            cases.append(pytest.param(name, spec.job, bad, id=f"{name}-out_of_range"))
    return cases


def test_the_walk_covers_every_option_and_every_bound():
    names = [name for name, _ in _options()]
    assert len(names) == len(set(names)) >= 30
    bounded = [name for name, spec in _options() if _out_of_range(spec) is not None]
    assert {"batch_size", "memory_target_fraction", "max_retries", "on_error", "terminate_fraction"} <= set(bounded)


def _write_job(folder: Path, key: str | None, value: Any) -> Path:
    (folder / "onceitems.py").write_text("def items():\n    return range(3)\n\ndef fn(item):\n    return item\n")
    data: dict[str, Any] = {
        "source": {"type": "python", "path": "onceitems:items"},
        "function": "onceitems:fn",
        "output": {"path": "out.jsonl"},
    }
    if key is not None:
        *sections, last = key.split(".")
        node = data
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def batchmem(tmp_path, monkeypatch, capsys):
    """``batchmem *args`` as the console script runs it: (exit code, what it printed)."""
    monkeypatch.setenv("BATCHMEM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "path", list(sys.path))

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out = capsys.readouterr()
        return exit_info.value.code, out.out + out.err

    yield run
    sys.modules.pop("onceitems", None)


@pytest.mark.parametrize(("name", "key", "value"), _cases())
def test_a_bad_value_fails_the_same_way_in_python_and_in_a_job_file(tmp_path, batchmem, name, key, value):
    with pytest.raises(ConfigError) as info:
        BatchProcessor(**{name: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: ") or message.startswith(f"{name}."), message
    assert info.value.exit_code == 2
    if key is None:  # a live Python object (a dask Client): not a job-file key
        return
    job = _write_job(tmp_path, key, value)
    with pytest.raises(JobFileError) as from_file:
        load_job(job)
    assert f"{job}: {key}" in str(from_file.value) and "\n" not in str(from_file.value)
    for command in ("validate", "run"):
        code, output = batchmem(command, str(job))
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and f"{key}:" in lines[0], (command, output)
        assert not (tmp_path / "out.jsonl").exists()


def test_a_good_job_passes_the_walk_harness(tmp_path, batchmem):
    """The job the walk spoils is valid as written, so each failure above is the bad value's."""
    job = _write_job(tmp_path, None, None)
    assert batchmem("validate", str(job))[0] == 0
    assert batchmem("run", "--no-progress", str(job))[0] == 0


@pytest.mark.parametrize("command", ["validate", "run"])
def test_equal_target_seconds_are_refused_by_validate_as_by_run(tmp_path, batchmem, command):
    """``target_batch_seconds: [1.0, 1.0]``: validate said ok and run failed naming the Python option."""
    job = _write_job(tmp_path, "batching.target_batch_seconds", [1.0, 1.0])
    code, output = batchmem(command, str(job))
    assert code == 2 and "batching.target_batch_seconds: " in output and "target_batch_seconds=" not in output, output
    with pytest.raises(ConfigError, match=r"^target_batch_seconds: \(1.0, 1.0\) must be \[low, high\]"):
        BatchProcessor(target_batch_seconds=(1.0, 1.0))


def test_a_check_between_options_names_the_job_key(tmp_path, batchmem):
    job = _write_job(tmp_path, "pressure.pressure_thresholds", {"warning": 0.9, "critical": 0.5})
    code, output = batchmem("validate", str(job))
    assert code == 2 and "pressure.pressure_thresholds.critical: 0.5 must be" in output, output
    job = _write_job(tmp_path, "teardown", "onceitems:fn")
    code, output = batchmem("validate", str(job))
    assert code == 2 and ": teardown: there is no setup" in output, output


def test_a_weight_reference_means_the_same_in_python_as_in_a_job_file(tmp_path, monkeypatch):
    """``weight: module:callable`` is valid in a job file, so ``weight="module:callable"`` is valid in Python."""
    (tmp_path / "onceweights.py").write_text("def chars(item):\n    return float(len(str(item)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = BatchProcessor(weight="onceweights:chars", progress=False, use_history=False)
    result = proc.process(range(50), abs, tmp_path / "out.jsonl")
    assert list(result) == list(range(50)) and result.stats.weight_unit == "onceweights:chars"
    sys.modules.pop("onceweights", None)
