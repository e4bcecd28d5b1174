"""Chunked pandas sources (batchmem.io.readers) and the Parquet sink, on real files in tmp_path."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from batchmem.errors import ConfigError, SerializationError
from batchmem.io.readers import read_csv, read_jsonl, read_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from batchmem.io.parquet_sink import ParquetSink  # noqa: E402

N_ROWS = 1_003
SIZES = [1, 7, 100, 3, 250, 64, 500, 1_000]  # varying take(n), as the optimizer asks


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(13)
    return pd.DataFrame(
        {
            "id": np.arange(N_ROWS, dtype="int64"),
            "x": rng.normal(size=N_ROWS),
            "name": [f"item-{i}" for i in range(N_ROWS)],
            "flag": rng.integers(0, 2, N_ROWS).astype(bool),
        }
    )


def take_all(source, sizes=SIZES):
    """Take with cycling sizes until exhausted; check each chunk's length."""
    chunks = []
    for n in itertools.cycle(sizes):
        before = source.position
        chunk = source.take(n)
        if chunk is None:
            break
        assert 0 < len(chunk) <= n
        assert source.position == before + len(chunk)
        chunks.append(chunk)
    return chunks


def exact_sizes(chunks, total, sizes=SIZES):
    """Every chunk but the last has exactly the asked size."""
    asked = list(itertools.islice(itertools.cycle(sizes), len(chunks)))
    got = [len(c) for c in chunks]
    assert got[:-1] == asked[:-1]
    assert sum(got) == total


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz"])
def test_csv_take_varying_sizes_round_trips(tmp_path, frame, suffix):
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False)
    with read_csv(path) as src:
        assert src.total is None and src.position == 0
        chunks = take_all(src)
        assert src.take(5) is None  # stays exhausted
    exact_sizes(chunks, N_ROWS)
    pd.testing.assert_frame_equal(pd.concat(chunks), pd.read_csv(path))
    pd.testing.assert_frame_equal(pd.concat(chunks), frame)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zip"])
def test_jsonl_take_varying_sizes_round_trips(tmp_path, frame, suffix):
    path = tmp_path / f"data{suffix}"
    frame.to_json(path, orient="records", lines=True)
    with read_jsonl(path) as src:
        chunks = take_all(src)
    exact_sizes(chunks, N_ROWS)
    whole = pd.read_json(path, lines=True)
    pd.testing.assert_frame_equal(pd.concat(chunks), whole)
    pd.testing.assert_frame_equal(pd.concat(chunks), frame)


def test_zip_is_streamed_not_loaded(tmp_path):
    """pandas 3 reads a whole zip member into memory on open; batchmem streams it.

    tracemalloc sees the BytesIO pandas would allocate; opening the reader and taking
    100 rows must stay far below the ~10 MB uncompressed file.
    """
    import tracemalloc

    path = tmp_path / "big.csv.zip"
    n = 500_000
    pd.DataFrame({"id": np.arange(n), "x": np.random.default_rng(0).integers(0, 10**9, n)}).to_csv(path, index=False)
    assert path.stat().st_size > 3_000_000
    tracemalloc.start()
    try:
        with read_csv(path) as src:
            chunk = src.take(100)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chunk) == 100
    assert peak < 3_000_000, f"traced peak {peak:,} bytes: zip member was loaded whole?"


def test_zip_with_several_files_is_a_config_error(tmp_path):
    import zipfile

    path = tmp_path / "two.csv.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", "x\n1\n")
        zf.writestr("b.csv", "x\n2\n")
    with pytest.raises(ConfigError, match=r"^source.path: zip archive .* holds 2 files"):
        read_csv(path)


def test_parquet_take_varying_sizes_round_trips(tmp_path, frame):
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, row_group_size=300)
    # batch_rows smaller than most takes: take(n) must concatenate Arrow batches and carry over.
    with read_parquet(path, batch_rows=128) as src:
        assert src.total == N_ROWS  # from the footer, nothing read
        chunks = take_all(src)
    exact_sizes(chunks, N_ROWS)
    pd.testing.assert_frame_equal(pd.concat(chunks), pd.read_parquet(path))
    pd.testing.assert_frame_equal(pd.concat(chunks), frame)


def test_parquet_columns(tmp_path, frame):
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    with read_parquet(path, columns=["name", "id"]) as src:
        chunk = src.take(10)
    assert list(chunk.columns) == ["name", "id"]
    with pytest.raises(ConfigError, match=r"source.columns: no column 'nope'"):
        read_parquet(path, columns=["nope"])


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "parquet-after-take"])
def test_skip_then_take(tmp_path, frame, kind):
    if kind == "csv":
        path = tmp_path / "d.csv"
        frame.to_csv(path, index=False)
        src = read_csv(path)
    elif kind == "jsonl":
        path = tmp_path / "d.jsonl"
        frame.to_json(path, orient="records", lines=True)
        src = read_jsonl(path)
    else:
        path = tmp_path / "d.parquet"
        frame.to_parquet(path, row_group_size=200)
        src = read_parquet(path, batch_rows=64)
    with src:
        if kind == "parquet-after-take":
            first = src.take(10)
            assert first["id"].tolist() == list(range(10))
            assert src.skip(440) == 440
        else:
            assert src.skip(450) == 450  # crosses row groups 0-1 for Parquet, lands mid-group 2
        assert src.position == 450
        rest = take_all(src, [97, 200])
        assert src.skip(10) == 0
    got = pd.concat(rest)
    pd.testing.assert_frame_equal(got, frame.iloc[450:])


def test_skip_past_end(tmp_path, frame):
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    with read_parquet(path) as src:
        assert src.skip(N_ROWS + 50) == N_ROWS
        assert src.take(3) is None
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with read_csv(path) as src:
        assert src.skip(N_ROWS + 50) == N_ROWS
        assert src.take(3) is None


@pytest.mark.parametrize("reader", [read_csv, read_jsonl, read_parquet])
def test_missing_file_is_a_config_error(tmp_path, reader):
    with pytest.raises(ConfigError, match=r"^source.path: file not found: .*nope.*; fix the path"):
        reader(tmp_path / "nope.csv")


def test_usecols_dtype_parse_dates_pass_through(tmp_path):
    path = tmp_path / "d.csv.gz"
    pd.DataFrame(
        {
            "a": [1, 2, 3, 4],
            "b": ["x", "y", "z", "w"],
            "when": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"],
            "c": [9, 9, 9, 9],
        }
    ).to_csv(path, index=False)
    with read_csv(path, usecols=["a", "when"], dtype={"a": "float32"}, parse_dates=["when"]) as src:
        first = src.take(3)
        second = src.take(3)
    assert list(first.columns) == ["a", "when"]
    assert first["a"].dtype == np.float32
    assert pd.api.types.is_datetime64_any_dtype(first["when"])
    assert len(second) == 1 and second.index.tolist() == [3]


def test_dtype_keeps_chunks_consistent(tmp_path):
    """An integer column with a gap only late in the file: dtype= makes every chunk agree."""
    path = tmp_path / "d.csv"
    pd.DataFrame({"v": [1, 2, 3, 4, None, 6]}).to_csv(path, index=False)
    with read_csv(path, dtype={"v": "Int64"}) as src:
        assert [str(c["v"].dtype) for c in take_all(src, [3])] == ["Int64", "Int64"]


def test_bad_options_are_config_errors(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"^source.chunksize: set by batchmem"):
        read_csv(path, chunksize=10)
    with pytest.raises(ConfigError, match=r"^source.usecolz: not an option of pandas.read_csv"):
        read_csv(path, usecolz=["id"])
    with pytest.raises(ConfigError, match=r"^source: cannot read .* as CSV: .*usecols"):
        read_csv(path, usecols=["id", "nope"])
    with read_csv(path, dtype={"name": "int64"}) as src:
        with pytest.raises(ConfigError, match=r"^source: reading CSV rows from row 0 of .* failed"):
            src.take(10)
    with read_csv(path) as src, pytest.raises(ConfigError, match=r"take\(n\): n must be a positive int"):
        src.take(0)


def test_reading_is_lazy(tmp_path, frame):
    """Construction reads the header / footer only: a huge take is not needed to start."""
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    src = read_csv(path)
    assert src.position == 0
    src.close()
    src.close()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        src.take(1)


# -- ParquetSink ----------------------------------------------------------------


def test_parquet_sink_round_trip_row_group_per_batch(tmp_path, frame):
    out = tmp_path / "out.parquet"
    sink = ParquetSink(out)
    bounds = [0, 100, 350, 351, 800, N_ROWS]
    total_bytes = 0
    for lo, hi in itertools.pairwise(bounds):
        total_bytes += sink.write_batch(frame.iloc[lo:hi], lo)
    assert not out.exists()  # written under a .partial name until closed
    sink.close()
    assert total_bytes > 0 and sink.bytes_written >= total_bytes
    pf = pq.ParquetFile(out)
    assert pf.num_row_groups == len(bounds) - 1
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [100, 250, 1, 449, 203]
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    # and back through the chunked reader
    with read_parquet(out) as src:
        pd.testing.assert_frame_equal(pd.concat(take_all(src)), frame)


def test_parquet_sink_records_cast_to_first_schema(tmp_path):
    out = tmp_path / "out.parquet"
    with ParquetSink(out) as sink:
        sink.write_batch([{"a": 1.5, "b": "x"}, {"a": 2.0, "b": "y"}], 0)
        sink.write_batch([{"a": 3, "b": "z"}, None], 2)  # int -> double; None -> null row
        sink.write_batch([{"a": 4.0}], 4)  # missing key -> null
        sink.write_batch([], 5)  # empty batch: no row group
    table = pq.read_table(out)
    assert pq.ParquetFile(out).num_row_groups == 3
    assert table.to_pylist() == [
        {"a": 1.5, "b": "x"},
        {"a": 2.0, "b": "y"},
        {"a": 3.0, "b": "z"},
        {"a": None, "b": None},
        {"a": 4.0, "b": None},
    ]


def test_parquet_sink_schema_mismatch(tmp_path):
    out = tmp_path / "out.parquet"
    sink = ParquetSink(out)
    sink.write_batch(pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}), 0)
    with pytest.raises(SerializationError, match=r"^output: column 'a' of items 2-4 is (large_)?string.*int64"):
        sink.write_batch(pd.DataFrame({"a": ["x", "y", "z"], "b": [1.0, 2.0, 3.0]}), 2)
    with pytest.raises(SerializationError, match=r"^output: column 'c' of items 5-5 is not in the Parquet schema"):
        sink.write_batch(pd.DataFrame({"a": [1], "b": [1.0], "c": [1]}), 5)
    with pytest.raises(SerializationError, match=r"^output: item 7 is int"):
        sink.write_batch([{"a": 1, "b": 1.0}, 3], 6)
    sink.close()
    assert pq.read_table(out).num_rows == 2  # the good batch survives


def test_parquet_sink_no_rows_writes_valid_file(tmp_path):
    out = tmp_path / "empty.parquet"
    with ParquetSink(out) as sink:
        sink.write_batch(pd.DataFrame({"a": pd.Series([], dtype="int64")}), 0)
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names == ["a"]


def _zip_of(path, data: bytes, method: int) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("data.csv", data)


@pytest.mark.parametrize("read_size", [1, 4096, 1 << 20, 64 << 20])
def test_isal_inflated_member_reads_what_zipfile_reads(tmp_path, read_size):
    import io
    import zipfile

    from batchmem.io.inflate import open_member

    rng = np.random.default_rng(3)
    data = "\n".join(f"{i},{x:.6f}" for i, x in enumerate(rng.random(200_000))).encode()
    path = tmp_path / "data.csv.zip"
    _zip_of(path, data, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as zf, open_member(zf, zf.infolist()[0]) as stream:
        assert not isinstance(stream, zipfile.ZipExtFile)  # ISA-L's inflate, not zipfile's
        if read_size == 1:
            got = io.BufferedReader(stream).read()
        else:
            got = b"".join(iter(lambda: stream.read(read_size), b""))
    assert got == data


def test_a_damaged_member_fails_its_crc_check(tmp_path):
    import zipfile

    from batchmem.io.inflate import open_member

    path = tmp_path / "data.csv.zip"
    _zip_of(path, b"a,b\n" + b"1,2\n" * 50_000, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    info.CRC ^= 1  # the archive says one thing, the data another
    with zipfile.ZipFile(path) as zf, open_member(zf, info) as stream, pytest.raises(zipfile.BadZipFile, match="CRC"):
        while stream.read(1 << 16):
            pass


def test_a_stored_member_is_read_by_zipfile(tmp_path):
    import zipfile

    from batchmem.io.inflate import open_member

    path = tmp_path / "data.csv.zip"
    _zip_of(path, b"a,b\n1,2\n", zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as zf, open_member(zf, zf.infolist()[0]) as stream:
        assert isinstance(stream, zipfile.ZipExtFile) and stream.read() == b"a,b\n1,2\n"
