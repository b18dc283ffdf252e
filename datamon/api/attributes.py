"""Bundle metadata, file attributes and repo schemas (docs/query.md).

- **Meta** is a JSON object stored in the bundle record (so the bundle id covers it).
- **Attributes** are one row of scalar columns per file path. A bundle's rows are one
  content-addressed object in the blob store, ``attrs/<hex BLAKE3 of the raw bytes>`` (format in
  docs/format.md), named by the record's ``attrs`` key: immutable with the bundle, and the source
  ``admin reindex`` rebuilds the file index from.
- **Schemas** (``repo schema set``) type attribute columns and meta keys; an upload that breaks
  the schema in force fails before anything is written.

An upload without ``--attributes`` still carries over the rows of its first parent for every file
it keeps unchanged (same path, same file key); new rows replace old ones path by path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from datamon.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

ATTRS_BLOB_PREFIX: Final = "attrs/"
MAX_ATTRS_BYTES: Final = 1 << 30  # raw and stored size cap of an attributes object
MAX_COLUMN: Final = 255
TYPES: Final = ("string", "int", "float", "bool")
# Columns of the ``files`` view; a schema column may not take one of these names.
RESERVED: Final = frozenset(
    {"repo", "bundle", "path", "name", "kind", "size", "key", "mode", "mtime", "mtime_ns", "attrs"}
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_INT64 = 1 << 63
_SHOW = 3  # offending paths named in an error

Row = dict[str, Any]  # column -> scalar value (no "path", no nulls)


def _shown(v: object) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(obj: object) -> str:
    """Compact JSON, sorted keys, no ASCII escaping: the form every stored JSON of this module has."""
    return _ENCODER.encode(obj)  # one encoder for all: json.dumps with options builds one per call


def _row_encoder() -> Callable[[Row], str]:
    """``canonical`` of a row (a dict of scalars), for a million rows: json's C encoder made once
    (``JSONEncoder.encode`` makes one per call), byte for byte what ``_ENCODER`` writes; plain
    ``canonical`` where there is no C encoder."""
    from json import encoder as je

    make, enc_str = getattr(je, "c_make_encoder", None), getattr(je, "c_encode_basestring", None)
    if make is None or enc_str is None:
        return _ENCODER.encode
    c = make({}, _ENCODER.default, enc_str, None, ":", ",", True, False, False)
    join = "".join
    return lambda row: join(c(row, 0))


# --- schemas ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    type: str
    required: bool = False
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Schema:
    """A repo's schema: typed attribute columns and meta keys. ``strict`` refuses anything else."""

    attributes: dict[str, Column] = field(default_factory=dict)
    meta: dict[str, Column] = field(default_factory=dict)
    strict: bool = False

    @property
    def empty(self) -> bool:
        return not self.attributes and not self.meta and not self.strict

    def as_json(self) -> dict[str, Any]:
        def cols(d: dict[str, Column]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, c in d.items():
                spec: dict[str, Any] = {"type": c.type, "required": c.required}
                if c.values is not None:
                    spec["values"] = list(c.values)
                out[name] = spec
            return out

        if self.empty:
            return {}
        return {"attributes": cols(self.attributes), "meta": cols(self.meta), "strict": self.strict}


def _type_ok(kind: str, v: object) -> bool:
    if kind == "string":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64
    if kind == "float":
        return (isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64) or (
            isinstance(v, float) and math.isfinite(v)
        )
    return False


def parse_schema(doc: object) -> Schema:
    """A ``Schema`` from its JSON document, or ``UsageError`` saying what is wrong::

    {"attributes": {"label": {"type": "string", "required": true, "values": ["cat", "dog"]},
                    "width": {"type": "int"}},
     "meta": {"source": {"type": "string", "required": true}},
     "strict": false}
    """
    hint = "see docs/query.md#schemas for the schema format"
    if not isinstance(doc, dict) or not set(doc) <= {"attributes", "meta", "strict"}:
        raise UsageError("a schema is a JSON object with keys attributes, meta and strict", hint)
    strict = doc.get("strict", False)
    if not isinstance(strict, bool):
        raise UsageError("schema: strict must be true or false", hint)

    def columns(section: str, ident: bool) -> dict[str, Column]:
        spec = doc.get(section, {})
        if not isinstance(spec, dict):
            raise UsageError(f"schema: {section} must be an object of column -> spec", hint)
        out: dict[str, Column] = {}
        for name, c in spec.items():
            where = f"schema: {section} {name!r}"
            if ident and (not _IDENT.match(name) or name.lower() in RESERVED):
                raise UsageError(
                    f"{where}: an attribute column is a SQL identifier (letters, digits, _; at most 63) "
                    f"and not one of {', '.join(sorted(RESERVED))}",
                    hint,
                )
            if not ident and (not 0 < len(name) <= MAX_COLUMN or "\x00" in name):
                raise UsageError(f"{where}: a meta key is 1-{MAX_COLUMN} characters without NUL", hint)
            if not isinstance(c, dict) or not set(c) <= {"type", "required", "values"}:
                raise UsageError(f"{where}: give an object with type, required and values", hint)
            kind = c.get("type")
            if kind not in TYPES:
                raise UsageError(f"{where}: type must be one of {', '.join(TYPES)}", hint)
            required = c.get("required", False)
            if not isinstance(required, bool):
                raise UsageError(f"{where}: required must be true or false", hint)
            values = c.get("values")
            if values is not None:
                if not isinstance(values, list) or not values:
                    raise UsageError(f"{where}: values must be a non-empty list", hint)
                bad = [v for v in values if not _type_ok(kind, v)]
                if bad:
                    raise UsageError(f"{where}: allowed value {_shown(bad[0])} is not of type {kind}", hint)
                values = tuple(values)
            out[name] = Column(kind, required, values)
        return out

    return Schema(columns("attributes", True), columns("meta", False), strict)


def load_schema(ctx: Context, repo: str) -> Schema | None:
    """The schema in force for ``repo``, or ``None``."""
    rec = ctx.meta.get_schema(repo)
    if rec is None:
        return None
    try:
        s = parse_schema(json.loads(rec.schema))
    except (ValueError, UsageError) as e:
        raise IntegrityError(
            f"repo {repo!r}: its schema version {rec.version} is damaged ({e})",
            "set a new one with `datamon repo schema set`",
        ) from None
    return None if s.empty else s


def set_schema(ctx: Context, repo: str, doc: object) -> Any:
    """Check and store a new version of ``repo``'s schema (``{}`` lifts it); returns the record."""
    s = parse_schema(doc)
    who = ctx.contributor
    contributor = f"{who.name} <{who.email}>" if who.email else who.name
    return ctx.meta.set_schema(repo, canonical(s.as_json()), contributor=contributor)


def _coerce(kind: str, text: str) -> Any:
    """``text`` (from a CSV cell or ``--meta K=V``) as a value of type ``kind``, else itself."""
    t = text.strip()
    try:
        if kind == "int" and re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        if kind == "float":
            f = float(t)
            return int(t) if re.fullmatch(r"[+-]?\d+", t) else f
        if kind == "bool" and t.lower() in ("true", "false", "1", "0", "yes", "no"):
            return t.lower() in ("true", "1", "yes")
    except ValueError:
        pass
    return text


def _infer(text: str) -> Any:
    """A CSV cell without a schema type: integers (no leading zeros), decimals, true/false, else text."""
    if re.fullmatch(r"-?(0|[1-9]\d{0,17})", text):
        return int(text)
    if re.fullmatch(r"-?(0|[1-9]\d*)?\.\d+([eE][+-]?\d+)?|-?(0|[1-9]\d*)(\.\d+)?[eE][+-]?\d+", text):
        f = float(text)
        if math.isfinite(f):
            return f
    if text in ("true", "false"):
        return text == "true"
    return text


def _check_value(where: str, name: str, v: object, col: Column | None) -> None:
    if col is None:
        if not (isinstance(v, str | bool) or _type_ok("float", v)):
            raise UsageError(
                f"{where}: column {name!r} value {_shown(v)} is not a string, number or boolean",
                "attribute values are scalars; put structures in a string",
            )
        if isinstance(v, str) and ("\x00" in v or any("\ud800" <= ch <= "\udfff" for ch in v)):
            raise UsageError(f"{where}: column {name!r} value {_shown(v)} is not storable text")
        return
    if not _type_ok(col.type, v):
        raise UsageError(
            f"{where}: column {name!r} value {_shown(v)} is not of type {col.type} (repo schema)",
            "fix the value or the schema (`datamon repo schema get`)",
        )
    if col.values is not None and v not in col.values:
        raise UsageError(
            f"{where}: column {name!r} value {_shown(v)} is not one of {_shown(list(col.values))} "
            "(repo schema)",
            "fix the value or the schema (`datamon repo schema get`)",
        )


def check_row(path: str, row: Mapping[str, Any], schema: Schema | None) -> None:
    """``UsageError`` naming the path, the column and the value unless ``row`` fits ``schema``."""
    where = f"attributes of {path!r}"
    cols = schema.attributes if schema else {}
    for name, v in row.items():
        col = cols.get(name)
        if col is None and schema is not None and schema.strict:
            raise UsageError(
                f"{where}: column {name!r} (value {_shown(v)}) is not in the repo's strict schema",
                "add it to the schema or drop the column",
            )
        _check_value(where, name, v, col)
    for name, col in cols.items():
        if col.required and name not in row:
            raise UsageError(
                f"{where}: required column {name!r} is missing (value null)",
                "give every row a value for it, or make it optional in the schema",
            )


def check_meta(meta: Mapping[str, Any] | None, schema: Schema | None) -> dict[str, Any]:
    """``meta`` checked (and ``--meta`` strings coerced to schema types); ``UsageError`` else."""
    from datamon.meta.records import meta_problem

    out = dict(meta or {})
    cols = schema.meta if schema else {}
    for k, v in list(out.items()):
        col = cols.get(k)
        if isinstance(v, str) and col is not None and col.type != "string":
            out[k] = v = _coerce(col.type, v)
        if v is None:
            del out[k]
            continue
        if col is None and schema is not None and schema.strict:
            raise UsageError(f"bundle meta: key {k!r} (value {_shown(v)}) is not in the repo's strict schema")
        if col is not None:
            _check_value("bundle meta", k, v, col)
    for k, col in cols.items():
        if col.required and k not in out:
            raise UsageError(
                f"bundle meta: required key {k!r} is missing (repo schema)", f"pass --meta {k}=VALUE"
            )
    problem = meta_problem(out)
    if problem:
        raise UsageError(f"bundle meta: {problem}")
    return out


def parse_meta_args(pairs: Sequence[str], meta_file: str | None) -> dict[str, Any]:
    """``--meta-file FILE.json`` (an object) overlaid with ``--meta KEY=VALUE`` pairs (strings)."""
    out: dict[str, Any] = {}
    if meta_file:
        try:
            with open(meta_file, encoding="utf-8") as f:
                doc = json.load(f, parse_constant=_no_constant)
        except OSError as e:
            raise UsageError(f"cannot read --meta-file {meta_file}: {e.strerror or e}") from None
        except (ValueError, RecursionError) as e:
            raise UsageError(f"--meta-file {meta_file} is not JSON: {str(e)[:80]}") from None
        if not isinstance(doc, dict):
            raise UsageError(f"--meta-file {meta_file} must hold a JSON object")
        out.update(doc)
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise UsageError(f"--meta {p!r} is not KEY=VALUE")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)  # json.loads with options builds one per call


# --- reading attribute files -------------------------------------------------------------------


def normalize_path(p: object, where: str) -> str:
    """A bundle path as stored in the index: components joined by ``/``, no ``./``, no ``..``."""
    if (  # already normal (the common case, one per attribute row): ASCII, so no surrogate
        isinstance(p, str)
        and p.isascii()
        and p
        and p[0] != "/"
        and p[-1] != "/"
        and "//" not in p
        and "\x00" not in p
        and "/." not in p
        and p[0] != "."
    ):
        return p
    from datamon.api.bundles import split_path

    if not isinstance(p, str) or not p:
        raise UsageError(f"{where}: path {_shown(p)} is not a non-empty string")
    parts = split_path(p)
    if not parts:
        raise UsageError(f"{where}: path {_shown(p)} names the bundle root, not a file")
    if any("\ud800" <= ch <= "\udfff" for ch in p):
        raise UsageError(f"{where}: path {_shown(p)} is not valid UTF-8")
    return "/".join(parts)


# --- the attributes object ---------------------------------------------------------------------


def _path_order(p: str) -> bytes:
    return p.encode("utf-8")


def lines_of_rows(rows: Mapping[str, Row]) -> dict[str, str]:
    """Rows as their lines in the attributes object: canonical JSON of the row with its path
    (``""`` for an empty row: it has no line)."""
    enc = _row_encoder()
    return {p: enc({**r, "path": p}) if r else "" for p, r in rows.items()}


def row_of_line(line: str) -> Row:
    """The row (without its path) of an object line (``{}`` for ``""``)."""
    if not line:
        return {}
    d: Row = _DECODER.decode(line)
    d.pop("path", None)
    return d


def encode_attr_lines(lines: Mapping[str, str]) -> bytes:
    """The canonical attributes object of rows given as their lines (``lines_of_rows``; ``""``
    lines are left out): one line per path with a non-empty row, in path byte order, each
    ``{"path": ..., column: value, ...}`` in compact sorted JSON, ending in a newline."""
    # path byte order is code point order: UTF-8 keeps it (and a surrogate fails the encode below)
    paths = sorted(p for p, line in lines.items() if line)
    text = "\n".join([lines[p] for p in paths])
    return (text + "\n").encode("utf-8") if paths else b""


def without_path(line: str, path: str) -> str:
    """``line`` (canonical JSON of a row with ``path``, and at least one other column) without its
    path member: the row's canonical JSON, what the file index stores. In compact JSON a comma
    followed by an unescaped quote only ever starts a member (quotes inside strings are escaped),
    so the first ``,"path":`` is the member."""
    member = '"path":' + _ENCODER.encode(path)
    if line.startswith("{" + member + ","):
        return "{" + line[len(member) + 2 :]
    i = line.index("," + member)
    return line[:i] + line[i + len(member) + 1 :]


def decode_attr_lines(raw: bytes, key: str = "") -> dict[str, str]:
    """The lines of an attributes object by path, refusing (``IntegrityError``) anything an honest
    writer would not write: not UTF-8, a line that is not canonical JSON, a bad path, a non-scalar
    value, paths not strictly increasing."""
    return {path: line for path, line, _ in _decoded(raw, key)}


def decode_attrs(raw: bytes, key: str = "") -> dict[str, Row]:
    """The rows of an attributes object (``decode_attr_lines``, decoded)."""
    return {path: row for path, _, row in _decoded(raw, key)}


def _decoded(raw: bytes, key: str) -> Iterator[tuple[str, str, Row]]:
    def bad(why: str) -> IntegrityError:
        return IntegrityError(
            f"attributes object {key or '(unknown)'} is damaged ({why})",
            "run `datamon verify`; restore the blob store from a backup",
        )

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8") from None
    if text and not text.endswith("\n"):
        raise bad("no final newline")
    last = b""
    enc = _row_encoder()
    for n, line in enumerate(text.split("\n")[:-1], 1):
        try:
            d = _DECODER.decode(line)
        except (ValueError, RecursionError):
            raise bad(f"line {n} is not JSON") from None
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or len(d) < 2:
            raise bad(f"line {n} is not a row")
        path = d["path"]
        try:
            if normalize_path(path, "") != path:
                raise bad(f"line {n}: path is not normal")
            if enc(d) != line:
                raise bad(f"line {n} is not canonical")
            del d["path"]
            check_row(path, d, None)
        except UsageError as e:
            raise bad(f"line {n}: {e.message}") from None
        order = _path_order(path)
        if order <= last and n > 1:
            raise bad(f"line {n}: paths out of order")
        last = order
        yield path, line, d


def store_attrs(ctx: Context, rows: Mapping[str, Row]) -> str | None:
    """Write the attributes object of ``rows`` (if not there yet); its key (hex), or ``None``
    when there is no row."""
    return store_attr_lines(ctx, lines_of_rows(rows))


def store_attr_lines(ctx: Context, lines: Mapping[str, str]) -> str | None:
    """``store_attrs`` of rows given as their object lines (``lines_of_rows``)."""
    packed = pack_attr_lines(lines)
    return put_packed(ctx, packed) if packed is not None else None


Packed = tuple[str, bytes]  # an attributes object's key (hex) and its stored (compressed) bytes


def pack_attr_lines(lines: Mapping[str, str]) -> Packed | None:
    """The attributes object of ``lines``, encoded and compressed, ready to store (``put_packed``);
    ``None`` when there is no row."""
    raw = encode_attr_lines(lines)
    return pack_attrs(raw) if raw else None


def pack_attrs(raw: bytes) -> Packed:
    """The encoded attributes object ``raw``, named and compressed (``put_packed`` stores it)."""
    import zstandard

    from datamon.cas.hashing import key_of

    if len(raw) > MAX_ATTRS_BYTES:
        raise UsageError(f"the attributes are {len(raw)} bytes encoded, more than {MAX_ATTRS_BYTES}")
    return key_of(raw).hex(), zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)


def put_packed(ctx: Context, packed: Packed) -> str:
    """Store a packed attributes object (if not there yet); its key (hex)."""
    key, data = packed
    name = ATTRS_BLOB_PREFIX + key
    blobs = ctx.cas.blobs
    if blobs.size(name) is None:
        blobs.put(name, data)
    return key


def load_attrs(ctx: Context, key: str) -> dict[str, Row]:
    """The rows of the attributes object ``key``, verified (``IntegrityError``, ``MissingObject``)."""
    return decode_attrs(read_attrs(ctx, key), key)


def read_attrs(ctx: Context, key: str) -> bytes:
    """The bytes of the attributes object ``key``, proven to hash to it (``IntegrityError``,
    ``MissingObject``); not decoded (``decode_attrs``)."""
    import zstandard

    from datamon.cas.hashing import key_of
    from datamon.errors import MissingObject

    if not _HEX64.match(key):
        raise IntegrityError(f"attributes key {key[:80]!r} is not a key")
    name = ATTRS_BLOB_PREFIX + key
    blobs = ctx.cas.blobs
    size = blobs.size(name)
    if size is None:
        raise MissingObject(
            f"attributes object {key} is missing from the blob store",
            "restore the blob store from a backup",
        )
    if size > MAX_ATTRS_BYTES:
        raise IntegrityError(f"attributes object {key} is {size} bytes, more than an object can be")
    data = blobs.get(name)
    try:
        d = zstandard.ZstdDecompressor()
        params = zstandard.get_frame_parameters(data)
        if params.content_size > MAX_ATTRS_BYTES:
            raise IntegrityError(f"attributes object {key} declares {params.content_size} bytes")
        raw = d.decompress(data, max_output_size=MAX_ATTRS_BYTES)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"attributes object {key} is damaged ({e})") from None
    if key_of(raw).hex() != key:
        raise IntegrityError(
            f"attributes object {key} does not hash to its name",
            "run `datamon verify`; restore the blob store from a backup",
        )
    return raw


def bundle_attrs(ctx: Context, b: BundleRecord) -> dict[str, Row]:
    """The attribute rows of bundle ``b`` (``{}`` without any)."""
    return load_attrs(ctx, b.attrs) if b.attrs else {}


# --- carrying rows over --------------------------------------------------------------------------


def unchanged_files(ctx: Context, old_tree: str, new_tree: str, paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that are the same file (kind and key) in both trees. Identical subtrees
    are not read."""
    from datamon.api.bundles import Descend, Step, flatten

    trie: dict[str, Any] = {}
    for p in paths:
        node = trie
        parts = p.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part + "/", {})
        node[parts[-1]] = p
    cas = ctx.cas

    def every(node: dict[str, Any]) -> Iterator[str]:
        for v in node.values():
            if isinstance(v, str):
                yield v
            else:
                yield from every(v)

    def walk(old: bytes, new: bytes, node: dict[str, Any]) -> Step[str]:
        if old == new:
            yield from every(node)
            return
        o = {e.name: e for e in cas.read_tree(old)}
        n = {e.name: e for e in cas.read_tree(new)}
        for name, v in node.items():
            if isinstance(v, str):
                a, b = o.get(name), n.get(name)
                if a is not None and b is not None and not a.is_dir and a.kind == b.kind and a.key == b.key:
                    yield v
            else:
                a, b = o.get(name[:-1]), n.get(name[:-1])
                if a is not None and b is not None and a.is_dir and b.is_dir:
                    yield Descend(walk(a.key, b.key, v))

    return set(flatten(walk(bytes.fromhex(old_tree), bytes.fromhex(new_tree), trie)))


# --- what an upload adds to its bundle ------------------------------------------------------------


@dataclass
class Extras:
    """Meta and attributes of a bundle being made. ``prepare`` checks everything that can be
    checked before a byte is written; ``finish`` carries rows over and stores the object.
    Rows are kept as their object lines (``lines_of_rows``: canonical JSON with the path; ``""`` for
    a row with no value), a million of them in a few hundred MiB."""

    repo: str
    meta: dict[str, Any]
    lines: dict[str, str] | None  # new rows (None: no attributes given)
    schema: Schema | None
    parent: BundleRecord | None = None
    parent_lines: dict[str, str] = field(default_factory=dict)
    final_lines: dict[str, str] = field(default_factory=dict)  # the bundle's rows, once ``finish`` ran
    carried: int = 0  # rows ``finish`` carried over from the parent

    @property
    def needs_paths(self) -> bool:
        """Whether ``check_paths`` has anything to check (else an upload skips it)."""
        return bool(self.lines) or (self.schema is not None and bool(self.parent_lines))

    @property
    def final_known(self) -> bool:
        """Whether the bundle's rows are known before the walk: new rows for every path the
        parent has rows for (nothing can be carried over), so an upload may index its
        directories as it walks them (``api/walkindex.py``)."""
        if not self.lines:
            return False
        new = self.lines
        return all(p in new for p in self.parent_lines)

    def check_paths(self, missing_of: Callable[[Iterable[str]], set[str]]) -> None:
        """Refuse rows for paths that are not files of the upload (exit 1, naming the first few),
        and check the parent rows that may be carried over against the schema in force.
        ``missing_of(paths)`` is the set of those ``paths`` that are not files of the upload."""
        if self.lines:
            missing = sorted(missing_of(self.lines))
            if missing:
                more = f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
                raise UsageError(
                    f"attributes name {len(missing)} path(s) that are not files of the upload: "
                    + ", ".join(repr(p) for p in missing[:_SHOW])
                    + more,
                    "paths are relative to --path, '/'-separated",
                )
        if self.schema is not None and self.parent_lines:
            new = self.lines or {}
            candidates = [p for p in self.parent_lines if p not in new]
            gone = missing_of(candidates)
            for p in candidates:
                if p not in gone:
                    check_row(p, row_of_line(self.parent_lines[p]), self.schema)

    def finish(
        self,
        ctx: Context,
        tree: str,
        parents: Sequence[str],
        *,
        packed: Callable[[], Packed | None] | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """(meta, attributes key) for the bundle with root ``tree`` and ``parents``. ``packed``
        gives ``pack_attr_lines`` of the new rows, if the caller made it (used if nothing is
        carried over)."""
        lines: dict[str, str] = {}
        parent = self.parent
        if parents and (parent is None or parent.id != parents[0]):
            parent = ctx.meta.find_bundle(parents[0])
            self.parent_lines = _bundle_lines(ctx, parent) if parent is not None else {}
        if not parents:
            parent, self.parent_lines = None, {}
        self.carried = 0
        if parent is not None and self.parent_lines:
            new = self.lines or {}
            candidates = [p for p in self.parent_lines if p not in new]
            for p in unchanged_files(ctx, parent.tree, tree, candidates):
                lines[p] = self.parent_lines[p]
                if self.schema is not None:
                    check_row(p, row_of_line(lines[p]), self.schema)
            self.carried = len(lines)
        if self.lines:
            if lines:
                lines.update(self.lines)
            else:
                lines = self.lines  # nothing carried: the new rows as they are (no copy)
        self.final_lines = lines
        if packed is not None and not self.carried:
            made = packed()
            return self.meta, put_packed(ctx, made) if made is not None else None
        return self.meta, store_attr_lines(ctx, lines) if lines else None


def _bundle_lines(ctx: Context, b: BundleRecord) -> dict[str, str]:
    return decode_attr_lines(read_attrs(ctx, b.attrs), b.attrs) if b.attrs else {}


def prepare(
    ctx: Context,
    repo: str,
    *,
    meta: Mapping[str, Any] | None = None,
    attributes: Any = None,
    parents: Sequence[str] | None = None,
) -> Extras:
    """Read and check ``meta`` and ``attributes`` against the repo's schema, and load the rows
    of the parent (``parents[0]``, else the latest bundle) that may be carried over."""
    from datamon.api.attrfiles import read_attr_lines

    schema = load_schema(ctx, repo)
    m = check_meta(meta, schema)
    lines = read_attr_lines(attributes, schema) if attributes is not None else None
    parent = ctx.meta.find_bundle(parents[0]) if parents else ctx.meta.latest_bundle(repo)
    parent_lines = _bundle_lines(ctx, parent) if parent is not None else {}
    return Extras(repo, m, lines, schema, parent, parent_lines)
