"""Option groups: every option set as a flat keyword equals the same option set in its group; bad values
name the option; the Node aliases map to their names."""

from __future__ import annotations

import dataclasses

import pytest

from batchmem import BatchProcessor
from batchmem.errors import ConfigError
from batchmem.heap.monitor import PressureThresholds
from batchmem.options import GROUPS, NODE_ALIASES


def _setup():
    return None


#: A value different from the default for every option (client: a stand-in object).
NON_DEFAULT = {
    "batch_size": 7,
    "auto_optimize": False,
    "batched": True,
    "min_batch_size": 2,
    "max_batch_size": 900,
    "target_batch_seconds": (0.3, 3.0),
    "memory_target_fraction": 0.5,
    "use_history": False,
    "weight": len,
    "n_jobs": 2,
    "backend": "threading",
    "client": None,
    "scheduler_address": None,
    "connect_timeout": 3.0,
    "setup": _setup,
    "teardown": None,
    "max_tasks_per_worker": 5,
    "n_jobs_strict": True,
    "recycle_leaking_workers": False,
    "stop_grace_seconds": 4.0,
    "worker_cgroups": False,
    "item_timeout": 2.5,
    "on_error": "retry",
    "max_retries": 1,
    "retry_exhausted": "raise",
    "memory_limit": 0.5,
    "memory_monitoring": False,
    "pressure_thresholds": PressureThresholds(0.7, 0.8, 0.9),
    "adaptive_thresholds": True,
    "pressure_max_wait_s": 2.0,
    "terminate_fraction": 0.9,
    "detect_memory_issues": False,
    "trace_allocations": True,
    "gc_max_time_fraction": 0.1,
    "force_gc_on_completion": True,
    "analyzer": {"window": 20},
    "fsync": False,
    "json_default": str,
    "progress": False,
}


def test_every_option_has_a_non_default_example():
    names = {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    assert names == NON_DEFAULT.keys()


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_a_flat_keyword_sets_its_group_field(name):
    section = next(s for s, cls in GROUPS.items() if name in {f.name for f in dataclasses.fields(cls)})
    if NON_DEFAULT[name] is None:
        pytest.skip(f"{name}: its non-default value is an object (a Client or teardown) tested elsewhere")
    flat = BatchProcessor(**{name: NON_DEFAULT[name]}).config
    grouped = BatchProcessor(**{section: GROUPS[section](**{name: NON_DEFAULT[name]})}).config
    assert flat == grouped
    assert getattr(getattr(flat, section), name) == NON_DEFAULT[name] != getattr(GROUPS[section](), name)


def test_node_aliases_map_to_their_names():
    proc = BatchProcessor(
        batchSize=5,
        autoOptimize=False,
        memoryMonitoring=False,
        detectMemoryIssues=False,
        processName="node",
        forceGCOnCompletion=True,
    )
    c = proc.config
    assert (c.batching.batch_size, c.batching.auto_optimize, c.pressure.memory_monitoring) == (5, False, False)
    assert (c.analysis.detect_memory_issues, c.process_name, c.analysis.force_gc_on_completion) == (False, "node", True)
    assert set(NODE_ALIASES.values()) <= {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)} | {
        "process_name"
    }
    with pytest.raises(TypeError, match="both 'batchSize' and its alias 'batch_size'"):
        BatchProcessor(batchSize=5, batch_size=6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"on_error": "ignore"}, "on_error"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"max_retries": -1}, "max_retries"),
        ({"terminate_fraction": 1.5}, "terminate_fraction"),
        ({"stop_grace_seconds": -1}, "stop_grace_seconds"),
        ({"item_timeout": 0}, "item_timeout"),
        ({"weight": 3}, "weight"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker"),
        ({"min_batch_size": 10, "max_batch_size": 5}, "max_batch_size"),
        ({"analyzer": {"windw": 3}}, "analyzer.windw"),
    ],
)
def test_bad_values_name_the_option(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BatchProcessor(**kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        BatchProcessor(batchsize=3)


def test_the_constructor_takes_at_most_twelve_parameters():
    import inspect

    assert len(inspect.signature(BatchProcessor.__init__).parameters) - 1 <= 12  # without self


#: option -> (its value in Python, the same value as a job file writes it).
BOTH_WAYS = {
    "batch_size": (7, "7"),
    "auto_optimize": (False, "false"),
    "batched": (True, "true"),
    "min_batch_size": (2, "2"),
    "max_batch_size": (900, "900"),
    "target_batch_seconds": ((0.3, 3.0), "[0.3, 3.0]"),
    "memory_target_fraction": (0.5, "0.5"),
    "use_history": (False, "false"),
    "weight": ("optfns:weigh", "optfns:weigh"),
    "n_jobs": (2, "2"),
    "backend": ("threading", "threading"),
    "scheduler_address": ("tcp://127.0.0.1:1", "tcp://127.0.0.1:1"),
    "connect_timeout": (3.0, "3.0"),
    "setup": ("optfns:setup", "optfns:setup"),
    "teardown": ("optfns:teardown", "optfns:teardown"),
    "max_tasks_per_worker": (5, "5"),
    "n_jobs_strict": (True, "true"),
    "recycle_leaking_workers": (False, "false"),
    "stop_grace_seconds": (4.0, "4.0"),
    "worker_cgroups": (False, "false"),
    "item_timeout": (2.5, "2.5"),
    "on_error": ("retry", "retry"),
    "max_retries": (1, "1"),
    "retry_exhausted": ("raise", "raise"),
    "memory_limit": (512 << 20, "512MiB"),
    "memory_monitoring": (False, "false"),
    "pressure_thresholds": (PressureThresholds(0.7, 0.8, 0.9), "{warning: 0.7, critical: 0.8, emergency: 0.9}"),
    "adaptive_thresholds": (True, "true"),
    "pressure_max_wait_s": (2.0, "2.0"),
    "terminate_fraction": (0.9, "0.9"),
    "detect_memory_issues": (False, "false"),
    "trace_allocations": (True, "true"),
    "gc_max_time_fraction": (0.1, "0.1"),
    "force_gc_on_completion": (True, "true"),
    "analyzer": ({"window": 20}, "{window: 20}"),
    "fsync": (False, "false"),
    "json_default": (str, "str"),
    "progress": (False, "false"),
}
#: Options a job file cannot hold: a live Python object.
PYTHON_ONLY = {"client"}


def _job_key(name: str) -> str:
    from batchmem.job import Job

    if name in Job.model_fields:
        return name
    for section in ("batching", "execution", "pressure", "analysis", "output"):
        if name in Job.model_fields[section].annotation.model_fields:
            return f"{section}.{name}"
    raise AssertionError(f"{name} has no job-file key")


def test_every_option_but_a_live_object_is_a_job_file_key():
    assert BOTH_WAYS.keys() | PYTHON_ONLY == NON_DEFAULT.keys()
    for name in BOTH_WAYS:
        _job_key(name)


@pytest.mark.parametrize("name", sorted(BOTH_WAYS))
def test_every_option_can_be_set_in_python_and_in_a_job_file(tmp_path, name):
    import importlib
    import sys

    from batchmem.job import load_job

    if name == "scheduler_address":  # the processor checks that dask.distributed is installed
        pytest.importorskip("distributed", reason="scheduler_address needs the dask extra (batchmem[dask])")
    (tmp_path / "optfns.py").write_text(
        "def fn(item, state=None):\n    return item\n\n"
        "def weigh(item):\n    return 1.0\n\n"
        "def setup():\n    return {}\n\n"
        "def teardown(state):\n    pass\n"
    )
    (tmp_path / "job.yaml").write_text(
        "source: {type: python, path: 'optfns:fn'}\nfunction: optfns:fn\noutput: {path: out.jsonl}\n"
        + ("setup: optfns:setup\n" if name == "teardown" else "")
    )
    python_value, yaml_value = BOTH_WAYS[name]
    job = load_job(tmp_path / "job.yaml", (f"{_job_key(name)}={yaml_value}",))
    from_file = job.build_processor().config
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("optfns")
        value = getattr(module, python_value.split(":")[1]) if name in ("weight", "setup", "teardown") else python_value
        extra = {"setup": module.setup} if name == "teardown" else {}
        from_python = BatchProcessor(process_name="job", **extra, **{name: value}).config
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("optfns", None)
    assert from_file == from_python
