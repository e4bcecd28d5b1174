"""backend="dask": batches run on a real 2-process LocalCluster through joblib's dask backend.

One cluster for the module (starting one costs seconds): 2 worker processes,
1 thread each, 1 GiB memory limit each, no dashboard.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

from batchmem import BatchProcessor
from batchmem.errors import ConfigError

distributed = pytest.importorskip("distributed")

GIB = 1024**3


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def record(x: dict) -> dict:
    return {"i": x["i"], "sq": x["i"] ** 2, "tag": f"item-{x['i']}"}


def record_batch(xs: list) -> list:
    return [record(x) for x in xs]


def allocate(x: int) -> int:
    """Touch a 2 MB block per item (freed after it) so each batch has a visible peak in the worker."""
    block = bytearray(2_000_000)
    block[::4096] = b"\x01" * len(block[::4096])
    return x + sum(block[:10])


def load_table(log: str) -> dict:
    with open(log, "a") as f:
        f.write(f"setup {os.getpid()}\n")
    return {"factor": 3}


def drop_table(log: str, state: dict) -> None:
    with open(log, "a") as f:
        f.write(f"teardown {os.getpid()}\n")


def scale(x: int, state: dict | None = None) -> int:
    return x * state["factor"]


def pids(log: Path, event: str) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(event)]


def processor(**kw) -> BatchProcessor:
    kw.setdefault("progress", False)
    kw.setdefault("use_history", False)
    return BatchProcessor(**kw)


@pytest.mark.parametrize("batched", [False, True])
def test_output_identical_to_serial_in_input_order(client, tmp_path, batched):
    items = [{"i": i} for i in range(2000)]
    fn = record_batch if batched else record
    serial = processor(batch_size=50, batched=batched).process(iter(items), fn, tmp_path / "serial.jsonl")
    assert serial.stats.items == 2000
    # Small, varying batches: many tasks in flight at once, finishing out of order on 2 workers.
    dask = processor(batch_size=37, auto_optimize=False, batched=batched, backend="dask", client=client).process(
        iter(items), fn, tmp_path / "dask.jsonl"
    )
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "serial.jsonl").read_bytes()
    assert dask.stats.items == 2000 and dask.stats.batches == 55 and dask.stats.backend == "dask"


def test_default_client_and_scheduler_address(client, tmp_path):
    # The fixture's client is the default client: backend="dask" alone finds it.
    by_default = processor(batch_size=100, backend="dask").process(range(500), allocate)
    by_address = processor(batch_size=100, scheduler_address=client.scheduler.address).process(range(500), allocate)
    assert list(by_default) == list(by_address) == [x + 1 for x in range(500)]
    assert by_address.stats.backend == "dask"


def test_limit_comes_from_the_scheduler(client, tmp_path):
    reported = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert reported == [GIB, GIB]
    result = processor(batch_size=20, backend="dask", client=client).process(range(400), allocate)
    assert result.stats.memory_limit_bytes == GIB and result.stats.limit_source == "dask_worker"
    assert result.stats.n_jobs == 2  # total worker threads
    # A user's fraction applies to the worker limit; a user's size overrides it.
    half = processor(batch_size=20, backend="dask", client=client, memory_limit=0.5).process(range(40), allocate)
    assert (half.stats.memory_limit_bytes, half.stats.limit_source) == (GIB // 2, "user")


def test_batches_are_measured_in_the_worker_processes(client, tmp_path):
    worker_pids = set(client.run(os.getpid).values())
    result = processor(batch_size=10, auto_optimize=False, backend="dask", client=client).process(range(200), allocate)
    records = result.stats.to_dataframe()
    assert set(records["pid"]) == worker_pids  # 20 batches spread over both workers
    assert os.getpid() not in set(records["pid"])
    # Each item touches a 2 MB block; the batch's peak was seen inside the worker that ran it.
    assert records["peak_bytes"].max() > 1_000_000


def test_setup_runs_once_per_worker_not_per_batch(client, tmp_path):
    log = tmp_path / "setup.log"
    proc = processor(
        batch_size=5,
        auto_optimize=False,
        backend="dask",
        client=client,
        setup=functools.partial(load_table, str(log)),
        teardown=functools.partial(drop_table, str(log)),
    )
    result = proc.process(range(300), scale)
    assert list(result) == [3 * x for x in range(300)]
    worker_pids = set(client.run(os.getpid).values())
    assert result.stats.batches == 60
    assert sorted(pids(log, "setup")) == sorted(worker_pids)  # 2 lines for 60 batches
    assert sorted(pids(log, "teardown")) == sorted(worker_pids)  # plugin removed at the end of the run
    assert set(result.stats.to_dataframe()["pid"]) <= worker_pids


def test_unreachable_scheduler_is_a_one_line_config_error(monkeypatch):
    import batchmem.backends.dask_backend as db

    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 0.5)
    proc = processor(scheduler_address="tcp://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"^scheduler_address: cannot connect to tcp://127.0.0.1:9") as info:
        proc.process(range(3), record)
    assert "\n" not in str(info.value)


def test_no_client_is_a_config_error(monkeypatch):
    def no_default():
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", no_default)
    with pytest.raises(ConfigError, match="needs a dask.distributed Client"):
        processor(backend="dask").process(range(3), record)


def test_without_dask_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError) as info:
        BatchProcessor(backend="dask")
    message = str(info.value)
    assert 'pip install "batchmem[dask]"' in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"batchmem\[dask\]"):
        BatchProcessor(scheduler_address="tcp://scheduler:8786")


def test_dask_client_with_another_backend_is_refused(client):
    with pytest.raises(ConfigError, match="^backend: 'loky' cannot use a dask client"):
        BatchProcessor(backend="loky", client=client)
