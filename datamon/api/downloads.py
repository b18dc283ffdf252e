"""The download registry: which local directories datamon made, and from which bundle.

``bundle update`` deletes files that are not in the bundle, so it only works on a directory
registered here (or when forced). A row is written when a download starts (so an
interrupted download can be finished by ``bundle update`` or by rerunning the download) and
rewritten by ``update``. Nothing is stored inside the destination itself. The row keeps the
directory's device and inode: a directory removed and re-created under the same name by
someone else is not a download any more. SQLite in the local state directory, paths as bytes.

A download also records, per directory it wrote completely, the tree it wrote there and a
*digest* of what the directory then held (``dir_digest``: every file's name and
size, mtime, ctime and inode as datamon closed it, every subdirectory's name, every
symlink's name and target). ``update`` computes the same digest from an ``lstat`` of the
directory; when it is equal, the directory still holds exactly that tree's files and links
(a write, chmod, rename or replacement changes a ctime or an inode), so no file in it is
compared one by one or read. Like the stat cache it is an accelerator with the same trust:
losing a row costs a per-file comparison, never correctness.
"""

from __future__ import annotations

import os
import sqlite3
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from operator import itemgetter
from pathlib import Path

DIR_ITEM = -1  # (name, DIR_ITEM, 0, 0, 0): a subdirectory, in a directory digest
LINK_ITEM = -2  # (name + "\0" + target, LINK_ITEM, 0, 0, 0): a symlink
OTHER_ITEM = -3  # (name, OTHER_ITEM, 0, 0, 0): anything else (a FIFO, a socket, a device)

DigestItem = tuple[str, int, int, int, int]


def dir_digest(items: list[DigestItem]) -> bytes:
    """The digest of a directory's entries, given in any order (the list is sorted in place):
    ``(name, size, mtime_ns, ctime_ns, ino)`` per file, ``(name, DIR_ITEM, 0, 0, 0)`` per
    subdirectory, ``(name + "\0" + target, LINK_ITEM, 0, 0, 0)`` per symlink,
    ``(name, OTHER_ITEM, 0, 0, 0)`` for anything else. The names (unique, without NUL) in
    order, then each number column."""
    h = blake2b(digest_size=16)
    if items:
        items.sort(key=_first)
        names, *numbers = zip(*items, strict=True)
        h.update("\0".join(names).encode("utf-8", "surrogateescape"))
        for column in numbers:
            h.update(b"\0" + array("q", column).tobytes())
    return h.digest()


_first = itemgetter(0)


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
        self._dest_keys: dict[str, bytes] = {}
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
            db.execute(
                "CREATE TABLE IF NOT EXISTS download_dirs (dest BLOB, dir BLOB, tree BLOB, digest BLOB,"
                " PRIMARY KEY (dest, dir)) WITHOUT ROWID"
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

    # -- directory digests -----------------------------------------------------------------
    def forget_dirs(self, dest: str) -> None:
        """Drop every directory digest of ``dest`` (a new download replaces them)."""
        if self._db is None:
            return
        try:
            with self._db:
                self._db.execute("DELETE FROM download_dirs WHERE dest = ?", (_key(dest),))
        except sqlite3.Error:
            pass

    def put_dirs(self, dest: str, rows: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Record (directory relative to ``dest`` with ``/`` separators, "" for ``dest``
        itself; tree key; digest) rows in one transaction."""
        if self._db is None or not rows:
            return
        d = _key(dest)
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO download_dirs VALUES (?, ?, ?, ?)",
                    [(d, os.fsencode(rel), tree, digest) for rel, tree, digest in rows],
                )
        except sqlite3.Error:
            pass

    def get_dir(self, dest: str, rel: str) -> tuple[bytes, bytes] | None:
        """(tree key, digest) recorded for directory ``rel`` of ``dest``."""
        if self._db is None:
            return None
        d = self._dest_keys.get(dest)
        if d is None:
            d = self._dest_keys[dest] = _key(dest)
        try:
            row = self._db.execute(
                "SELECT tree, digest FROM download_dirs WHERE dest = ? AND dir = ?", (d, os.fsencode(rel))
            ).fetchone()
        except sqlite3.Error:
            return None
        return (bytes(row[0]), bytes(row[1])) if row is not None else None

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
