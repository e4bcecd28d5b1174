"""The session-end check of tests/conftest.py: a file left in the temporary folder fails the suite."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_a_folder_left_in_the_temporary_folder_fails_the_session(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_leak=(
            "import tempfile\n\ndef test_leaks_a_spool_folder():\n    tempfile.mkdtemp(prefix='batchmem-default-')\n"
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*the suite left 1 file(s) in the temporary folder*batchmem-default-*"])


def test_a_session_that_cleans_up_passes(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_clean=(
            "import shutil, tempfile\n\n"
            "def test_removes_what_it_made():\n"
            "    shutil.rmtree(tempfile.mkdtemp(prefix='batchmem-default-'))\n"
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()


def test_a_spool_folder_that_bypassed_tmpdir_fails_the_session_under_ci(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(CONFTEST)
    system = pytester.path / "system-tmp"
    system.mkdir()
    monkeypatch.setenv("TMPDIR", str(system))  # the inner session's system temporary folder
    pytester.makepyfile(
        test_bypass=(
            "import os\n\n"
            f"def test_writes_to_the_system_folder():\n    os.mkdir({str(system / 'batchmem-default-x')!r})\n"
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["ERROR: the suite left 1 file(s)*system-tmp/batchmem-default-x"])
