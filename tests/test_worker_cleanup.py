"""What a killed run leaves behind is removed by the next one: worker cgroups (fixture directories
here; real ones in tests/faults/test_worker_cgroups.py) and worker temporary directories; and a worker
whose parent is gone does not stay (the whole run: tests/faults/test_parent_death.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from batchmem.backends.worker_cgroups import remove_stale
from batchmem.backends.worker_tmp import remove_private_tmpdir, remove_stale_tmpdirs


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_groups_of_a_dead_parent_are_removed_those_of_a_live_one_and_others_kept(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    for name in (f"batchmem-{dead}-w11", f"batchmem-{me}-w12", "batchmem-test-abc", "other"):
        (tmp_path / name).mkdir()
    assert remove_stale(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"batchmem-{me}-w12", "batchmem-test-abc", "other"])


def test_temporary_directories_of_gone_workers_are_removed_with_their_files(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    for pid in (dead, me):
        (tmp_path / f"batchmem-w{pid}").mkdir()
        (tmp_path / f"batchmem-w{pid}" / "staged.bin").write_bytes(b"x" * 1000)
    (tmp_path / "batchmem-wx").mkdir()
    assert remove_stale_tmpdirs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"batchmem-w{me}", "batchmem-wx"])
    remove_private_tmpdir(me, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batchmem-wx"]


def test_a_worker_uses_its_own_temporary_directory_and_removes_it_at_exit(tmp_path):
    code = (
        "import tempfile, os\n"
        "from batchmem.backends.worker_tmp import use_private_tmpdir\n"
        "path = use_private_tmpdir()\n"
        "assert path == use_private_tmpdir() == tempfile.gettempdir() == os.environ['TMPDIR']\n"
        "with tempfile.NamedTemporaryFile(delete=False) as f: print(path, f.name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, TMPDIR=str(tmp_path)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    path, staged = done.stdout.split()
    assert path == str(tmp_path / f"batchmem-w{int(path.rsplit('w', 1)[1])}") and staged.startswith(path + "/")
    assert not os.path.exists(path)  # removed when the process exited


def test_a_worker_whose_parent_died_before_the_prctl_call_ends_at_once(tmp_path):
    """prctl(2) sends nothing for a parent already gone: die_with_parent compares getppid() with it."""
    import textwrap
    import time

    survived = tmp_path / "survived"
    code = textwrap.dedent(f"""
        import os, time
        from batchmem.backends.lifeline import die_with_parent
        parent = os.getpid()
        if os.fork() == 0:
            time.sleep(0.5)  # the parent has exited by now
            die_with_parent(parent)
            open({str(survived)!r}, "w").write("yes")
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    time.sleep(1.5)
    assert not survived.exists()


def test_a_worker_with_a_live_parent_asks_for_the_signal_and_lives_on():
    code = "import os\nfrom batchmem.backends.lifeline import die_with_parent\nprint(die_with_parent(os.getppid()))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == (
        "pdeathsig" if sys.platform.startswith("linux") else "watch"
    )
