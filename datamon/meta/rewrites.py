"""Bundle rewrites (``repo delete files``), repo renames (``repo rename``) and gc's erasure queue.

Everything a rewrite changes in the database happens in one transaction (``apply_rewrite``): the new
bundle rows go in, labels and their history move to the new ids, the rewrite rows and the erased keys
are recorded, the old bundle rows go. Before it, the caller has stored the new trees (unreferenced
until then), so a crash at any point leaves either the old state plus garbage, or the new state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, delete, exc, insert, select, update

from datamon.errors import Conflict
from datamon.meta.base import StoreBase, batches, follow_rewrites, utc_text
from datamon.meta.records import BundleRecord
from datamon.meta.schema import (
    bundle_parents,
    bundle_rewrites,
    bundles,
    erasures,
    label_history,
    labels,
    repo_renames,
    repos,
    run_inputs,
    run_outputs,
)
from datamon.names import check_name

ERASE_REASON: Final = "repo delete files"


@dataclass(frozen=True)
class Rewrite:
    """Bundle ``old_id`` of a repo became ``new_id`` (``None``: a recorded run input whose bundle row
    was gone already; only its tree was rewritten, as ``new_tree``)."""

    old_id: str
    new_id: str | None
    old_tree: str
    new_tree: str


@dataclass(frozen=True)
class FinalRewrite:
    """Where a rewritten bundle ended up, after every later rewrite of its rewrite."""

    new_id: str | None
    new_tree: str
    reason: str
    time_ns: int
    last_old_id: str  # the old id of the last rewrite of the chain


@dataclass(frozen=True)
class RenameEvent:
    repo: str  # the repo's current name
    old_name: str
    new_name: str
    time_ns: int
    contributor: str
    repo_created_ns: int


@dataclass(frozen=True)
class RecordedInput:
    """An input of a recorded run that produced an output (gc keeps its tree for reproduction)."""

    run_id: str
    name: str
    repo: str
    bundle_id: str
    tree: str


class RewritesMixin(StoreBase):
    """Rewrites, renames and erasures."""

    # -- renames ---------------------------------------------------------------------------
    def _check_not_former_name(self, conn: Connection, name: str, repo_id: int | None = None) -> None:
        """``Conflict`` if ``name`` is a former name of a repo other than ``repo_id``."""
        q = (
            select(repos.c.name, repo_renames.c.time_ns)
            .join_from(repo_renames, repos, repo_renames.c.repo_id == repos.c.id)
            .where(repo_renames.c.old_name == name)
        )
        if repo_id is not None:
            q = q.where(repo_renames.c.repo_id != repo_id)
        row = conn.execute(q.order_by(repo_renames.c.id.desc()).limit(1)).first()
        if row is not None:
            raise Conflict(
                f"repo name {name!r} was the name of repo {row[0]!r} until {utc_text(row[1])}, and stays "
                "reserved for it (its bundle and run records name it)",
                "choose another name",
            )

    def rename_repo(
        self, old: str, new: str, *, contributor: str = "", time_ns: int | None = None
    ) -> RenameEvent:
        """Rename repo ``old`` to ``new`` in one transaction; labels, history, bundles and LFS ids
        follow (they refer to the repo's row), ``old`` becomes a former name reserved for it.

        Raises ``NotFound`` (``old``), ``Conflict`` if ``new`` is a repo or a former name of another
        repo (exit 3), ``UsageError`` if ``new`` breaks the naming rule."""
        check_name("repo", new)
        now = time.time_ns() if time_ns is None else time_ns
        try:
            with self._write() as conn:
                rid = self._repo_id(conn, old)
                created = conn.execute(select(repos.c.created_ns).where(repos.c.id == rid)).scalar_one()
                if conn.execute(select(repos.c.id).where(repos.c.name == new)).first() is not None:
                    raise Conflict(f"repo {new!r} already exists", "choose another name")
                self._check_not_former_name(conn, new, rid)
                conn.execute(update(repos).where(repos.c.id == rid).values(name=new))
                conn.execute(
                    insert(repo_renames).values(
                        repo_id=rid, old_name=old, new_name=new, time_ns=now, contributor=contributor
                    )
                )
        except exc.IntegrityError:  # another rename or create took ``new`` meanwhile (PostgreSQL)
            raise Conflict(f"repo {new!r} already exists", "choose another name") from None
        return RenameEvent(new, old, new, now, contributor, int(created))

    def list_renames(self, repo: str | None = None) -> list[RenameEvent]:
        """Renames (of ``repo`` if given, by its current name), oldest first. Raises ``NotFound``."""
        with self._read() as conn:
            q = select(
                repos.c.name,
                repo_renames.c.old_name,
                repo_renames.c.new_name,
                repo_renames.c.time_ns,
                repo_renames.c.contributor,
                repos.c.created_ns,
            ).join_from(repo_renames, repos, repo_renames.c.repo_id == repos.c.id)
            if repo is not None:
                q = q.where(repo_renames.c.repo_id == self._repo_id(conn, repo))
            rows = conn.execute(q.order_by(repo_renames.c.id)).all()
        return [RenameEvent(r[0], r[1], r[2], int(r[3]), r[4], int(r[5])) for r in rows]

    def repo_names(self, repo: str) -> list[str]:
        """``repo``'s current name, then the names it had before (newest rename first). Raises
        ``NotFound``."""
        with self._read() as conn:
            return self._names_of(conn, repo)

    def _names_of(self, conn: Connection, repo: str) -> list[str]:
        rid = self._repo_id(conn, repo)
        former = conn.execute(
            select(repo_renames.c.old_name)
            .where(repo_renames.c.repo_id == rid)
            .order_by(repo_renames.c.id.desc())
        ).scalars()
        return list(dict.fromkeys([repo, *former]))

    def current_repo_name(self, name: str) -> str | None:
        """The current name of the repo that is or was called ``name``; ``None`` if none was."""
        with self._read() as conn:
            if conn.execute(select(repos.c.id).where(repos.c.name == name)).first() is not None:
                return name
            row = conn.execute(
                select(repos.c.name)
                .join_from(repo_renames, repos, repo_renames.c.repo_id == repos.c.id)
                .where(repo_renames.c.old_name == name)
                .order_by(repo_renames.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else str(row[0])

    # -- rewrites --------------------------------------------------------------------------
    def final_rewrites(self, ids: Sequence[str]) -> dict[str, FinalRewrite]:
        """For each of ``ids`` that was rewritten, where it ended up (chains followed)."""
        with self._read() as conn:
            found = follow_rewrites(conn, list(ids))
        return {k: FinalRewrite(*v) for k, v in found.items()}

    def rewritten_into(self, new_ids: Sequence[str]) -> dict[str, list[str]]:
        """New id → the old ids rewritten directly into it."""
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for chunk in batches(list(dict.fromkeys(new_ids))):
                rows = conn.execute(
                    select(bundle_rewrites.c.new_id, bundle_rewrites.c.old_id).where(
                        bundle_rewrites.c.new_id.in_(chunk)
                    )
                )
                for new, old in rows:
                    out.setdefault(new, []).append(old)
        return out

    def recorded_inputs(self) -> list[RecordedInput]:
        """Inputs of every recorded run that produced an output (gc's lineage roots), as recorded."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    run_inputs.c.run_id,
                    run_inputs.c.name,
                    run_inputs.c.repo,
                    run_inputs.c.bundle_id,
                    run_inputs.c.tree,
                )
                .where(run_inputs.c.run_id.in_(select(run_outputs.c.run_id)))
                .order_by(run_inputs.c.run_id, run_inputs.c.name)
            ).all()
        return [RecordedInput(*r) for r in rows]

    def apply_rewrite(
        self,
        repo: str,
        *,
        expected: Iterable[str],
        new_bundles: Sequence[BundleRecord],
        rewrites: Sequence[Rewrite],
        erased: Iterable[bytes],
        contributor: str = "",
        reason: str = ERASE_REASON,
    ) -> None:
        """Switch ``repo`` from its bundles to their rewrites, in one transaction.

        ``expected`` is the set of the repo's bundle ids the rewrite was planned from: if the repo
        holds other bundles now (an upload landed meanwhile), nothing changes and ``Conflict`` is
        raised (rerun). ``new_bundles`` are inserted (an id that exists already is kept), labels on a
        rewritten bundle move to its new id with a history event, history rows naming an old id are
        changed to name the new one, the ``rewrites`` are recorded, the ``erased`` object keys are
        queued for gc, and the old bundle rows are deleted. The trees of ``new_bundles`` must be
        stored before this is called.
        """
        now = time.time_ns()
        mapping = {r.old_id: r.new_id for r in rewrites if r.new_id is not None}
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            if self._dialect == "postgresql":  # uploads to the repo wait (their FK check) until we commit
                conn.execute(select(repos.c.id).where(repos.c.id == rid).with_for_update())
            current = set(conn.execute(select(bundles.c.id).where(bundles.c.repo_id == rid)).scalars())
            if current != set(expected):
                raise Conflict(
                    f"repo {repo!r} changed while its rewrite was planned (bundles were added or deleted)",
                    "run the command again",
                )
            for b in new_bundles:
                if conn.execute(select(bundles.c.id).where(bundles.c.id == b.id)).first() is not None:
                    continue
                conn.execute(
                    insert(bundles).values(
                        id=b.id,
                        repo_id=rid,
                        tree=b.tree,
                        message=b.message,
                        contributor_name=b.contributor_name,
                        contributor_email=b.contributor_email,
                        created_ns=b.created_ns,
                        file_count=b.file_count,
                        total_size=b.total_size,
                        record=b.record,
                    )
                )
                if b.parents:
                    conn.execute(
                        insert(bundle_parents),
                        [{"bundle_id": b.id, "position": i, "parent_id": p} for i, p in enumerate(b.parents)],
                    )
            self._move_labels(conn, rid, mapping, contributor, now)
            for r in rewrites:
                values = {
                    "new_id": r.new_id,
                    "repo_id": rid,
                    "old_tree": r.old_tree,
                    "new_tree": r.new_tree,
                    "reason": reason,
                    "time_ns": now,
                    "contributor": contributor,
                }
                had = conn.execute(
                    select(bundle_rewrites.c.new_id).where(bundle_rewrites.c.old_id == r.old_id)
                ).first()
                if had is None:
                    conn.execute(insert(bundle_rewrites).values(old_id=r.old_id, **values))
                elif had[0] is None and r.new_id is None:  # a recorded input's tree, rewritten again
                    values.pop("old_tree")
                    conn.execute(
                        update(bundle_rewrites).where(bundle_rewrites.c.old_id == r.old_id).values(**values)
                    )
                else:
                    raise Conflict(
                        f"bundle {r.old_id} was rewritten already", "run the command again to plan afresh"
                    )
            old_ids = [o for o in mapping if o != mapping[o]]
            for chunk in batches(old_ids):
                conn.execute(delete(bundle_parents).where(bundle_parents.c.bundle_id.in_(chunk)))
                conn.execute(delete(bundles).where(bundles.c.id.in_(chunk)))
            keys = sorted(set(erased))
            for page in batches(keys):
                have = set(conn.execute(select(erasures.c.key).where(erasures.c.key.in_(page))).scalars())
                rows = [{"key": k, "time_ns": now} for k in page if k not in have]
                if rows:
                    conn.execute(insert(erasures), rows)

    @staticmethod
    def _move_labels(conn: Connection, rid: int, mapping: Mapping[str, str], who: str, now: int) -> None:
        on = conn.execute(select(labels.c.name, labels.c.bundle_id).where(labels.c.repo_id == rid)).all()
        events = []
        for name, bid in on:
            new = mapping.get(bid)
            if new is None:
                continue
            conn.execute(
                update(labels)
                .where(labels.c.repo_id == rid, labels.c.name == name)
                .values(bundle_id=new, updated_ns=now, contributor=who)
            )
            events.append(
                {
                    "repo_id": rid,
                    "name": name,
                    "old_bundle_id": bid,
                    "new_bundle_id": new,
                    "time_ns": now,
                    "contributor": who,
                }
            )
        for old, new in mapping.items():
            for col in ("old_bundle_id", "new_bundle_id"):
                column = label_history.c[col]
                conn.execute(
                    update(label_history)
                    .where(label_history.c.repo_id == rid, column == old)
                    .values({col: new})
                )
        if events:  # after the renaming above: these events keep the old id, as a record of the move
            conn.execute(insert(label_history), events)

    # -- the erasure queue (gc) ------------------------------------------------------------------
    def erasure_keys(self) -> list[bytes]:
        """Keys of erased objects whose bytes gc has not yet seen gone from every pack."""
        with self._read() as conn:
            return [bytes(k) for k in conn.execute(select(erasures.c.key).order_by(erasures.c.key)).scalars()]

    def forget_erasures(self, keys: Sequence[bytes]) -> None:
        """(gc) Drop ``keys`` from the erasure queue: no pack holds their bytes any more."""
        with self._write() as conn:
            for chunk in batches(sorted({bytes(k) for k in keys})):
                conn.execute(delete(erasures).where(erasures.c.key.in_(chunk)))
