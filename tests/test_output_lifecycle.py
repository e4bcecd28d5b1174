"""Output lifecycle through the Python API: folders created, temporary spools removed, finished outputs left alone."""

import os
import subprocess
import sys
import textwrap

from batchmem import BatchProcessor
from batchmem.io.checkpoint import Checkpoint, checkpoint_path


def double(x):
    return 2 * x


def _proc(**kw):
    return BatchProcessor(progress=False, use_history=False, **kw)


def test_output_folders_are_created(tmp_path):
    out = tmp_path / "new" / "nested" / "dir" / "out.jsonl"
    result = _proc().process(range(10), double, out)
    assert list(result) == [2 * i for i in range(10)]
    assert out.with_name("out.jsonl.stats.json").exists()


def test_spool_without_output_leaves_nothing_in_tmpdir_after_exit(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = textwrap.dedent("""
        import os
        from batchmem import BatchProcessor
        proc = BatchProcessor(progress=False, use_history=False)
        kept = proc.process(range(100), abs)            # dropped at exit
        with proc.process(range(10), abs) as r:          # removed on leaving the block
            assert list(r) == list(range(10))
            assert os.listdir(os.environ["TMPDIR"])
        print(len(os.listdir(os.environ["TMPDIR"])), len(list(kept)))
    """)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "100"]  # the live result's spool only, while the process ran
    assert os.listdir(tmpdir) == []


def test_resume_of_a_complete_output_touches_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    first = _proc().process(range(50), double, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = _proc().process(range(50), double, out, resume=True)
    assert again.already_complete and again.stats.items == first.stats.items
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_auto_resume_continues_an_unfinished_run_of_the_same_job(tmp_path):
    out = tmp_path / "out.jsonl"
    _proc(batch_size=10, auto_optimize=False).process(range(30), double, out)
    ckpt = Checkpoint.load(checkpoint_path(out))
    ckpt.complete = False  # as if the run had stopped after 30 of 60 items
    ckpt.save(checkpoint_path(out))
    result = _proc(batch_size=10, auto_optimize=False).process(range(60), double, out, resume="auto")
    assert result.stats.resumed_from == 30 and result.stats.items == 30
    assert list(result) == [2 * i for i in range(60)]
    other = _proc().process(range(5), abs, out, resume="auto", overwrite=True)  # another job: starts over
    assert other.stats.resumed_from == 0 and list(other) == list(range(5))


def test_a_second_run_on_the_same_output_fails_at_once_and_harms_nothing(tmp_path):
    import pytest

    from batchmem.errors import OutputLockedError
    from batchmem.io.output import OutputLock

    out = tmp_path / "out.jsonl"
    _proc().process(range(20), double, out)
    before = out.read_bytes()
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from batchmem.io.output import OutputLock
        lock = OutputLock(Path({str(out)!r}))
        print("locked", flush=True)
        sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=rf"pid {held.pid}\); wait for it"):
            _proc().process(range(20), double, out, overwrite=True)
        assert out.read_bytes() == before
    finally:
        held.communicate("\n", timeout=30)
    OutputLock(out).release()  # free again once the holder exited
