"""Diamonds: the rows behind many writers making one bundle (``api/diamond.py`` has the workflow).

A diamond row is ``initialized`` until exactly one of ``commit_diamond`` (→ ``committed``) or
``cancel_diamond`` (→ ``canceled``) moves it; both are one conditional ``UPDATE … WHERE state =
'initialized'``, so of racing callers exactly one wins (PostgreSQL re-checks the condition after
the row lock is released; SQLite serialises writers with ``BEGIN IMMEDIATE``).

A split row belongs to one *generation* (a random token per ``split add`` run). Starting a split
writes a new generation, which replaces whatever that split id held; finishing only lands if the
generation is still the row's, so a slow or stale worker can never overwrite its retry. Both bump
the diamond's ``seq``; a commit lands only if ``seq`` is still the value it merged (nothing
started or finished meanwhile), and the ``seq`` a split finished with orders splits for
``last-wins``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, and_, insert, select, update

from datamon.errors import Conflict, NotFound
from datamon.meta.base import StoreBase
from datamon.meta.records import BundleRecord
from datamon.meta.schema import bundle_parents, bundles, diamond_conflicts, diamond_splits, diamonds, repos
from datamon.names import check_lookup, check_text

INITIALIZED: Final = "initialized"
COMMITTED: Final = "committed"
CANCELED: Final = "canceled"
RUNNING: Final = "running"
DONE: Final = "done"


@dataclass(frozen=True)
class DiamondRow:
    repo: str
    id: str
    state: str
    tag: str
    created_ns: int
    contributor_name: str
    contributor_email: str
    seq: int
    ended_ns: int | None
    bundle_id: str | None
    conflict_mode: str | None
    conflict_count: int
    conflicts_blob: str | None


@dataclass(frozen=True)
class SplitRow:
    repo: str
    diamond: str
    id: str
    generation: str
    state: str
    tag: str
    source: str
    tree: str | None
    file_count: int
    total_size: int
    seq: int | None
    started_ns: int
    ended_ns: int | None
    contributor_name: str
    contributor_email: str
    host: str


@dataclass(frozen=True)
class ConflictRow:
    """One version of a path that splits disagree on (``kind``: 1 file, 2 directory, 3 symlink;
    ``key`` hex: file key, tree key, or all zeros for a symlink)."""

    path: str
    split: str
    kind: int
    key: str
    size: int
    winner: bool


class SplitsChanged(Conflict):
    """A split started or finished while a commit was merging: merge again."""


_D_COLS: Final = (
    repos.c.name,
    diamonds.c.id,
    diamonds.c.state,
    diamonds.c.tag,
    diamonds.c.created_ns,
    diamonds.c.contributor_name,
    diamonds.c.contributor_email,
    diamonds.c.seq,
    diamonds.c.ended_ns,
    diamonds.c.bundle_id,
    diamonds.c.conflict_mode,
    diamonds.c.conflict_count,
    diamonds.c.conflicts_blob,
)

_S_COLS: Final = (
    repos.c.name,
    diamond_splits.c.diamond_id,
    diamond_splits.c.id,
    diamond_splits.c.generation,
    diamond_splits.c.state,
    diamond_splits.c.tag,
    diamond_splits.c.source,
    diamond_splits.c.tree,
    diamond_splits.c.file_count,
    diamond_splits.c.total_size,
    diamond_splits.c.seq,
    diamond_splits.c.started_ns,
    diamond_splits.c.ended_ns,
    diamond_splits.c.contributor_name,
    diamond_splits.c.contributor_email,
    diamond_splits.c.host,
)


class DiamondsMixin(StoreBase):
    """Diamonds, their splits and the conflicts their commit recorded."""

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def _diamond_not_found(repo: str, diamond: str) -> NotFound:
        return NotFound(
            f"diamond {diamond!r} not found in repo {repo!r}",
            f"list diamonds with `datamon diamond list --repo {repo}`",
        )

    def _diamond(self, conn: Connection, repo: str, diamond: str) -> DiamondRow:
        check_lookup("diamond", diamond)
        rid = self._repo_id(conn, repo)
        row = conn.execute(
            select(*_D_COLS)
            .join_from(diamonds, repos, diamonds.c.repo_id == repos.c.id)
            .where(diamonds.c.repo_id == rid, diamonds.c.id == diamond)
        ).first()
        if row is None:
            raise self._diamond_not_found(repo, diamond)
        return DiamondRow(*row)  # type: ignore[call-arg]

    def get_diamond(self, repo: str, diamond: str) -> DiamondRow:
        """Raises ``NotFound`` (repo or diamond)."""
        with self._read() as conn:
            return self._diamond(conn, repo, diamond)

    def list_diamonds(self, repo: str, state: str | None = None) -> list[DiamondRow]:
        """Diamonds of ``repo``, newest first. Raises ``NotFound`` (repo)."""
        with self._read() as conn:
            rid = self._repo_id(conn, repo)
            q = (
                select(*_D_COLS)
                .join_from(diamonds, repos, diamonds.c.repo_id == repos.c.id)
                .where(diamonds.c.repo_id == rid)
            )
            if state is not None:
                q = q.where(diamonds.c.state == state)
            rows = conn.execute(q.order_by(diamonds.c.created_ns.desc(), diamonds.c.id)).all()
        return [DiamondRow(*r) for r in rows]  # type: ignore[call-arg]

    def list_splits(self, repo: str, diamond: str) -> list[SplitRow]:
        """Splits of a diamond in the order they started. Raises ``NotFound``."""
        with self._read() as conn:
            d = self._diamond(conn, repo, diamond)
            rid = self._repo_id(conn, d.repo)
            return self._splits(conn, rid, diamond)

    def _splits(self, conn: Connection, rid: int, diamond: str) -> list[SplitRow]:
        rows = conn.execute(
            select(*_S_COLS)
            .join_from(diamond_splits, repos, diamond_splits.c.repo_id == repos.c.id)
            .where(diamond_splits.c.repo_id == rid, diamond_splits.c.diamond_id == diamond)
            .order_by(diamond_splits.c.started_ns, diamond_splits.c.id)
        ).all()
        return [SplitRow(*r) for r in rows]  # type: ignore[call-arg]

    def list_conflicts(self, repo: str, diamond: str) -> list[ConflictRow]:
        """The conflicts a ``last-wins`` commit recorded, by path (the winner last)."""
        with self._read() as conn:
            d = self._diamond(conn, repo, diamond)
            rid = self._repo_id(conn, d.repo)
            rows = conn.execute(
                select(
                    diamond_conflicts.c.path,
                    diamond_conflicts.c.split_id,
                    diamond_conflicts.c.kind,
                    diamond_conflicts.c.key,
                    diamond_conflicts.c.size,
                    diamond_conflicts.c.winner,
                )
                .where(diamond_conflicts.c.repo_id == rid, diamond_conflicts.c.diamond_id == diamond)
                .order_by(diamond_conflicts.c.id)
            ).all()
        return [ConflictRow(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def diamond_gc_roots(self) -> list[tuple[str, int]]:
        """(key hex, kind) that gc must keep for diamonds: the trees of the finished splits of
        every diamond still ``initialized`` (kind 2), and the losing versions that commits
        recorded as conflicts (kind 1 file, 2 tree; symlinks have no object)."""
        with self._read() as conn:
            trees = conn.execute(
                select(diamond_splits.c.tree)
                .join(
                    diamonds,
                    and_(
                        diamonds.c.repo_id == diamond_splits.c.repo_id,
                        diamonds.c.id == diamond_splits.c.diamond_id,
                    ),
                )
                .where(diamonds.c.state == INITIALIZED, diamond_splits.c.tree.is_not(None))
                .distinct()
            ).all()
            losers = conn.execute(
                select(diamond_conflicts.c.key, diamond_conflicts.c.kind)
                .where(diamond_conflicts.c.winner == 0, diamond_conflicts.c.kind.in_((1, 2)))
                .distinct()
            ).all()
        return [(r[0], 2) for r in trees] + [(r[0], int(r[1])) for r in losers]

    def live_splits(self, repo: str | None = None) -> list[SplitRow]:
        """Finished splits of every diamond still ``initialized`` (of ``repo``, or of all repos)."""
        with self._read() as conn:
            q = (
                select(*_S_COLS)
                .join_from(diamond_splits, repos, diamond_splits.c.repo_id == repos.c.id)
                .join(
                    diamonds,
                    and_(
                        diamonds.c.repo_id == diamond_splits.c.repo_id,
                        diamonds.c.id == diamond_splits.c.diamond_id,
                    ),
                )
                .where(diamonds.c.state == INITIALIZED, diamond_splits.c.tree.is_not(None))
            )
            if repo is not None:
                q = q.where(diamond_splits.c.repo_id == self._repo_id(conn, repo))
            rows = conn.execute(q.order_by(repos.c.name, diamond_splits.c.diamond_id, diamond_splits.c.id))
            return [SplitRow(*r) for r in rows]  # type: ignore[call-arg]

    # -- writing ---------------------------------------------------------------------------
    def create_diamond(
        self,
        repo: str,
        diamond: str,
        *,
        tag: str = "",
        contributor_name: str = "",
        contributor_email: str = "",
        now_ns: int,
    ) -> DiamondRow:
        """A new ``initialized`` diamond. Raises ``Conflict`` if ``repo`` has one with that id."""
        check_text("tag", tag)
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            stmt = (
                self._insert(diamonds)
                .values(
                    repo_id=rid,
                    id=diamond,
                    state=INITIALIZED,
                    tag=tag,
                    created_ns=now_ns,
                    contributor_name=contributor_name,
                    contributor_email=contributor_email,
                    seq=0,
                    conflict_count=0,
                )
                .on_conflict_do_nothing(index_elements=["repo_id", "id"])
            )
            if self._rowcount(conn, stmt) != 1:
                raise Conflict(
                    f"diamond {diamond!r} already exists in repo {repo!r}",
                    "a diamond id is used once: choose another, or let datamon pick one",
                )
            return self._diamond(conn, repo, diamond)

    def _bump(self, conn: Connection, rid: int, repo: str, diamond: str, doing: str) -> int:
        """Add one to the diamond's ``seq`` if it is ``initialized`` (this takes its row lock);
        returns the new value. Raises ``Conflict`` if it is committed or canceled."""
        n = self._rowcount(
            conn,
            update(diamonds)
            .where(diamonds.c.repo_id == rid, diamonds.c.id == diamond, diamonds.c.state == INITIALIZED)
            .values(seq=diamonds.c.seq + 1),
        )
        d = self._diamond(conn, repo, diamond)
        if n != 1:
            raise self._closed(d, doing)
        return d.seq

    @staticmethod
    def _closed(d: DiamondRow, doing: str) -> Conflict:
        if d.state == COMMITTED:
            return Conflict(
                f"cannot {doing}: diamond {d.id!r} of repo {d.repo!r} is already committed "
                f"(bundle {d.bundle_id})",
                "a diamond is committed once; start a new diamond for more data",
            )
        return Conflict(
            f"cannot {doing}: diamond {d.id!r} of repo {d.repo!r} is {d.state}",
            "start a new diamond with `datamon diamond initialize`",
        )

    def start_split(
        self,
        repo: str,
        diamond: str,
        split: str,
        *,
        generation: str,
        tag: str = "",
        source: str = "",
        contributor_name: str = "",
        contributor_email: str = "",
        host: str = "",
        now_ns: int,
    ) -> None:
        """Start (or restart: replace) split ``split`` as ``generation``. Raises ``Conflict`` if the
        diamond is not ``initialized``, ``NotFound`` if it does not exist."""
        for what, text in (("tag", tag), ("source", source), ("host", host)):
            check_text(what, text)
        values: dict[str, Any] = {
            "generation": generation,
            "state": RUNNING,
            "tag": tag,
            "source": source,
            "tree": None,
            "file_count": 0,
            "total_size": 0,
            "seq": None,
            "started_ns": now_ns,
            "ended_ns": None,
            "contributor_name": contributor_name,
            "contributor_email": contributor_email,
            "host": host,
        }
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            self._bump(conn, rid, repo, diamond, f"add split {split!r}")
            stmt = (
                self._insert(diamond_splits)
                .values(repo_id=rid, diamond_id=diamond, id=split, **values)
                .on_conflict_do_update(index_elements=["repo_id", "diamond_id", "id"], set_=values)
            )
            conn.execute(stmt)

    def finish_split(
        self,
        repo: str,
        diamond: str,
        split: str,
        *,
        generation: str,
        tree: str,
        file_count: int,
        total_size: int,
        now_ns: int,
    ) -> int:
        """Mark split ``split`` done with its root tree; returns its ``seq``. Raises ``Conflict`` if
        the diamond was committed or canceled meanwhile, or if a newer run of the same split id
        started (it replaced this one)."""
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            seq = self._bump(conn, rid, repo, diamond, f"finish split {split!r}")
            n = self._rowcount(
                conn,
                update(diamond_splits)
                .where(
                    diamond_splits.c.repo_id == rid,
                    diamond_splits.c.diamond_id == diamond,
                    diamond_splits.c.id == split,
                    diamond_splits.c.generation == generation,
                )
                .values(
                    state=DONE,
                    tree=tree,
                    file_count=file_count,
                    total_size=total_size,
                    seq=seq,
                    ended_ns=now_ns,
                ),
            )
            if n != 1:
                raise Conflict(
                    f"split {split!r} of diamond {diamond!r} was restarted by another `split add` "
                    "while this one ran: the newer run replaces this one",
                    "nothing to do: the newer run's result counts",
                )
            return seq

    def cancel_diamond(self, repo: str, diamond: str, *, now_ns: int) -> DiamondRow:
        """Move an ``initialized`` diamond to ``canceled`` (a canceled one stays as it is).
        Raises ``Conflict`` if it is committed."""
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            self._rowcount(
                conn,
                update(diamonds)
                .where(diamonds.c.repo_id == rid, diamonds.c.id == diamond, diamonds.c.state == INITIALIZED)
                .values(state=CANCELED, ended_ns=now_ns, seq=diamonds.c.seq + 1),
            )
            d = self._diamond(conn, repo, diamond)
            if d.state == COMMITTED:
                raise self._closed(d, "cancel it")
            return d

    def commit_diamond(
        self,
        repo: str,
        diamond: str,
        *,
        seq: int,
        bundle: BundleRecord,
        mode: str,
        conflicts: Sequence[ConflictRow],
        conflicts_blob: str | None,
        now_ns: int,
    ) -> DiamondRow:
        """One transaction: the diamond becomes ``committed`` (if still ``initialized`` at ``seq``),
        its bundle row and parents are inserted, its conflicts recorded. Raises ``Conflict`` if it
        is committed or canceled, ``SplitsChanged`` if a split started or finished since ``seq``."""
        check_text("message", bundle.message)
        check_text("contributor name", bundle.contributor_name)
        check_text("contributor email", bundle.contributor_email)
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            n = self._rowcount(
                conn,
                update(diamonds)
                .where(
                    diamonds.c.repo_id == rid,
                    diamonds.c.id == diamond,
                    diamonds.c.state == INITIALIZED,
                    diamonds.c.seq == seq,
                )
                .values(
                    state=COMMITTED,
                    ended_ns=now_ns,
                    bundle_id=bundle.id,
                    conflict_mode=mode,
                    conflict_count=len({c.path for c in conflicts}),
                    conflicts_blob=conflicts_blob,
                ),
            )
            if n != 1:
                d = self._diamond(conn, repo, diamond)
                if d.state != INITIALIZED:
                    raise self._closed(d, "commit")
                raise SplitsChanged(
                    f"a split of diamond {diamond!r} started or finished during the commit",
                    "commit again",
                )
            # The same rows as ``MetadataStore.add_bundle`` writes, inside this transaction.
            conn.execute(
                insert(bundles).values(
                    id=bundle.id,
                    repo_id=rid,
                    tree=bundle.tree,
                    message=bundle.message,
                    contributor_name=bundle.contributor_name,
                    contributor_email=bundle.contributor_email,
                    created_ns=bundle.created_ns,
                    file_count=bundle.file_count,
                    total_size=bundle.total_size,
                    record=bundle.record,
                )
            )
            if bundle.parents:
                conn.execute(
                    insert(bundle_parents),
                    [
                        {"bundle_id": bundle.id, "position": i, "parent_id": p}
                        for i, p in enumerate(bundle.parents)
                    ],
                )
            if conflicts:
                conn.execute(
                    insert(diamond_conflicts),
                    [
                        {
                            "repo_id": rid,
                            "diamond_id": diamond,
                            "path": c.path,
                            "split_id": c.split,
                            "kind": c.kind,
                            "key": c.key,
                            "size": c.size,
                            "winner": int(c.winner),
                        }
                        for c in conflicts
                    ],
                )
            return self._diamond(conn, repo, diamond)
