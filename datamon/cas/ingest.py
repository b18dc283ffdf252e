"""Turning files into stored objects: read, chunk, hash, deduplicate, compress, pack.

Deduplication asks the index once per batch of keys (never once per chunk), and a
``PackWriter`` claim makes sure two threads of one upload never write the same object.
Everything here streams: a file is read a window at a time, so memory stays bounded by
the window size times the number of workers, whatever the file size.

Trust: an index row is reused only once it agrees with the bytes being uploaded. For a
chunk or a tree the key is the hash of the content, so a row can at worst point at bytes
that fail verification on read (exit 4, never wrong bytes); its cheap facts are checked —
the row's kind is the one being stored and its raw length is the length of the bytes. For
a file map the key is the *file's* hash, so a row could map it to other chunks: the stored
map (one small object) is fetched and compared byte for byte with the map just computed
(the encoding is canonical). A row that fails either check — or whose object cannot be read
— is proven wrong: the object is written again and its pack's index rows *replace* the old
row (``ObjectIndex.add_pack(..., replace_keys=...)``, one transaction). Deduplicated chunks
are never read back. A session checks each key once (the first thread to meet it).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import BinaryIO

from datamon.cas.blobstore import BlobStore
from datamon.cas.chunker import Chunker
from datamon.cas.filemap import encode_filemap
from datamon.cas.hashing import EMPTY_KEY, Hasher, key_of
from datamon.cas.objects import IndexRow, Location, ObjectIndex, ObjectReader, PackWriter
from datamon.cas.pack import Kind
from datamon.errors import IntegrityError

_BATCH_KEYS = 2000
_USED_MARK = re.compile(r"^used/[0-9a-f]{2}/([0-9a-f]{64})\.(\d+)$")


INDEX_EPOCH_BLOB = "index-epoch"


def index_epoch(blobs: BlobStore) -> str:
    """The store's index epoch: changed by every operation that may drop index rows of
    objects that indexed trees still refer to (``verify --repair``, ``admin reindex``), so
    that caches of trees built before it (the upload stat cache's directory rows) stop
    counting. A store that never had one is at epoch ``"0"``."""
    from datamon.errors import NotFound

    try:
        raw = blobs.get(INDEX_EPOCH_BLOB)
    except NotFound:
        return "0"
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return text if 0 < len(text) <= 64 and text.isalnum() else "unreadable-" + os.urandom(8).hex()


def bump_index_epoch(blobs: BlobStore) -> str:
    """Start a new index epoch (see ``index_epoch``); returns it."""
    epoch = f"{time.time_ns():x}{os.urandom(8).hex()}"
    blobs.put(INDEX_EPOCH_BLOB, epoch.encode("ascii"))
    return epoch


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

    This says nothing about whether a row is *right*; ``Ingester`` checks that against the
    bytes it uploads (the returned set carries the rows it found, as ``.rows``).
    """
    rows = reusable_rows(index, blobs, keys, marked)
    out = ReusableKeys(rows)
    out.rows = rows
    return out


class ReusableKeys(set[bytes]):
    """``reusable``'s answer: a set of keys, with the index row of each."""

    rows: Mapping[bytes, IndexRow]


def reusable_rows(
    index: ObjectIndex, blobs: BlobStore, keys: Sequence[bytes], marked: set[str]
) -> dict[bytes, IndexRow]:
    """``reusable``, with the index row of every key it returns."""
    rows: dict[bytes, IndexRow] = {}
    for i in range(0, len(keys), _BATCH_KEYS):
        rows.update(index.lookup_objects(keys[i : i + _BATCH_KEYS]))
    unmarked = {r[1] for r in rows.values()} - marked
    if not unmarked:
        return rows
    now = time.time_ns()
    for pack in sorted(unmarked):
        blobs.put(used_mark_name(pack, now), b"")
    marked.update(unmarked)
    again = [k for k, r in rows.items() if r[1] in unmarked]
    confirmed = {k: r for k, r in rows.items() if r[1] not in unmarked}
    for i in range(0, len(again), _BATCH_KEYS):
        confirmed.update(index.lookup_objects(again[i : i + _BATCH_KEYS]))
    return confirmed


@dataclass(frozen=True)
class Expect:
    """What the row of a key being uploaded must say: its kind and raw length, and for a file
    map the exact encoding (compared with the stored map)."""

    kind: int
    raw_length: int
    raw: bytes | None = None


@dataclass(frozen=True)
class FileResult:
    key: bytes
    size: int
    chunks: int
    new_bytes: int  # raw bytes this upload had to store (0 when fully deduplicated)


class Ingester:
    """Stores file contents and other objects through one ``PackWriter``. Thread-safe."""

    def __init__(
        self,
        chunker: Chunker,
        index: ObjectIndex,
        writer: PackWriter,
        compress_pool: Executor | None = None,
        *,
        reader: ObjectReader | None = None,
    ) -> None:
        self.chunker = chunker
        self.index = index
        self.writer = writer
        self.pool = compress_pool
        self.reader = reader if reader is not None else ObjectReader(writer.blobs, index)
        self.marked: set[str] = set()  # packs this session has left a used mark on
        self.replaced: set[bytes] = set()  # keys whose index rows this session proved wrong
        self._lock = threading.Lock()

    def claim_missing(
        self, keys: Sequence[bytes], expect: Mapping[bytes, Expect] | None = None
    ) -> set[bytes]:
        """The subset of ``keys`` this caller must write: not indexed (or indexed with a row
        that ``expect`` proves wrong), not claimed by another thread."""
        w = self.writer
        unknown = [k for k in dict.fromkeys(keys) if not w.is_claimed(k)]
        if not unknown:
            return set()
        present = reusable(self.index, w.blobs, unknown, self.marked)
        rows: Mapping[bytes, IndexRow] | None = getattr(present, "rows", None)
        if rows is None:  # a stand-in for ``reusable`` (tests): look the rows up
            rows = self.index.lookup_objects([k for k in unknown if k in present])
        wrong = self._disproven(rows, expect) if expect else set()
        w.mark_present(k for k in present if k not in wrong)
        todo = set()
        for k in unknown:
            if (k not in present or k in wrong) and w.claim(k):
                todo.add(k)
                if k in wrong:
                    with self._lock:
                        self.replaced.add(k)
        return todo

    def _disproven(self, rows: Mapping[bytes, IndexRow], expect: Mapping[bytes, Expect]) -> set[bytes]:
        """Keys whose rows disagree with what is being uploaded."""
        wrong: set[bytes] = set()
        maps: dict[bytes, Location] = {}
        for k, row in rows.items():
            e = expect.get(k)
            if e is None:
                continue
            if row[5] != e.kind or row[4] != e.raw_length:
                wrong.add(k)
            elif e.raw is not None:
                maps[k] = Location.from_row(row)
        if maps:
            stored: dict[bytes, bytes] = {}
            try:
                for k, raw in self.reader.read_locations(maps.values()):
                    stored[k] = raw
            except IntegrityError:
                for k, loc in maps.items():  # find which ones: each alone
                    if k not in stored:
                        try:
                            stored[k] = self.reader.read_location(loc)
                        except IntegrityError:
                            pass
            for k in maps:
                if stored.get(k) != expect[k].raw:
                    wrong.add(k)
        return wrong

    def _write(self, key: bytes, raw: bytes | memoryview, kind: int) -> None:
        self.writer.write(key, raw, kind, replace=key in self.replaced)

    # -- batches of small objects (uploads of many small files) ------------------------
    def _rows_of(self, keys: Sequence[bytes]) -> Mapping[bytes, IndexRow]:
        """Index rows of those ``keys`` that are safe to reuse (``reusable``: used marks first)."""
        present = reusable(self.index, self.writer.blobs, keys, self.marked)
        rows: Mapping[bytes, IndexRow] | None = getattr(present, "rows", None)
        if rows is None:  # a stand-in for ``reusable`` (tests): look the rows up
            rows = self.index.lookup_objects([k for k in keys if k in present])
        return rows

    def claim_small(self, keys: Sequence[bytes], facts: Callable[[bytes], tuple[int, int]]) -> set[bytes]:
        """Of the keys of chunks and trees (whose key is the hash of their bytes), those this
        caller must write: not indexed, or indexed with a row whose kind or raw length is not
        ``facts(key)`` (then the new row replaces it), and not claimed by another thread. One
        index query per ``_BATCH_KEYS`` keys; ``facts`` is asked only about indexed keys."""
        w = self.writer
        mine = w.claim_many(dict.fromkeys(keys))
        if not mine:
            return set()
        rows = self._rows_of(mine)
        if not rows:
            return set(mine)
        wrong = {k for k, row in rows.items() if (row[5], row[4]) != facts(k)}
        right = [k for k in rows if k not in wrong]
        w.unclaim_present(right)
        if wrong:
            with self._lock:
                self.replaced.update(wrong)
        todo = set(mine)
        todo.difference_update(right)
        return todo

    def write_stored(self, items: Sequence[tuple[bytes, bytes | memoryview, int, int, int]]) -> None:
        """Append claimed, already encoded objects (key, stored, raw length, kind, compression)
        in order (see ``PackWriter.write_stored_many``)."""
        replace = {k for k, *_ in items if k in self.replaced} if self.replaced else None
        self.writer.write_stored_many(items, replace=replace)

    def present_files(self, files: Sequence[tuple[bytes, int]]) -> set[bytes]:
        """Of (file key, size) pairs a stat cache vouched for, the keys an upload may refer to
        without reading the files: indexed as a chunk of exactly that size, or as a file map."""
        keys = list(dict.fromkeys(k for k, _ in files))
        rows = self._rows_of(keys)
        size_of = dict(files)
        ok = set()
        for k, row in rows.items():
            if row[5] == Kind.FILEMAP or (row[5] == Kind.CHUNK and row[4] == size_of.get(k)):
                ok.add(k)
        self.writer.mark_present(ok)
        return ok

    def present_trees(self, keys: Sequence[bytes]) -> set[bytes]:
        """Of tree keys a stat cache vouched for, those indexed as trees (with used marks)."""
        rows = self._rows_of(list(dict.fromkeys(keys)))
        ok = {k for k, row in rows.items() if row[5] == Kind.TREE}
        self.writer.mark_present(ok)
        return ok

    def store_objects(self, objects: Sequence[tuple[bytes, bytes, int]]) -> int:
        """Store (key, raw, kind) objects that are not stored yet (or whose rows are proven
        wrong); returns raw bytes written."""
        expect = {
            k: Expect(kind, len(raw), raw if kind == Kind.FILEMAP else None) for k, raw, kind in objects
        }
        todo = self.claim_missing([k for k, _, _ in objects], expect)
        written = 0
        for key, raw, kind in objects:
            if key in todo:
                todo.discard(key)
                self._write(key, raw, kind)
                written += len(raw)
        return written

    def _write_chunks(self, chunks: list[tuple[bytes, memoryview]], todo: set[bytes]) -> int:
        jobs = [(k, c) for k, c in chunks if k in todo and not todo.discard(k)]  # type: ignore[func-returns-value]
        if not jobs:
            return 0
        if self.pool is not None and len(jobs) > 1:
            futs = [self.pool.submit(self._write, k, c, Kind.CHUNK) for k, c in jobs]
            for f in futs:
                f.result()
        else:
            for k, c in jobs:
                self._write(k, c, Kind.CHUNK)
        return sum(len(c) for _, c in jobs)

    def ingest_buffers(self, buffers: Sequence[bytes]) -> list[FileResult]:
        """Store several whole files held in memory with one index query (small files)."""
        per_file: list[tuple[bytes, list[tuple[bytes, memoryview]], bytes | None]] = []
        objects_keys: list[bytes] = []
        expect: dict[bytes, Expect] = {}
        for data in buffers:
            chunks = [(key_of(c), c) for c in self.chunker.cut(data)]
            fmap = None
            if not chunks:
                fkey = EMPTY_KEY
            elif len(chunks) == 1:
                fkey = chunks[0][0]
            else:
                fkey = key_of(data)
                fmap = encode_filemap([(k, len(c)) for k, c in chunks])
                objects_keys.append(fkey)
                expect[fkey] = Expect(Kind.FILEMAP, len(fmap), fmap)
            per_file.append((fkey, chunks, fmap))
            for k, c in chunks:
                objects_keys.append(k)
                expect[k] = Expect(Kind.CHUNK, len(c))
        todo = self.claim_missing(objects_keys, expect)
        results = []
        for data, (fkey, chunks, fmap) in zip(buffers, per_file, strict=True):
            new = self._write_chunks(chunks, todo)
            if fmap is not None and fkey in todo:
                todo.discard(fkey)
                self._write(fkey, fmap, Kind.FILEMAP)
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
            todo = self.claim_missing(
                [k for k, _ in keyed], {k: Expect(Kind.CHUNK, len(c)) for k, c in keyed}
            )
            jobs = [(k, c) for k, c in keyed if k in todo and not todo.discard(k)]  # type: ignore[func-returns-value]
            new += sum(len(c) for _, c in jobs)
            for fut in inflight:
                fut.result()
            if self.pool is not None:
                inflight = [self.pool.submit(self._write, k, c, Kind.CHUNK) for k, c in jobs]
            else:
                for k, c in jobs:
                    self._write(k, c, Kind.CHUNK)
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
