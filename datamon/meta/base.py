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
from datamon.meta.schema import bundle_rewrites, bundles, repo_renames, repos
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
            raise StoreBase._repo_not_found(conn, repo)
        return int(rid)

    @staticmethod
    def _repo_not_found(conn: Connection, repo: str) -> NotFound:
        """``NotFound`` for repo name ``repo``, saying what it was renamed to if it is a former name."""
        moved = conn.execute(
            select(repos.c.name, repo_renames.c.time_ns)
            .join_from(repo_renames, repos, repo_renames.c.repo_id == repos.c.id)
            .where(repo_renames.c.old_name == repo)
            .order_by(repo_renames.c.id.desc())
            .limit(1)
        ).first()
        if moved is not None:
            return NotFound(
                f"repo {repo!r} was renamed to {moved[0]!r} on {utc_text(moved[1])}",
                f"use --repo {moved[0]}",
            )
        return NotFound(f"repo {repo!r} does not exist", "list repos with `datamon repo list`")

    @staticmethod
    def _former_names(conn: Connection, repo_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        """Repo id → the names it had before renames (only renamed repos appear)."""
        out: dict[int, list[str]] = {}
        for chunk in batches(list(dict.fromkeys(repo_ids))):
            rows = conn.execute(
                select(repo_renames.c.repo_id, repo_renames.c.old_name)
                .where(repo_renames.c.repo_id.in_(chunk))
                .order_by(repo_renames.c.id)
            )
            for rid, name in rows:
                out.setdefault(int(rid), []).append(name)
        return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}

    def _bundle_not_found(
        self, conn: Connection, repo: str, what: str, *, prefix: str | None = None
    ) -> NotFound:
        """``NotFound`` for bundle ``what`` (an id; ``prefix`` when it was a prefix) of ``repo``; if
        ``repo delete files`` rewrote that bundle, the message says as what and when."""
        rid = self._repo_id(conn, repo)  # a missing repo is the better message
        wanted = prefix if prefix is not None else what
        if wanted and len(wanted) <= 64:
            found = rewrite_note(conn, rid, wanted)
            if found is not None:
                return found
        return NotFound(
            f"bundle {what} not found in repo {repo!r}",
            f"list bundles with `datamon bundle list --repo {repo}`",
        )


def utc_text(time_ns: int) -> str:
    """``2026-12-04 10:11:12 UTC`` for a time in nanoseconds since the epoch."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def follow_rewrites(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[str | None, str, str, int, str]]:
    """For each of ``ids`` that was rewritten: (final new id or ``None``, final new tree, reason,
    time of the last rewrite, old id of the last rewrite), following chains (a bundle rewritten, and
    its rewrite rewritten again)."""
    step: dict[str, tuple[str | None, str, str, int]] = {}
    todo = list(dict.fromkeys(ids))
    while todo:
        found = []
        for chunk in batches(todo):
            rows = conn.execute(
                select(
                    bundle_rewrites.c.old_id,
                    bundle_rewrites.c.new_id,
                    bundle_rewrites.c.new_tree,
                    bundle_rewrites.c.reason,
                    bundle_rewrites.c.time_ns,
                ).where(bundle_rewrites.c.old_id.in_(chunk))
            )
            for old, new, tree, reason, t in rows:
                if old not in step:
                    step[old] = (new, tree, reason, int(t))
                    if new is not None and new not in step:
                        found.append(new)
        todo = found
    out: dict[str, tuple[str | None, str, str, int, str]] = {}
    for start in ids:
        if start not in step:
            continue
        last, seen = start, {start}
        while True:
            nxt = step[last][0]
            if nxt is None or nxt not in step or nxt in seen:
                break
            seen.add(nxt)
            last = nxt
        out[start] = (*step[last], last)
    return out


def rewrite_note(conn: Connection, repo_id: int, wanted: str) -> NotFound | None:
    """The ``NotFound`` explaining where rewritten bundle ``wanted`` (a full id or a prefix of one,
    of repo ``repo_id``) went, or ``None`` if no such bundle was rewritten."""
    q = select(bundle_rewrites.c.old_id).where(bundle_rewrites.c.repo_id == repo_id)
    if len(wanted) == 64:
        q = q.where(bundle_rewrites.c.old_id == wanted)
    else:
        q = q.where(
            bundle_rewrites.c.old_id >= wanted,
            bundle_rewrites.c.old_id <= wanted + "f" * (64 - len(wanted)),
            bundle_rewrites.c.old_id.like(wanted + "%"),
        )
    olds = conn.execute(q.limit(2)).scalars().all()
    if len(olds) != 1:
        return None
    old = olds[0]
    new, _tree, reason, t, _last = follow_rewrites(conn, [old])[old]
    if new is None:
        return NotFound(
            f"bundle {old} was deleted, and its recorded files rewritten by {reason} on {utc_text(t)}",
            "list bundles with `datamon bundle list`",
        )
    exists = conn.execute(select(bundles.c.id).where(bundles.c.id == new)).first() is not None
    return NotFound(
        f"bundle {old} was rewritten as {new} by {reason} on {utc_text(t)}"
        + ("" if exists else f" ({new} has been deleted since)"),
        f"use bundle {new}" if exists else "list bundles with `datamon bundle list`",
    )
