"""Repo schemas and the file index (``datamon query``'s ``files`` view) in the metadata database.

The index is content-addressed (see ``schema.py`` and docs/query.md): nodes are only added, in
batches inside one transaction each, and a node is marked present (``index_nodes``) in the same
transaction as its rows, so a node that is present is complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update

from datamon.meta.base import StoreBase, batches
from datamon.meta.records import IndexNode, SchemaRecord
from datamon.meta.schema import (
    bundle_index,
    bundles,
    index_files,
    index_links,
    index_nodes,
    repo_schemas,
    repos,
)

INDEX_BATCH_ROWS = 20_000  # rows per INSERT (or COPY) batch when writing index nodes
# A shared node is re-timed only if its time is older than this (no rewrite of the same rows by
# every upload); gc's grace period must be longer than an upload plus this (the default: a day).
TOUCH_SLACK_NS = 600 * 10**9


def _copy(conn: Any, target: str, rows: list[tuple[object, ...]]) -> None:
    """``COPY target FROM STDIN`` of ``rows`` on PostgreSQL, in the connection's transaction."""
    if not rows:
        return
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def _first(node: IndexNode) -> bytes:
    return node[0]


class AttrsMixin(StoreBase):
    # --- schemas -------------------------------------------------------------------------------

    def set_schema(self, repo: str, schema: str, *, contributor: str = "") -> SchemaRecord:
        """Add a version of ``repo``'s schema (canonical JSON text; ``{}`` lifts it). The new
        version is in force at once. Raises ``NotFound`` (repo)."""
        now = time.time_ns()
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            last = conn.execute(
                select(func.max(repo_schemas.c.version)).where(repo_schemas.c.repo_id == rid)
            ).scalar()
            version = int(last or 0) + 1
            conn.execute(
                insert(repo_schemas).values(
                    repo_id=rid, version=version, schema=schema, time_ns=now, contributor=contributor
                )
            )
        return SchemaRecord(repo, version, schema, now, contributor)

    def schema_history(self, repo: str) -> list[SchemaRecord]:
        """Every version of ``repo``'s schema, newest first. Raises ``NotFound`` (repo)."""
        with self._read() as conn:
            rid = self._repo_id(conn, repo)
            rows = conn.execute(
                select(repo_schemas.c.version, repo_schemas.c.schema, repo_schemas.c.time_ns)
                .add_columns(repo_schemas.c.contributor)
                .where(repo_schemas.c.repo_id == rid)
                .order_by(repo_schemas.c.version.desc())
            ).all()
        return [SchemaRecord(repo, r[0], r[1], r[2], r[3]) for r in rows]

    def get_schema(self, repo: str) -> SchemaRecord | None:
        """The schema in force for ``repo`` (``None`` if it never had one). Raises ``NotFound``."""
        found = self.schema_history(repo)
        return found[0] if found else None

    def current_schemas(self) -> dict[str, str]:
        """The schema in force of every repo that has one (lifted ones included, as ``{}``)."""
        newest = (
            select(repo_schemas.c.repo_id, func.max(repo_schemas.c.version).label("v"))
            .group_by(repo_schemas.c.repo_id)
            .subquery()
        )
        with self._read() as conn:
            rows = conn.execute(
                select(repos.c.name, repo_schemas.c.schema)
                .join_from(repo_schemas, repos, repo_schemas.c.repo_id == repos.c.id)
                .join(
                    newest,
                    (newest.c.repo_id == repo_schemas.c.repo_id) & (newest.c.v == repo_schemas.c.version),
                )
            ).all()
        return {r[0]: r[1] for r in rows}

    # --- the file index ------------------------------------------------------------------------

    def present_nodes(self, nodes: Sequence[bytes]) -> set[bytes]:
        """Those of ``nodes`` that are in the index (complete)."""
        found: set[bytes] = set()
        with self._read() as conn:
            for chunk in batches(list(nodes)):
                rows = conn.execute(select(index_nodes.c.node).where(index_nodes.c.node.in_(chunk)))
                found.update(bytes(r[0]) for r in rows)
        return found

    def add_index_nodes(self, nodes: Iterable[IndexNode]) -> int:
        """Add nodes (id, links, files) in one transaction; nodes already present are skipped
        (and re-timed, as ``touch_index_nodes``: the writer shares them). Returns the number of
        nodes added."""
        pending = list(nodes)
        if not pending:
            return 0
        postgres = self._dialect == "postgresql"
        added = 0
        with self._write() as conn:
            have: set[bytes] = set()
            for chunk in batches([n[0] for n in pending]):
                rows = conn.execute(select(index_nodes.c.node).where(index_nodes.c.node.in_(chunk)))
                have.update(bytes(r[0]) for r in rows)
            self._touch(conn, sorted(have))
            # SQLAlchemy's per-row parameter handling costs more than the database's own insert:
            # hand the driver plain tuples (attrs stay JSON text; PostgreSQL casts it to jsonb).
            ph = "%s" if postgres else "?"
            jsonb = "::jsonb" if postgres else ""
            links_sql = f"INSERT INTO index_links (node, seq, name, child) VALUES ({ph}, {ph}, {ph}, {ph})"
            files_sql = (
                "INSERT INTO index_files (node, name, kind, size, key, mode, mtime_ns, attrs) "
                f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}{jsonb})"
            )
            nodes_sql = f"INSERT INTO index_nodes (node, created_ns) VALUES ({ph}, {ph})"
            links: list[tuple[object, ...]] = []
            files: list[tuple[object, ...]] = []
            marks: list[tuple[bytes, int]] = []
            now = time.time_ns()

            def flush() -> None:
                if postgres:  # COPY: a tenth of the time of row-by-row INSERTs
                    _copy(conn, "index_links (node, seq, name, child)", links)
                    _copy(conn, "index_files (node, name, kind, size, key, mode, mtime_ns, attrs)", files)
                else:
                    if links:
                        conn.exec_driver_sql(links_sql, links)
                    if files:
                        conn.exec_driver_sql(files_sql, files)
                links.clear()
                files.clear()

            # in primary-key order: b-tree inserts stay local (node ids are random); a node's
            # rows come in name order (its tree's order)
            pending.sort(key=_first)
            for node, node_links, node_files in pending:
                if node in have:
                    continue
                have.add(node)
                marks.append((node, now))
                links.extend((node, s, n, c) for s, n, c in node_links)
                files.extend((node, *f) for f in node_files)
                added += 1
                if len(links) + len(files) >= INDEX_BATCH_ROWS:
                    flush()
            flush()
            marks.sort()
            for start in range(0, len(marks), 5000):
                conn.exec_driver_sql(nodes_sql, marks[start : start + 5000])
        return added

    def touch_index_nodes(self, nodes: Iterable[bytes]) -> None:
        """Mark ``nodes`` (found already indexed by an upload that shares them) as just used, so
        ``collect_index`` keeps them and what they reach for another grace period."""
        unique = sorted(set(nodes))
        if not unique:
            return
        with self._write() as conn:
            self._touch(conn, unique)

    def _touch(self, conn: Any, nodes: list[bytes]) -> None:
        now = time.time_ns()
        for chunk in batches(nodes):
            conn.execute(
                update(index_nodes)
                .where(index_nodes.c.node.in_(chunk) & (index_nodes.c.created_ns < now - TOUCH_SLACK_NS))
                .values(created_ns=now)
            )

    def collect_index(self, cutoff_ns: int, *, dry_run: bool = False) -> tuple[int, int]:
        """(gc) Remove the index nodes that no bundle reaches and that were last written or
        shared before ``cutoff_ns``, and the root rows of deleted bundles whose root is that old;
        returns (nodes, rows) removed (or that would be, with ``dry_run``). One transaction.

        Live = everything reached through ``index_links`` from the root of an existing bundle or
        from a node newer than the cutoff (an upload in progress writes children before its
        bundle row, and touches the nodes it shares: ``touch_index_nodes``)."""
        live_cte = (
            "WITH RECURSIVE live(node) AS ("
            " SELECT r.node FROM (SELECT i.node FROM bundle_index i JOIN bundles b ON b.id = i.bundle_id"
            " UNION SELECT n.node FROM index_nodes n WHERE n.created_ns >= :cutoff) r"
            " UNION SELECT l.child FROM live JOIN index_links l ON l.node = live.node) "
        )
        dead = "SELECT n.node FROM index_nodes n WHERE n.node NOT IN (SELECT node FROM live)"
        stale_roots = (
            "SELECT i.bundle_id FROM bundle_index i LEFT JOIN bundles b ON b.id = i.bundle_id"
            " LEFT JOIN index_nodes n ON n.node = i.node"
            " WHERE b.id IS NULL AND (n.node IS NULL OR n.created_ns < :cutoff)"
        )
        args = {"cutoff": cutoff_ns}
        with self._write() as conn:
            roots = [r[0] for r in conn.execute(text(stale_roots), args)]
            for chunk in batches(roots if not dry_run else []):
                conn.execute(delete(bundle_index).where(bundle_index.c.bundle_id.in_(chunk)))
            nodes = [bytes(r[0]) for r in conn.execute(text(live_cte + dead), args)]
            rows = 0
            for chunk in batches(nodes):
                rows += int(
                    conn.execute(
                        select(func.count()).select_from(index_files).where(index_files.c.node.in_(chunk))
                    ).scalar_one()
                )
                rows += int(
                    conn.execute(
                        select(func.count()).select_from(index_links).where(index_links.c.node.in_(chunk))
                    ).scalar_one()
                )
                if not dry_run:
                    # the completion mark first: a node is never marked present without its rows
                    conn.execute(delete(index_nodes).where(index_nodes.c.node.in_(chunk)))
                    conn.execute(delete(index_links).where(index_links.c.node.in_(chunk)))
                    conn.execute(delete(index_files).where(index_files.c.node.in_(chunk)))
        return len(nodes), rows

    def set_bundle_index(self, bundle_id: str, node: bytes) -> None:
        """Record the root index node of a bundle (idempotent)."""
        stmt = (
            self._insert(bundle_index)
            .values(bundle_id=bundle_id, node=node)
            .on_conflict_do_update(index_elements=["bundle_id"], set_={"node": node})
        )
        with self._write() as conn:
            conn.execute(stmt)

    def bundle_index_node(self, bundle_id: str) -> bytes | None:
        """The root index node of a bundle, if it is indexed."""
        with self._read() as conn:
            v = conn.execute(
                select(bundle_index.c.node).where(bundle_index.c.bundle_id == bundle_id)
            ).scalar_one_or_none()
        return None if v is None else bytes(v)

    def unindexed_bundles(self) -> list[tuple[str, str]]:
        """(repo, bundle id) of every bundle that has no index row (or whose root node is missing)."""
        with self._read() as conn:
            rows = conn.execute(
                select(repos.c.name, bundles.c.id)
                .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
                .outerjoin(bundle_index, bundle_index.c.bundle_id == bundles.c.id)
                .outerjoin(index_nodes, index_nodes.c.node == bundle_index.c.node)
                .where(index_nodes.c.node.is_(None))
                .order_by(repos.c.name, bundles.c.id)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def clear_file_index(self) -> None:
        """Drop the whole file index (``admin reindex --files`` rebuilds it from the blob store)."""
        with self._write() as conn:
            for t in (bundle_index, index_files, index_links, index_nodes):
                conn.execute(delete(t))

    def index_size(self) -> dict[str, int]:
        """Row counts of the file index tables."""
        with self._read() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                for t in (index_nodes, index_links, index_files, bundle_index)
            }
