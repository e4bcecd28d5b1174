"""Per-worker setup: ``setup()`` runs once per worker process and its result reaches ``fn`` as ``state=``.

The setup functions append ``"<event> <pid>"`` lines to a log file, so a test
can count how often and where they ran. Dask workers are covered in
``test_dask.py``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from batchmem import BatchProcessor
from batchmem.backends.worker_setup import WorkerSetup, make_worker_setup
from batchmem.errors import BatchFunctionError, ConfigError


def record(log: str, event: str) -> None:
    with open(log, "a") as f:
        f.write(f"{event} {os.getpid()}\n")


def load_table(log: str) -> dict:
    """The 'expensive' setup: a lookup table, built once per worker process."""
    record(log, "setup")
    return {"factor": 3}


def drop_table(log: str, state: dict) -> None:
    record(log, f"teardown:{state['factor']}")


def scale(x: int, state: dict | None = None) -> int:
    return x * state["factor"]


def scale_batch(xs: list, state: dict | None = None) -> list:
    return [x * state["factor"] for x in xs]


def no_state(x: int) -> int:
    return x


def events(log: Path, kind: str) -> list[int]:
    """PIDs of the lines whose event starts with ``kind``."""
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(kind)]


def make(tmp_path: Path, **kw) -> tuple[BatchProcessor, Path]:
    log = tmp_path / "setup.log"
    kw.setdefault("batch_size", 10)
    proc = BatchProcessor(
        auto_optimize=False,
        progress=False,
        use_history=False,
        setup=functools.partial(load_table, str(log)),
        teardown=functools.partial(drop_table, str(log)),
        **kw,
    )
    return proc, log


@pytest.mark.parametrize("batched", [False, True])
def test_serial_setup_runs_once_and_state_reaches_fn(tmp_path, batched):
    proc, log = make(tmp_path, batched=batched)
    result = proc.process(range(500), scale_batch if batched else scale)
    assert list(result) == [3 * x for x in range(500)]
    assert result.stats.batches == 50
    assert events(log, "setup") == [os.getpid()]  # once, in this process, not once per batch
    assert events(log, "teardown:3") == [os.getpid()]  # torn down when the run ended


def test_threading_setup_runs_once_in_process(tmp_path):
    proc, log = make(tmp_path, n_jobs=2, backend="threading")
    result = proc.process(range(500), scale)
    assert list(result) == [3 * x for x in range(500)]
    assert events(log, "setup") == [os.getpid()]
    assert events(log, "teardown") == [os.getpid()]


def test_loky_setup_runs_once_per_worker_process(tmp_path):
    proc, log = make(tmp_path, n_jobs=2, backend="loky", batch_size=5)
    result = proc.process(range(300), scale)
    assert list(result) == [3 * x for x in range(300)]
    worker_pids = set(result.stats.to_dataframe()["pid"])
    assert result.stats.batches == 60 and os.getpid() not in worker_pids
    setups = events(log, "setup")
    assert sorted(setups) == sorted(worker_pids)  # one line per worker process, not per batch (60)
    # A second run of the same processor reuses the state of the live loky workers.
    again = proc.process(range(100), scale)
    assert list(again) == [3 * x for x in range(100)]
    assert set(events(log, "setup")) - set(setups) <= set(again.stats.to_dataframe()["pid"]) - worker_pids


def test_setup_as_module_reference(tmp_path):
    proc = BatchProcessor(batch_size=7, progress=False, use_history=False, setup="collections:Counter")
    seen = []

    def fn(x, state):
        state[x % 2] += 1
        seen.append(id(state))
        return x

    assert list(proc.process(range(50), fn)) == list(range(50))
    assert len(set(seen)) == 1  # one Counter for the whole run


def test_setup_time_is_not_the_first_batch_time(tmp_path):
    import time

    proc = BatchProcessor(
        batch_size=10,
        auto_optimize=False,
        progress=False,
        use_history=False,
        setup=lambda: time.sleep(0.3) or {"factor": 3},
    )
    result = proc.process(range(30), scale)
    assert result.stats.to_dataframe()["duration_s"].max() < 0.25


def test_function_without_state_is_a_config_error(tmp_path):
    proc, _ = make(tmp_path)
    with pytest.raises(ConfigError, match="function: .*no_state has no parameter 'state'"):
        proc.process(range(3), no_state)


def test_setup_errors_name_the_field():
    with pytest.raises(ConfigError, match="^setup: cannot import module 'no_such_module_xyz'"):
        BatchProcessor(setup="no_such_module_xyz:load")
    with pytest.raises(ConfigError, match="^setup: expected 'module:callable'"):
        BatchProcessor(setup="just_a_name")
    with pytest.raises(ConfigError, match="^teardown: there is no setup"):
        BatchProcessor(teardown=print)
    with pytest.raises(ConfigError, match="^setup: 42 is not callable"):
        BatchProcessor(setup=42)


def test_failing_setup_names_setup(tmp_path):
    def broken():
        raise RuntimeError("model file missing")

    proc = BatchProcessor(progress=False, use_history=False, setup=broken)
    with pytest.raises(BatchFunctionError, match="^setup: .*broken raised RuntimeError: model file missing"):
        proc.process(range(3), scale)


def test_worker_setup_survives_pickling_with_its_token():
    import pickle

    ws = make_worker_setup("collections:OrderedDict")
    assert isinstance(ws, WorkerSetup)
    clone = pickle.loads(pickle.dumps(ws))
    assert clone.token == ws.token
    assert clone.state() is ws.state()  # same process, same token: the same cached state
    assert ws.release() and not clone.release()
