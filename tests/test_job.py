"""Job files: loading, defaults, overrides, path resolution, and one-line errors for every bad input."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from batchmem.errors import BatchmemError, JobFileError
from batchmem.job import Job, import_callable, job_reference_markdown, load_job, run_job

JOBS_BAD = Path(__file__).parent / "jobs_bad"
BAD_FILES = sorted(JOBS_BAD.glob("*.yaml"))
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _restore_import_state():
    """load_job puts the job folder on sys.path and imports user modules: undo both after each test."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith(("jobfns_", "badjobs_")):
            del sys.modules[name]


def expected_of(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <substring>'"
    return first[len("# expect: ") :].strip()


def make_job(folder: Path, body: str, *, name: str = "job.yaml", module_code: str | None = None) -> Path:
    """Write a job file (``{fns}`` in ``body`` becomes a fresh module name) plus a small input file."""
    folder.mkdir(parents=True, exist_ok=True)
    fns = f"jobfns_{os.getpid()}_{next(_counter)}"
    (folder / f"{fns}.py").write_text(
        module_code
        or textwrap.dedent(
            """
            def double(item, state=None):
                return item["x"] * 2

            def items(n=3, start=0):
                return range(start, start + n)

            class Tools:
                @staticmethod
                def triple(x):
                    return 3 * x
            """
        )
    )
    (folder / "in.jsonl").write_text('{"x": 1}\n{"x": 2}\n{"x": 3}\n')
    (folder / "in.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    path = folder / name
    path.write_text(textwrap.dedent(body).format(fns=fns))
    return path


MINIMAL = """\
source: {{type: jsonl, path: in.jsonl}}
function: {fns}:double
output: {{path: out.jsonl}}
"""


def assert_one_line(exc: BaseException, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


# --------------------------------------------------------------------------- loading and defaults


def test_minimal_job_gets_documented_defaults(tmp_path, monkeypatch):
    job_path = make_job(tmp_path / "jobs", MINIMAL, name="nightly-etl.yaml")
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    job = load_job(job_path)
    assert isinstance(job, Job)
    assert job.name == "nightly-etl"
    assert job.source.type == "jsonl"
    assert job.source.path == str(tmp_path / "jobs" / "in.jsonl")
    assert job.output.path == tmp_path / "jobs" / "out.jsonl"
    assert job.output.format == "jsonl"
    assert job.output.errors is None and job.output.overwrite is False
    assert job.batched is False and job.setup is None and job.report is None
    assert job.on_error == "raise" and job.max_retries == 3
    assert job.progress is True and job.detect_memory_issues is True
    b = job.batching
    assert b.batch_size is None and job.run_config().batching.batch_size == 100  # 100, moved into [min, max]
    assert (b.auto_optimize, b.min_batch_size, b.max_batch_size) == (True, 1, 1_000_000)
    assert b.memory_limit is None and b.target_batch_seconds == (0.2, 2.0) and b.memory_target_fraction == 0.6
    assert (job.execution.n_jobs, job.execution.backend, job.execution.scheduler_address) == (1, None, None)
    assert job.base_dir == (tmp_path / "jobs").resolve()


def test_full_job_and_relative_paths_resolve_against_job_folder(tmp_path, monkeypatch):
    job_path = make_job(
        tmp_path / "a" / "b",
        """
        name: full_job
        source:
          type: csv
          path: data/in.csv
          usecols: [a, c]
          dtype: {{a: int64}}
          parse_dates: false
          compression: infer
          options: {{sep: ","}}
        function: {fns}:double
        batched: true
        setup: {fns}:items
        batching:
          auto_optimize: false
          batch_size: 50
          min_batch_size: 10
          max_batch_size: 500
          memory_limit: 512MB
          target_batch_seconds: [0.5, 5]
          memory_target_fraction: 0.5
        execution: {{n_jobs: 2, backend: threading}}
        output: {{path: ../out/res.parquet, errors: ../out/err.jsonl, overwrite: true}}
        on_error: retry
        max_retries: 5
        progress: false
        detect_memory_issues: false
        report: ../out/report.html
        """,
    )
    data = tmp_path / "a" / "b" / "data"
    data.mkdir()
    (tmp_path / "a" / "b" / "in.csv").rename(data / "in.csv")
    (tmp_path / "a" / "out").mkdir()
    monkeypatch.chdir("/")
    job = load_job(job_path)
    assert job.source.path == str(data / "in.csv")
    assert job.source.reader_kwargs() == {
        "usecols": ["a", "c"],
        "dtype": {"a": "int64"},
        "parse_dates": False,
        "compression": "infer",
        "sep": ",",
    }
    assert job.output.path == tmp_path / "a" / "out" / "res.parquet"
    assert job.output.format == "parquet"  # from the suffix
    assert job.output.errors == tmp_path / "a" / "out" / "err.jsonl"
    assert job.report == tmp_path / "a" / "out" / "report.html"
    assert job.batching.memory_limit == 512_000_000
    assert job.batching.target_batch_seconds == (0.5, 5.0)
    assert job.on_error == "retry" and job.max_retries == 5 and job.progress is False
    assert job.setup is not None and job.setup.endswith(":items")


@pytest.mark.parametrize(
    "path, kind",
    [
        ("x.csv", "csv"),
        ("x.csv.gz", "csv"),
        ("x.tsv", "csv"),
        ("x.jsonl", "jsonl"),
        ("x.ndjson.zip", "jsonl"),
        ("x.parquet", "parquet"),
        ("x.pq", "parquet"),
    ],
)
def test_source_type_inferred_from_extension(tmp_path, path, kind):
    job_path = make_job(
        tmp_path, f"source: {{{{path: {path}}}}}\nfunction: {{fns}}:double\noutput: {{{{path: o.jsonl}}}}\n"
    )
    assert load_job(job_path, check=False).source.type == kind


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512MB", 512_000_000),
        ("2GiB", 2 * 2**30),
        ("1.5 GB", 1_500_000_000),
        (1073741824, 1073741824),
        (0.5, 0.5),
        (1.0, 1.0),
        ("50%", 0.5),
        ("null", None),
    ],
)
def test_memory_limit_forms(tmp_path, value, expected):
    job_path = make_job(tmp_path, MINIMAL + f"batching: {{{{memory_limit: {value}}}}}\n")
    assert load_job(job_path).batching.memory_limit == expected


def test_python_source_gets_options_as_kwargs(tmp_path):
    job_path = make_job(
        tmp_path,
        """
        source: {{type: python, path: "{fns}:items", options: {{n: 4, start: 10}}}}
        function: {fns}:Tools.triple
        output: {{path: out.jsonl}}
        """,
    )
    job = load_job(job_path)
    assert job.source.path.endswith(":items")  # not resolved as a file path
    assert list(job.build_source()) == [10, 11, 12, 13]
    assert job.load_function()(2) == 6


def test_csv_source_is_a_chunked_reader(tmp_path):
    job_path = make_job(
        tmp_path,
        "source: {{type: csv, path: in.csv, usecols: [a, c]}}\nfunction: {fns}:double\noutput: {{path: o.jsonl}}\n",
    )
    source = load_job(job_path).build_source()
    chunk = source.take(1)
    assert list(chunk.columns) == ["a", "c"] and len(chunk) == 1
    source.close()


def test_function_is_imported_from_the_job_folder_even_from_elsewhere(tmp_path, monkeypatch):
    job_path = make_job(tmp_path / "proj", MINIMAL)
    monkeypatch.chdir(tmp_path)
    fn = load_job(job_path).load_function()
    assert fn({"x": 21}) == 42


def test_import_callable_errors_name_the_field(tmp_path):
    with pytest.raises(JobFileError) as info:
        import_callable("os.path:nope_join", field="function", error=JobFileError)
    assert_one_line(info.value, "function:", "'nope_join'")
    with pytest.raises(JobFileError) as info:
        import_callable("os:sep", field="setup", error=JobFileError)
    assert_one_line(info.value, "setup:", "not a callable")
    assert import_callable("os.path:join") is os.path.join


# --------------------------------------------------------------------------- overrides


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    job_path = make_job(tmp_path, MINIMAL)
    job = load_job(
        job_path,
        [
            "batching.memory_limit=1GB",
            "execution.n_jobs=2",
            "output.overwrite=true",
            "batching.target_batch_seconds=[1, 3]",
            "name=renamed",
            "source.options.encoding=utf-8",
            "on_error = skip",
        ],
    )
    assert job.batching.memory_limit == 1_000_000_000
    assert job.execution.n_jobs == 2 and isinstance(job.execution.n_jobs, int)
    assert job.output.overwrite is True
    assert job.batching.target_batch_seconds == (1.0, 3.0)
    assert job.name == "renamed"
    assert job.source.options == {"encoding": "utf-8"}
    assert job.on_error == "skip"


def test_override_can_replace_a_value_that_is_not_a_mapping(tmp_path):
    job_path = make_job(tmp_path, MINIMAL + "execution: 4\n")
    with pytest.raises(JobFileError):
        load_job(job_path)
    assert load_job(job_path, ["execution.n_jobs=4"]).execution.n_jobs == 4


@pytest.mark.parametrize(
    "override, needles",
    [
        ("batching.memory_limt=1GB", ["batching.memory_limt", "unknown key", "did you mean 'batching.memory_limit'"]),
        ("batchng.batch_size=5", ["batchng", "unknown key", "did you mean 'batching'"]),
        ("batching.batch_size.x=5", ["batching.batch_size", "not a mapping"]),
        ("batching.batch_size=0", ["batching.batch_size", "greater than 0"]),
        ("batching.memory_limit=lots", ["batching.memory_limit", "not a size"]),
        ("execution.n_jobs=two", ["execution.n_jobs", "valid integer"]),
        ("batching.min_batch_size=10000000", ["batching.min_batch_size", "max_batch_size"]),
        ("no_equals_sign", ["--set no_equals_sign", "KEY=VALUE"]),
        ("=5", ["KEY=VALUE"]),
        ("batching..batch_size=5", ["dotted key"]),
        ("name=[unclosed", ["--set name=[unclosed", "not valid YAML"]),
    ],
)
def test_bad_overrides_are_one_line_errors(tmp_path, override, needles):
    job_path = make_job(tmp_path, MINIMAL)
    with pytest.raises(JobFileError) as info:
        load_job(job_path, [override])
    assert_one_line(info.value, *needles)


# --------------------------------------------------------------------------- bad input


def test_corpus_has_at_least_25_files():
    assert len(BAD_FILES) >= 25


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_every_malformed_job_file_is_a_one_line_job_file_error(path):
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert_one_line(info.value, expected_of(path))


@pytest.mark.parametrize(
    "body, needles",
    [
        (MINIMAL + "batchng: {{batch_size: 3}}\n", ["batchng: unknown key", "did you mean 'batching'"]),
        (MINIMAL + "batching: {{batch_size: ten}}\n", ["batching.batch_size", "valid integer"]),
        (MINIMAL + "batching: {{memory_limit: 3 potatoes}}\n", ["batching.memory_limit", "not a size", "512MB"]),
        (MINIMAL + "batching: {{batch_size: -1}}\n", ["batching.batch_size", "greater than 0"]),
        (MINIMAL + "batching: {{min_batch_size: 0}}\n", ["batching.min_batch_size"]),
        (
            MINIMAL + "batching: {{min_batch_size: 90, max_batch_size: 9, batch_size: 50}}\n",
            ["batching.min_batch_size", "larger than max_batch_size"],
        ),
        (MINIMAL.replace("in.jsonl", "missing.jsonl"), ["source.path", "file not found", "missing.jsonl"]),
        (MINIMAL.replace(":double", ":nothing_here"), ["function:", "no attribute 'nothing_here'"]),
        (MINIMAL.replace("{fns}:double", "no_such_module_for_batchmem:f"), ["function:", "cannot import module"]),
        (MINIMAL.replace("out.jsonl", "in.jsonl"), ["output.path", "already exists", "overwrite: true"]),
    ],
)
def test_issue_3_bad_inputs(tmp_path, body, needles):
    with pytest.raises(JobFileError) as info:
        load_job(make_job(tmp_path, body))
    assert_one_line(info.value, *needles)


def test_several_errors_say_how_many_more(tmp_path):
    body = MINIMAL + "batching: {{batch_size: 0, max_batch_size: -1}}\non_error: nope\n"
    with pytest.raises(JobFileError) as info:
        load_job(make_job(tmp_path, body))
    assert_one_line(info.value, "batching.batch_size", "(and 2 more)")


def test_existing_output_is_fine_with_overwrite_or_resume(tmp_path):
    job_path = make_job(tmp_path, MINIMAL)
    (tmp_path / "out.jsonl").write_text("{}\n")
    with pytest.raises(JobFileError):
        load_job(job_path)
    assert load_job(job_path, resume=True).output.path.exists()
    assert load_job(job_path, ["output.overwrite=true"]).output.overwrite is True


def test_unwritable_output_folder(tmp_path, monkeypatch):
    job_path = make_job(tmp_path, MINIMAL.replace("out.jsonl", "ro/out.jsonl"))
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    with pytest.raises(JobFileError) as info:
        load_job(job_path)
    assert_one_line(info.value, "output.path", "not writable")


def test_unreadable_source_file(tmp_path, monkeypatch):
    job_path = make_job(tmp_path, MINIMAL)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "in.jsonl" else real_access(p, mode))
    with pytest.raises(JobFileError) as info:
        load_job(job_path)
    assert_one_line(info.value, "source.path", "not readable")


def test_unreadable_job_files(tmp_path, monkeypatch):
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path / "nope.yaml")
    assert_one_line(info.value, "nope.yaml", "not found")
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path)
    assert_one_line(info.value, "is a folder")
    job_path = make_job(tmp_path, MINIMAL)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(JobFileError) as info:
        load_job(job_path)
    assert_one_line(info.value, "job.yaml", "cannot read", "Permission denied")


def test_yaml_error_names_the_line(tmp_path):
    job_path = tmp_path / "j.yaml"
    job_path.write_text("name: a\nsource: {type: csv\nfunction: m:f\n")
    with pytest.raises(JobFileError) as info:
        load_job(job_path)
    assert_one_line(info.value, "invalid YAML at line 3")


def test_job_file_errors_are_batchmem_errors():
    assert issubclass(JobFileError, BatchmemError)


# --------------------------------------------------------------------------- processor, run, reference


def test_build_processor_maps_the_job(tmp_path):
    body = MINIMAL + textwrap.dedent(
        """
        name: mapped
        batched: false
        batching: {{batch_size: 20, min_batch_size: 5, max_batch_size: 80, memory_limit: 0.5,
                   auto_optimize: false, target_batch_seconds: [1, 2], memory_target_fraction: 0.4}}
        execution: {{n_jobs: 2, backend: threading}}
        on_error: skip
        max_retries: 1
        progress: true
        detect_memory_issues: false
        """
    )
    job = load_job(make_job(tmp_path, body))
    config = job.run_config(progress=False)
    expected = dict(
        batch_size=20,
        auto_optimize=False,
        memory_limit=0.5,
        detect_memory_issues=False,
        n_jobs=2,
        backend="threading",
        batched=False,
        on_error="skip",
        max_retries=1,
        progress=False,
        min_batch_size=5,
        max_batch_size=80,
        target_batch_seconds=(1.0, 2.0),
        memory_target_fraction=0.4,
        setup=None,
        teardown=None,
        scheduler_address=None,
        retry_exhausted="skip",
        fsync=True,
        json_default=None,
    )
    flat = {
        f.name: getattr(group, f.name)
        for group in config.groups().values()
        if dataclasses.is_dataclass(group)
        for f in dataclasses.fields(group)
    }
    assert config.process_name == "mapped"
    assert {k: flat[k] for k in expected} == expected
    assert job.run_config().output.progress is True
    proc = job.build_processor(progress=False)
    c = proc.config
    assert (c.batching.batch_size, c.process_name, c.errors.on_error, c.execution.n_jobs) == (20, "mapped", "skip", 2)


def test_run_job_end_to_end(tmp_path):
    job_path = make_job(tmp_path, MINIMAL + "progress: false\n")
    job = load_job(job_path)
    result = run_job(job)
    assert list(result) == [2, 4, 6]
    assert result.stats.items == 3 and result.stats.failed == 0
    with pytest.raises(BatchmemError):  # the output now exists
        run_job(job)


def test_job_reference_lists_every_key():
    table = job_reference_markdown()
    assert table.startswith("| key | type | default | description |")
    for key in [
        "name",
        "source.type",
        "source.path",
        "source.usecols",
        "source.dtype",
        "source.parse_dates",
        "source.compression",
        "source.options",
        "function",
        "batched",
        "setup",
        "teardown",
        "batching.auto_optimize",
        "batching.batch_size",
        "batching.min_batch_size",
        "batching.max_batch_size",
        "batching.memory_limit",
        "batching.target_batch_seconds",
        "batching.memory_target_fraction",
        "execution.n_jobs",
        "execution.backend",
        "execution.scheduler_address",
        "output.path",
        "output.format",
        "output.errors",
        "output.overwrite",
        "output.fsync",
        "output.json_default",
        "on_error",
        "max_retries",
        "retry_exhausted",
        "progress",
        "detect_memory_issues",
        "report",
    ]:
        assert f"| `{key}` |" in table, key
    for line in table.splitlines():
        assert len(re.split(r"(?<!\\)\|", line)) == 6, line  # four columns; pipes inside cells are escaped


def test_setup_state_reaches_the_function(tmp_path):
    code = textwrap.dedent(
        """
        def make_state():
            return {"factor": 10}

        def scale(item, state):
            return item["x"] * state["factor"]
        """
    )
    body = (
        "source: {{type: jsonl, path: in.jsonl}}\nfunction: {fns}:scale\nsetup: {fns}:make_state\n"
        "output: {{path: out.jsonl}}\nprogress: false\n"
    )
    job = load_job(make_job(tmp_path, body, module_code=code))
    assert list(run_job(job)) == [10, 20, 30]
