"""Runs: the lineage part of ``MetadataStore`` (rows derived from content-addressed run records).

A run row is written once and never changed; ``add_run`` is idempotent (the id is the hash of the
record), so recording the same run twice, or rebuilding rows from the blob store's copies
(``admin reindex``), changes nothing. The record bytes are kept in the row: every reader re-hashes
them (``api/runs.py``) before trusting a column.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, select

from datamon.errors import AmbiguousId, NotFound, UsageError
from datamon.meta.base import BATCH, StoreBase
from datamon.meta.schema import run_inputs, run_outputs, runs

_HEX: Final = frozenset(string.hexdigits.lower())
MIN_PREFIX: Final = 6


@dataclass(frozen=True)
class RunLink:
    """One named input or output of a run: a bundle of a repo, and its root tree key."""

    name: str
    repo: str
    bundle: str
    tree: str


@dataclass(frozen=True)
class RunRow:
    id: str
    status: str
    exit_code: int | None
    started_ns: int
    ended_ns: int
    command: str
    params: str  # JSON object text
    contributor: str
    host: str
    git_commit: str | None
    git_dirty: bool | None
    external: bool
    record: bytes
    inputs: tuple[RunLink, ...] = ()
    outputs: tuple[RunLink, ...] = ()


_COLS: Final = (
    runs.c.id,
    runs.c.status,
    runs.c.exit_code,
    runs.c.started_ns,
    runs.c.ended_ns,
    runs.c.command,
    runs.c.params,
    runs.c.contributor,
    runs.c.host,
    runs.c.git_commit,
    runs.c.git_dirty,
    runs.c.external,
    runs.c.record,
)


class RunsMixin(StoreBase):
    """Runs and their inputs and outputs."""

    def add_run(self, row: RunRow) -> bool:
        """Insert a run with its links; True if it was new. Idempotent."""
        values = {
            "id": row.id,
            "status": row.status,
            "exit_code": row.exit_code,
            "started_ns": row.started_ns,
            "ended_ns": row.ended_ns,
            "command": row.command,
            "params": row.params,
            "contributor": row.contributor,
            "host": row.host,
            "git_commit": row.git_commit,
            "git_dirty": None if row.git_dirty is None else int(row.git_dirty),
            "external": int(row.external),
            "record": row.record,
        }
        with self._write() as conn:
            stmt = self._insert(runs).values(**values).on_conflict_do_nothing(index_elements=["id"])
            if self._rowcount(conn, stmt) == 0:
                return False
            for table, links in ((run_inputs, row.inputs), (run_outputs, row.outputs)):
                if links:
                    conn.execute(
                        table.insert(),
                        [
                            {
                                "run_id": row.id,
                                "name": k.name,
                                "repo": k.repo,
                                "bundle_id": k.bundle,
                                "tree": k.tree,
                            }
                            for k in links
                        ],
                    )
            return True

    def _runs(self, conn: Connection, rows: Sequence[Any]) -> list[RunRow]:
        ids = [r[0] for r in rows]
        links: dict[tuple[str, str], list[RunLink]] = {}
        for i in range(0, len(ids), BATCH):
            page = ids[i : i + BATCH]
            for kind, table in (("in", run_inputs), ("out", run_outputs)):
                q = select(table.c.run_id, table.c.name, table.c.repo, table.c.bundle_id, table.c.tree).where(
                    table.c.run_id.in_(page)
                )
                for rid, name, repo, bundle, tree in conn.execute(q.order_by(table.c.run_id, table.c.name)):
                    links.setdefault((rid, kind), []).append(RunLink(name, repo, bundle, tree))
        return [
            RunRow(
                id=r[0],
                status=r[1],
                exit_code=r[2],
                started_ns=r[3],
                ended_ns=r[4],
                command=r[5],
                params=r[6],
                contributor=r[7],
                host=r[8],
                git_commit=r[9],
                git_dirty=None if r[10] is None else bool(r[10]),
                external=bool(r[11]),
                record=bytes(r[12]),
                inputs=tuple(links.get((r[0], "in"), ())),
                outputs=tuple(links.get((r[0], "out"), ())),
            )
            for r in rows
        ]

    def resolve_run(self, prefix: str) -> RunRow:
        """The run whose id is ``prefix`` or starts with it (6+ hex). Raises ``NotFound``,
        ``AmbiguousId`` or ``UsageError``."""
        p = prefix.strip().lower()
        if len(p) < MIN_PREFIX or len(p) > 64 or not _HEX.issuperset(p):
            raise UsageError(f"{prefix!r} is not a run id", "give a run id or a prefix of 6+ hex characters")
        with self._read() as conn:
            q = select(*_COLS).where(runs.c.id >= p, runs.c.id < p + "g").order_by(runs.c.id).limit(11)
            rows = conn.execute(q).all()
            if not rows:
                raise NotFound(f"run {prefix!r} not found", "list runs with `datamon run list`")
            if len(rows) > 1:
                raise AmbiguousId(
                    f"run id prefix {prefix!r} matches {len(rows)} runs", "give more characters of the id"
                )
            return self._runs(conn, rows)[0]

    def list_runs(self, repo: str | None = None, limit: int | None = None) -> list[RunRow]:
        """Runs, newest first; with ``repo``, only runs that read or wrote a bundle of it (run records
        name a repo as it was called then: its former names count too)."""
        q = select(*_COLS).order_by(runs.c.started_ns.desc(), runs.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            if repo is not None:
                names = [repo, *self._repo_former_names(conn, repo)]
                touching = (
                    select(run_inputs.c.run_id)
                    .where(run_inputs.c.repo.in_(names))
                    .union(select(run_outputs.c.run_id).where(run_outputs.c.repo.in_(names)))
                )
                q = q.where(runs.c.id.in_(touching))
            return self._runs(conn, conn.execute(q).all())

    @staticmethod
    def _repo_former_names(conn: Connection, repo: str) -> list[str]:
        from datamon.meta.schema import repo_renames, repos

        rid = select(repos.c.id).where(repos.c.name == repo).scalar_subquery()
        return list(
            conn.execute(select(repo_renames.c.old_name).where(repo_renames.c.repo_id == rid)).scalars()
        )

    def runs_with_input(self, bundle_ids: Sequence[str]) -> list[RunRow]:
        """Runs that read any of ``bundle_ids``."""
        return self._runs_linked(run_inputs, bundle_ids)

    def runs_with_output(self, bundle_ids: Sequence[str]) -> list[RunRow]:
        """Runs that wrote any of ``bundle_ids``."""
        return self._runs_linked(run_outputs, bundle_ids)

    def _runs_linked(self, table: Any, bundle_ids: Sequence[str]) -> list[RunRow]:
        out: dict[str, RunRow] = {}
        with self._read() as conn:
            for i in range(0, len(bundle_ids), BATCH):
                page = list(bundle_ids[i : i + BATCH])
                ids = select(table.c.run_id).where(table.c.bundle_id.in_(page))
                rows = conn.execute(select(*_COLS).where(runs.c.id.in_(ids))).all()
                for r in self._runs(conn, rows):
                    out[r.id] = r
        return sorted(out.values(), key=lambda r: (r.started_ns, r.id))

    def iter_all_runs(self) -> Iterator[RunRow]:
        """Every run, in id order, read in pages."""
        after = ""
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    select(*_COLS).where(runs.c.id > after).order_by(runs.c.id).limit(BATCH)
                ).all()
                page = self._runs(conn, rows)
            yield from page
            if len(rows) < BATCH:
                return
            after = page[-1].id

    def run_input_trees(self) -> list[str]:
        """Root tree keys of the inputs of every run that produced an output (what gc keeps for
        lineage unless told otherwise). An input bundle that ``repo delete files`` rewrote counts with
        its rewritten tree: the erased files are not kept alive by the runs that read them."""
        from datamon.meta.base import follow_rewrites

        with self._read() as conn:
            q = (
                select(run_inputs.c.bundle_id, run_inputs.c.tree)
                .where(run_inputs.c.run_id.in_(select(run_outputs.c.run_id)))
                .distinct()
            )
            pairs = [(r[0], r[1]) for r in conn.execute(q)]
            moved = follow_rewrites(conn, [b for b, _ in pairs])
        return list(dict.fromkeys(moved[b][1] if b in moved else t for b, t in pairs))
