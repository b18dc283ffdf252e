"""Whole-file proofs remembered on this machine, so random access stays lazy across processes.

A multi-chunk file is proven by hashing all of its chunks (``datamon/cas/store.py``): until
then a reader never gets a byte of its last chunk. Formats that read the end of a file
first (Parquet's footer, ZIP's directory) would otherwise fetch the whole file in every new
process. A proof is a permanent fact about content-addressed data — *this list of chunk
keys is the content whose hash is this file key* — so it is recorded here as (file key,
BLAKE3 of the chunk list) and handed back to a ``ContentStore`` (``record_proof``) only when
the file map read from the store lists exactly the same chunks. Each chunk is still
verified against its own key on every read. Like the stat cache, this is a local SQLite
file in the state directory and only an accelerator: losing it costs one verification pass.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path


def chunk_list_digest(chunks: Sequence[tuple[bytes, int]]) -> bytes:
    from datamon.cas.hashing import Hasher

    h = Hasher()
    for key, n in chunks:
        h.update(key + n.to_bytes(8, "little"))
    return h.digest()


class ProofMemo:
    def __init__(self, directory: Path | None) -> None:
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if directory is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(directory / "proofs.db", timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS proofs (key BLOB PRIMARY KEY, chunks BLOB) WITHOUT ROWID")
            db.commit()
            self._db = db
        except sqlite3.Error:
            self._db = None

    def proven(self, file_key: bytes, chunks: Sequence[tuple[bytes, int]]) -> bool:
        if self._db is None:
            return False
        try:
            with self._lock:
                row = self._db.execute("SELECT chunks FROM proofs WHERE key = ?", (file_key,)).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == chunk_list_digest(chunks)

    def remember(self, file_key: bytes, chunks: Sequence[tuple[bytes, int]]) -> None:
        if self._db is None:
            return
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO proofs VALUES (?, ?)", (file_key, chunk_list_digest(chunks))
                )
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
