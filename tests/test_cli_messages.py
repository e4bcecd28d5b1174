"""What the ``batchmem`` command prints, run as a real subprocess: exit codes taken from the errors,
one error style, IEC units only, the failure summary, whole help lines and exact resume commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from batchmem.errors import ItemFailedError, JobFileError, SerializationError
from batchmem.signals import RunInterrupted

#: A decimal byte unit after a figure ("191MB", "1.07 GB", "12kB"); IEC units ("MiB") do not match.
DECIMAL_UNIT = re.compile(r"\d(\.\d+)?\s?[kMGT]B\b")


def batchmem(*args: str, cwd: Path, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, BATCHMEM_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """1,000 records ``{"n": i}``, functions that fail every tenth item or return a set, and job.yaml."""
    (tmp_path / "records.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(1000)))
    (tmp_path / "msg_fns.py").write_text(
        textwrap.dedent(
            """
            import time

            def tenth_fails(item):
                if item["n"] % 10 == 7:
                    raise ValueError(f"bad record {item['n']}")
                return {"n": item["n"], "pad": "x" * 100}

            def returns_a_set(item):
                return {item["n"]}

            def slow(item):
                time.sleep(0.002)
                return {"n": item["n"]}
            """
        )
    )
    (tmp_path / "job.yaml").write_text(
        "name: messages\n"
        "source: {type: jsonl, path: records.jsonl}\n"
        "function: msg_fns:tenth_fails\n"
        "on_error: skip\n"
        "output: {path: out.jsonl}\n"
        "progress: false\n"
    )
    (tmp_path / "home").mkdir()
    return tmp_path


def cli(job_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return batchmem(*args, cwd=job_dir, home=job_dir / "home", **kw)


# --------------------------------------------------------------------------- exit codes and error style


def test_exit_codes_are_the_errors_own(job_dir):
    bad = job_dir / "bad.yaml"
    bad.write_text("name: x\nsource: {type: jsonl, path: records.jsonl}\nfunction: msg_fns:tenth_fails\nbogus: 1\n")
    proc = cli(job_dir, "validate", "bad.yaml")
    assert proc.returncode == JobFileError.exit_code == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1

    proc = cli(job_dir, "run", "job.yaml", "--set", "on_error=raise")
    assert proc.returncode == ItemFailedError.exit_code == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: item 7 failed: ValueError: bad record 7; on_error raise stops the run "
        "(set on_error: skip, or --set on_error=skip, to record failures and go on)"
    ]

    proc = cli(job_dir, "run", "job.yaml", "--set", "function=msg_fns:returns_a_set", "--set", "output.path=set.jsonl")
    assert proc.returncode == SerializationError.exit_code == 1, proc.stderr
    assert proc.stderr.startswith("error: result of item 0 is not JSON-serialisable (set: ")
    assert proc.stderr.rstrip().endswith(
        "or set a fallback: output.json_default: str in the job file (or --set output.json_default=str)"
    )

    # raised in a loky worker and pickled back: the job-file form of the fix survives the trip
    proc = cli(
        job_dir,
        "run",
        "job.yaml",
        "--set",
        "function=msg_fns:returns_a_set",
        "--set",
        "output.path=set2.jsonl",
        "--set",
        "execution.n_jobs=2",
        "--set",
        "execution.backend=loky",
    )
    assert proc.returncode == 1 and "output.json_default: str in the job file" in proc.stderr, proc.stderr


def test_an_output_of_another_job_is_refused_with_the_cli_fix(job_dir):
    assert cli(job_dir, "run", "job.yaml", "--set", "function=msg_fns:slow").returncode == 0
    proc = cli(job_dir, "run", "job.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: output.path: {job_dir / 'out.jsonl'} already exists; run with --restart to replace it "
        "(or set output.overwrite: true), or with --resume to continue it"
    ]
    assert cli(job_dir, "run", "job.yaml", "--restart").returncode == 1  # replaced: its tenth items fail


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run"], "error: Missing argument 'JOB'."),
        (["run", "job.yaml", "--bogus"], "error: No such option '--bogus'"),
        (["nope"], "error: No such command 'nope'."),
        (["run", "job.yaml", "--restart", "--resume"], "error: --restart starts over; it cannot be combined"),
        (["stats", "--clear"], "error: --clear needs the OPERATION"),
    ],
)
def test_click_usage_errors_print_in_the_one_error_style(job_dir, args, needle):
    proc = cli(job_dir, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Error:" not in proc.stderr and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(needle), proc.stderr
    assert proc.stderr.splitlines()[0].startswith("Usage: batchmem"), proc.stderr


# --------------------------------------------------------------------------- the end of a run


def test_a_run_with_failures_names_the_first_and_the_errors_file(job_dir):
    proc = cli(job_dir, "run", "job.yaml")
    assert proc.returncode == 1, proc.stderr
    errors_file = job_dir / "out.jsonl.errors.jsonl"
    first = json.loads(errors_file.read_text().splitlines()[0])
    assert (first["index"], first["error_type"], first["message"]) == (7, "ValueError", "bad record 7")
    expected = f"100 failed; first: item 7, ValueError: bad record 7; all in {errors_file}"
    assert expected in proc.stdout.splitlines(), proc.stdout


def test_no_decimal_byte_units_in_any_command(job_dir):
    run = cli(job_dir, "run", "job.yaml")
    assert run.returncode == 1, run.stderr
    stats_json = str(job_dir / "out.jsonl.stats.json")
    outputs = {"run": run}
    for args in (
        ["memory"],
        ["memory", "--details"],
        ["stats"],
        ["stats", "messages"],
        ["report", stats_json],
        ["--help"],
        ["run", "--help"],
        ["validate", "job.yaml", "--set", "output.path=other.jsonl", "--set", "batching.memory_limit=1GB"],
    ):
        outputs[" ".join(args)] = proc = cli(job_dir, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    for name, proc in outputs.items():
        text = proc.stdout + proc.stderr
        assert re.search(r"\d(\.\d+)?[KMG]iB\b", text) or name.endswith("--help"), (name, text)
        assert not DECIMAL_UNIT.search(text), (name, DECIMAL_UNIT.search(text).group(0), text)


def test_the_run_summary_and_memory_show_the_same_limit(job_dir):
    run = cli(job_dir, "run", "job.yaml")
    limit, source = re.search(r"^memory: peak RSS \S+ of (\S+) limit \((\w+)\)", run.stdout, re.M).groups()
    memory = cli(job_dir, "memory")
    assert re.search(rf"^limit:\s+{re.escape(limit)} from {source}$", memory.stdout, re.M), (run.stdout, memory.stdout)


# --------------------------------------------------------------------------- help


def test_top_level_help_shows_whole_short_descriptions(job_dir):
    from batchmem.cli import cli as group

    proc = cli(job_dir, "--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("Commands:\n", 1)[1].splitlines()
    shown = {line.split()[0]: " ".join(line.split()[1:]) for line in lines if line.startswith("  ") and line.strip()}
    for name, command in group.commands.items():
        assert shown[name] == command.short_help, (name, shown[name])
        assert not shown[name].endswith("...")


def test_dash_v_means_more_logging_everywhere(job_dir):
    from batchmem.cli import cli as group

    for name in (None, *group.commands):
        proc = cli(job_dir, *([name] if name else []), "--help")
        assert re.search(r"^\s+-v, --verbose\s+More logging \(debug\)\.$", proc.stdout, re.M), (name, proc.stdout)
    plain, verbose = cli(job_dir, "memory", "-v"), cli(job_dir, "memory", "--details")
    assert "gc:" not in plain.stdout and "gc:" in verbose.stdout


# --------------------------------------------------------------------------- interrupt


def test_interrupt_prints_the_exact_command_and_that_command_finishes_the_run(job_dir):
    overrides = ["--set", "function=msg_fns:slow", "--set", "output.path=slow out.jsonl"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchmem.cli", "run", "job.yaml", *overrides],
        cwd=job_dir,
        env=dict(os.environ, BATCHMEM_HOME=str(job_dir / "home")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell may start jobs ignoring SIGINT
    )
    out = job_dir / "slow out.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == RunInterrupted.exit_code == 130, stderr
    command = shlex.join(["batchmem", "run", "job.yaml", *overrides, "--resume"])
    assert stderr.splitlines()[-1].endswith(f"; run again with: {command}"), stderr
    committed = len(out.read_text().splitlines())
    assert 0 < committed < 1000

    again = cli(job_dir, *shlex.split(command)[1:])  # typed as printed
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["n"] for line in out.read_text().splitlines()] == list(range(1000))
