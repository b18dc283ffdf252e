"""Writing objects into packs and reading them back, verified.

``PackWriter`` compresses objects (zstd, raw when that does not shrink them), appends them
to an in-memory pack and, when the pack is full, uploads it in the background and then
records its index rows: packs land before index rows, so the index never names a missing
pack. ``ObjectReader`` looks objects up in the index, fetches byte ranges of packs
(coalescing neighbours), decompresses and checks every object's BLAKE3 before returning it.

The index is reached through the ``ObjectIndex`` protocol, which the metadata store
implements without either package importing the other.

Index rows and pack bytes are hostile input (docs/format.md, "Trust"): before a byte is
fetched, ``check_location`` bounds the row (kind and compression known, raw length at most
the kind's cap — a chunk at most the chunker's ``max_size``, a tree or file map at most
``MAX_META_OBJECT`` — and stored length consistent with it: equal when raw, no larger when
compressed), so a row cannot make a reader fetch or allocate more than the honest maximum.
``decode_object`` then refuses a zstd frame whose header declares a content size other than
the row's raw length (a 131 KB frame can declare 1 TiB) and decompresses at most raw length
bytes. Every object but a file map is checked against its key; a file map carries only its
own checksum (see ``cas/filemap.py`` for what proves it). A reader also refuses an object
whose row has the wrong kind for its use (``get_tree``, ``get_filemap``; ``get`` never
returns a file map's bytes as content).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

import zstandard

from datamon.cas.blobstore import BlobStore
from datamon.cas.cache import ChunkCache
from datamon.cas.hashing import key_of
from datamon.cas.pack import HEADER_SIZE, Compression, Kind, PackBuilder, pack_blob_name
from datamon.errors import CorruptObject, MissingObject, NotFound, UsageError

IndexRow = tuple[bytes, str, int, int, int, int, int]

MAX_META_OBJECT = 1 << 30  # largest tree or file map (raw bytes) a reader accepts or a writer stores
DEFAULT_MAX_CHUNK = 64 << 20  # chunk cap when the chunker's max_size is not known
MAX_CHUNK_CAP = 1 << 30  # whatever a store's settings say, no chunk is read beyond this
_KINDS = frozenset(int(k) for k in Kind)
_COMPRESSIONS = frozenset(int(c) for c in Compression)


class ObjectIndex(Protocol):
    """What the CAS needs of the metadata store's object index."""

    def lookup_objects(self, keys: Sequence[bytes]) -> Mapping[bytes, IndexRow]: ...

    def add_pack(
        self,
        name: str,
        size: int,
        entries: Sequence[tuple[bytes, int, int, int, int, int]],
        *,
        replace_keys: Sequence[bytes] = (),
    ) -> None:
        """Record a pack and index its objects in one transaction; rows of ``replace_keys``
        (rows an upload proved wrong) are deleted first, so this pack's entries replace them."""
        ...


class Location(NamedTuple):
    """Where one object is stored. A named tuple: a download locates every file of a bundle,
    and building a frozen dataclass cost more than the index lookup itself."""

    key: bytes
    pack: str
    offset: int
    length: int
    raw_length: int
    kind: int
    compression: int

    @classmethod
    def from_row(cls, row: IndexRow) -> Location:
        return cls._make(row)  # (checks that there are seven fields)


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comps = getattr(_local, "comps", None)
    if comps is None:
        comps = _local.comps = {}
    c = comps.get(level)
    if c is None:
        c = comps[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def encode_object(raw: bytes | memoryview, level: int) -> tuple[bytes, int]:
    """(stored bytes, compression) — raw when compression does not save at least 1/32."""
    if level > 0 and len(raw) > 64:
        comp = _compressor(level).compress(raw)
        if len(comp) < len(raw) - (len(raw) >> 5):
            return comp, Compression.ZSTD
    return bytes(raw), Compression.NONE


def max_raw_length(kind: int, max_chunk: int = DEFAULT_MAX_CHUNK) -> int:
    """The largest raw length an honest object of ``kind`` has."""
    if kind == Kind.CHUNK:
        return min(max_chunk, MAX_CHUNK_CAP)
    return MAX_META_OBJECT


def check_location(loc: Location, where: str, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
    """Refuse an index row no honest writer produces, before anything is fetched for it."""
    key = loc.key

    def bad(detail: str) -> CorruptObject:
        return CorruptObject(key.hex() if isinstance(key, bytes) else repr(key), where, detail)

    if not isinstance(key, bytes) or len(key) != 32:
        raise bad("index row has a malformed key")
    if loc.kind not in _KINDS:
        raise bad(f"index row has unknown kind {loc.kind}")
    if loc.compression not in _COMPRESSIONS:
        raise bad(f"index row has unknown compression {loc.compression}")
    cap = max_raw_length(loc.kind, max_chunk)
    if not 1 <= loc.raw_length <= cap:
        raise bad(f"index row claims {loc.raw_length} raw bytes (at most {cap} for kind {loc.kind})")
    if loc.compression == Compression.NONE and loc.length != loc.raw_length:
        raise bad(f"stored raw but stored length {loc.length} != raw length {loc.raw_length}")
    if not 1 <= loc.length <= loc.raw_length:
        raise bad(f"stored length {loc.length} is impossible for raw length {loc.raw_length}")
    if loc.offset < HEADER_SIZE:
        raise bad(f"index row points at offset {loc.offset}, inside the pack header")


def _decompress(loc: Location, stored: bytes, where: str) -> bytes:
    key = loc.key.hex()
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        raise CorruptObject(key, where, f"zstd frame header: {e}") from None
    # python-zstandard says -1 for "not declared" (the C library's CONTENTSIZE_UNKNOWN)
    unknown = declared in (-1, zstandard.CONTENTSIZE_UNKNOWN)
    if declared in (-2, zstandard.CONTENTSIZE_ERROR):
        raise CorruptObject(key, where, "zstd frame header is invalid")
    try:
        if not unknown:
            if declared != loc.raw_length:
                raise CorruptObject(
                    key, where, f"zstd frame declares {declared} bytes, index says {loc.raw_length}"
                )
            # The declared size is bounded (== raw_length, checked against the kind's cap),
            # and decompression into a buffer of that size fails on any more output.
            return _decompressor().decompress(stored, max_output_size=loc.raw_length)
        # No declared size (datamon always writes one): stream, never holding more than
        # raw_length + 1 bytes.
        with _decompressor().stream_reader(io.BytesIO(stored)) as r:
            return r.read(loc.raw_length + 1)
    except zstandard.ZstdError as e:
        raise CorruptObject(key, where, f"zstd: {e}") from None


def decode_object(
    loc: Location, stored: bytes | memoryview, where: str, max_chunk: int = DEFAULT_MAX_CHUNK
) -> bytes:
    """Decompress and verify one object; raises ``CorruptObject`` naming it.

    Memory is bounded by the row's raw length, itself bounded by the kind's cap
    (``check_location``), whatever the stored bytes declare."""
    check_location(loc, where, max_chunk)
    key = loc.key
    if len(stored) != loc.length:
        raise CorruptObject(key.hex(), where, "short read")
    zstd = loc.compression == Compression.ZSTD
    raw = _decompress(loc, bytes(stored), where) if zstd else bytes(stored)
    if len(raw) != loc.raw_length:
        raise CorruptObject(key.hex(), where, "wrong length")
    if loc.kind == Kind.FILEMAP:
        from datamon.cas.filemap import check_filemap

        if not check_filemap(raw):
            raise CorruptObject(key.hex(), where, "file map checksum mismatch")
    elif key_of(raw) != key:
        raise CorruptObject(key.hex(), where, "hash mismatch")
    return raw


PRESENT_MAX = 1 << 16  # keys a writer remembers as already indexed (an LRU; the index knows the rest)
COMMIT_ROWS = 1 << 16  # index rows of landed packs committed together (large transactions are cheaper)


class PackWriter:
    """Thread-safe writer of objects into packs. Call ``flush`` before anything refers to them.

    ``claim`` makes deduplication within one upload race-free: only the first thread to
    claim a key writes it. Memory does not grow with the number of objects: a claimed key
    is forgotten once its pack is indexed (the index answers for it from then on), and keys
    found in the index are remembered in a bounded LRU only.

    Packs are uploaded in the background (at most ``uploaders`` at once, which bounds the
    sealed packs held in memory) but their index rows are committed in the order the packs
    were sealed, so an object's row never lands before the rows of objects written earlier
    in the session: a tree (written after its entries) is never indexed without them, even
    if the upload is killed between two commits. Rows of landed packs are committed together
    once there are ``COMMIT_ROWS`` of them (and at ``flush``): a pack whose rows are not
    committed yet is an orphan to gc, adopted or deleted after the grace period.
    """

    def __init__(
        self,
        blobs: BlobStore,
        index: ObjectIndex,
        *,
        level: int = 3,
        pack_size: int = 32 << 20,
        uploaders: int = 2,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.level = level
        self.pack_size = pack_size
        self._lock = threading.Lock()
        self._capacity = pack_size + (1 << 20)
        self._claimed: set[bytes] = set()  # written or being written, pack not indexed yet
        self._present: OrderedDict[bytes, None] = OrderedDict()  # known to be indexed
        self._builder = PackBuilder(self._capacity)
        self._pool = ThreadPoolExecutor(max_workers=uploaders, thread_name_prefix="datamon-pack")
        self._pending: list[Future[None]] = []
        self._slots = threading.Semaphore(uploaders)  # bounds sealed packs held in memory
        self._turn = threading.Condition()  # index commits in sealing order
        self._sealed = 0
        self._committed = 0
        self._failed = False
        self._landed: list[tuple[str, int, list[tuple[bytes, int, int, int, int, int]]]] = []
        self._landed_rows = 0
        self.stored_bytes = 0
        self.written_objects = 0
        self.packs_written = 0

    def claim(self, key: bytes) -> bool:
        """True if the caller should write ``key`` (nobody in this writer has claimed it)."""
        with self._lock:
            if key in self._claimed or key in self._present:
                return False
            self._claimed.add(key)
            return True

    def claim_many(self, keys: Iterable[bytes]) -> list[bytes]:
        """The keys of ``keys`` the caller should write (``claim`` for each, one lock)."""
        out = []
        with self._lock:
            claimed, present = self._claimed, self._present
            for k in keys:
                if k not in claimed and k not in present:
                    claimed.add(k)
                    out.append(k)
        return out

    def unclaim_present(self, keys: Sequence[bytes]) -> None:
        """Give back claims on keys the caller found in the index, and remember them as
        indexed (so nobody writes them)."""
        with self._lock:
            self._claimed.difference_update(keys)
        self.mark_present(keys)

    def mark_present(self, keys: Iterable[bytes]) -> None:
        """Record keys known to be stored already (from the index) so they are not written."""
        with self._lock:
            present = self._present
            for k in keys:
                present[k] = None
                present.move_to_end(k)
            while len(present) > PRESENT_MAX:
                present.popitem(last=False)

    def is_claimed(self, key: bytes) -> bool:
        return key in self._claimed or key in self._present

    def write(self, key: bytes, raw: bytes | memoryview, kind: int, *, replace: bool = False) -> None:
        """Compress (outside the lock) and append one claimed object. ``replace``: the index
        row of ``key`` was proven wrong; this object's row replaces it when the pack lands."""
        self._check_size(key, len(raw), kind)
        stored, comp = encode_object(raw, self.level if kind == Kind.CHUNK else max(self.level, 3))
        self.write_stored_many([(key, stored, len(raw), kind, comp)], replace={key} if replace else None)

    @staticmethod
    def _check_size(key: bytes, n: int, kind: int) -> None:
        if kind != Kind.CHUNK and n > MAX_META_OBJECT:
            raise UsageError(
                f"object {key.hex()} of kind {kind} has {n} bytes, more than the "
                f"{MAX_META_OBJECT} readers accept",
                "split the directory (or file) into smaller ones",
            )

    def write_stored_many(
        self,
        items: Sequence[tuple[bytes, bytes | memoryview, int, int, int]],
        *,
        replace: set[bytes] | None = None,
    ) -> None:
        """Append claimed objects that are already encoded: (key, stored bytes, raw length,
        kind, compression), in order, under one lock. ``replace``: keys whose index rows were
        proven wrong (see ``write``)."""
        for key, _, n, kind, _ in items:
            self._check_size(key, n, kind)
        full: list[PackBuilder] = []
        with self._lock:
            i, n = 0, len(items)
            while i < n:
                b = self._builder
                j = b.add_many(items, i, self.pack_size)
                if replace:
                    b.replace_keys.extend(it[0] for it in items[i:j] if it[0] in replace)
                self.stored_bytes += sum(len(it[1]) for it in items[i:j])
                self.written_objects += j - i
                i = j
                if len(b) >= self.pack_size:
                    full.append(b)
                    self._builder = PackBuilder(self._capacity)
        for f in full:
            self._submit(f)

    def _submit(self, builder: PackBuilder) -> None:
        self._slots.acquire()
        try:
            with self._turn:
                seq = self._sealed
                self._sealed += 1
            fut = self._pool.submit(self._upload, builder, seq)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.append(fut)

    def _upload(self, builder: PackBuilder, seq: int) -> None:
        try:
            replace_keys = list(builder.replace_keys)
            name, data, rows = builder.finish_rows()
            size = len(data)
            self.blobs.put(pack_blob_name(name), data)
            del data
            with self._turn:
                while self._committed != seq and not self._failed:
                    self._turn.wait()
                if self._failed:
                    raise RuntimeError("an earlier pack of this upload failed; this one is not indexed")
                # Still this pack's turn: rows are committed in sealing order, several packs per
                # transaction when the index can (``add_packs``).
                if replace_keys or not hasattr(self.index, "add_packs"):
                    self._commit_landed()
                    if replace_keys:
                        self.index.add_pack(name, size, rows, replace_keys=replace_keys)
                    else:
                        self.index.add_pack(name, size, rows)
                    self._forget(rows)
                else:
                    self._landed.append((name, size, rows))
                    self._landed_rows += len(rows)
                    if self._landed_rows >= COMMIT_ROWS:
                        self._commit_landed()
                self._committed += 1
                self._turn.notify_all()
            with self._lock:
                self.packs_written += 1
        except BaseException:
            with self._turn:
                self._failed = True
                self._turn.notify_all()
            raise
        finally:
            self._slots.release()

    def _commit_landed(self) -> None:
        """Index the packs that landed and wait for their rows (holding ``_turn``)."""
        landed, self._landed, self._landed_rows = self._landed, [], 0
        if not landed:
            return
        self.index.add_packs(landed)  # type: ignore[attr-defined]
        for _, _, rows in landed:
            self._forget(rows)

    def _forget(self, rows: Sequence[tuple[bytes, int, int, int, int, int]]) -> None:
        with self._lock:
            self._claimed.difference_update(r[0] for r in rows)  # the index knows them now

    def flush(self) -> None:
        """Upload the open pack, wait for every upload and index every pack; re-raises the
        first failure."""
        with self._lock:
            full = self._builder if self._builder.count else None
            if full is not None:
                self._builder = PackBuilder(self._capacity)
        if full is not None:
            self._submit(full)
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()
        with self._turn:
            if self._failed:
                raise RuntimeError("a pack of this upload failed")
            self._commit_landed()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ObjectReader:
    """Verified reads of objects by key. Thread-safe.

    ``max_chunk`` (the chunker's ``max_size``) bounds what a chunk row may claim. ``get`` and
    ``get_many`` return only bytes that hash to their key (a file map's row is corruption
    there); ``get_tree`` and ``get_filemap`` also refuse a row of another kind."""

    def __init__(
        self,
        blobs: BlobStore,
        index: ObjectIndex,
        cache: ChunkCache | None = None,
        tree_cache: int = 4096,
        *,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.cache = cache
        self.max_chunk = max_chunk
        self._locs: OrderedDict[bytes, Location] = OrderedDict()
        self._small: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()  # trees and file maps
        self._small_max = tree_cache
        self._lock = threading.Lock()

    def locate(self, keys: Sequence[bytes]) -> dict[bytes, Location]:
        """Index locations of ``keys``; raises ``MissingObject`` for the first key not indexed."""
        out: dict[bytes, Location] = {}
        todo = []
        with self._lock:
            for k in keys:
                loc = self._locs.get(k)
                if loc is None:
                    todo.append(k)
                else:
                    out[k] = loc
        if todo:
            rows = self.index.lookup_objects(todo)
            with self._lock:
                for k in todo:
                    row = rows.get(k)
                    if row is None:
                        raise MissingObject(k.hex(), "not in the object index")
                    loc = Location.from_row(row)
                    out[k] = loc
                    self._locs[k] = loc
                while len(self._locs) > 200_000:
                    self._locs.popitem(last=False)
        return out

    def kind_of(self, key: bytes) -> int:
        return self.locate([key])[key].kind

    @staticmethod
    def _check_kind(loc: Location, kind: int | None) -> None:
        if kind is not None and loc.kind != kind:
            raise CorruptObject(
                loc.key.hex(), f"pack {loc.pack}", f"indexed as kind {loc.kind} where kind {kind} is needed"
            )

    @staticmethod
    def _refuse_map(loc: Location) -> None:
        if loc.kind == Kind.FILEMAP:
            raise CorruptObject(
                loc.key.hex(), f"pack {loc.pack}", "indexed as a file map where content is needed"
            )

    def get(self, key: bytes) -> bytes:
        """The verified bytes of one chunk or tree: bytes that hash to ``key``. A key indexed
        as a file map (whose bytes do not hash to its key) is ``CorruptObject``."""
        return self._get(key, None)

    def get_tree(self, key: bytes) -> bytes:
        """``get`` of a key that must be indexed as a tree."""
        with self._lock:
            small = self._small.get(key)
        if small is None or small[0] != Kind.TREE:
            self._check_kind(self.locate([key])[key], Kind.TREE)
        return self.get(key)

    def get_filemap(self, key: bytes) -> bytes:
        """The checksummed bytes of a file map (not proven to be the file's: see filemap.py)."""
        return self._get(key, Kind.FILEMAP)

    def _get(self, key: bytes, kind: int | None) -> bytes:
        with self._lock:
            small = self._small.get(key)
        if small is not None and small[0] == (kind or Kind.TREE):
            return small[1]
        if self.cache is not None and kind is None:
            data = self.cache.get(key)  # hashed against the key on every hit
            if data is not None:
                return data
        loc = self.locate([key])[key]
        if kind is None:
            self._refuse_map(loc)
        else:
            self._check_kind(loc, kind)
        data = self._fetch(loc)
        if loc.kind == Kind.CHUNK:
            if self.cache is not None:
                self.cache.put(key, data)
        else:
            with self._lock:
                self._small[key] = (loc.kind, data)
                while len(self._small) > self._small_max:
                    self._small.popitem(last=False)
        return data

    def read_location(self, loc: Location) -> bytes:
        """The verified bytes at one index row (bypassing every cache)."""
        return self._fetch(loc)

    def _fetch(self, loc: Location) -> bytes:
        check_location(loc, f"pack {loc.pack}", self.max_chunk)
        try:
            stored = self.blobs.get(pack_blob_name(loc.pack), loc.offset, loc.offset + loc.length)
        except NotFound:
            loc = self._moved(loc)
            check_location(loc, f"pack {loc.pack}", self.max_chunk)
            try:
                stored = self.blobs.get(pack_blob_name(loc.pack), loc.offset, loc.offset + loc.length)
            except NotFound:
                raise MissingObject(
                    loc.key.hex(), f"pack {loc.pack} is missing from the blob store"
                ) from None
        return decode_object(loc, stored, f"pack {loc.pack}", self.max_chunk)

    def _moved(self, loc: Location) -> Location:
        """Where an object is now that its cached pack is gone (gc may have repacked it)."""
        with self._lock:
            self._locs.pop(loc.key, None)
        row = self.index.lookup_objects([loc.key]).get(loc.key)
        if row is None or row[1] == loc.pack:
            raise MissingObject(loc.key.hex(), f"pack {loc.pack} is missing from the blob store")
        new = Location.from_row(row)
        if new.kind != loc.kind:
            raise CorruptObject(loc.key.hex(), f"pack {new.pack}", f"re-indexed as kind {new.kind}")
        with self._lock:
            self._locs[loc.key] = new
        return new

    def get_many(
        self, keys: Sequence[bytes], *, gap: int = 1 << 20, span: int = 16 << 20
    ) -> Iterator[tuple[bytes, bytes]]:
        """Verified (key, bytes) for every distinct key, in pack order, fetching neighbouring
        objects of one pack with one ranged read (holes up to ``gap`` bytes are read through).
        Like ``get``, only bytes that hash to their key: a file map's row is ``CorruptObject``."""
        distinct = list(dict.fromkeys(keys))
        found: list[tuple[bytes, bytes]] = []
        todo = []
        for k in distinct:
            data = self.cache.get(k) if self.cache is not None else None
            if data is None:
                todo.append(k)
            else:
                found.append((k, data))
        yield from found
        if not todo:
            return
        locs = self.locate(todo)
        for loc in locs.values():
            self._refuse_map(loc)
        yield from self.read_locations(locs.values(), gap=gap, span=span)

    def read_locations(
        self, locs: Iterable[Location], *, gap: int = 1 << 20, span: int = 16 << 20
    ) -> Iterator[tuple[bytes, bytes]]:
        """Verified (key, bytes) at index rows, pack by pack in offset order (no caches)."""
        by_pack: dict[str, list[Location]] = {}
        for loc in locs:
            check_location(loc, f"pack {loc.pack}", self.max_chunk)
            by_pack.setdefault(loc.pack, []).append(loc)
        for pack, items in by_pack.items():
            items.sort(key=lambda lc: lc.offset)
            run: list[Location] = []
            for loc in items:
                if run and (
                    loc.offset - (run[-1].offset + run[-1].length) > gap
                    or loc.offset + loc.length - run[0].offset > span
                ):
                    yield from self._fetch_run(pack, run)
                    run = []
                run.append(loc)
            if run:
                yield from self._fetch_run(pack, run)

    def _fetch_run(self, pack: str, run: list[Location]) -> Iterator[tuple[bytes, bytes]]:
        if len(run) == 1:
            yield run[0].key, self._fetch(run[0])
            return
        start = run[0].offset
        end = max(lc.offset + lc.length for lc in run)
        try:
            blob = self.blobs.get(pack_blob_name(pack), start, end)
        except NotFound:
            for lc in run:  # one by one: each may have moved to another pack
                yield lc.key, self._fetch(lc)
            return
        view = memoryview(blob)
        for lc in run:
            stored = view[lc.offset - start : lc.offset - start + lc.length]
            yield lc.key, decode_object(lc, bytes(stored), f"pack {pack}", self.max_chunk)
