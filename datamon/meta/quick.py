"""A read-only fast path for the embedded SQLite database, for the commands people script.

``datamon label get`` and ``datamon bundle get`` are called in CI loops and must start in
well under a second; importing SQLAlchemy alone costs ~0.3 s on a small machine. For a
SQLite URL whose schema is already at head, ``QuickMeta`` answers the few hot reads with
the standard library's ``sqlite3`` and hands everything else (writes, misses that need an
error message, other databases) to the full ``MetadataStore``, created on first need.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from datamon.meta.records import BundleRecord, IndexRow, LabelRecord
from datamon.meta.revision import HEAD_REVISION
from datamon.names import check_lookup, check_name

if TYPE_CHECKING:
    from datamon.meta.store import MetadataStore

_BUNDLE = (
    "SELECT b.id, r.name, b.tree, b.message, b.contributor_name, b.contributor_email, b.created_ns,"
    " b.file_count, b.total_size, b.record, b.repo_id"
    " FROM bundles b JOIN repos r ON b.repo_id = r.id WHERE r.name = ?"
)


def _sqlite_path(url: str) -> str | None:
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and "?" not in url:
            path = url[len(prefix) :]
            return path if path and path != ":memory:" else None
    return None


class QuickMeta:
    """Duck-types ``MetadataStore``: fast reads where it can, the full store otherwise."""

    def __init__(self, url: str, *, context: str = "") -> None:
        self._url = url
        self._context = context
        self._full: MetadataStore | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        path = _sqlite_path(url)
        if path is None:
            return
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error:
            return  # missing file, no schema yet, …: the full store creates or explains it
        if rows == [(HEAD_REVISION,)]:
            self._db = db
        else:
            db.close()

    @property
    def full(self) -> MetadataStore:
        if self._full is None:
            from datamon.meta.store import MetadataStore

            self._full = MetadataStore(self._url, context=self._context)
        return self._full

    def __getattr__(self, name: str) -> Any:
        return getattr(self.full, name)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._full is not None:
            self._full.close()

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[Any] | None:
        if self._db is None:
            return None
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except (sqlite3.Error, UnicodeError, OverflowError):
            return None

    def _bundle(self, rows: list[Any] | None) -> BundleRecord | None:
        if not rows or self._db is None:
            return None
        r = rows[0]
        parents = self._rows(
            "SELECT parent_id FROM bundle_parents WHERE bundle_id = ? ORDER BY position", (r[0],)
        )
        former = self._rows("SELECT old_name FROM repo_renames WHERE repo_id = ? ORDER BY id", (r[10],))
        if parents is None or former is None:
            return None
        return BundleRecord(
            r[0],
            r[1],
            r[2],
            tuple(p[0] for p in parents),
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            bytes(r[9]),
            former_names=tuple(dict.fromkeys(f[0] for f in former)),
        )

    def get_label(self, repo: str, name: str) -> LabelRecord:
        check_lookup("repo", repo)
        check_name("label", name)
        rows = self._rows(
            "SELECT l.bundle_id, l.updated_ns, l.contributor FROM labels l JOIN repos r ON l.repo_id = r.id"
            " WHERE r.name = ? AND l.name = ?",
            (repo, name),
        )
        if rows:
            return LabelRecord(repo, name, rows[0][0], rows[0][1], rows[0][2])
        return self.full.get_label(repo, name)

    def get_bundle(self, repo: str, bundle_id: str) -> BundleRecord:
        check_lookup("repo", repo)
        found = self._bundle(self._rows(_BUNDLE + " AND b.id = ?", (repo, bundle_id)))
        return found if found is not None else self.full.get_bundle(repo, bundle_id)

    def resolve_bundle(self, repo: str, prefix: str) -> BundleRecord:
        check_lookup("repo", repo)
        p = prefix.strip().lower()
        if 6 <= len(p) <= 64 and all(c in "0123456789abcdef" for c in p):
            rows = self._rows(
                _BUNDLE + " AND b.id >= ? AND b.id <= ? LIMIT 2", (repo, p, p + "f" * (64 - len(p)))
            )
            if rows is not None and len(rows) == 1:
                found = self._bundle(rows)
                if found is not None:
                    return found
        return self.full.resolve_bundle(repo, prefix)

    def latest_bundle(self, repo: str) -> BundleRecord | None:
        check_lookup("repo", repo)
        found = self._bundle(self._rows(_BUNDLE + " ORDER BY b.created_ns DESC, b.id LIMIT 1", (repo,)))
        return found if found is not None else self.full.latest_bundle(repo)

    def labels_by_bundle(self, repo: str) -> dict[str, list[str]]:
        check_lookup("repo", repo)
        rows = self._rows(
            "SELECT l.bundle_id, l.name FROM labels l JOIN repos r ON l.repo_id = r.id WHERE r.name = ?"
            " ORDER BY l.name",
            (repo,),
        )
        if rows is None or (not rows and not self._rows("SELECT 1 FROM repos WHERE name = ?", (repo,))):
            return self.full.labels_by_bundle(repo)  # no such repo (or no fast path): its error
        out: dict[str, list[str]] = {}
        for bid, label in rows:
            out.setdefault(bid, []).append(label)
        return out

    def unindexed_bundles(self) -> list[tuple[str, str]]:
        """(repo, bundle id) of every bundle the file index lacks (hot: every ``datamon query``)."""
        rows = self._rows(
            "SELECT r.name, b.id FROM bundles b JOIN repos r ON b.repo_id = r.id"
            " LEFT JOIN bundle_index i ON i.bundle_id = b.id LEFT JOIN index_nodes n ON n.node = i.node"
            " WHERE n.node IS NULL ORDER BY r.name, b.id",
            (),
        )
        return [(r[0], r[1]) for r in rows] if rows is not None else self.full.unindexed_bundles()

    def current_schemas(self) -> dict[str, str]:
        """The schema in force of every repo that has one (hot: every ``datamon query``)."""
        rows = self._rows(
            "SELECT r.name, s.schema FROM repo_schemas s JOIN repos r ON r.id = s.repo_id"
            " WHERE s.version = (SELECT max(version) FROM repo_schemas t WHERE t.repo_id = s.repo_id)",
            (),
        )
        return {r[0]: r[1] for r in rows} if rows is not None else self.full.current_schemas()

    def lookup_objects(self, keys: Sequence[bytes]) -> dict[bytes, IndexRow]:
        """Index rows of the indexed ``keys`` (hot in every upload: one query per 500 keys)."""
        if self._db is None:
            return self.full.lookup_objects(keys)
        unique = list(dict.fromkeys(bytes(k) for k in keys))
        out: dict[bytes, IndexRow] = {}
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            rows = self._rows(
                'SELECT key, pack, "offset", length, raw_length, kind, compression FROM objects'
                f" WHERE key IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
            )
            if rows is None:
                return self.full.lookup_objects(keys)
            for r in rows:
                out[bytes(r[0])] = (bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6])
        return out
