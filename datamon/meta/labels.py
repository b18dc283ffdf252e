"""Labels: movable names for bundles, moved by compare-and-swap, with an append-only history."""

from __future__ import annotations

import time
from typing import Final, cast

from sqlalchemy import Connection, Executable, delete, func, insert, select, update

from datamon.errors import Conflict, LabelMoved, NotFound
from datamon.meta.base import StoreBase
from datamon.meta.records import LabelEvent, LabelRecord
from datamon.meta.schema import bundles, label_history, labels, repos
from datamon.names import check_lookup, check_name

ANY: Final = object()
"""``set_label(expected=ANY)``: move the label whatever it points at now."""

_CAS_ATTEMPTS: Final = 5


class LabelsMixin(StoreBase):
    """The label part of ``MetadataStore``."""

    @staticmethod
    def _label_not_found(repo: str, name: str) -> NotFound:
        return NotFound(
            f"label {name!r} not found in repo {repo!r}",
            f"list labels with `datamon label list --repo {repo}`",
        )

    def get_label(self, repo: str, name: str) -> LabelRecord:
        """The label ``name`` of ``repo``. Raises ``NotFound`` (repo or label), ``UsageError`` for a
        name no label may have (an empty name never means anything else)."""
        check_name("label", name)
        with self._read() as conn:
            row = conn.execute(
                select(labels.c.bundle_id, labels.c.updated_ns, labels.c.contributor)
                .join_from(labels, repos, labels.c.repo_id == repos.c.id)
                .where(repos.c.name == repo, labels.c.name == name)
            ).first()
            if row is None:
                self._repo_id(conn, repo)
                raise self._label_not_found(repo, name)
        return LabelRecord(repo, name, row[0], row[1], row[2])

    def list_labels(self, repo: str, prefix: str = "") -> list[LabelRecord]:
        """All labels of ``repo`` (whose names start with ``prefix``, case-sensitively) sorted by
        name. Raises ``NotFound`` (repo)."""
        query = select(labels.c.name, labels.c.bundle_id, labels.c.updated_ns, labels.c.contributor)
        with self._read() as conn:
            rid = self._repo_id(conn, repo)
            query = query.where(labels.c.repo_id == rid)
            if prefix:  # substr, not LIKE: LIKE is case-blind on SQLite and treats % and _ as wildcards
                query = query.where(func.substr(labels.c.name, 1, len(prefix)) == prefix)
            rows = conn.execute(query.order_by(labels.c.name)).all()
        return [LabelRecord(repo, r[0], r[1], r[2], r[3]) for r in rows]

    def set_label(
        self,
        repo: str,
        name: str,
        bundle_id: str,
        *,
        expected: str | object | None = ANY,
        contributor: str = "",
    ) -> LabelRecord:
        """Point label ``name`` at ``bundle_id`` (compare-and-swap) and record it in the history.

        ``expected=ANY`` moves the label whatever it points at; ``expected=None`` requires that the
        label does not exist yet; ``expected="<id>"`` requires that it points at that id now. The check
        and the move are one atomic statement, so of several racing callers with the same ``expected``
        exactly one wins. Raises ``LabelMoved`` (carrying the current value) when the expectation does
        not hold, ``NotFound`` if the repo, or the bundle in that repo, does not exist.
        """
        check_name("label", name)
        if expected is not ANY and expected is not None and not isinstance(expected, str):
            raise TypeError(f"expected must be ANY, None or a bundle id, not {expected!r}")
        conditional = expected is not ANY
        want = cast("str | None", expected) if conditional else None
        for _ in range(_CAS_ATTEMPTS):
            with self._write() as conn:
                rid = self._repo_id(conn, repo)
                has_bundle = conn.execute(
                    select(bundles.c.id).where(bundles.c.id == bundle_id, bundles.c.repo_id == rid)
                ).first()
                if has_bundle is None:
                    raise self._bundle_not_found(conn, repo, bundle_id)
                current = self._label_target(conn, rid, name)
                if conditional and want != current:
                    raise LabelMoved(repo, name, want, current)
                old = want if conditional else current
                now = time.time_ns()
                if old is None:
                    stmt: Executable = (
                        self._insert(labels)
                        .values(
                            repo_id=rid,
                            name=name,
                            bundle_id=bundle_id,
                            updated_ns=now,
                            contributor=contributor,
                        )
                        .on_conflict_do_nothing(index_elements=["repo_id", "name"])
                    )
                else:
                    stmt = (
                        update(labels)
                        .where(labels.c.repo_id == rid, labels.c.name == name, labels.c.bundle_id == old)
                        .values(bundle_id=bundle_id, updated_ns=now, contributor=contributor)
                    )
                if self._rowcount(conn, stmt) != 1:
                    # Lost a race between our read and our write (possible on PostgreSQL).
                    if not conditional:
                        continue
                    raise LabelMoved(repo, name, want, self._label_target(conn, rid, name))
                conn.execute(
                    insert(label_history).values(
                        repo_id=rid,
                        name=name,
                        old_bundle_id=old,
                        new_bundle_id=bundle_id,
                        time_ns=now,
                        contributor=contributor,
                    )
                )
                return LabelRecord(repo, name, bundle_id, now, contributor)
        raise Conflict(f"label {name!r} in repo {repo!r} kept moving while we tried to set it", "try again")

    @staticmethod
    def _label_target(conn: Connection, rid: int, name: str, *, lock: bool = False) -> str | None:
        stmt = select(labels.c.bundle_id).where(labels.c.repo_id == rid, labels.c.name == name)
        if lock:
            stmt = stmt.with_for_update()
        found = conn.execute(stmt).scalar_one_or_none()
        return None if found is None else str(found)

    def delete_label(self, repo: str, name: str, *, contributor: str = "") -> None:
        """Delete a label, recording a history event with no new bundle. Raises ``NotFound``.

        Any stored name can be deleted, even one that the naming rule refuses today."""
        check_lookup("label", name)
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            current = self._label_target(conn, rid, name, lock=True)
            if current is None:
                raise self._label_not_found(repo, name)
            conn.execute(delete(labels).where(labels.c.repo_id == rid, labels.c.name == name))
            conn.execute(
                insert(label_history).values(
                    repo_id=rid,
                    name=name,
                    old_bundle_id=current,
                    new_bundle_id=None,
                    time_ns=time.time_ns(),
                    contributor=contributor,
                )
            )

    def label_history(self, repo: str, name: str | None = None) -> list[LabelEvent]:
        """Label moves of ``repo`` (of one label if ``name`` is given), newest first.

        Raises ``NotFound`` (repo). A label that never existed has an empty history.
        """
        with self._read() as conn:
            rid = self._repo_id(conn, repo)
            stmt = select(
                label_history.c.name,
                label_history.c.old_bundle_id,
                label_history.c.new_bundle_id,
                label_history.c.time_ns,
                label_history.c.contributor,
            ).where(label_history.c.repo_id == rid)
            if name is not None:
                check_lookup("label", name)
                stmt = stmt.where(label_history.c.name == name)
            # The autoincrement id is commit order, which wall clocks on several hosts are not.
            rows = conn.execute(stmt.order_by(label_history.c.id.desc())).all()
        return [LabelEvent(repo, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def labels_by_bundle(self, repo: str) -> dict[str, list[str]]:
        """Bundle id → names of the labels on it (sorted), for ``bundle list``. Raises ``NotFound``."""
        with self._read() as conn:
            rid = self._repo_id(conn, repo)
            rows = conn.execute(
                select(labels.c.bundle_id, labels.c.name)
                .where(labels.c.repo_id == rid)
                .order_by(labels.c.name)
            ).all()
        out: dict[str, list[str]] = {}
        for bid, label in rows:
            out.setdefault(bid, []).append(label)
        return out
