"""``MetadataStore``: repos, bundles, labels, the object index, LFS ids and gc locks in one SQL database.

SQLAlchemy Core only (no ORM, no Alembic unless a migration is due) so that opening a store and reading a
label stays cheap enough for a CLI call. Records handed out are the plain dataclasses of ``records.py``.
Labels live in ``labels.py``, the object index in ``index.py``, connection handling in ``base.py``.
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Connection, delete, func, insert, or_, select, update

from datamon.errors import AmbiguousId, Conflict, UsageError
from datamon.meta.attrs import AttrsMixin
from datamon.meta.base import BATCH, batches
from datamon.meta.diamonds import DiamondsMixin
from datamon.meta.index import ObjectIndexMixin
from datamon.meta.labels import ANY, LabelsMixin
from datamon.meta.records import BundleRecord, RepoRecord
from datamon.meta.rewrites import RewritesMixin
from datamon.meta.runs import RunsMixin
from datamon.meta.schema import (
    bundle_parents,
    bundle_rewrites,
    bundles,
    label_history,
    labels,
    lfs_objects,
    locks,
    repo_renames,
    repo_schemas,
    repos,
)
from datamon.names import check_lookup, check_name, check_text

__all__ = ["ANY", "MetadataStore"]

MIN_PREFIX: Final = 6
_HEX: Final = frozenset(string.hexdigits.lower())

_BUNDLE_COLS: Final = (
    bundles.c.id,
    repos.c.name,
    bundles.c.tree,
    bundles.c.message,
    bundles.c.contributor_name,
    bundles.c.contributor_email,
    bundles.c.created_ns,
    bundles.c.file_count,
    bundles.c.total_size,
    bundles.c.record,
    bundles.c.repo_id,  # last: for the repo's former names (``BundleRecord.former_names``)
)


class MetadataStore(LabelsMixin, ObjectIndexMixin, RunsMixin, RewritesMixin, AttrsMixin, DiamondsMixin):
    """The metadata database at one SQLAlchemy URL (``sqlite:///…`` or ``postgresql+psycopg://…``).

    Safe to share between threads; each method is one transaction. See ``base.py`` for how
    concurrent writers (threads, processes, hosts) are kept apart.
    """

    def create_repo(
        self, name: str, description: str = "", *, creator_name: str = "", creator_email: str = ""
    ) -> RepoRecord:
        """Create an empty repo. Raises ``Conflict`` if a repo of that name exists, ``UsageError`` if
        the name breaks the rule of ``datamon.names`` or the description is not storable text."""
        check_name("repo", name)
        check_text("description", description)
        check_text("contributor name", creator_name)
        check_text("contributor email", creator_email)
        now = time.time_ns()
        stmt = (
            self._insert(repos)
            .values(
                name=name,
                description=description,
                created_ns=now,
                creator_name=creator_name,
                creator_email=creator_email,
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        with self._write() as conn:
            self._check_not_former_name(conn, name)
            if self._rowcount(conn, stmt) != 1:
                raise Conflict(
                    f"repo {name!r} already exists", "choose another name or use the existing repo"
                )
        return RepoRecord(name, description, now, 0, creator_name, creator_email)

    def _repo_query(self) -> Any:
        count = select(func.count(bundles.c.id)).where(bundles.c.repo_id == repos.c.id).scalar_subquery()
        return select(
            repos.c.name,
            repos.c.description,
            repos.c.created_ns,
            count,
            repos.c.creator_name,
            repos.c.creator_email,
        )

    def get_repo(self, name: str) -> RepoRecord:
        """The repo ``name`` with its bundle count. Raises ``NotFound``."""
        check_lookup("repo", name)
        with self._read() as conn:
            row = conn.execute(self._repo_query().where(repos.c.name == name)).first()
            if row is None:
                raise self._repo_not_found(conn, name)
        return RepoRecord(*row)

    def list_repos(self) -> list[RepoRecord]:
        """All repos sorted by name, with their bundle counts."""
        with self._read() as conn:
            rows = conn.execute(self._repo_query().order_by(repos.c.name)).all()
        return [RepoRecord(*r) for r in rows]

    def delete_repo(self, name: str) -> None:
        """Delete a repo with its bundles, labels, label history and LFS ids, in one transaction.

        Objects and packs stay: their space comes back at the next gc. Raises ``NotFound``.
        """
        with self._write() as conn:
            rid = self._repo_id(conn, name)
            in_repo = select(bundles.c.id).where(bundles.c.repo_id == rid)
            conn.execute(delete(lfs_objects).where(lfs_objects.c.repo_id == rid))
            conn.execute(delete(label_history).where(label_history.c.repo_id == rid))
            conn.execute(delete(labels).where(labels.c.repo_id == rid))
            conn.execute(delete(repo_schemas).where(repo_schemas.c.repo_id == rid))
            conn.execute(delete(bundle_parents).where(bundle_parents.c.bundle_id.in_(in_repo)))
            conn.execute(delete(bundles).where(bundles.c.repo_id == rid))
            conn.execute(delete(bundle_rewrites).where(bundle_rewrites.c.repo_id == rid))
            conn.execute(delete(repo_renames).where(repo_renames.c.repo_id == rid))
            conn.execute(delete(repos).where(repos.c.id == rid))

    def add_bundle(self, b: BundleRecord) -> None:
        """Insert a bundle and its parents in one transaction.

        Idempotent: adding a bundle whose id already exists in that repo does nothing. Raises
        ``NotFound`` if the repo does not exist, ``Conflict`` if the id exists in another repo,
        ``UsageError`` if the message or contributor cannot be stored (NUL, not UTF-8).
        """
        check_text("message", b.message)
        check_text("contributor name", b.contributor_name)
        check_text("contributor email", b.contributor_email)
        stmt = (
            self._insert(bundles)
            .values(
                id=b.id,
                tree=b.tree,
                message=b.message,
                contributor_name=b.contributor_name,
                contributor_email=b.contributor_email,
                created_ns=b.created_ns,
                file_count=b.file_count,
                total_size=b.total_size,
                record=b.record,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        with self._write() as conn:
            rid = self._repo_id(conn, b.repo)
            if self._rowcount(conn, stmt.values(repo_id=rid)) != 1:
                owner = conn.execute(select(bundles.c.repo_id).where(bundles.c.id == b.id)).scalar_one()
                if owner != rid:
                    raise Conflict(
                        f"bundle {b.id} already exists in another repo",
                        "this is a datamon bug (bundle records should name their repo): please report it",
                    )
                return
            if b.parents:
                conn.execute(
                    insert(bundle_parents),
                    [{"bundle_id": b.id, "position": i, "parent_id": p} for i, p in enumerate(b.parents)],
                )

    def _parents(self, conn: Connection, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for chunk in batches(ids):
            rows = conn.execute(
                select(bundle_parents.c.bundle_id, bundle_parents.c.parent_id)
                .where(bundle_parents.c.bundle_id.in_(chunk))
                .order_by(bundle_parents.c.bundle_id, bundle_parents.c.position)
            )
            for bid, parent in rows:
                found.setdefault(bid, []).append(parent)
        return {k: tuple(v) for k, v in found.items()}

    def _bundle_records(self, conn: Connection, rows: Sequence[Any]) -> list[BundleRecord]:
        parents = self._parents(conn, [r[0] for r in rows])
        former = self._former_names(conn, [r[10] for r in rows]) if rows else {}
        return [
            BundleRecord(
                id=r[0],
                repo=r[1],
                tree=r[2],
                parents=parents.get(r[0], ()),
                message=r[3],
                contributor_name=r[4],
                contributor_email=r[5],
                created_ns=r[6],
                file_count=r[7],
                total_size=r[8],
                record=bytes(r[9]),
                former_names=former.get(r[10], ()),
            )
            for r in rows
        ]

    def _get_bundle(self, conn: Connection, repo: str, bundle_id: str) -> BundleRecord:
        row = conn.execute(
            select(*_BUNDLE_COLS)
            .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
            .where(repos.c.name == repo, bundles.c.id == bundle_id)
        ).first()
        if row is None:
            raise self._bundle_not_found(conn, repo, bundle_id)
        return self._bundle_records(conn, [row])[0]

    def find_bundle(self, bundle_id: str) -> BundleRecord | None:
        """The bundle with the full id ``bundle_id`` in whichever repo holds it, or ``None``."""
        with self._read() as conn:
            rows = conn.execute(
                select(*_BUNDLE_COLS)
                .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
                .where(bundles.c.id == bundle_id)
            ).all()
            found = self._bundle_records(conn, rows)
        return found[0] if found else None

    def child_bundles(self, parent_ids: Sequence[str]) -> list[BundleRecord]:
        """Bundles (of any repo) that have one of ``parent_ids`` as a parent."""
        out: list[BundleRecord] = []
        with self._read() as conn:
            for page in batches(list(parent_ids)):
                ids = select(bundle_parents.c.bundle_id).where(bundle_parents.c.parent_id.in_(page))
                rows = conn.execute(
                    select(*_BUNDLE_COLS)
                    .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
                    .where(bundles.c.id.in_(ids))
                ).all()
                out += self._bundle_records(conn, rows)
        return out

    def get_bundle(self, repo: str, bundle_id: str) -> BundleRecord:
        """The bundle with exactly this id in ``repo``. Raises ``NotFound`` (repo or bundle)."""
        with self._read() as conn:
            return self._get_bundle(conn, repo, bundle_id)

    def resolve_bundle(self, repo: str, prefix: str) -> BundleRecord:
        """The bundle of ``repo`` whose id starts with ``prefix`` (at least 6 hex characters).

        Raises ``UsageError`` for a prefix that is too short or not hex, ``NotFound`` if nothing
        matches (or the repo does not exist), ``AmbiguousId`` listing the candidates if several match.
        """
        p = prefix.strip().lower()
        if not MIN_PREFIX <= len(p) <= 64 or not _HEX.issuperset(p):
            raise UsageError(
                f"{prefix!r} is not a bundle id or id prefix",
                f"give at least {MIN_PREFIX} hex characters of a bundle id",
            )
        with self._read() as conn:
            if len(p) == 64:
                return self._get_bundle(conn, repo, p)
            # The range lets the primary-key index serve the match under any collation; LIKE is exact.
            ids = (
                conn.execute(
                    select(bundles.c.id)
                    .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
                    .where(
                        repos.c.name == repo,
                        bundles.c.id >= p,
                        bundles.c.id <= p + "f" * (64 - len(p)),
                        bundles.c.id.like(p + "%"),
                    )
                    .order_by(bundles.c.id)
                    .limit(50)
                )
                .scalars()
                .all()
            )
            if not ids:
                raise self._bundle_not_found(conn, repo, f"id prefix {p!r}", prefix=p)
            if len(ids) > 1:
                raise AmbiguousId(p, list(ids))
            return self._get_bundle(conn, repo, ids[0])

    def list_bundles(self, repo: str, limit: int | None = None) -> list[BundleRecord]:
        """Bundles of ``repo``, newest first (then by id); at most ``limit``. Raises ``NotFound``."""
        stmt = (
            select(*_BUNDLE_COLS)
            .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
            .where(repos.c.name == repo)
            .order_by(bundles.c.created_ns.desc(), bundles.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
            if not rows:
                self._repo_id(conn, repo)
            return self._bundle_records(conn, rows)

    def latest_bundle(self, repo: str) -> BundleRecord | None:
        """The newest bundle of ``repo``, or ``None`` if it has none. Raises ``NotFound`` (repo)."""
        found = self.list_bundles(repo, limit=1)
        return found[0] if found else None

    def delete_bundle(self, repo: str, bundle_id: str, *, contributor: str = "") -> None:
        """Delete a bundle row and its parent rows; labels on it are deleted with a history event.

        Its objects stay until gc. Raises ``NotFound`` (repo or bundle).
        """
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            found = conn.execute(
                select(bundles.c.id).where(bundles.c.id == bundle_id, bundles.c.repo_id == rid)
            ).first()
            if found is None:
                raise self._bundle_not_found(conn, repo, bundle_id)
            on_it = conn.execute(
                select(labels.c.name).where(labels.c.repo_id == rid, labels.c.bundle_id == bundle_id)
            ).scalars()
            now = time.time_ns()
            events = [
                {
                    "repo_id": rid,
                    "name": name,
                    "old_bundle_id": bundle_id,
                    "new_bundle_id": None,
                    "time_ns": now,
                    "contributor": contributor,
                }
                for name in on_it
            ]
            if events:
                conn.execute(delete(labels).where(labels.c.bundle_id == bundle_id))
                conn.execute(insert(label_history), events)
            conn.execute(delete(bundle_parents).where(bundle_parents.c.bundle_id == bundle_id))
            conn.execute(delete(bundles).where(bundles.c.id == bundle_id))

    def iter_all_bundles(self) -> Iterator[BundleRecord]:
        """Every bundle of every repo, in id order, read in pages (no connection held between pages)."""
        after = ""
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    select(*_BUNDLE_COLS)
                    .join_from(bundles, repos, bundles.c.repo_id == repos.c.id)
                    .where(bundles.c.id > after)
                    .order_by(bundles.c.id)
                    .limit(BATCH)
                ).all()
                page = self._bundle_records(conn, rows)
            yield from page
            if len(rows) < BATCH:
                return
            after = page[-1].id

    def put_lfs_object(self, repo: str, oid: str, file_key: str, size: int) -> None:
        """Map a Git LFS oid (sha256 hex) of ``repo`` to a datamon file key. Idempotent upsert.

        Raises ``NotFound`` (repo).
        """
        with self._write() as conn:
            rid = self._repo_id(conn, repo)
            stmt = (
                self._insert(lfs_objects)
                .values(repo_id=rid, oid=oid, file_key=file_key, size=size)
                .on_conflict_do_update(
                    index_elements=["repo_id", "oid"], set_={"file_key": file_key, "size": size}
                )
            )
            conn.execute(stmt)

    def iter_lfs_file_keys(self) -> Iterator[str]:
        """Every file key (hex) that a Git LFS oid maps to, in any repo (gc roots)."""
        with self._read() as conn:
            keys = conn.execute(select(lfs_objects.c.file_key).distinct()).scalars().all()
        yield from keys

    def get_lfs_object(self, repo: str, oid: str) -> tuple[str, int] | None:
        """``(file_key, size)`` for an LFS oid of ``repo``, or ``None`` if unknown (or no such repo)."""
        with self._read() as conn:
            row = conn.execute(
                select(lfs_objects.c.file_key, lfs_objects.c.size)
                .join_from(lfs_objects, repos, lfs_objects.c.repo_id == repos.c.id)
                .where(repos.c.name == repo, lfs_objects.c.oid == oid)
            ).first()
        return None if row is None else (row[0], row[1])

    def try_lock(self, name: str, holder: str, stale_after_ns: int) -> bool:
        """Take lock ``name`` for ``holder``; ``True`` if we hold it now.

        Succeeds if the lock is free, already ours (which refreshes it), or older than
        ``stale_after_ns`` (a crashed holder: taken over atomically). Never blocks.
        """
        now = time.time_ns()
        with self._write() as conn:
            taken = self._rowcount(
                conn,
                self._insert(locks)
                .values(name=name, holder=holder, acquired_ns=now)
                .on_conflict_do_nothing(index_elements=["name"]),
            )
            if taken == 1:
                return True
            taken = self._rowcount(
                conn,
                update(locks)
                .where(
                    locks.c.name == name,
                    or_(locks.c.holder == holder, locks.c.acquired_ns < now - stale_after_ns),
                )
                .values(holder=holder, acquired_ns=now),
            )
            return taken == 1

    def unlock(self, name: str, holder: str) -> None:
        """Release lock ``name`` if ``holder`` holds it; otherwise do nothing."""
        with self._write() as conn:
            conn.execute(delete(locks).where(locks.c.name == name, locks.c.holder == holder))
