"""Connection handling shared by the parts of ``MetadataStore``.

Every store method runs in its own short transaction, so one store may be used from several threads at
once. Writes go through ``_write()``: on SQLite that begins with ``BEGIN IMMEDIATE`` (see ``engine.py``),
which serialises writers; on PostgreSQL the compare-and-swap statements (conditional ``UPDATE``,
``INSERT ... ON CONFLICT DO NOTHING``) are atomic under READ COMMITTED.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, TypeVar

from sqlalchemy import Connection, Executable, Table, select

from datamon.errors import NotFound
from datamon.meta.engine import WRITE, mask_url, open_engine, unavailable_on_error
from datamon.meta.migrate import ensure_schema
from datamon.meta.schema import repos
from datamon.names import check_lookup

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

BATCH: Final = 500  # keys per ``IN (...)``: well under SQLite's and PostgreSQL's parameter limits

_T = TypeVar("_T")


def batches(items: Sequence[_T], size: int = BATCH) -> Iterator[Sequence[_T]]:
    """``items`` in slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


class StoreBase:
    """Engine, transactions and the lookups every part of the store needs."""

    def __init__(self, url: str, *, pool_size: int = 5, context: str = "") -> None:
        """Open (creating or migrating if needed) the database at ``url``.

        Raises ``StoreUnavailable`` (naming the URL, password masked, and the ``context`` name if
        given) if the URL is malformed, the driver is missing or the database cannot be reached;
        ``SchemaTooNew`` if a newer datamon wrote it.
        """
        self._url = mask_url(url)
        self._where = f"{self._url} (context {context!r})" if context else self._url
        self._engine = open_engine(url, pool_size=pool_size)
        self._write_engine = self._engine.execution_options(**WRITE)
        self._dialect = self._engine.dialect.name
        try:
            with unavailable_on_error(self._where):
                ensure_schema(self._engine, self._where)
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._url

    def close(self) -> None:
        """Close all pooled connections. The store must not be used afterwards."""
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with unavailable_on_error(self._where), self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with unavailable_on_error(self._where), self._engine.connect() as conn:
            yield conn

    def _insert(self, table: Table) -> SqliteInsert | PgInsert:
        """A dialect ``INSERT`` offering ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        if self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table)
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)

    @staticmethod
    def _rowcount(conn: Connection, stmt: Executable) -> int:
        """Rows changed by ``stmt``. Needed for INSERTs: without ``preserve_rowcount`` SQLAlchemy
        reports -1 for them on PostgreSQL (the cursor is closed before we could ask)."""
        return int(conn.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount)

    @staticmethod
    def _repo_id(conn: Connection, repo: str) -> int:
        check_lookup("repo", repo)
        rid = conn.execute(select(repos.c.id).where(repos.c.name == repo)).scalar_one_or_none()
        if rid is None:
            raise NotFound(f"repo {repo!r} does not exist", "list repos with `datamon repo list`")
        return int(rid)

    def _bundle_not_found(self, conn: Connection, repo: str, what: str) -> NotFound:
        self._repo_id(conn, repo)  # a missing repo is the better message
        return NotFound(
            f"bundle {what} not found in repo {repo!r}",
            f"list bundles with `datamon bundle list --repo {repo}`",
        )
