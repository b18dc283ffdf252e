"""The stat cache: (path, size, mtime, ctime, inode) → file key of files seen before.

A re-upload or a diff against a download skips reading files whose stat did not change.
It is a local SQLite file (not the metadata database, which may be a remote PostgreSQL),
and only an accelerator: losing it costs a re-read, never correctness, and keys found
here are checked against the object index before they are trusted by an upload.
Paths are stored as bytes (``os.fsencode``), so names that are not UTF-8 work too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    def __init__(self, directory: Path | None) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if directory is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(directory / "statcache.db", timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(
                "CREATE TABLE IF NOT EXISTS stat_b (path BLOB PRIMARY KEY, size INTEGER, mtime INTEGER,"
                " ctime INTEGER, ino INTEGER, key BLOB) WITHOUT ROWID"
            )
            db.execute("DROP TABLE IF EXISTS stat")  # paths as TEXT: could not hold non-UTF-8 names
            self._db = db
        except sqlite3.Error:
            self._db = None  # an accelerator only: run without it

    def lookup_under(self, root: str) -> dict[str, tuple[StatKey, bytes]]:
        """All cached entries whose path is below directory ``root`` (absolute)."""
        if self._db is None:
            return {}
        base = os.fsencode(root).rstrip(b"/")
        lo, hi = base + b"/", base + b"0"  # '0' sorts right after '/' (BLOBs compare as bytes)
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT path, size, mtime, ctime, ino, key FROM stat_b WHERE path >= ? AND path < ?",
                    (lo, hi),
                ).fetchall()
        except sqlite3.Error:
            return {}
        return {os.fsdecode(p): ((s, m, c, i), k) for p, s, m, c, i, k in rows}

    def store(self, items: Iterable[tuple[str, StatKey, bytes]]) -> None:
        if self._db is None:
            return
        rows = [(os.fsencode(p), *sk, k) for p, sk, k in items]
        if not rows:
            return
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO stat_b VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
