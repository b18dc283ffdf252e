"""The download registry: which local directories datamon made, and from which bundle.

``bundle update`` deletes files that are not in the bundle, so it only works on a directory
registered here (or when forced). A row is written when a download starts (so an
interrupted download can be finished by ``bundle update`` or by rerunning the download) and
rewritten by ``update``. Nothing is stored inside the destination itself. The row keeps the
directory's device and inode: a directory removed and re-created under the same name by
someone else is not a download any more. SQLite in the local state directory, paths as bytes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DownloadRecord:
    destination: str
    repo: str
    bundle: str
    name_filter: str | None
    dev: int
    ino: int
    complete: bool
    adopted: bool  # the directory held other files before the first download (--force-dest)
    time_ns: int

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino) == (st.st_dev, st.st_ino)


def _key(dest: str) -> bytes:
    return os.fsencode(os.path.realpath(dest))


class Registry:
    def __init__(self, directory: Path | None) -> None:
        self._db: sqlite3.Connection | None = None
        if directory is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(directory / "downloads.db", timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "PRAGMA synchronous=NORMAL"
            )  # no fsync per download; a lost row only means --force-dest
            db.execute(
                "CREATE TABLE IF NOT EXISTS downloads (dest BLOB PRIMARY KEY, repo TEXT, bundle TEXT,"
                " filter TEXT, dev INTEGER, ino INTEGER, complete INTEGER, adopted INTEGER, time_ns INTEGER)"
            )
            db.commit()
            self._db = db
        except sqlite3.Error:
            self._db = None

    @property
    def available(self) -> bool:
        return self._db is not None

    def get(self, dest: str) -> DownloadRecord | None:
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT repo, bundle, filter, dev, ino, complete, adopted, time_ns FROM downloads WHERE dest = ?",
            (_key(dest),),
        ).fetchone()
        if row is None:
            return None
        repo, bundle, filt, dev, ino, complete, adopted, t = row
        return DownloadRecord(dest, repo, bundle, filt, dev, ino, bool(complete), bool(adopted), t)

    def put(
        self,
        dest: str,
        *,
        repo: str,
        bundle: str,
        name_filter: str | None,
        complete: bool,
        adopted: bool,
    ) -> None:
        if self._db is None:
            return
        st = os.stat(dest)
        try:
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO downloads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _key(dest),
                        repo,
                        bundle,
                        name_filter,
                        st.st_dev,
                        st.st_ino,
                        int(complete),
                        int(adopted),
                        time.time_ns(),
                    ),
                )
        except sqlite3.Error:
            pass  # like the stat cache: without it, update needs to be forced

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def registered(directory: Path | None, dest: str) -> DownloadRecord | None:
    """The registry row of ``dest`` if it still names this very directory."""
    reg = Registry(directory)
    try:
        rec = reg.get(dest)
    finally:
        reg.close()
    if rec is None:
        return None
    try:
        st = os.stat(dest)
    except OSError:
        return None
    return rec if rec.matches(st) else None
