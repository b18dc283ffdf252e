"""The object index (key → pack, offset, lengths, kind, compression) and the pack list.

``cas/`` reaches these methods through a Protocol of its own and plain tuples (``IndexRow``,
``PackEntry``), so the two layers share no types.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import delete, func, select

from datamon.meta.base import StoreBase, batches
from datamon.meta.records import IndexRow, PackEntry, PackRecord
from datamon.meta.schema import objects, packs
from datamon.meta.schema import packs as packs_table

_INDEX_COLS: Final = (
    objects.c.key,
    objects.c.pack,
    objects.c.offset,
    objects.c.length,
    objects.c.raw_length,
    objects.c.kind,
    objects.c.compression,
)
_SQLITE_ADD_OBJECTS: Final = (
    'INSERT INTO objects (key, pack, "offset", length, raw_length, kind, compression) '
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)


_PG_STAGE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS datamon_objects_in "
    "(LIKE objects INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_PG_COLUMNS: Final = '(key, pack, "offset", length, raw_length, kind, compression)'


def _pg_add_objects(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    """Index rows (distinct keys, in key order) on PostgreSQL: COPY into a temporary table of
    this transaction, then one INSERT … ON CONFLICT DO NOTHING from it. Row by row, the same
    INSERT costs several times as long (SQLAlchemy's parameters and one round of the protocol
    per batch); COPY cannot skip keys already indexed by itself."""
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(_PG_STAGE)
        with cur.copy(f"COPY datamon_objects_in {_PG_COLUMNS} FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        cur.execute(
            f"INSERT INTO objects {_PG_COLUMNS} SELECT {_PG_COLUMNS[1:-1]} FROM datamon_objects_in "
            "ORDER BY key ON CONFLICT (key) DO NOTHING"
        )
        cur.execute("TRUNCATE datamon_objects_in")


def _index_row(row: Any) -> IndexRow:
    return (bytes(row[0]), row[1], row[2], row[3], row[4], row[5], row[6])


class ObjectIndexMixin(StoreBase):
    """The object-index part of ``MetadataStore``."""

    def lookup_objects(self, keys: Sequence[bytes]) -> dict[bytes, IndexRow]:
        """Index rows of those ``keys`` that are indexed; absent keys are absent from the result."""
        unique = list(dict.fromkeys(bytes(k) for k in keys))
        out: dict[bytes, IndexRow] = {}
        with self._read() as conn:
            for chunk in batches(unique):
                for row in conn.execute(select(*_INDEX_COLS).where(objects.c.key.in_(chunk))):
                    r = _index_row(row)
                    out[r[0]] = r
        return out

    def add_pack(
        self,
        name: str,
        size: int,
        entries: Sequence[PackEntry],
        *,
        replaces: Sequence[str] = (),
        replace_keys: Sequence[bytes] = (),
    ) -> None:
        """Record a pack and index its objects, in one transaction.

        Idempotent: an existing pack row is kept, and a key that is already indexed keeps its existing
        row (the first pack to land an object is where readers find it).

        ``replaces`` (gc repacking) names packs whose rows go in the same transaction, so a
        reader never finds a live object unindexed while its rows move to the new pack.

        ``replace_keys`` (an upload that proved those rows wrong: a file map that is not the
        file's, a row of the wrong kind or length) are keys whose existing rows are deleted in
        the same transaction, so this pack's entries for them are inserted instead; a reader
        finds either the old row or the new one, never none. Each must be a key of ``entries``.
        """
        doomed: list[bytes] = []
        if replace_keys:
            entry_keys = {bytes(e[0]) for e in entries}
            doomed = [k for k in dict.fromkeys(bytes(k) for k in replace_keys) if k in entry_keys]
        pack_stmt = (
            self._insert(packs)
            .values(name=name, size=size, object_count=len(entries), created_ns=time.time_ns())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        with self._write() as conn:
            for old in replaces:
                if old != name:
                    conn.execute(delete(objects).where(objects.c.pack == old))
                    conn.execute(delete(packs).where(packs.c.name == old))
            conn.execute(pack_stmt)
            for chunk in batches(doomed):
                conn.execute(delete(objects).where(objects.c.key.in_(chunk)))
            if not entries:
                return
            # A key repeated within the pack: its first entry wins. Key order keeps the b-tree
            # inserts local on SQLite (about 2x faster), and on PostgreSQL it is what keeps racing
            # uploaders apart: two transactions inserting overlapping keys in different orders
            # wait on each other's uncommitted rows and deadlock; in one global order they queue.
            if self._dialect == "sqlite":
                # SQLAlchemy's per-row parameter handling costs more than SQLite's own insert, so
                # hand the driver plain tuples, sorted by key (stable: a repeated key's first
                # entry is inserted first and the others do nothing).
                tuples = [(bytes(e[0]), name, e[1], e[2], e[3], e[4], e[5]) for e in entries]
                tuples.sort(key=itemgetter(0))
                conn.exec_driver_sql(_SQLITE_ADD_OBJECTS, tuples)
                return
            first: dict[bytes, PackEntry] = {}
            for e in entries:
                first.setdefault(bytes(e[0]), e)
            ordered = sorted(first.items())
            rows = [
                {
                    "key": k,
                    "pack": name,
                    "offset": e[1],
                    "length": e[2],
                    "raw_length": e[3],
                    "kind": e[4],
                    "compression": e[5],
                }
                for k, e in ordered
            ]
            conn.execute(self._insert(objects).on_conflict_do_nothing(index_elements=["key"]), rows)

    def add_packs(self, packs: Sequence[tuple[str, int, Sequence[PackEntry]]]) -> None:
        """``add_pack`` for several packs (without ``replaces``/``replace_keys``) in one
        transaction: an upload of many small files commits its index rows in large
        transactions, which on SQLite costs about half per row (each transaction rewrites
        every b-tree page it touches). A key in more than one of the packs keeps one row."""
        if len(packs) == 1:
            self.add_pack(*packs[0])
            return
        now = time.time_ns()
        with self._write() as conn:
            for name, size, entries in packs:
                conn.execute(
                    self._insert(packs_table)
                    .values(name=name, size=size, object_count=len(entries), created_ns=now)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            tuples = [
                (bytes(e[0]), name, e[1], e[2], e[3], e[4], e[5])
                for name, _, entries in packs
                for e in entries
            ]
            if not tuples:
                return
            tuples.sort(
                key=itemgetter(0)
            )  # key order (see add_pack), stable: a repeated key's first tuple wins
            if self._dialect == "sqlite":
                conn.exec_driver_sql(_SQLITE_ADD_OBJECTS, tuples)
                return
            unique = []
            prev = None
            for t in tuples:
                if t[0] != prev:
                    prev = t[0]
                    unique.append(t)
            _pg_add_objects(conn, unique)

    def list_packs(self) -> list[PackRecord]:
        """Every recorded pack, sorted by name."""
        with self._read() as conn:
            rows = conn.execute(
                select(packs.c.name, packs.c.size, packs.c.object_count, packs.c.created_ns).order_by(
                    packs.c.name
                )
            ).all()
        return [PackRecord(r[0], r[1], r[2], r[3]) for r in rows]

    def objects_in_pack(self, name: str) -> list[IndexRow]:
        """Index rows pointing into pack ``name``, by offset (empty for an unknown pack)."""
        with self._read() as conn:
            rows = conn.execute(
                select(*_INDEX_COLS).where(objects.c.pack == name).order_by(objects.c.offset)
            ).all()
        return [_index_row(r) for r in rows]

    def remove_objects(self, keys: Sequence[bytes]) -> None:
        """(gc) Drop index rows for ``keys``, in one transaction; unknown keys are ignored."""
        unique = list(dict.fromkeys(bytes(k) for k in keys))
        with self._write() as conn:
            for chunk in batches(unique):
                conn.execute(delete(objects).where(objects.c.key.in_(chunk)))

    def remove_pack(self, name: str) -> None:
        """(gc) Drop a pack row and every index row pointing into it. Idempotent."""
        with self._write() as conn:
            conn.execute(delete(objects).where(objects.c.pack == name))
            conn.execute(delete(packs).where(packs.c.name == name))

    def count_objects(self) -> int:
        """Number of rows in the object index."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(objects)).scalar_one())
