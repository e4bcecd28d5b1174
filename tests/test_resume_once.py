"""A resuming ``batchmem run`` decides the resume once: one checkpoint load, one fingerprint, one
``check_files``, one import of the function (they were 3, 2, 2 and 2)."""

from __future__ import annotations

import sys
import textwrap
from collections import Counter

import orjson
from click.testing import CliRunner

import batchmem.job.actions as actions
from batchmem.cli import cli
from batchmem.io import checkpoint as checkpoint_module
from batchmem.io.checkpoint import Checkpoint, checkpoint_path


def numbers(n: int = 40) -> range:
    return range(n)


def double(x: int) -> int:
    return 2 * x


def _count(monkeypatch, calls: Counter) -> None:
    load = Checkpoint.load.__func__

    def counted_load(cls, path):
        calls["checkpoint loads"] += 1
        return load(cls, path)

    monkeypatch.setattr(Checkpoint, "load", classmethod(counted_load))
    original = checkpoint_module.fingerprint

    def counted_fingerprint(fields):
        calls["fingerprints"] += 1
        return original(fields)

    for name, module in list(sys.modules.items()):
        if name.startswith("batchmem") and getattr(module, "fingerprint", None) is original:
            monkeypatch.setattr(module, "fingerprint", counted_fingerprint)
    check_files = actions.JobActions.check_files

    def counted_check_files(self, **kwargs):
        calls["check_files"] += 1
        return check_files(self, **kwargs)

    monkeypatch.setattr(actions.JobActions, "check_files", counted_check_files)
    imports = actions._import

    def counted_import(ref, field, base_dir):
        if field == "function":
            calls["imports of function"] += 1
        return imports(ref, field, base_dir)

    monkeypatch.setattr(actions, "_import", counted_import)


def test_a_resuming_run_decides_once(tmp_path, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """
            source: {type: python, path: "test_resume_once:numbers"}
            function: "test_resume_once:double"
            output: {path: out.jsonl}
            batching: {batch_size: 10, auto_optimize: false}
            progress: false
            """
        )
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(job)])
    assert first.exit_code == 0, first.output
    ckpt = checkpoint_path(tmp_path / "out.jsonl")
    state = orjson.loads(ckpt.read_bytes())
    ckpt.write_bytes(orjson.dumps({**state, "complete": False}))  # an unfinished run of the same job

    calls: Counter = Counter()
    _count(monkeypatch, calls)
    again = runner.invoke(cli, ["run", str(job)])
    assert again.exit_code == 0, again.output
    assert "resuming: 40 items already committed" in again.output
    assert dict(calls) == {"checkpoint loads": 1, "fingerprints": 1, "check_files": 1, "imports of function": 1}
    assert orjson.loads(ckpt.read_bytes())["complete"] is True
