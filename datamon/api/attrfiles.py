"""Reading attribute rows (``bundle upload --attributes``) into the lines of an attributes object.

A source — a JSON Lines, CSV or Parquet file, a mapping ``path -> row``, rows with a ``path`` key,
a pandas DataFrame — becomes ``{path: line}`` where ``line`` is the row's line in the attributes
object (``canonical`` JSON of the row with its path, docs/format.md), or ``""`` for a row with no
value (it clears a carried-over row and stores nothing). Every row is checked against the repo
schema on the way; ``UsageError`` names the path, the column and the value.

Speed (a million rows is a normal file): each row takes one of two roads. The **fast road**
is for a row whose path is already normal and whose every value is a plain scalar its column
accepts as it is (no coercion, no null, no float that JSON writes with an exponent): it is
parsed and written by ``orjson``, which for exactly these values writes byte for byte what
Python's ``json`` writes (``tests/query/test_attr_lines.py`` checks the two agree). Anything
else takes the **careful road**, the original per-value checks and Python's ``json``: a JSON
Lines row is then parsed again by ``json`` (which keeps integers of any size exact, where
``orjson`` would turn one past 64 bits into a float), so the result never depends on the road.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import orjson

from datamon.api.attributes import (
    _DECODER,
    _ENCODER,
    _INT64,
    MAX_COLUMN,
    Row,
    Schema,
    _coerce,
    _infer,
    _shown,
    check_row,
    normalize_path,
)
from datamon.errors import UsageError

_SORT: Final = orjson.OPT_SORT_KEYS
# json writes a float in fixed notation exactly when its shortest repr has a decimal exponent in
# [-4, 16); orjson agrees there, and only there (it writes 1e16 as "1e16", json as "1e+16")
_FLOAT_LO: Final = 1e-4
_FLOAT_HI: Final = 1e16


def _plain_float(v: float) -> bool:
    return _FLOAT_LO <= v < _FLOAT_HI or -_FLOAT_HI < v <= -_FLOAT_LO or v == 0.0


def _plain(v: object) -> bool:
    """A value of a column the schema does not type, accepted as it is and written alike by
    both encoders: text without NUL, a boolean, a 64-bit integer, a fixed-notation float."""
    t = type(v)
    if t is str:
        return "\x00" not in v  # type: ignore[operator]
    if t is int:
        return -_INT64 <= v < _INT64  # type: ignore[operator]
    if t is float:
        return _plain_float(v)  # type: ignore[arg-type]
    return t is bool


# How a typed column's value is tested on the fast road (``v`` is the value): true only of values
# ``check_row`` accepts as they are and that both encoders write alike (exact built-in types).
_TESTS: Final = {
    "string": "type({v}) is str",
    "bool": "type({v}) is bool",
    "int": "(type({v}) is int and -I <= {v} < I)",
    "float": "((type({v}) is float and (LO <= {v} < HI or -HI < {v} <= -LO or {v} == 0.0))"
    " or (type({v}) is int and -I <= {v} < I))",
}
# A normal path: the test of ``normalize_path``'s fast branch inline (true only of paths it
# returns unchanged), else ``_normal``.
_PATH_TEST: Final = (
    '(type({v}) is str and (({v}.isascii() and {v} != "" and {v}[0] != "/" and {v}[0] != "."'
    ' and {v}[-1] != "/" and "//" not in {v} and "/." not in {v} and "\\x00" not in {v}) or _normal({v})))'
)
_UNKNOWN: Final[Any] = object()
_SHAPES_MAX: Final = 256  # record shapes (key sequences) given a fast test; others go the careful road
_KEYS_MAX: Final = 64


def _shape_test(keys: tuple[Any, ...], schema: Schema | None) -> Callable[[dict[str, Any]], bool] | None:
    """A test for records whose keys are exactly ``keys``, in that order: true when the record
    may take the fast road (normal path, every value plain and accepted by its column, every
    required column there). ``None`` when no record of this shape may.

    The test is compiled once per shape from fixed templates: one expression per position, the
    values unpacked in key order. Column names never reach the source (only positions do)."""
    cols = schema.attributes if schema else {}
    strict = schema is not None and schema.strict
    if (
        "path" not in keys
        or len(keys) > _KEYS_MAX
        or any(name not in keys for name, c in cols.items() if c.required)
    ):
        return None
    env: dict[str, Any] = {
        "_plain": _plain,
        "_normal": _normal,
        "I": _INT64,
        "LO": _FLOAT_LO,
        "HI": _FLOAT_HI,
    }
    tests: list[str] = []
    for i, k in enumerate(keys):
        if k == "path":
            tests.append(_PATH_TEST.format(v=f"v{i}"))
            continue
        col = cols.get(k)
        if col is None:
            if strict or not isinstance(k, str) or not 0 < len(k) <= MAX_COLUMN or "\x00" in k:
                return None
            tests.append(f"_plain(v{i})")
            continue
        test = _TESTS.get(col.type)
        if test is None:
            return None
        if col.values is not None:
            try:
                env[f"S{i}"] = frozenset(col.values)
            except TypeError:  # an unhashable listed value: no fast verdict
                return None
            # exact types only: a hashable equal value (1 == True == 1.0) of the type is a member
            test = f"({test} and {{v}} in S{i})"
        tests.append(test.format(v=f"v{i}"))
    names = ", ".join(f"v{i}" for i in range(len(keys)))
    src = f"def test(r):\n    {names}, = r.values()\n    return {' and '.join(tests)}\n"
    exec(compile(src, "<attribute row test>", "exec"), env)
    return env["test"]


def _normal(p: str) -> bool:
    try:
        return normalize_path(p, "") == p
    except UsageError:
        return False


class LineReader:
    """Turns records into ``{path: line}`` (``lines``), checking each against ``schema``."""

    def __init__(self, where: str, schema: Schema | None) -> None:
        self.where = where
        self.schema = schema
        cols = schema.attributes if schema else {}
        self.cols = cols
        self.shapes: dict[tuple[Any, ...], Callable[[dict[str, Any]], bool] | None] = {}
        self.coerced = {name for name, col in cols.items() if col.type != "string"}
        self.good_names: set[str] = set()  # column names already checked
        self.lines: dict[str, str] = {}

    def add(self, n: int, rec: Any, text: str | None = None) -> None:
        """Record ``rec`` (row ``n`` of the source); ``text`` is its JSON Lines text, if any."""
        if type(rec) is dict:
            keys = tuple(rec)
            test = self.shapes.get(keys, _UNKNOWN)
            if test is _UNKNOWN:
                test = _shape_test(keys, self.schema)
                if len(self.shapes) < _SHAPES_MAX:
                    self.shapes[keys] = test
            if test is not None and test(rec):
                path = rec["path"]
                if path not in self.lines:
                    try:
                        line = orjson.dumps(rec, option=_SORT).decode()
                    except (TypeError, orjson.JSONEncodeError):
                        pass
                    else:
                        self.lines[path] = line if len(keys) > 1 else ""
                        return
        if text is not None:  # parsed again by json: exact integers, the same errors as ever
            try:
                rec = _DECODER.decode(text)
            except (ValueError, RecursionError) as e:
                raise UsageError(f"{self.where} line {n} is not JSON: {str(e)[:80]}") from None
        self._careful(n, rec)

    def _careful(self, i: int, rec: Any) -> None:
        where = self.where
        if not isinstance(rec, Mapping):
            raise UsageError(f"{where} row {i}: not an object")
        if "path" not in rec:
            raise UsageError(f"{where} row {i}: no path column", "every row needs a 'path'")
        path = normalize_path(rec["path"], f"{where} row {i}")
        if path in self.lines:
            raise UsageError(f"{where}: path {path!r} has two rows", "give each path one row")
        cols = self.cols
        row: Row = {}
        for k, v in rec.items():
            if k not in self.good_names:
                if k == "path":
                    continue
                if not isinstance(k, str) or not 0 < len(k) <= MAX_COLUMN or "\x00" in k:
                    raise UsageError(f"{where}: column name {_shown(k)} is not 1-{MAX_COLUMN} characters")
                self.good_names.add(k)
            if v is None:
                continue
            if k in self.coerced and isinstance(v, str):
                v = _coerce(cols[k].type, v)
            row[k] = v
        check_row(path, row, self.schema)
        self.lines[path] = _ENCODER.encode({**row, "path": path}) if row else ""

    def add_all(self, records: Iterable[Any]) -> dict[str, str]:
        for i, rec in enumerate(records, 1):
            self.add(i, rec)
        return self.lines


def _read_jsonl(path: str, reader: LineReader) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:  # universal newlines, as ever
        return _read_lines(f, reader, 1)


def _read_lines(lines: Iterable[str], reader: LineReader, first: int) -> dict[str, str]:
    loads, bad = orjson.loads, orjson.JSONDecodeError
    add = reader.add
    for n, line in enumerate(lines, first):
        try:
            rec = loads(line)
        except bad:
            if not line.strip():
                continue
            rec = None  # json decides (and words the error)
        if rec is None or type(rec) is not dict:
            add(n, None, line)
        else:
            add(n, rec, line)
    return reader.lines


SPLIT_BYTES: Final = 16 << 20  # a JSON Lines file this large is read in two halves at once


def split_point(path: str) -> int | None:
    """Where a large JSON Lines file may be cut in two (just after a line end near its middle),
    or ``None`` (small, another format, no line end there)."""
    if path.lower().rsplit(".", 1)[-1] not in ("jsonl", "ndjson", "json"):
        return None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < SPLIT_BYTES:
                return None
            f.seek(size // 2)
            rest = f.read(1 << 20)
    except OSError:
        return None
    i = rest.find(b"\n")
    mid = size // 2 + i + 1
    return mid if i >= 0 and mid < size else None


def read_jsonl_part(path: str, schema: Schema | None, start: int, stop: int | None) -> dict[str, str]:
    """``read_attr_lines`` of the lines of JSON Lines file ``path`` in bytes ``[start, stop)``
    (``start`` 0 or a ``split_point``), numbered in errors as in the whole file."""
    import io

    try:
        with open(path, "rb") as f:
            first = 1
            if start:
                head = f.read(start)  # universal newlines: \r\n, \r and \n each end a line
                first += head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n")
                del head
            data = f.read() if stop is None else f.read(stop - start)
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None)
        return _read_lines(text, LineReader(path, schema), first)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def merge_parts(path: str, first: dict[str, str], second: dict[str, str]) -> dict[str, str]:
    """The rows of a file read in two parts (``read_jsonl_part``): a path in both is an error,
    named at its second row, as a reading in one pass names it."""
    for p in second:
        if p in first:
            raise UsageError(f"{path}: path {p!r} has two rows", "give each path one row")
    first.update(second)
    return first


def _csv_records(path: str, schema: Schema | None) -> Iterator[dict[str, Any]]:
    import csv

    cols = schema.attributes if schema else {}
    with open(path, encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f):
            if None in rec:
                raise UsageError(f"{path}: a row has more cells than the header")
            out: dict[str, Any] = {}
            for k, v in rec.items():
                if k == "path" or v is None:
                    out[k] = v
                elif v == "":
                    out[k] = None
                elif k in cols:
                    out[k] = v if cols[k].type == "string" else _coerce(cols[k].type, v)
                else:
                    out[k] = _infer(v)
            yield out


def _parquet_records(path: str) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading Parquet needs pyarrow", "pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own errors for bad files
        raise UsageError(f"cannot read {path} as Parquet: {str(e)[:120]}") from None
    for batch in table.to_batches():
        yield from batch.to_pylist()


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and v != v


def read_attr_lines(source: Any, schema: Schema | None = None) -> dict[str, str]:
    """``{path: line}`` (see the module docstring) from a file (JSON Lines ``.jsonl``/``.ndjson``/
    ``.json``, ``.csv``, ``.parquet``), a mapping path -> row, or an iterable of rows with a
    ``path`` key (a pandas DataFrame too). Checked against ``schema``; ``UsageError`` names the
    path, column and value."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise UsageError(f"attributes file {path!r} does not exist")
        ext = path.lower().rsplit(".", 1)[-1]
        reader = LineReader(path, schema)
        try:
            if ext in ("jsonl", "ndjson", "json"):
                return _read_jsonl(path, reader)
            if ext == "csv":
                return reader.add_all(_csv_records(path, schema))
            if ext in ("parquet", "pq"):
                return reader.add_all(_parquet_records(path))
        except UnicodeDecodeError:
            raise UsageError(f"{path} is not UTF-8 text") from None
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
        raise UsageError(f"attributes file {path!r}: unknown format", "name it .jsonl, .csv or .parquet")
    reader = LineReader("attributes", schema)
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        records = source.to_dict("records")
        return reader.add_all({k: (None if _is_nan(v) else v) for k, v in r.items()} for r in records)
    if isinstance(source, Mapping):
        return reader.add_all({**dict(v), "path": k} for k, v in source.items())
    return reader.add_all(source)


def missing_files(root: str, paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that are not regular files the walk of ``root`` reaches: each directory
    they name is checked to be a directory reached without a symlink, and listed once."""
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        d, _, name = p.rpartition("/")
        names = by_dir.get(d)
        if names is None:
            by_dir[d] = [name]
        else:
            names.append(name)
    real: dict[str, bool] = {"": True}  # relative directory -> a real directory, no symlink above

    def is_real(d: str) -> bool:
        todo: list[str] = []
        while d not in real:
            todo.append(d)
            d = d.rpartition("/")[0]
        ok = real[d]
        for sub in reversed(todo):
            if ok:
                try:
                    ok = stat.S_ISDIR(os.lstat(os.path.join(root, sub)).st_mode)
                except (OSError, ValueError):
                    ok = False
            real[sub] = ok
        return ok

    missing: set[str] = set()
    for d, names in by_dir.items():
        files: set[str] = set()
        if is_real(d):
            try:
                with os.scandir(os.path.join(root, d) if d else root) as it:
                    for e in it:
                        try:
                            if e.is_file(follow_symlinks=False):
                                files.add(e.name)
                        except OSError:
                            continue
            except (OSError, ValueError):
                pass  # the walk reports it (or skips it with --skip-on-error)
        prefix = d + "/" if d else ""
        missing.update(prefix + n for n in names if n not in files)
    return missing
