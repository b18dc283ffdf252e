"""Turning files into stored objects: read, chunk, hash, deduplicate, compress, pack.

Deduplication asks the index once per batch of keys (never once per chunk), and a
``PackWriter`` claim makes sure two threads of one upload never write the same object.
Everything here streams: a file is read a window at a time, so memory stays bounded by
the window size times the number of workers, whatever the file size.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import BinaryIO

from datamon.cas.blobstore import BlobStore
from datamon.cas.chunker import Chunker
from datamon.cas.filemap import encode_filemap
from datamon.cas.hashing import EMPTY_KEY, Hasher, key_of
from datamon.cas.objects import ObjectIndex, PackWriter
from datamon.cas.pack import Kind

_BATCH_KEYS = 2000
_USED_MARK = re.compile(r"^used/[0-9a-f]{2}/([0-9a-f]{64})\.(\d+)$")


def used_mark_name(pack: str, time_ns: int) -> str:
    """Blob name of a *used mark*: an upload reused objects of ``pack`` at ``time_ns``."""
    return f"used/{pack[:2]}/{pack}.{time_ns}"


def parse_used_mark(name: str) -> tuple[str, int] | None:
    """(pack, time_ns) of a used mark's blob name, or ``None`` for any other name."""
    m = _USED_MARK.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def reusable(index: ObjectIndex, blobs: BlobStore, keys: Sequence[bytes], marked: set[str]) -> set[bytes]:
    """The subset of ``keys`` that is stored and safe for a new bundle to refer to.

    Reusing an object is what races gc: gc may find it unreachable while this upload is
    deciding not to write it. So the packs of the found objects get a used mark first (gc
    keeps a pack, and everything its trees and file maps refer to, for its grace period
    after the newest mark), then the keys are looked up again: a key gc dropped before seeing
    the mark is absent now and gets written anew. ``marked`` collects the packs this session
    has marked (a duplicate mark from two threads is harmless).
    """
    rows: dict[bytes, object] = {}
    for i in range(0, len(keys), _BATCH_KEYS):
        rows.update(index.lookup_objects(keys[i : i + _BATCH_KEYS]))
    unmarked = {r[1] for r in rows.values()} - marked  # type: ignore[index]
    if not unmarked:
        return set(rows)
    now = time.time_ns()
    for pack in sorted(unmarked):
        blobs.put(used_mark_name(pack, now), b"")
    marked.update(unmarked)
    again = [k for k, r in rows.items() if r[1] in unmarked]  # type: ignore[index]
    again_set = set(again)
    confirmed = {k for k in rows if k not in again_set}
    for i in range(0, len(again), _BATCH_KEYS):
        confirmed.update(index.lookup_objects(again[i : i + _BATCH_KEYS]))
    return confirmed


@dataclass(frozen=True)
class FileResult:
    key: bytes
    size: int
    chunks: int
    new_bytes: int  # raw bytes this upload had to store (0 when fully deduplicated)


class Ingester:
    """Stores file contents and other objects through one ``PackWriter``. Thread-safe."""

    def __init__(
        self, chunker: Chunker, index: ObjectIndex, writer: PackWriter, compress_pool: Executor | None = None
    ) -> None:
        self.chunker = chunker
        self.index = index
        self.writer = writer
        self.pool = compress_pool
        self.marked: set[str] = set()  # packs this session has left a used mark on

    def claim_missing(self, keys: Sequence[bytes]) -> set[bytes]:
        """The subset of ``keys`` this caller must write: not indexed, not claimed by another thread."""
        w = self.writer
        unknown = [k for k in dict.fromkeys(keys) if not w.is_claimed(k)]
        if not unknown:
            return set()
        present = reusable(self.index, w.blobs, unknown, self.marked)
        w.mark_present(present)
        return {k for k in unknown if k not in present and w.claim(k)}

    def store_objects(self, objects: Sequence[tuple[bytes, bytes, int]]) -> int:
        """Store (key, raw, kind) objects that are not stored yet; returns raw bytes written."""
        todo = self.claim_missing([k for k, _, _ in objects])
        written = 0
        for key, raw, kind in objects:
            if key in todo:
                todo.discard(key)
                self.writer.write(key, raw, kind)
                written += len(raw)
        return written

    def _write_chunks(self, chunks: list[tuple[bytes, memoryview]], todo: set[bytes]) -> int:
        jobs = [(k, c) for k, c in chunks if k in todo and not todo.discard(k)]  # type: ignore[func-returns-value]
        if not jobs:
            return 0
        if self.pool is not None and len(jobs) > 1:
            futs = [self.pool.submit(self.writer.write, k, c, Kind.CHUNK) for k, c in jobs]
            for f in futs:
                f.result()
        else:
            for k, c in jobs:
                self.writer.write(k, c, Kind.CHUNK)
        return sum(len(c) for _, c in jobs)

    def ingest_buffers(self, buffers: Sequence[bytes]) -> list[FileResult]:
        """Store several whole files held in memory with one index query (small files)."""
        per_file: list[tuple[bytes, list[tuple[bytes, memoryview]]]] = []
        objects_keys: list[bytes] = []
        for data in buffers:
            chunks = [(key_of(c), c) for c in self.chunker.cut(data)]
            if not chunks:
                fkey = EMPTY_KEY
            elif len(chunks) == 1:
                fkey = chunks[0][0]
            else:
                fkey = key_of(data)
                objects_keys.append(fkey)
            per_file.append((fkey, chunks))
            objects_keys.extend(k for k, _ in chunks)
        todo = self.claim_missing(objects_keys)
        results = []
        for data, (fkey, chunks) in zip(buffers, per_file, strict=True):
            new = self._write_chunks(chunks, todo)
            if len(chunks) > 1 and fkey in todo:
                todo.discard(fkey)
                self.writer.write(fkey, encode_filemap([(k, len(c)) for k, c in chunks]), Kind.FILEMAP)
            results.append(FileResult(fkey, len(data), len(chunks), new))
        return results

    def ingest_path(self, path: str | os.PathLike[str]) -> FileResult:
        """Store one file of any size, streaming it a window at a time."""
        with open(path, "rb") as f:
            return self.ingest_stream(f)

    def ingest_stream(self, f: BinaryIO, before_commit: Callable[[], None] | None = None) -> FileResult:
        """Store a stream of any size; memory stays at about two windows.

        Window N is compressed (on the compression pool) while window N+1 is read, chunked
        and hashed. ``before_commit`` runs after every chunk is written and before the file
        map — what makes a multi-chunk file addressable — is stored; it may raise to refuse
        the content (the Git LFS agent checks the SHA-256 there), leaving only unreferenced
        chunks behind.
        """
        hasher = Hasher()
        chunk_list: list[tuple[bytes, int]] = []
        size = new = 0
        inflight: list[Future[None]] = []
        for window in self.chunker.stream(f):
            keyed = [(key_of(c), c) for c in window]
            for _, c in keyed:
                hasher.update(c)
                size += len(c)
            todo = self.claim_missing([k for k, _ in keyed])
            jobs = [(k, c) for k, c in keyed if k in todo and not todo.discard(k)]  # type: ignore[func-returns-value]
            new += sum(len(c) for _, c in jobs)
            for fut in inflight:
                fut.result()
            if self.pool is not None:
                inflight = [self.pool.submit(self.writer.write, k, c, Kind.CHUNK) for k, c in jobs]
            else:
                for k, c in jobs:
                    self.writer.write(k, c, Kind.CHUNK)
            chunk_list.extend((k, len(c)) for k, c in keyed)
        for fut in inflight:
            fut.result()
        if before_commit is not None:
            before_commit()
        if not chunk_list:
            return FileResult(EMPTY_KEY, 0, 0, 0)
        if len(chunk_list) == 1:
            return FileResult(chunk_list[0][0], size, 1, new)
        fkey = hasher.digest()
        self.store_objects([(fkey, encode_filemap(chunk_list), Kind.FILEMAP)])
        return FileResult(fkey, size, len(chunk_list), new)
