"""A bounded on-disk LRU cache of verified chunk bytes, shared by download, mount and LFS.

Entries are files ``<dir>/<hh>/<hex key>``; recency is the file's mtime, touched on a hit.
Every hit is re-verified (BLAKE3 is cheap next to a disk read), so a damaged cache file is
dropped and refetched, never returned.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable

from datamon.cas.hashing import key_of


class ChunkCache:
    def __init__(self, directory: str, max_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None  # computed lazily on the first put

    def _path(self, key: bytes) -> str:
        h = key.hex()
        return os.path.join(self.directory, h[:2], h)

    def get(self, key: bytes) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if key_of(data) != key:
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return data

    def put(self, key: bytes, data: bytes) -> None:
        """Store verified bytes (the caller has checked ``key_of(data) == key``)."""
        if self.max_bytes <= 0 or len(data) > self.max_bytes:
            return
        path = self._path(key)
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            if self._size is None:
                self._size = self._scan_size()
            else:
                self._size += len(data)
            if self._size > self.max_bytes:
                self._evict()

    def discard(self, keys: Iterable[bytes]) -> int:
        """Remove the entries of ``keys`` if present; returns how many went. Used when bytes must
        not stay on this machine (``repo delete files``)."""
        gone = 0
        for key in keys:
            try:
                size = os.path.getsize(self._path(key))
                os.unlink(self._path(key))
            except OSError:
                continue
            gone += 1
            with self._lock:
                if self._size is not None:
                    self._size = max(0, self._size - size)
        return gone

    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        for sub in os.scandir(self.directory):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, e.path))
        return out

    def _scan_size(self) -> int:
        return sum(size for _, size, _ in self._entries()) if os.path.isdir(self.directory) else 0

    def _evict(self) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * 0.9)
        for _, size, path in entries:
            if total <= target:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
        self._size = total
