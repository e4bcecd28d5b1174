"""DataFrame -> JSON lines, a column at a time, byte for byte what the row path wrote.

The row path (``DataFrame.to_dict("records")`` and one ``orjson.dumps`` per row
dict) spent most of the flights example's run building dicts. Here each column
becomes a list of encoded JSON values by a few calls into C: numbers and bools
through ``orjson.dumps`` of the whole numpy array split at its commas, strings
escaped in one ``str.translate`` over the joined column, timestamps through
``numpy.datetime_as_string``. Rows are then assembled by
``bytes.__mod__`` of one ``{"a":%s,"b":%s}`` template per row, mapped over
``zip(*columns)``: no Python bytecode and no dict per row.

The output is the row path's, exactly (``tests/test_frame_json.py`` compares
the bytes): the same values as ``to_dict("records")`` yields (pandas'
``maybe_box_native`` boxing), encoded as ``orjson.dumps`` with the sink's
``default`` would encode them:

* NaN, inf, None, ``pd.NA`` and ``NaT`` -> ``null``; nullable ``Int64``/``boolean``
  values stay integers/bools; ``float32`` values print as the float64 they box to;
* floats in orjson's shortest round-trip form (``0.1``, ``1e-300``, ``1e+16``);
* timestamps as ``pandas.Timestamp.isoformat()`` (``2013-01-01T05:15:00``,
  ``.123000`` or ``.123456789`` when there is a fraction, ``+01:00`` when tz-aware);
* strings as UTF-8 with only ``"``, ``\\`` and control characters escaped;
* categoricals as their categories' encoding; duplicate column names as a dict
  keeps them (first position, last value).

What it does not cover: any value the fast paths do not recognise (timedeltas,
dates, Decimals, nested lists/dicts, Arrow-backed non-string columns...) is
encoded one ``orjson.dumps`` per value of that column, still without row dicts.
A value orjson cannot encode raises ``TypeError``; the caller then falls back to
the row path to name the item (``batchmem.io.sinks.encode_results``).
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

#: orjson's escapes (what it writes for ``"``, ``\\`` and U+0001..U+001F); U+0000 is the
#: column separator below, so a string holding it takes the per-value path.
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\"}
_ESCAPES.update({c: orjson.dumps(chr(c))[1:-1].decode() for c in range(1, 0x20)})
_ESCAPE_RE = re.compile('[\x01-\x1f"\\\\]')

#: Value types whose orjson encoding (natively or through the sink's ``default``)
#: never holds a comma, so one ``dumps`` of the whole list can be split at commas.
_SCALAR_TYPES = frozenset({int, float, bool, type(None), type(pd.NA), type(pd.NaT), pd.Timestamp, pd.Timedelta,
                           _dt.datetime, _dt.date, _dt.time})
#: Null-likes the row path writes as ``null`` (float: NaN, the only float ``isna`` flags).
_NULL_TYPES = frozenset({type(None), float, type(pd.NA), type(pd.NaT), np.float64, np.float32, np.float16})

_UNITS_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

_MASKED = (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)

#: A string column of at least DEDUP_MIN_ROWS rows whose first DEDUP_SAMPLE values hold at most
#: one distinct value in 8 is factorized and each distinct value encoded once (carrier codes,
#: airports, categories written as strings).
DEDUP_MIN_ROWS, DEDUP_SAMPLE = 2048, 512

#: Rows encoded together: bounds the per-value fragments alive at once (~50 bytes each).
ROWS_PER_SLICE = 16_384


def encode_frame(df: pd.DataFrame, default: Callable[[Any], Any], rows_per_slice: int = ROWS_PER_SLICE) -> bytes:
    """Encode ``df`` as JSON lines (one object per row, keys in column order); returns the bytes.

    ``default`` is the sink's orjson ``default`` (pandas/numpy scalars, then the
    user's fallback). Works ``rows_per_slice`` rows at a time. Raises ``TypeError``
    when a value cannot be encoded (the caller finds and names it).
    """
    n = len(df)
    template, positions = _template(df, default)
    if not positions:
        return b"{}\n" * n
    buf = bytearray()
    for lo in range(0, n, rows_per_slice):
        part = df.iloc[lo : lo + rows_per_slice]
        columns = [_column(part.iloc[:, j], default) for j in positions]
        buf += b"".join(map(template.__mod__, zip(*columns, strict=True)))
    return bytes(buf)


def _template(df: pd.DataFrame, default: Callable[[Any], Any]) -> tuple[bytes, list[int]]:
    """The row template ``{"a":%s,...}\\n`` and the column positions that fill it.

    A repeated column name is kept once, where it first appears, filled from
    its last column: what ``dict(zip(columns, row))`` does.
    """
    last: dict[Any, int] = {}
    for j, name in enumerate(df.columns):
        last[name] = j  # dict keeps first-insertion order, last assignment
    parts, positions = [], []
    for name, j in last.items():
        key = orjson.dumps({name: None}, default=default, option=_OPTS)[1:-6]  # '{"key":null}' -> '"key"'
        parts.append(key.replace(b"%", b"%%") + b":%s")
        positions.append(j)
    return b"{" + b",".join(parts) + b"}\n", positions


def _column(s: pd.Series, default: Callable[[Any], Any]) -> list[bytes]:
    """The encoded JSON value of each element of ``s``, as ``to_dict("records")`` boxes it."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype):
        kind = dtype.kind
        if kind in "iub":
            return _split(s.to_numpy())
        if kind == "f":
            return _split(s.to_numpy(dtype=np.float64))  # float32 boxes to the float64 of its value
        if kind == "M":
            return _datetimes(s, default)
        if kind == "O":
            return _objects(s.to_numpy(), default)
    elif isinstance(dtype, pd.CategoricalDtype):
        return _categorical(s, default)
    elif isinstance(dtype, pd.StringDtype):
        return _objects(s.to_numpy(dtype=object), default, s.isna().to_numpy(), strings=True)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        return _datetimes(s, default)
    elif isinstance(s.array, _MASKED):
        return _masked(s)
    return _values(list(s), default)  # Series.__iter__: what itertuples hands to_dict


def _split(a: np.ndarray) -> list[bytes]:
    """Fragments of a numeric/bool numpy array: one ``orjson.dumps``, split at the commas."""
    if a.size == 0:
        return []
    return orjson.dumps(np.ascontiguousarray(a), option=_OPTS)[1:-1].split(b",")


def _masked(s: pd.Series) -> list[bytes]:
    """Nullable ``Int*``/``UInt*``/``Float*``/``boolean``: the data array's fragments, ``null`` where masked."""
    arr = s.array
    kind = arr.dtype.numpy_dtype.kind
    if kind == "f":
        return _split(arr.to_numpy(dtype=np.float64, na_value=np.nan))  # NA -> NaN -> null
    out = _split(arr.to_numpy(dtype=arr.dtype.numpy_dtype, na_value=False if kind == "b" else 0))
    for i in np.flatnonzero(arr.isna()).tolist():
        out[i] = _NULL
    return out


def _objects(a: np.ndarray, default: Callable[[Any], Any], null: np.ndarray | None = None,
             strings: bool = False) -> list[bytes]:
    """Fragments of an object array: strings (with nulls) escaped in bulk, anything else per value.

    ``null``: the ``isna`` mask if the caller has it; ``strings=True``: every non-null
    value is known to be a ``str`` and every null a null-like (a ``StringDtype`` column).
    """
    if null is None:
        null = pd.isna(a)
    has_null = bool(null.any())
    present = a[~null] if has_null else a
    if strings or (set(map(type, present)) <= {str} and (not has_null or set(map(type, a[null])) <= _NULL_TYPES)):
        frags = _text(present)
        if frags is not None:
            if not has_null:
                return frags
            out = np.full(len(a), _NULL, dtype=object)
            out[~null] = frags
            return out.tolist()
    return _values(a.tolist(), default)


def _text(present: np.ndarray) -> list[bytes] | None:
    """JSON strings of an object array of ``str``; a column of few distinct values encodes each once."""
    n = len(present)
    if n >= DEDUP_MIN_ROWS and len(set(present[:DEDUP_SAMPLE].tolist())) * 8 <= DEDUP_SAMPLE:
        codes, uniques = pd.factorize(present)
        frags = _strings(uniques.tolist())
        return None if frags is None else np.array(frags, dtype=object)[codes].tolist()
    return _strings(present.tolist())


def _strings(values: list[str]) -> list[bytes] | None:
    """JSON strings of ``values`` (UTF-8, orjson's escapes) in a few C calls; None if one holds U+0000."""
    if not values:
        return []
    text = "\x00".join(values)
    if text.count("\x00") != len(values) - 1:
        return None
    if _ESCAPE_RE.search(text):
        text = text.translate(_ESCAPES)
    try:
        return ('"' + text.replace("\x00", '"\x00"') + '"').encode().split(b"\x00")
    except UnicodeEncodeError as exc:  # a lone surrogate: orjson refuses it too
        raise TypeError(str(exc)) from None


def _values(values: list[Any], default: Callable[[Any], Any]) -> list[bytes]:
    """Fragments of Python values, boxed as ``to_dict`` boxes them; orjson encodes, no row dicts."""
    types = set(map(type, values))
    if any(issubclass(t, np.generic) for t in types):
        from pandas.core.dtypes.cast import maybe_box_native  # what to_dict("records") applies

        values = list(map(maybe_box_native, values))
        types = set(map(type, values))
    if not values:
        return []
    if types <= {str}:
        frags = _strings(values)
        if frags is not None:
            return frags
    if types <= _SCALAR_TYPES:
        return orjson.dumps(values, default=default, option=_OPTS)[1:-1].split(b",")
    dumps = orjson.dumps
    # bytes(memoryview(...)) copies: each orjson output keeps a ~4 KB buffer while it lives.
    return [bytes(memoryview(dumps(v, default=default, option=_OPTS))) for v in values]


def _categorical(s: pd.Series, default: Callable[[Any], Any]) -> list[bytes]:
    """Each used category encoded once (as a value of this dtype boxes), then taken by code; -1 -> null."""
    codes = s.cat.codes.to_numpy()
    used = np.unique(codes[codes >= 0])
    if used.size == 0:
        return [_NULL] * len(codes)
    sample = pd.Series(pd.Categorical.from_codes(used, dtype=s.dtype))
    frags = np.empty(len(s.dtype.categories) + 1, dtype=object)
    frags[-1] = _NULL
    frags[used] = _values(list(sample), default)
    return frags[codes].tolist()


def _datetimes(s: pd.Series, default: Callable[[Any], Any]) -> list[bytes]:
    """``Timestamp.isoformat()`` of each value, quoted, by ``numpy.datetime_as_string``; NaT -> null.

    The fraction is shown only when non-zero (``.ffffff``, or ``.fffffffff`` with a
    nanosecond part); a tz-aware column gets the local time and its ``+HH:MM`` offset.
    Years outside 1000-9999 take the per-value path.
    """
    tz = getattr(s.dtype, "tz", None)
    wall = (s.dt.tz_localize(None) if tz is not None else s).to_numpy()
    nat = np.isnat(wall)
    has_nat = bool(nat.any())
    ok = wall[~nat] if has_nat else wall
    if ok.size == 0:
        return [_NULL] * len(wall)
    years = np.array([ok.min(), ok.max()]).astype("datetime64[Y]").astype(np.int64) + 1970
    if years[0] < 1000 or years[1] > 9999:  # numpy and isoformat pad such years differently
        return _values(list(s), default)
    unit = np.datetime_data(wall.dtype)[0]
    per_s = _UNITS_PER_S.get(unit)
    if per_s is None:
        return _values(list(s), default)
    i8 = wall.view("i8")
    text = np.datetime_as_string(wall, unit="s")
    frac = i8 % per_s  # non-negative: numpy's % follows the divisor's sign
    if frac.any():
        frac_ns = frac * (1_000_000_000 // per_s)
        micro = frac_ns % 1000 == 0
        text = np.where((frac_ns != 0) & micro, np.datetime_as_string(wall, unit="us", casting="unsafe"), text)
        if unit == "ns" and not micro.all():
            text = np.where(~micro, np.datetime_as_string(wall, unit="ns"), text)
    if tz is not None:
        utc = s.dt.tz_convert(None).to_numpy().view("i8")
        offset_s = (i8 - utc) // per_s
        offset_s[nat] = 0
        uniq, inverse = np.unique(offset_s, return_inverse=True)
        if (uniq % 60).any():
            return _values(list(s), default)  # second-level offsets: rare, leave them to isoformat
        suffix = np.array([_offset(int(o)) for o in uniq])[inverse.reshape(-1)]
        text = np.char.add(text, suffix)
    values = text.tolist()
    frags = ('"' + '"\x00"'.join(values) + '"').encode().split(b"\x00")
    if has_nat:
        for i in np.flatnonzero(nat).tolist():
            frags[i] = _NULL
    return frags


def _offset(seconds: int) -> str:
    """``+HH:MM`` as ``datetime.isoformat`` writes a UTC offset of ``seconds``."""
    tz = _dt.timezone(_dt.timedelta(seconds=seconds))
    return _dt.datetime(2000, 1, 1, tzinfo=tz).isoformat()[19:]
