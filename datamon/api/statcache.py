"""The stat cache: what datamon knows about local directories it uploaded or downloaded.

One row per directory (``dirs``): the directory's files as seen then — name, stat record
(mode, size, mtime_ns, ctime_ns, inode) and file key — packed into three blobs, so a
million-file tree is a thousand rows, not a million. An upload also records there the
directory's *signature* (a digest of its files' and links' stat records and of its
subdirectories' results) and the tree it built; the next upload that finds the same
signature reuses the tree without reading, hashing or encoding anything below.

It is a local SQLite file (not the metadata database, which may be a remote PostgreSQL),
and only an accelerator: losing it costs a re-read, never correctness. What it says is
checked before it is trusted: a file key found here is looked up in the object index
before an upload refers to it, and a cached tree is reused only if it is indexed as a
tree, was recorded by an upload session that completed (``sessions``), and under the same
store *scope* (blob store, metadata database and index epoch; see ``api/upload.py``).
Paths are stored as bytes (``os.fsencode``), so names that are not UTF-8 work too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datamon.api.dirscan import KEY_SIZE, REC, REC_SIZE

StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode

SCHEMA_VERSION = 2  # 1: one row per file (table stat_b)
UNKNOWN_MODE = -1  # a row written from a download or a diff: the mode was not recorded


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def rec_key(rec: bytes) -> StatKey:
    _, size, mtime, ctime, ino = REC.unpack(rec)
    return (size, mtime, ctime, ino)


@dataclass(frozen=True)
class DirRow:
    names: bytes  # NUL-joined file names
    recs: bytes  # REC_SIZE bytes per file
    keys: bytes  # KEY_SIZE bytes per file
    files_sig: bytes | None  # digest of the files and links as an upload scanned them
    sig: bytes | None  # digest of files_sig, the subdirectories' results and the scope
    tree: bytes | None
    nfiles: int
    nbytes: int
    session: int | None
    scope: str | None

    def files(self) -> dict[bytes, tuple[bytes, bytes]]:
        """name → (stat record, file key)."""
        if not self.names:
            return {}
        names = self.names.split(b"\0")
        recs, keys = self.recs, self.keys
        if len(recs) != len(names) * REC_SIZE or len(keys) != len(names) * KEY_SIZE:
            return {}  # damaged: an accelerator only
        return {
            n: (recs[i * REC_SIZE : (i + 1) * REC_SIZE], keys[i * KEY_SIZE : (i + 1) * KEY_SIZE])
            for i, n in enumerate(names)
        }


@dataclass(frozen=True)
class DirWrite:
    """A row an upload writes."""

    path: bytes
    names: bytes
    recs: bytes
    keys: bytes
    files_sig: bytes | None
    sig: bytes | None
    tree: bytes | None
    nfiles: int
    nbytes: int


_COLS = "names, recs, keys, files_sig, sig, tree, nfiles, nbytes, session, scope"


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        db.execute("PRAGMA query_only=ON")
        return db
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        with db:
            db.execute("DROP TABLE IF EXISTS stat")  # paths as TEXT: could not hold non-UTF-8 names
            db.execute("DROP TABLE IF EXISTS stat_b")  # one row per file: too slow at 1M files
            db.execute("DROP TABLE IF EXISTS dirs")
            db.execute("DROP TABLE IF EXISTS sessions")
            db.execute(
                "CREATE TABLE dirs (path BLOB PRIMARY KEY, names BLOB NOT NULL, recs BLOB NOT NULL,"
                " keys BLOB NOT NULL, files_sig BLOB, sig BLOB, tree BLOB, nfiles INTEGER NOT NULL,"
                " nbytes INTEGER NOT NULL, session INTEGER, scope TEXT)"
            )
            db.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, done INTEGER NOT NULL)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return db


class StatCache:
    """The cache of one ``$DATAMON_HOME``. Thread-safe. Every method degrades to "nothing
    known" on a SQLite error: the cache is an accelerator only."""

    def __init__(self, directory: Path | None, *, readonly: bool = False) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.path: Path | None = None
        if directory is None:
            return
        try:
            if not readonly:
                directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "statcache.db"
            self._db = _open(self.path, readonly)
        except (sqlite3.Error, OSError):
            self._db = None  # an accelerator only: run without it

    @property
    def usable(self) -> bool:
        return self._db is not None

    # -- per directory (uploads) ----------------------------------------------------------
    def lookup_dir(self, path: bytes) -> DirRow | None:
        """The row of directory ``path`` (absolute, bytes, no trailing slash)."""
        if self._db is None:
            return None
        try:
            with self._lock:
                row = self._db.execute(f"SELECT {_COLS} FROM dirs WHERE path = ?", (path,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        return _dir_row(row)

    def put_dirs(self, rows: Sequence[DirWrite], session: int | None, scope: str | None) -> None:
        """Write (replace) directory rows in one transaction."""
        if self._db is None or not rows:
            return
        params = [
            (
                r.path,
                r.names,
                r.recs,
                r.keys,
                r.files_sig,
                r.sig,
                r.tree,
                r.nfiles,
                r.nbytes,
                session if r.sig is not None else None,
                scope if r.sig is not None else None,
            )
            for r in rows
        ]
        try:
            with self._lock, self._db:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO dirs (path, {_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params,
                )
        except sqlite3.Error:
            pass

    def new_session(self) -> int | None:
        """An upload session: the signatures it writes count once ``finish_session`` ran."""
        if self._db is None:
            return None
        try:
            with self._lock, self._db:
                return self._db.execute("INSERT INTO sessions (done) VALUES (0)").lastrowid
        except sqlite3.Error:
            return None

    def finish_session(self, session: int | None) -> None:
        if self._db is None or session is None:
            return
        try:
            with self._lock, self._db:
                self._db.execute("UPDATE sessions SET done = 1 WHERE id = ?", (session,))
                if session % 64 == 0:  # now and then: forget sessions no row refers to
                    self._db.execute(
                        "DELETE FROM sessions WHERE id < ? AND id NOT IN"
                        " (SELECT session FROM dirs WHERE session IS NOT NULL)",
                        (session,),
                    )
        except sqlite3.Error:
            pass

    def done_sessions(self) -> set[int]:
        if self._db is None:
            return set()
        try:
            with self._lock:
                return {r[0] for r in self._db.execute("SELECT id FROM sessions WHERE done = 1")}
        except sqlite3.Error:
            return set()

    # -- per file (downloads, diff, pin checks) ---------------------------------------------
    def lookup_under(self, root: str) -> dict[str, tuple[StatKey, bytes]]:
        """All cached files at or below directory ``root`` (absolute): path → (stat key, file key).

        Holds every file below ``root`` in memory; ``lookup_dir`` is the streaming form."""
        if self._db is None:
            return {}
        base = os.fsencode(root).rstrip(b"/") or b"/"
        lo, hi = base + b"/", base + b"0"  # '0' sorts right after '/' (BLOBs compare as bytes)
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT path, names, recs, keys FROM dirs WHERE path = ? OR (path >= ? AND path < ?)",
                    (base, lo, hi),
                ).fetchall()
        except sqlite3.Error:
            return {}
        out: dict[str, tuple[StatKey, bytes]] = {}
        for path, names, recs, keys in rows:
            row = DirRow(bytes(names), bytes(recs), bytes(keys), None, None, None, 0, 0, None, None)
            prefix = bytes(path).rstrip(b"/") + b"/"
            for name, (rec, key) in row.files().items():
                out[os.fsdecode(prefix + name)] = (rec_key(rec), key)
        return out

    def store(self, items: Iterable[tuple[str, StatKey, bytes]]) -> None:
        """Record (path, stat key, file key) of single files (a download, a diff): merged into
        their directories' rows, which then no longer vouch for a whole directory."""
        if self._db is None:
            return
        by_dir: dict[bytes, dict[bytes, tuple[bytes, bytes]]] = {}
        for p, sk, k in items:
            d, _, name = os.fsencode(p).rpartition(b"/")
            if not name:
                continue
            rec = REC.pack(UNKNOWN_MODE, *sk)
            by_dir.setdefault(d or b"/", {})[name] = (rec, bytes(k))
        if not by_dir:
            return
        writes = []
        for d, new in by_dir.items():
            old = self.lookup_dir(d)
            files = old.files() if old is not None else {}
            files.update(new)
            names = sorted(files)
            writes.append(
                DirWrite(
                    d,
                    b"\0".join(names),
                    b"".join(files[n][0] for n in names),
                    b"".join(files[n][1] for n in names),
                    None,
                    None,
                    None,
                    0,
                    0,
                )
            )
        self.put_dirs(writes, None, None)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _dir_row(row: tuple[object, ...]) -> DirRow:
    names, recs, keys, files_sig, sig, tree, nfiles, nbytes, session, scope = row

    def b(v: object) -> bytes | None:
        return bytes(v) if v is not None else None  # type: ignore[call-overload]

    return DirRow(
        bytes(names),  # type: ignore[call-overload]
        bytes(recs),  # type: ignore[call-overload]
        bytes(keys),  # type: ignore[call-overload]
        b(files_sig),
        b(sig),
        b(tree),
        int(nfiles),  # type: ignore[call-overload]
        int(nbytes),  # type: ignore[call-overload]
        session if isinstance(session, int) else None,
        scope if isinstance(scope, str) else None,
    )
