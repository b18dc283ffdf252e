"""Read-only SQL over documented views of the metadata database (``datamon query``, docs/query.md).

Read-only is enforced by the database, never by looking at the SQL:

- **SQLite**: a separate connection opened with ``mode=ro`` (the file cannot be written through it),
  ``PRAGMA query_only``, and an authorizer that allows reading tables, calling functions and
  recursive CTEs only (``ATTACH``, ``PRAGMA`` writes, temp tables, ``VACUUM INTO`` are denied).
  Python's sqlite3 runs one statement per call. A progress handler stops a query at its timeout.
- **PostgreSQL**: a fresh session; the statement is parsed by the server as the query of
  ``DECLARE … CURSOR`` (only ``SELECT``/``VALUES``/``WITH … SELECT``, no data-modifying ``WITH``)
  sent with the extended protocol (one statement, no ``; COMMIT; …``), inside a ``READ ONLY``
  transaction with ``statement_timeout``, rolled back at the end.

The views are temporary views created in that connection before the query runs: ``files`` has one
typed column per attribute column of the repo schemas in force, so they cannot be fixed in a
migration.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote

from datamon.errors import StoreUnavailable, UsageError

FETCH: Final = 1000
DEFAULT_TIMEOUT_S: Final = 60.0
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Columns of every view, in order (the schema columns of ``files`` go before ``attrs``).
VIEW_COLUMNS: Final = {
    "files": ("repo", "bundle", "path", "name", "kind", "size", "key", "mode", "mtime", "mtime_ns", "attrs"),
    "bundles": (
        "repo",
        "id",
        "time",
        "time_ns",
        "contributor",
        "message",
        "parents",
        "meta",
        "files",
        "size",
        "tree",
        "attrs_key",
    ),
    "labels": ("repo", "label", "bundle", "time", "time_ns", "contributor"),
    "label_history": ("repo", "label", "old_bundle", "new_bundle", "time", "time_ns", "contributor"),
    "repos": ("repo", "description", "time", "time_ns", "creator", "bundles"),
}


@dataclass(frozen=True)
class SchemaColumn:
    name: str
    type: str  # string, int, float, bool, or "json" when repos disagree


def _iso_sqlite(ns: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {ns} / 1000000000, 'unixepoch')"


def _iso_pg(ns: str) -> str:
    return f"to_char(to_timestamp({ns} / 1000000000) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"


def _contributor(name: str, email: str) -> str:
    return f"CASE WHEN {email} <> '' THEN {name} || ' <' || {email} || '>' ELSE {name} END"


def view_sql(dialect: str, columns: list[SchemaColumn], p: str) -> dict[str, str]:
    """``CREATE TEMP VIEW`` statements for ``dialect`` with the given schema columns in ``files``.
    ``p`` qualifies the tables (``main.``, ``"public".``): a temp view hides a table of its name."""
    pg = dialect == "postgresql"
    iso = _iso_pg if pg else _iso_sqlite
    extra = []
    for c in columns:
        if not _IDENT.match(c.name):  # schemas only allow identifiers; never build SQL from others
            continue
        if pg:
            expr = f"f.attrs ->> '{c.name}'" if c.type != "json" else f"f.attrs -> '{c.name}'"
            cast = {"int": "bigint", "float": "double precision", "bool": "boolean"}.get(c.type)
            expr = f"({expr})::{cast}" if cast else expr
        else:
            expr = f"json_extract(f.attrs, '$.{c.name}')"
        extra.append(f'{expr} AS "{c.name}"')
    key = "encode(f.key, 'hex')" if pg else "lower(hex(f.key))"
    prefix0 = "''::text" if pg else "''"
    files = f"""
CREATE TEMP VIEW files AS
WITH RECURSIVE walk(bundle_id, node, prefix) AS (
  SELECT bundle_id, node, {prefix0} FROM {p}bundle_index
  UNION ALL
  SELECT w.bundle_id, l.child,
         CASE WHEN l.name = '' THEN w.prefix ELSE w.prefix || l.name || '/' END
  FROM walk w JOIN {p}index_links l ON l.node = w.node
)
SELECT r.name AS repo, b.id AS bundle, w.prefix || f.name AS path, f.name AS name,
       CASE f.kind WHEN 1 THEN 'file' WHEN 3 THEN 'symlink' ELSE 'other' END AS kind,
       f.size AS size, CASE WHEN f.kind = 1 THEN {key} END AS key, f.mode AS mode,
       {iso("f.mtime_ns")} AS mtime, f.mtime_ns AS mtime_ns,
       {"".join(e + ", " for e in extra)}f.attrs AS attrs
FROM walk w
JOIN {p}index_files f ON f.node = w.node
JOIN {p}bundles b ON b.id = w.bundle_id
JOIN {p}repos r ON r.id = b.repo_id"""
    if pg:
        parents = (
            f"COALESCE((SELECT jsonb_agg(p.parent_id ORDER BY p.position) FROM {p}bundle_parents p "
            "WHERE p.bundle_id = b.id), '[]'::jsonb)"
        )
        record = "convert_from(b.record, 'UTF8')::jsonb"
        meta = f"COALESCE({record} -> 'meta', '{{}}'::jsonb)"
        attrs_key = f"{record} ->> 'attrs'"
    else:
        parents = (
            f"(SELECT json_group_array(p.parent_id) FROM (SELECT parent_id FROM {p}bundle_parents "
            "WHERE bundle_id = b.id ORDER BY position) p)"
        )
        meta = "COALESCE(json_extract(CAST(b.record AS TEXT), '$.meta'), '{}')"
        attrs_key = "json_extract(CAST(b.record AS TEXT), '$.attrs')"
    bundles = f"""
CREATE TEMP VIEW bundles AS
SELECT r.name AS repo, b.id AS id, {iso("b.created_ns")} AS time, b.created_ns AS time_ns,
       {_contributor("b.contributor_name", "b.contributor_email")} AS contributor,
       b.message AS message, {parents} AS parents, {meta} AS meta,
       b.file_count AS files, b.total_size AS size, b.tree AS tree, {attrs_key} AS attrs_key
FROM {p}bundles b JOIN {p}repos r ON r.id = b.repo_id"""
    labels = f"""
CREATE TEMP VIEW labels AS
SELECT r.name AS repo, l.name AS label, l.bundle_id AS bundle, {iso("l.updated_ns")} AS time,
       l.updated_ns AS time_ns, l.contributor AS contributor
FROM {p}labels l JOIN {p}repos r ON r.id = l.repo_id"""
    history = f"""
CREATE TEMP VIEW label_history AS
SELECT r.name AS repo, h.name AS label, h.old_bundle_id AS old_bundle, h.new_bundle_id AS new_bundle,
       {iso("h.time_ns")} AS time, h.time_ns AS time_ns, h.contributor AS contributor
FROM {p}label_history h JOIN {p}repos r ON r.id = h.repo_id"""
    repos = f"""
CREATE TEMP VIEW repos AS
SELECT r.name AS repo, r.description AS description, {iso("r.created_ns")} AS time,
       r.created_ns AS time_ns, {_contributor("r.creator_name", "r.creator_email")} AS creator,
       (SELECT count(*) FROM {p}bundles b WHERE b.repo_id = r.id) AS bundles
FROM {p}repos r"""
    return {"files": files, "bundles": bundles, "labels": labels, "label_history": history, "repos": repos}


def schema_columns(schemas: Mapping[str, str]) -> list[SchemaColumn]:
    """The union of the attribute columns of ``schemas`` (repo -> canonical schema JSON), by name;
    a column two repos type differently is ``json`` (its raw JSON value)."""
    types: dict[str, str] = {}
    for text in schemas.values():
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
        if not isinstance(attrs, dict):
            continue
        for name, spec in attrs.items():
            t = spec.get("type") if isinstance(spec, dict) else None
            if not isinstance(name, str) or t not in ("string", "int", "float", "bool"):
                continue
            types[name] = t if types.get(name, t) == t else "json"
    return [SchemaColumn(n, types[n]) for n in sorted(types)]


def _value(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


class QueryResult:
    """The columns of a running query and an iterator over its rows (tuples of plain values).
    Close it (or exhaust it) to release the connection."""

    def __init__(self, columns: list[str], rows: Iterator[tuple[Any, ...]], close: Any) -> None:
        self.columns = columns
        self._rows = rows
        self._close = close

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        try:
            for r in self._rows:
                yield tuple(_value(v) for v in r)
        finally:
            self.close()

    def close(self) -> None:
        if self._close is not None:
            c, self._close = self._close, None
            c()

    def __enter__(self) -> QueryResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refused(detail: str) -> UsageError:
    return UsageError(
        f"the query failed: {detail}",
        "datamon query runs one read-only SELECT over the views files, bundles, labels, "
        "label_history and repos (docs/query.md)",
    )


# --- SQLite --------------------------------------------------------------------------------------

_SQLITE_READ: Final = frozenset({20, 21, 31, 33})  # SQLITE_READ, _SELECT, _FUNCTION, _RECURSIVE
_SQLITE_PRAGMA: Final = 19
_READ_PRAGMAS: Final = frozenset({"table_info", "table_xinfo"})


def _sqlite_module() -> Any:
    """The SQLite driver for queries: ``pysqlite3`` when installed (a current SQLite, installed
    with datamon on Linux x86-64: its JSON functions take a third of the time of SQLite 3.40's
    over a million files' attributes), else the standard library's ``sqlite3``. Both get the
    same read-only connection, pragma and authorizer."""
    import importlib

    try:
        return importlib.import_module("pysqlite3")
    except ImportError:
        return importlib.import_module("sqlite3")


def _sqlite_query(path: str, sql: str, columns: list[SchemaColumn], timeout_s: float) -> QueryResult:
    sqlite3 = _sqlite_module()

    try:
        db = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=30, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open the metadata database read-only: {e}") from None
    try:
        for stmt in view_sql("sqlite", columns, "main.").values():
            db.execute(stmt)
        db.execute("PRAGMA query_only = 1")

        def authorize(action: int, arg1: Any, _arg2: Any, _db: Any, _src: Any) -> int:
            if action in _SQLITE_READ:
                return sqlite3.SQLITE_OK
            if action == _SQLITE_PRAGMA and arg1 in _READ_PRAGMAS:
                return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY

        db.set_authorizer(authorize)
        deadline = time.monotonic() + timeout_s
        db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        try:
            cur = db.execute(sql)
        except (sqlite3.Error, sqlite3.Warning) as e:  # pysqlite3: two statements are a Warning
            if time.monotonic() > deadline:
                raise _refused(f"it ran longer than {timeout_s:g} s (--timeout)") from None
            raise _refused(str(e)) from None
        except (ValueError, OverflowError) as e:  # sqlite3.ProgrammingError is an Error; NUL in SQL
            raise _refused(str(e)) from None
        cols = [d[0] for d in cur.description or ()]

        def rows() -> Iterator[tuple[Any, ...]]:
            while True:
                try:
                    batch = cur.fetchmany(FETCH)
                except (sqlite3.Error, sqlite3.Warning) as e:
                    if time.monotonic() > deadline:
                        raise _refused(f"it ran longer than {timeout_s:g} s (--timeout)") from None
                    raise _refused(str(e)) from None
                if not batch:
                    return
                yield from batch

        return QueryResult(cols, rows(), db.close)
    except BaseException:
        db.close()
        raise


# --- PostgreSQL ----------------------------------------------------------------------------------


def _pg_connect(url: str) -> Any:
    """A psycopg connection (autocommit) to the database of a SQLAlchemy PostgreSQL URL."""
    import psycopg

    if url.startswith(("postgresql+psycopg://", "postgresql://")) and "%" not in url:
        # libpq takes the URL itself; parsing it with SQLAlchemy would import SQLAlchemy (0.3 s)
        conninfo = "postgresql" + url[url.index("://") :]
        params: dict[str, Any] = {} if "connect_timeout=" in url else {"connect_timeout": "10"}
    else:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        conninfo = ""
        params = {
            "host": u.host,
            "port": u.port,
            "user": u.username,
            "password": u.password,
            "dbname": u.database,
            **{k: v for k, v in u.query.items() if isinstance(v, str)},
        }
        params.setdefault("connect_timeout", "10")
    try:
        given = {k: v for k, v in params.items() if v is not None}
        return psycopg.connect(conninfo, **given, autocommit=True)
    except psycopg.Error as e:
        raise StoreUnavailable(f"cannot connect to the metadata database: {str(e).strip()[:200]}") from None


_UNINDEXED: Final = (
    "SELECT 1 FROM bundles b LEFT JOIN bundle_index i ON i.bundle_id = b.id"
    " LEFT JOIN index_nodes n ON n.node = i.node WHERE n.node IS NULL LIMIT 1"
)
_SCHEMAS: Final = (
    "SELECT r.name, s.schema FROM repo_schemas s JOIN repos r ON r.id = s.repo_id"
    " WHERE s.version = (SELECT max(version) FROM repo_schemas t WHERE t.repo_id = s.repo_id)"
)


def pg_quick_state(url: str) -> tuple[bool, dict[str, str]] | None:
    """(whether some bundle is not indexed, the schema in force of every repo) of a PostgreSQL
    database whose schema is at this datamon's head, read with psycopg alone; ``None`` if that
    cannot be answered so (another revision, an error): the full store answers then."""
    import psycopg

    from datamon.meta.revision import HEAD_REVISION

    try:
        conn = _pg_connect(url)
    except StoreUnavailable:
        return None
    try:
        with conn:
            if conn.execute("SELECT version_num FROM alembic_version").fetchall() != [(HEAD_REVISION,)]:
                return None
            unindexed = conn.execute(_UNINDEXED).fetchone() is not None
            schemas = {r[0]: r[1] for r in conn.execute(_SCHEMAS)}
    except psycopg.Error:
        return None
    return unindexed, schemas


def _pg_query(url: str, sql: str, columns: list[SchemaColumn], timeout_s: float) -> QueryResult:
    import psycopg

    conn = _pg_connect(url)
    try:
        schema = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'bundle_index' "
            "AND table_schema = ANY(current_schemas(false)) LIMIT 1"
        ).fetchone()
        qualified = '"' + (schema[0] if schema else "public").replace('"', '""') + '"'
        with conn.transaction():
            for stmt in view_sql("postgresql", columns, qualified + ".").values():
                conn.execute(stmt.encode())
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
        conn.execute("SELECT 1")  # a transaction's read-write mode is fixed by its first query
        cur = conn.cursor()
        try:
            cur.execute(("DECLARE datamon_query NO SCROLL CURSOR FOR " + sql).encode(), prepare=True)
            cur.execute("FETCH 0 FROM datamon_query")
        except psycopg.errors.QueryCanceled:
            raise _refused(f"it ran longer than {timeout_s:g} s (--timeout)") from None
        except psycopg.Error as e:
            raise _refused(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
        cols = [d.name for d in cur.description or ()]

        def rows() -> Iterator[tuple[Any, ...]]:
            while True:
                try:
                    cur.execute(f"FETCH {FETCH} FROM datamon_query")
                    batch = cur.fetchall()
                except psycopg.errors.QueryCanceled:
                    raise _refused(f"it ran longer than {timeout_s:g} s (--timeout)") from None
                except psycopg.Error as e:
                    raise _refused(str(e).strip().splitlines()[0]) from None
                if not batch:
                    return
                yield from batch

        return QueryResult(cols, rows(), conn.close)
    except BaseException:
        conn.close()
        raise


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (``sqlite:///PATH``); the common form is parsed here, since
    importing SQLAlchemy costs a third of a second of every ``datamon query``."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and "?" not in url and "%" not in url:
            return url[len(prefix) :]
    from sqlalchemy.engine import make_url

    return make_url(url).database


def run_query(
    url: str, dialect: str, sql: str, schemas: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S
) -> QueryResult:
    """Run one read-only statement over the views on the database at ``url``."""
    if not isinstance(sql, str) or not sql.strip():
        raise UsageError("the query is empty", 'give a statement, e.g. "SELECT * FROM bundles"')
    if "\x00" in sql:
        raise _refused("the query contains a NUL character")
    columns = schema_columns(schemas)
    if dialect == "sqlite":
        path = _sqlite_file(url)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise UsageError(
                "datamon query needs a metadata database in a file or on PostgreSQL",
                "use a context whose metadata URL is sqlite:///PATH or postgresql+psycopg://…",
            )
        return _sqlite_query(path, sql, columns, timeout_s)
    return _pg_query(url, sql, columns, timeout_s)
