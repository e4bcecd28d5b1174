"""DataFrame -> JSON lines, a column at a time, byte for byte what the row path wrote.

The row path (``DataFrame.to_dict("records")`` and one ``orjson.dumps`` per row
dict) spent most of the flights example's run building dicts. Here each column
is encoded by a few calls into C: numbers and bools by one ``orjson.dumps`` of
the numpy array, split at its commas; strings escaped in bulk; timestamps by
``numpy.datetime_as_string``. Rows are then assembled without a dict or any
Python bytecode per row:

* with pyarrow (the ``parquet`` extra; pandas >= 3 stores strings in it), each
  column becomes an Arrow binary array and ``pyarrow.compute.binary_join_element_wise``
  joins keys and values row by row;
* without it, each column becomes a list of ``bytes`` and ``bytes.__mod__`` of a
  ``{"a":%s,"b":%s}`` template is mapped over ``zip(*columns)``.

The output is the row path's, exactly (``tests/test_frame_json.py`` compares the
bytes, both ways): the values ``to_dict("records")`` yields (pandas'
``maybe_box_native`` boxing), encoded as ``orjson.dumps`` with the sink's
``default`` encodes them:

* NaN, inf, None, ``pd.NA`` and ``NaT`` -> ``null``; nullable ``Int64``/``boolean``
  values stay integers/bools; ``float32`` values print as the float64 they box to;
* floats in orjson's shortest round-trip form (``0.1``, ``1e-300``, ``1e+16``);
* timestamps as ``pandas.Timestamp.isoformat()`` (``2013-01-01T05:15:00``,
  ``.123000`` or ``.123456789`` when there is a fraction, ``-05:00`` when tz-aware);
* strings as UTF-8 with only ``"``, ``\\`` and control characters escaped;
* categoricals as their categories' encoding; a repeated column name as a dict
  keeps it (first position, last value).

What it does not cover: values the fast paths do not recognise (timedeltas, dates,
Decimals, nested lists/dicts, Arrow-backed non-string columns...) are encoded one
``orjson.dumps`` per value of that column, still without row dicts. A value orjson
cannot encode raises ``TypeError``; the caller falls back to the row path to name
the item (``batchmem.io.sinks.encode_results``).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pandas as pd

__all__ = ["encode_frame"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_NULL = b"null"

#: orjson's string escapes: ``"``, ``\\`` and the control characters U+0000..U+001F.
_ESCAPES = {c: orjson.dumps(chr(c))[1:-1].decode() for c in [*range(0x20), ord('"'), ord("\\")]}
_ESCAPE_RE = re.compile('[\x01-\x1f"\\\\]')  # U+0000 is the list path's separator, checked apart

#: Value types whose orjson encoding (natively or through the sink's ``default``)
#: never holds a comma, so one ``dumps`` of the whole list can be split at commas.
_SCALAR_TYPES = frozenset(
    {
        int,
        float,
        bool,
        type(None),
        type(pd.NA),
        type(pd.NaT),
        pd.Timestamp,
        pd.Timedelta,
        _dt.datetime,
        _dt.date,
        _dt.time,
    }
)
#: Null-likes the row path writes as ``null`` (a float here is NaN: the only float ``isna`` flags).
_NULL_TYPES = frozenset({type(None), float, type(pd.NA), type(pd.NaT), np.float64, np.float32, np.float16})
_MASKED = (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)
_UNITS_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

#: A string column of at least DEDUP_MIN_ROWS rows whose first DEDUP_SAMPLE values hold at most
#: one distinct value in 8 is factorized and each distinct value encoded once (carrier codes,
#: airports, categories written as strings). List path only: Arrow's bulk escaping is cheaper.
DEDUP_MIN_ROWS, DEDUP_SAMPLE = 2048, 512


def encode_frame(
    df: pd.DataFrame, default: Callable[[Any], Any], rows_per_slice: int | None = None, arrow: bool | None = None
) -> bytes:
    """Encode ``df`` as JSON lines (one object per row, keys in column order); returns the bytes.

    ``default`` is the sink's orjson ``default`` (pandas/numpy scalars, then the
    user's fallback). Works ``rows_per_slice`` rows at a time (default: the assembler's
    ``rows_per_slice``, which bounds the encoded values alive at once). ``arrow``: assemble
    rows with pyarrow (default: when it is installed) or with ``bytes`` templates.
    Raises ``TypeError`` when a value cannot be encoded (the caller finds and names it).
    """
    n = len(df)
    keys, positions = _keys(df, default)
    if not positions:
        return b"{}\n" * n
    rows: _Rows = _ListRows()
    if arrow or arrow is None:
        try:
            rows = _ArrowRows()
        except ImportError:
            if arrow:
                raise
    step = rows_per_slice or rows.rows_per_slice
    parts = []
    for lo in range(0, n, step):
        part = df.iloc[lo : lo + step]
        parts.append(rows.join(keys, [_column(part.iloc[:, j], default, rows) for j in positions]))
    return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def _keys(df: pd.DataFrame, default: Callable[[Any], Any]) -> tuple[list[bytes], list[int]]:
    """Each key as it is written (``"a"``) and the column position whose values it takes.

    A repeated column name is kept once, where it first appears, with the values
    of its last column: what ``dict(zip(columns, row))`` does.
    """
    last: dict[Any, int] = {}
    for j, name in enumerate(df.columns):
        last[name] = j  # a dict keeps the first insertion's place and the last assignment
    keys = [orjson.dumps({name: None}, default=default, option=_OPTS)[1:-6] for name in last]  # {"a":null}
    return keys, list(last.values())


# -- columns ---------------------------------------------------------------------------------------
def _column(s: pd.Series, default: Callable[[Any], Any], rows: _Rows) -> Any:
    """The encoded JSON value of each element of ``s`` (as ``to_dict("records")`` boxes it), in ``rows``' form."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype):
        kind = dtype.kind
        if kind in "iub":
            return rows.numbers(s.to_numpy())
        if kind == "f":
            return rows.numbers(s.to_numpy(dtype=np.float64))  # float32 boxes to the float64 of its value
        if kind == "M":
            return _datetimes(s, default, rows)
        if kind == "O":
            return _objects(s.to_numpy(), default, rows)
    elif isinstance(dtype, pd.CategoricalDtype):
        return _categorical(s, default, rows)
    elif isinstance(dtype, pd.StringDtype):
        null = s.isna().to_numpy()
        out = rows.strings(s.array, null, known=True)
        return out if out is not None else _values(s.to_numpy(dtype=object).tolist(), default, rows)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        return _datetimes(s, default, rows)
    elif isinstance(s.array, _MASKED):
        return _masked(s, rows)
    return _values(list(s), default, rows)  # Series.__iter__: what itertuples hands to_dict


def _masked(s: pd.Series, rows: _Rows) -> Any:
    """Nullable ``Int*``/``UInt*``/``Float*``/``boolean``: the data array's numbers, ``null`` where masked."""
    arr = s.array
    kind = arr.dtype.numpy_dtype.kind
    if kind == "f":
        return rows.numbers(arr.to_numpy(dtype=np.float64, na_value=np.nan))  # NA -> NaN -> null
    data = arr.to_numpy(dtype=arr.dtype.numpy_dtype, na_value=False if kind == "b" else 0)
    return rows.numbers(data, arr.isna())


def _objects(a: np.ndarray, default: Callable[[Any], Any], rows: _Rows) -> Any:
    """An object array: strings (with null-likes) escaped in bulk, anything else per value."""
    null = pd.isna(a)
    has_null = bool(null.any())
    present = a[~null] if has_null else a
    if set(map(type, present)) <= {str} and (not has_null or set(map(type, a[null])) <= _NULL_TYPES):
        out = rows.strings(a, null if has_null else None)
        if out is not None:
            return out
    return _values(a.tolist(), default, rows)


def _values(values: list[Any], default: Callable[[Any], Any], rows: _Rows) -> Any:
    """Python values, boxed as ``to_dict`` boxes them, encoded by orjson one list or one value at a time."""
    types = set(map(type, values))
    if any(issubclass(t, np.generic) for t in types):
        from pandas.core.dtypes.cast import maybe_box_native  # what to_dict("records") applies

        values = list(map(maybe_box_native, values))
        types = set(map(type, values))
    if types <= {str} and values:
        out = rows.strings(np.array(values, dtype=object), None)
        if out is not None:
            return out
    if types <= _SCALAR_TYPES:
        return rows.fragments(orjson.dumps(values, default=default, option=_OPTS)[1:-1].split(b",") if values else [])
    dumps = orjson.dumps
    # bytes(memoryview(...)) copies: each orjson output keeps a ~4 KB buffer while it lives.
    return rows.fragments([bytes(memoryview(dumps(v, default=default, option=_OPTS))) for v in values])


def _categorical(s: pd.Series, default: Callable[[Any], Any], rows: _Rows) -> Any:
    """Each used category encoded once (as a value of this dtype boxes), then taken by code; -1 -> null."""
    codes = s.cat.codes.to_numpy()
    used = np.unique(codes[codes >= 0])
    sample = pd.Series(pd.Categorical.from_codes(used, dtype=s.dtype))
    lookup = np.full(len(s.dtype.categories) + 1, len(used), dtype=np.int64)  # code -1 -> the null at the end
    lookup[used] = np.arange(len(used))
    return rows.take(_values(list(sample), default, rows), lookup[codes])


def _datetimes(s: pd.Series, default: Callable[[Any], Any], rows: _Rows) -> Any:
    """``Timestamp.isoformat()`` of each value by ``numpy.datetime_as_string``; NaT -> null.

    The fraction is shown only when non-zero (``.ffffff``, or ``.fffffffff`` with a
    nanosecond part); a tz-aware column gets the local time and its ``+HH:MM`` offset.
    Years outside 1000-9999 and sub-minute offsets take the per-value path.
    """
    tz = getattr(s.dtype, "tz", None)
    wall = (s.dt.tz_localize(None) if tz is not None else s).to_numpy()
    unit = np.datetime_data(wall.dtype)[0]
    per_s = _UNITS_PER_S.get(unit)
    nat = np.isnat(wall)
    ok = wall[~nat]
    if ok.size == 0:
        return rows.fragments([_NULL] * len(wall))
    years = np.array([ok.min(), ok.max()]).astype("datetime64[Y]").astype(np.int64) + 1970
    if per_s is None or years[0] < 1000 or years[1] > 9999:  # numpy and isoformat pad such years differently
        return _values(list(s), default, rows)
    i8 = wall.view(np.int64)
    text = np.datetime_as_string(wall, unit="s")
    frac = i8 % per_s  # non-negative: numpy's % takes the divisor's sign
    if frac.any():
        frac_ns = frac * (1_000_000_000 // per_s)
        micro = frac_ns % 1000 == 0
        text = np.where((frac_ns != 0) & micro, np.datetime_as_string(wall, unit="us", casting="unsafe"), text)
        if not micro.all():
            text = np.where(~micro, np.datetime_as_string(wall, unit="ns"), text)
    if tz is not None:
        offset_s = (i8 - s.dt.tz_convert(None).to_numpy().view(np.int64)) // per_s
        offset_s[nat] = 0
        uniq, inverse = np.unique(offset_s, return_inverse=True)
        if (uniq % 60).any():
            return _values(list(s), default, rows)  # second-level offsets (LMT): left to isoformat
        text = np.char.add(text, np.array([_offset(int(o)) for o in uniq])[inverse.reshape(-1)])
    return rows.strings(text, nat if nat.any() else None, known=True)


def _offset(seconds: int) -> str:
    """``+HH:MM`` as ``datetime.isoformat`` writes a UTC offset of ``seconds``."""
    tz = _dt.timezone(_dt.timedelta(seconds=seconds))
    return _dt.datetime(2000, 1, 1, tzinfo=tz).isoformat()[19:]


# -- rows ------------------------------------------------------------------------------------------
class _Rows:
    """How encoded columns are held and joined into rows (a list of bytes, or an Arrow array)."""

    rows_per_slice = 16_384  # rows encoded together

    def numbers(self, a: np.ndarray, null: np.ndarray | None = None) -> Any:
        """A numeric/bool numpy array (``null`` where ``null`` is set)."""
        raise NotImplementedError

    def strings(self, values: Any, null: np.ndarray | None, known: bool = False) -> Any:
        """JSON strings of ``values`` (object/unicode array, or a pandas string array when ``known``);
        ``null`` where ``null`` is set. None when this form cannot encode them (the caller goes per value)."""
        raise NotImplementedError

    def fragments(self, frags: list[bytes]) -> Any:
        """Already-encoded values."""
        raise NotImplementedError

    def take(self, encoded: Any, index: np.ndarray) -> Any:
        """``encoded`` (an encoded column with a ``null`` appended) picked by ``index``."""
        raise NotImplementedError

    def join(self, keys: list[bytes], columns: list[Any]) -> bytes | memoryview:
        """The JSON lines: ``{key0:col0[i],key1:col1[i],...}\\n`` for each row ``i``."""
        raise NotImplementedError


class _ListRows(_Rows):
    """Columns as lists of ``bytes``; rows by ``bytes.__mod__`` over ``zip(*columns)``."""

    rows_per_slice = 16_384  # ~50 bytes of Python object a value: ~10 MB for 14 columns

    def numbers(self, a: np.ndarray, null: np.ndarray | None = None) -> list[bytes]:
        if a.size == 0:
            return []
        out = orjson.dumps(np.ascontiguousarray(a), option=_OPTS)[1:-1].split(b",")
        if null is not None:
            for i in np.flatnonzero(null).tolist():
                out[i] = _NULL
        return out

    def strings(self, values: Any, null: np.ndarray | None, known: bool = False) -> list[bytes] | None:
        values = np.asarray(values, dtype=object)
        present = values[~null] if null is not None else values
        n = len(present)
        if n >= DEDUP_MIN_ROWS and len(set(present[:DEDUP_SAMPLE].tolist())) * 8 <= DEDUP_SAMPLE:
            codes, uniques = pd.factorize(present)
            frags = _quote(uniques.tolist())
            frags = None if frags is None else np.array(frags, dtype=object)[codes].tolist()
        else:
            frags = _quote(present.tolist())
        if frags is None or null is None:
            return frags
        out = np.full(len(values), _NULL, dtype=object)
        out[~null] = frags
        return out.tolist()

    def fragments(self, frags: list[bytes]) -> list[bytes]:
        return frags

    def take(self, encoded: list[bytes], index: np.ndarray) -> list[bytes]:
        return np.array([*encoded, _NULL], dtype=object)[index].tolist()

    def join(self, keys: list[bytes], columns: list[list[bytes]]) -> bytes:
        template = b"{" + b",".join(k.replace(b"%", b"%%") + b":%s" for k in keys) + b"}\n"
        return b"".join(map(template.__mod__, zip(*columns, strict=True)))


def _quote(values: list[str]) -> list[bytes] | None:
    """JSON strings of ``values`` (UTF-8, orjson's escapes) in a few C calls; None if one holds U+0000."""
    if not values:
        return []
    text = "\x00".join(values)
    if text.count("\x00") != len(values) - 1:
        return None
    if _ESCAPE_RE.search(text):
        text = text.translate({c: e for c, e in _ESCAPES.items() if c})
    try:
        return ('"' + text.replace("\x00", '"\x00"') + '"').encode().split(b"\x00")
    except UnicodeEncodeError as exc:  # a lone surrogate: orjson refuses it too
        raise TypeError(str(exc)) from None


class _Unquoted:
    """An Arrow column of escaped strings with no nulls, whose quotes ``join`` writes."""

    __slots__ = ("arr",)

    def __init__(self, arr: Any) -> None:
        self.arr = arr


class _ArrowRows(_Rows):
    """Columns as Arrow ``large_binary`` arrays; rows by ``pyarrow.compute.binary_join_element_wise``."""

    rows_per_slice = 32_768  # the encoded bytes, two or three times over: ~25 MB for the flights rows

    def __init__(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.pa, self.pc = pa, pc
        self.type = pa.large_binary()
        self.null = pa.scalar(_NULL, self.type)
        self.quote = pa.scalar(b'"', self.type)
        self.empty = pa.scalar(b"", self.type)

    def numbers(self, a: np.ndarray, null: np.ndarray | None = None) -> Any:
        """One ``orjson.dumps`` of the array; the commas are cut out and the value bounds become offsets."""
        pa = self.pa
        n = a.size
        body = np.frombuffer(orjson.dumps(np.ascontiguousarray(a), option=_OPTS), np.uint8)[1:-1]
        commas = np.flatnonzero(body == ord(","))
        offsets = np.empty(n + 1, np.int64)
        offsets[0], offsets[-1] = 0, len(body) - len(commas)
        offsets[1:-1] = commas - np.arange(len(commas))  # value i ends at comma i, less the i commas cut before it
        data = np.delete(body, commas) if n else body
        out = pa.Array.from_buffers(self.type, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        if null is not None and null.any():
            out = self.pc.if_else(pa.array(null), self.null, out)
        return out

    def strings(self, values: Any, null: np.ndarray | None, known: bool = False) -> Any:
        pa, pc = self.pa, self.pc
        try:
            arr = (
                pa.array(values, type=pa.large_string(), mask=null)
                if not known or isinstance(values, np.ndarray)
                else pa.array(values)
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:  # lone surrogates
            raise TypeError(str(exc)) from None
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = self._escape(arr.cast(self.type))
        if not arr.null_count:
            return _Unquoted(arr)  # join() writes the quotes with the keys: one pass fewer
        return pc.fill_null(self._quoted(arr), self.null)

    def _quoted(self, arr: Any) -> Any:
        if isinstance(arr, _Unquoted):
            arr = arr.arr
        return self.pc.binary_join_element_wise(self.quote, arr, self.quote, self.empty)

    def _escape(self, arr: Any) -> Any:
        """orjson's escapes, applied only for the special bytes present (UTF-8 never uses bytes < 0x80 inside
        a multi-byte character, so a byte scan finds them)."""
        if len(arr) == 0:
            return arr
        offsets = np.frombuffer(arr.buffers()[1], np.int64, len(arr) + 1, arr.offset * 8)
        data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if arr.buffers()[2] else b""
        counts = (
            np.bincount(data[(data < 0x20) | (data == ord('"')) | (data == ord("\\"))], minlength=0x80)
            if len(data)
            else np.zeros(0x80, np.int64)
        )
        if not counts.any():
            return arr
        for c in [ord("\\"), *(c for c in _ESCAPES if c != ord("\\"))]:  # the backslash first
            if counts[c]:
                arr = self.pc.replace_substring(arr, chr(c).encode(), _ESCAPES[c].encode())
        return arr

    def fragments(self, frags: list[bytes]) -> Any:
        return self.pa.array(frags, type=self.type)

    def take(self, encoded: Any, index: np.ndarray) -> Any:
        pa = self.pa
        if isinstance(encoded, _Unquoted):
            encoded = self._quoted(encoded)
        return pa.concat_arrays([encoded, pa.array([_NULL], self.type)]).take(pa.array(index))

    def join(self, keys: list[bytes], columns: list[Any]) -> memoryview:
        pa, pc, t = self.pa, self.pc, self.type
        pieces: list[Any] = []
        text = b"{"  # the constant text between two columns' values
        for i, (key, col) in enumerate(zip(keys, columns, strict=True)):
            text += (b"," if i else b"") + key + b":"
            if isinstance(col, _Unquoted):
                pieces += [pa.scalar(text + b'"', t), col.arr]
                text = b'"'
            else:
                pieces += [pa.scalar(text, t), col]
                text = b""
        pieces.append(pa.scalar(text + b"}\n", t))
        lines = pc.binary_join_element_wise(*pieces, self.empty)
        if isinstance(lines, pa.ChunkedArray):
            lines = lines.combine_chunks()
        if len(lines) == 0:
            return memoryview(b"")
        offsets = np.frombuffer(lines.buffers()[1], np.int64, len(lines) + 1, lines.offset * 8)
        return memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]
