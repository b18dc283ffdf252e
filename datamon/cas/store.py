"""``ContentStore``: the CAS facade the api uses — settings, writer sessions, verified reads.

Trust (docs/format.md, "Trust"): every object read is verified by ``ObjectReader``, but a
file map is only self-checksummed, so a row can map a file key to a well-formed map of
*other* chunks. What proves a file is its whole hash, and the rules here make sure no
reader completes a read of a file that is wrong:

* ``file_chunks(key, size)`` checks what it returns against the tree entry's size: the
  empty file is size 0 with ``EMPTY_KEY``; a file stored as one chunk has that chunk's raw
  length; a file map has 2+ chunks of 1..``max_size`` bytes summing to ``size`` (and its
  row's length must fit that count before it is fetched). Anything else is
  ``CorruptObject`` naming the file key.
* ``iter_file`` hashes a mapped file as it goes and raises ``CorruptObject`` *before it
  yields the last piece* if the hash is not the file key, so a consumer never sees a wrong
  file complete. A single-chunk file is its chunk, whose hash is checked on read.
* ``LazyFile`` (``open_file``) and the FUSE mount (``fuse/vfs.py``) verify lazily with a
  ``WholeFileCheck``: chunks read in order are hashed as they pass; **before any byte of
  the last chunk is returned**, the whole file is proven — by that running hash when every
  chunk was read in order, else by a full pass over the chunks (``check_file``; the chunks
  usually come from the chunk cache). Reads of earlier chunks are served before the proof
  (each chunk itself verified), so a random-access reader may see a prefix of a file that
  later proves wrong, never all of it. Once a file is proven wrong every later read and
  open of it fails (``CorruptObject``; EIO on the mount).
* Proofs are remembered per ``ContentStore`` in a bounded LRU (``PROOFS_MAX`` file keys),
  so reopening a proven file costs nothing.
"""

from __future__ import annotations

import io
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import accumulate

from datamon.cas.blobstore import BlobStore
from datamon.cas.cache import ChunkCache
from datamon.cas.chunker import Chunker, ChunkerParams
from datamon.cas.filemap import ENTRY_SIZE, MIN_CHUNKS, OVERHEAD, decode_filemap
from datamon.cas.hashing import EMPTY_KEY, Hasher
from datamon.cas.ingest import Ingester
from datamon.cas.objects import MAX_CHUNK_CAP, MAX_META_OBJECT, ObjectIndex, ObjectReader, PackWriter
from datamon.cas.pack import Kind
from datamon.cas.storeconfig import load_or_create
from datamon.cas.tree import MAX_SIZE, TreeEntry, decode_tree
from datamon.errors import CorruptObject

DEFAULT_LEVEL = 1  # measured: on mixed CSV/binary data level 1 is 1.6x faster than 3 and as small
PROOFS_MAX = 100_000  # file keys whose whole-file proof (good or bad) a ContentStore remembers
VERIFY_WINDOW = 32 << 20  # bytes of chunks fetched together by a verification pass


class ContentStore:
    def __init__(
        self,
        blobs: BlobStore,
        index: ObjectIndex,
        *,
        cache_dir: str | None = None,
        cache_bytes: int = 1 << 30,
        level: int = DEFAULT_LEVEL,
        pack_size: int = 32 << 20,
        chunker_default: ChunkerParams | None = None,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.config = load_or_create(blobs, chunker_default)
        self.chunker = Chunker(self.config.chunker)
        self.max_chunk = min(self.chunker.params.max_size, MAX_CHUNK_CAP)
        self.level = level
        self.pack_size = pack_size
        self.cache = ChunkCache(cache_dir, cache_bytes) if cache_dir else None
        self.reader = ObjectReader(blobs, index, self.cache, max_chunk=self.max_chunk)
        self.full_passes = 0  # lazy proofs that needed a pass of their own (statistics, tests)
        self._proofs: OrderedDict[bytes, bool] = OrderedDict()
        self._proofs_lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def writing(self, concurrency: int = 2) -> Iterator[Ingester]:
        """An ingest session. On normal exit every object written is in a pack and indexed;
        on error nothing refers to what was written (it stays as garbage for gc)."""
        writer = PackWriter(self.blobs, self.index, level=self.level, pack_size=self.pack_size)
        pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="datamon-zstd")
        try:
            yield Ingester(self.chunker, self.index, writer, pool, reader=self.reader)
            writer.flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            writer.close()

    # -- reading -------------------------------------------------------------------------
    def read_tree(self, key: bytes) -> list[TreeEntry]:
        """Entries of tree ``key``; ``CorruptObject`` naming it if its row is not a tree's or
        its bytes are not a valid tree (``decode_tree``)."""
        raw = self.reader.get_tree(key)
        try:
            return decode_tree(raw)
        except ValueError as e:
            raise CorruptObject(key.hex(), "tree", str(e)) from None

    def file_chunks(self, file_key: bytes, size: int) -> list[tuple[bytes, int]]:
        """(chunk key, length) list of a file of ``size`` bytes (the tree entry's size),
        checked against that size (module docstring); ``CorruptObject`` naming the file."""
        where = "file"
        if not 0 <= size <= MAX_SIZE:
            raise CorruptObject(file_key.hex(), where, f"impossible size {size}")
        if size == 0 or file_key == EMPTY_KEY:
            if size == 0 and file_key == EMPTY_KEY:
                return []
            raise CorruptObject(
                file_key.hex(),
                where,
                f"the tree says {size} bytes (only the empty file, 0 bytes, has the empty key)",
            )
        loc = self.reader.locate([file_key])[file_key]
        if loc.kind == Kind.CHUNK:
            if loc.raw_length != size:
                raise CorruptObject(
                    file_key.hex(),
                    where,
                    f"stored as one chunk of {loc.raw_length} bytes, the tree says {size}",
                )
            return [(file_key, size)]
        if loc.kind != Kind.FILEMAP:
            raise CorruptObject(
                file_key.hex(), where, f"indexed as kind {loc.kind}, which is not file content"
            )
        count, rest = divmod(loc.raw_length - OVERHEAD, ENTRY_SIZE)
        lowest = max(MIN_CHUNKS, -(-size // self.max_chunk))
        if rest or not lowest <= count <= min(size, (MAX_META_OBJECT - OVERHEAD) // ENTRY_SIZE):
            raise CorruptObject(
                file_key.hex(),
                "file map",
                f"a map of {loc.raw_length} bytes cannot describe a file of {size} bytes",
            )
        try:
            chunks = decode_filemap(self.reader.get_filemap(file_key), self.max_chunk)
        except ValueError as e:
            raise CorruptObject(file_key.hex(), "file map", str(e)) from None
        total = sum(n for _, n in chunks)
        if total != size:
            raise CorruptObject(
                file_key.hex(), "file map", f"chunks add up to {total} bytes, the tree says {size}"
            )
        return chunks

    # -- whole-file proofs -------------------------------------------------------------------
    def proof(self, file_key: bytes) -> bool | None:
        """True if ``file_key``'s content was proven, False if proven wrong, None if not known."""
        with self._proofs_lock:
            got = self._proofs.get(file_key)
            if got is not None:
                self._proofs.move_to_end(file_key)
            return got

    def record_proof(self, file_key: bytes, ok: bool) -> None:
        with self._proofs_lock:
            self._proofs[file_key] = ok
            self._proofs.move_to_end(file_key)
            while len(self._proofs) > PROOFS_MAX:
                self._proofs.popitem(last=False)

    def refuse_if_disproven(self, file_key: bytes) -> None:
        if self.proof(file_key) is False:
            raise CorruptObject(file_key.hex(), "file", "content does not hash to the file key")

    def _mismatch(self, file_key: bytes) -> CorruptObject:
        self.record_proof(file_key, False)
        return CorruptObject(file_key.hex(), "file", "content does not hash to the file key")

    def _chunk_windows(self, chunks: Sequence[tuple[bytes, int]]) -> Iterator[list[tuple[bytes, int]]]:
        i = 0
        while i < len(chunks):
            batch: list[tuple[bytes, int]] = []
            total = 0
            while i < len(chunks) and (not batch or total + chunks[i][1] <= VERIFY_WINDOW):
                batch.append(chunks[i])
                total += chunks[i][1]
                i += 1
            yield batch

    def _window_bytes(self, file_key: bytes, batch: list[tuple[bytes, int]]) -> list[bytes]:
        got = dict(self.reader.get_many([k for k, _ in batch]))
        out = []
        for k, n in batch:
            data = got[k]
            if len(data) != n:
                raise CorruptObject(
                    file_key.hex(), "file map", f"chunk {k.hex()} has {len(data)} bytes, the map says {n}"
                )
            out.append(data)
        return out

    def check_file(self, file_key: bytes, chunks: Sequence[tuple[bytes, int]]) -> None:
        """Prove a file (its chunk list from ``file_chunks``) against its key with one pass
        over its chunks; raises ``CorruptObject`` if it is wrong. Remembered."""
        if len(chunks) <= 1:
            return  # no chunks: the empty file; one chunk: verified by its own hash
        state = self.proof(file_key)
        if state is not None:
            if not state:
                raise self._mismatch(file_key)
            return
        hasher = Hasher()
        for batch in self._chunk_windows(chunks):
            for data in self._window_bytes(file_key, batch):
                hasher.update(data)
        if hasher.digest() != file_key:
            raise self._mismatch(file_key)
        self.record_proof(file_key, True)

    def iter_file(self, file_key: bytes, size: int, window: int = VERIFY_WINDOW) -> Iterator[bytes]:
        """A file's bytes in order, every chunk verified; for a file of several chunks the
        whole file's hash is checked *before the last piece is yielded* (``CorruptObject``)."""
        chunks = self.file_chunks(file_key, size)
        if len(chunks) == 1:
            data = self.reader.get(file_key)
            if len(data) != size:
                raise CorruptObject(file_key.hex(), "file", f"has {len(data)} bytes, the tree says {size}")
            yield data
            return
        if not chunks:
            return
        self.refuse_if_disproven(file_key)
        hasher = Hasher()
        last = len(chunks) - 1
        i = 0
        for batch in self._chunk_windows(chunks):
            for data in self._window_bytes(file_key, batch):
                hasher.update(data)
                if i == last:
                    if hasher.digest() != file_key:
                        raise self._mismatch(file_key)
                    self.record_proof(file_key, True)
                yield data
                i += 1

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Verified bytes of chunks (whole files of one chunk) by key. A key indexed as a
        file map or a tree is ``CorruptObject``: those bytes are not file content."""
        return dict(self.reader.get_many(keys))

    def read_small_files(self, files: Sequence[tuple[bytes, int]]) -> dict[bytes, bytes]:
        """Verified contents of files of one chunk (or none) by key, given (file key, tree
        size) pairs; a content whose length is not the tree's size is ``CorruptObject``."""
        wanted = [k for k, n in files if n]
        got = self.get_many(wanted)
        for k, n in files:
            if n == 0:
                if k != EMPTY_KEY:
                    raise CorruptObject(k.hex(), "file", "the tree says 0 bytes for a non-empty key")
                got[k] = b""
            elif len(got[k]) != n:
                raise CorruptObject(k.hex(), "file", f"has {len(got[k])} bytes, the tree says {n}")
        return got

    def open_file(self, file_key: bytes, size: int) -> LazyFile:
        return LazyFile(self, file_key, size)


class WholeFileCheck:
    """The lazy whole-file proof of one open file (rule in the module docstring).

    Call ``seen(i, data)`` with chunk ``i``'s verified bytes as a read gets them, then
    ``before_return(i)`` before returning any of those bytes. With ``hash_pool`` (a
    one-thread executor) the running hash is updated there, in order, off the reading
    thread; ``before_return`` of the last chunk waits for it. Thread-safe."""

    def __init__(
        self,
        store: ContentStore,
        file_key: bytes,
        chunks: Sequence[tuple[bytes, int]],
        hash_pool: Executor | None = None,
    ) -> None:
        self.store = store
        self.key = file_key
        self.chunks = chunks
        self.last = len(chunks) - 1
        self.proven = len(chunks) <= 1 or store.proof(file_key) is True
        if not self.proven:
            store.refuse_if_disproven(file_key)
        self._hasher: Hasher | None = None if self.proven else Hasher()
        self._pool = hash_pool
        self._tail: Future[None] | None = None  # the newest update queued on hash_pool
        self._next = 0  # chunks hashed (or queued for hashing) so far, in order
        self._lock = threading.Lock()

    @property
    def next_chunk(self) -> int:
        """The chunk the running hash needs next (``len(chunks)`` when it has them all)."""
        return len(self.chunks) if self.proven else self._next

    def seen(self, i: int, data: bytes) -> None:
        if self.proven:
            return
        with self._lock:
            hasher = self._hasher
            if i != self._next or hasher is None:
                return
            self._next += 1
            if self._pool is None:
                hasher.update(data)
            else:  # one thread: updates run in the order they are queued
                self._tail = self._pool.submit(hasher.update, data)

    def before_return(self, i: int) -> None:
        """Raise ``CorruptObject`` if the file is proven wrong, proving it first if ``i`` is
        its last chunk."""
        if self.proven:
            return
        self.store.refuse_if_disproven(self.key)
        if i != self.last:
            return
        with self._lock:
            if self.proven:
                return
            if self._tail is not None:
                self._tail.result()
            if self._hasher is not None and self._next == len(self.chunks):
                if self._hasher.digest() != self.key:
                    raise self.store._mismatch(self.key)
                self.store.record_proof(self.key, True)
            else:
                self.store.full_passes += 1
                self.store.check_file(self.key, self.chunks)
            self.proven = True
            self._hasher = None
            self._tail = None


class LazyFile(io.RawIOBase):
    """A read-only, seekable file object over a stored file; chunks are fetched on demand.
    Never returns a byte of the last chunk before the whole file is proven (module docstring)."""

    def __init__(self, store: ContentStore, file_key: bytes, size: int) -> None:
        super().__init__()
        self._store = store
        self.key = file_key
        self.size = size
        self._chunks = store.file_chunks(file_key, size)
        self._ends = list(accumulate(n for _, n in self._chunks))
        self._check = WholeFileCheck(store, file_key, self._chunks)
        self._pos = 0
        self._cur: tuple[int, bytes] | None = None  # (chunk index, bytes)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _chunk(self, i: int) -> bytes:
        cur = self._cur  # read once: another thread may replace it meanwhile
        if cur is None or cur[0] != i:
            key, n = self._chunks[i]
            data = self._store.reader.get(key)
            if len(data) != n:
                raise CorruptObject(
                    self.key.hex(), "file map", f"chunk {key.hex()} has {len(data)} bytes, the map says {n}"
                )
            self._check.seen(i, data)
            cur = (i, data)
            self._cur = cur
        self._check.before_return(i)
        return cur[1]

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` without moving the file position."""
        if offset >= self.size or n <= 0:
            return b""
        end = min(self.size, offset + n)
        out = []
        pos = offset
        while pos < end:
            i = bisect_right(self._ends, pos)
            start = self._ends[i] - self._chunks[i][1]
            data = self._chunk(i)
            piece = data[pos - start : min(end, self._ends[i]) - start]
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(len(b), self._pos)
        n = len(data)
        memoryview(b)[:n] = data
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.pread(size, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)
