"""A bundle as a read-only filesystem, in plain Python (no FUSE import): the view a mount serves.

Paths are ``/``-separated and absolute within the bundle (``/`` is the root), as FUSE passes
them. Errors are ``OSError`` with the errno a filesystem returns (``ENOENT``, ``ENOTDIR``,
``EROFS``, ``EIO`` …), so an adapter passes them through unchanged.

Directories load lazily: a tree object is read the first time a path under it is looked up,
and decoded trees are kept in a bounded LRU (``TreeCache``), so mounting a bundle of millions
of files costs nothing up front and memory follows what is visited. File bytes come through
the same read path as ``Context.open_file`` (``StoredFiles``): every chunk is verified and lands
in the shared on-disk chunk cache. A chunk that fails verification becomes ``EIO`` and an error
in the log naming the object, never wrong bytes.

Whole files are proven by the rule of ``ContentStore.open_file`` (``cas/store.py``): opening
checks the chunk list against the tree entry's size (EIO otherwise); chunks read in order are
hashed as they pass, and before any byte of a file's last chunk is returned the whole file is
proven against its key — by that running hash after a sequential read, else by one pass over
its chunks. A file proven wrong is EIO for every later read and open. Trees are walked and
looked up without recursion, whatever their depth.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from itertools import accumulate
from typing import TYPE_CHECKING, NamedTuple

from datamon.cas.store import WholeFileCheck
from datamon.cas.tree import EntryKind, TreeColumns, TreeEntry, scan_tree
from datamon.errors import CorruptObject, DatamonError
from datamon.fuse import DEFAULT_PREFETCH

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.store import ContentStore
    from datamon.meta.records import BundleRecord

log = logging.getLogger("datamon.fuse")

ROOT_INO = 1
BLOCK_SIZE = 1 << 20  # st_blksize: tools like cat and cp size their buffers from it
DEFAULT_TREE_CACHE_ENTRIES = 250_000
LOCATE_BATCH = 256  # chunk locations looked up per index query
KEEP_BEHIND = 2  # chunks kept behind the reader: the kernel's parallel reads arrive out of order
SEQUENTIAL_SLACK = 8 << 20  # a read starting this close to the previous one's end is "sequential"
CATCH_UP = 4  # chunks the running whole-file hash fetches to catch up with out-of-order reads


def oserror(code: int, path: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), path) if path is not None else OSError(code, os.strerror(code))


def split(path: str) -> list[str]:
    """Components of a mount path (``/a/b`` or ``a/b``). ``.`` and ``..`` never reach a FUSE
    filesystem (the kernel resolves them), so they are rejected rather than interpreted."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise oserror(errno.EINVAL, path)
    return parts


def path_ino(path: str) -> int:
    """A stable inode number for a path: 1 for the root, else a 62-bit hash of the path.

    Stable across mounts of any bundle and costs no memory; a collision (odds about n²/2⁶³)
    only confuses tools that compare inode numbers, never file contents.
    """
    parts = split(path)
    return _hash_ino("/".join(parts)) if parts else ROOT_INO


def _hash_ino(relative: str) -> int:
    """``path_ino`` of a normalised relative path (``a/b``, no leading slash)."""
    h = blake2b(relative.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 2) + 2


def child_inos(path: str, names: Iterable[str]) -> Iterator[int]:
    """``path_ino`` of each ``path/name``, without normalising ``path`` again for every name."""
    base = "/".join(split(path))
    prefix = f"{base}/" if base else ""
    for name in names:
        yield _hash_ino(prefix + name)


@dataclass(frozen=True)
class Stat:
    """What ``stat`` shows for one path."""

    ino: int
    mode: int  # file type and permission bits
    size: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int = 1

    def as_dict(self) -> dict[str, int]:
        """``struct stat`` fields, times in nanoseconds."""
        return {
            "st_ino": self.ino,
            "st_mode": self.mode,
            "st_nlink": self.nlink,
            "st_size": self.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_blksize": BLOCK_SIZE,
            "st_blocks": (self.size + 511) // 512 if stat.S_ISREG(self.mode) else 0,
            "st_atime": self.mtime_ns,
            "st_mtime": self.mtime_ns,
            "st_ctime": self.mtime_ns,
        }


class Piece(NamedTuple):
    """``data[start:stop]`` of a read, not copied out of ``data`` yet."""

    data: bytes
    start: int
    stop: int


def join(pieces: list[Piece]) -> bytes:
    if len(pieces) == 1:
        data, start, stop = pieces[0]
        return data if start == 0 and stop == len(data) else data[start:stop]
    return b"".join(data[start:stop] for data, start, stop in pieces)


class Dirent(NamedTuple):
    name: str
    mode: int  # file type and permission bits
    ino: int


_TYPE = {EntryKind.FILE: stat.S_IFREG, EntryKind.DIR: stat.S_IFDIR, EntryKind.SYMLINK: stat.S_IFLNK}


@lru_cache(maxsize=1024)
def _mode(kind: EntryKind, mode: int) -> int:
    if kind == EntryKind.SYMLINK:
        return stat.S_IFLNK | 0o777
    perms = mode & 0o7777
    if kind == EntryKind.DIR and not perms:
        perms = 0o755
    return _TYPE[kind] | perms


def entry_mode(e: TreeEntry) -> int:
    """``st_mode`` of an entry: its type and permission bits (directories stored without
    permissions show as 0755, symlinks as 0777)."""
    return _mode(e.kind, e.mode)


def root_entry(b: BundleRecord) -> TreeEntry:
    """The bundle's root directory as an entry (a bundle records no mode or mtime for it)."""
    return TreeEntry("", EntryKind.DIR, 0o755, b.created_ns, b.total_size, bytes.fromhex(b.tree))


class DirTree(Mapping[str, TreeEntry]):
    """A checked tree object as a read-only mapping name → entry, kept as columns
    (``scan_tree``): an entry is decoded when it is looked up, and names are decoded and
    indexed on the first lookup, so a directory that is only listed (what ``find`` does to
    the files of a million-file bundle) costs no object per entry."""

    __slots__ = ("_index", "cols")

    def __init__(self, cols: TreeColumns) -> None:
        self.cols = cols
        self._index: dict[str, int] | None = None

    def _idx(self) -> dict[str, int]:
        index = self._index
        if index is None:
            index = self._index = {
                n.decode("utf-8", "surrogateescape"): i for i, n in enumerate(self.cols.names)
            }
        return index

    def __getitem__(self, name: str) -> TreeEntry:
        return self.cols.entry(self._idx()[name])

    def get(self, name: str, default: TreeEntry | None = None) -> TreeEntry | None:  # type: ignore[override]
        i = self._idx().get(name)
        return default if i is None else self.cols.entry(i)

    def __contains__(self, name: object) -> bool:
        return name in self._idx()

    def __iter__(self) -> Iterator[str]:
        return (n.decode("utf-8", "surrogateescape") for n in self.cols.names)

    def __len__(self) -> int:
        return len(self.cols.names)

    def items(self) -> list[tuple[str, TreeEntry]]:  # type: ignore[override]
        entry = self.cols.entry
        return [(e.name, e) for e in map(entry, range(len(self.cols.names)))]

    def values(self) -> list[TreeEntry]:  # type: ignore[override]
        return list(map(self.cols.entry, range(len(self.cols.names))))

    def st_modes(self) -> list[int]:
        """``st_mode`` of every entry, in order."""
        return list(map(_mode, self.cols.kinds, self.cols.modes))


class TreeCache:
    """Checked tree objects by key (``DirTree``), least recently used dropped first; bounded
    by the total number of entries held (one huge directory still fits: the newest tree is
    always kept). Thread-safe."""

    def __init__(self, cas: ContentStore, max_entries: int = DEFAULT_TREE_CACHE_ENTRIES) -> None:
        self._cas = cas
        self.max_entries = max_entries
        self._trees: OrderedDict[bytes, DirTree] = OrderedDict()
        self._entries = 0
        self._lock = threading.Lock()
        self.loads = 0  # tree objects read from the store (for tests and statistics)

    def get(self, key: bytes) -> DirTree:
        """Entries of tree ``key`` by name, in stored (sorted) order. Raises ``OSError(EIO)``
        when the tree object is missing or corrupt."""
        with self._lock:
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
                return tree
        try:
            raw = self._cas.reader.get_tree(key)
            try:
                cols = scan_tree(raw)
            except ValueError as e:
                raise CorruptObject(key.hex(), "tree", str(e)) from None
        except DatamonError as e:
            log.error("cannot read directory (tree %s): %s", key.hex(), e)
            raise oserror(errno.EIO) from e
        tree = DirTree(cols)
        with self._lock:
            self.loads += 1
            if key not in self._trees:
                self._trees[key] = tree
                self._entries += len(tree)
                while self._entries > self.max_entries and len(self._trees) > 1:
                    _, old = self._trees.popitem(last=False)
                    self._entries -= len(old)
        return tree


class OpenFile:
    """One open handle on a stored file: its chunk list and a window of chunks being read,
    chunk index → bytes, or a future of them while a prefetch fetches them. Reads on one handle
    are serialised by ``lock``."""

    __slots__ = (
        "check",
        "chunks",
        "ends",
        "entry",
        "located_from",
        "located_to",
        "lock",
        "next_offset",
        "path",
        "window",
    )

    def __init__(
        self, path: str, entry: TreeEntry, chunks: list[tuple[bytes, int]], check: WholeFileCheck
    ) -> None:
        self.path = path
        self.entry = entry
        self.chunks = chunks
        self.check = check
        self.ends = list(accumulate(n for _, n in chunks))
        self.lock = threading.Lock()
        self.window: dict[int, bytes | Future[bytes]] = {}
        self.next_offset = 0
        self.located_from = self.located_to = 0  # chunks whose locations were looked up together


class StoredFiles:
    """Reading stored files: verified chunks, the shared chunk cache, sequential prefetch.

    The read path is the Python API's (``ContentStore.open_file``): the file's chunk list from
    ``ContentStore.file_chunks``, each chunk from ``ObjectReader.get``, which verifies its hash
    and fills the shared on-disk chunk cache. On top of it, each handle keeps the chunks it is
    reading in memory, and when reads are sequential the next ``prefetch`` chunks are fetched by
    background threads into that window, so that fetching, decompressing and verifying overlap
    with the reader instead of adding to each read's latency. Memory per handle: the chunk being
    read plus ``prefetch`` chunks (1 MiB each on average, 4 MiB at most).
    """

    def __init__(self, cas: ContentStore, *, prefetch: int = DEFAULT_PREFETCH, label: str = "") -> None:
        self._cas = cas
        self.label = label  # names the bundle in log messages
        self.prefetch = max(0, prefetch)
        self._pool = (
            ThreadPoolExecutor(max_workers=self._threads(), thread_name_prefix="datamon-prefetch")
            if self.prefetch
            else None
        )
        # The running whole-file hashes of all handles, off the FUSE threads (one thread, so
        # each handle's updates run in order).
        self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datamon-hash")
        self._inflight: dict[bytes, Future[bytes]] = {}  # shared by handles on the same chunks
        self._lock = threading.Lock()

    def _threads(self) -> int:
        # Two threads keep a local store's decompression busy; more only help a remote store's
        # latency, and cost CPU that the FUSE threads need.
        return min(self.prefetch, max(2, (os.cpu_count() or 2) // 2), 4)

    def open(self, path: str, entry: TreeEntry) -> OpenFile:
        try:
            chunks = self._cas.file_chunks(entry.key, entry.size)
            check = WholeFileCheck(self._cas, entry.key, chunks, self._hash_pool)
        except DatamonError as e:
            raise self._eio(path, e) from e
        return OpenFile(path, entry, chunks, check)

    def _eio(self, path: str, e: Exception) -> OSError:
        log.error("cannot read %s%s: %s", path, f" in {self.label}" if self.label else "", e)
        return oserror(errno.EIO, path)

    def read(self, h: OpenFile, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; ``OSError(EIO)`` if the store cannot give
        verified bytes."""
        return join(self.read_pieces(h, offset, size))

    def read_pieces(self, h: OpenFile, offset: int, size: int) -> list[Piece]:
        """``read`` as pieces of chunks, so that a caller copying them elsewhere (the FUSE
        adapter) copies every byte once."""
        if offset >= h.entry.size or size <= 0:
            return []
        end = min(offset + size, h.entry.size)
        first = bisect_right(h.ends, offset)
        last = bisect_right(h.ends, end - 1)
        with h.lock:
            if not h.located_from <= first <= last < h.located_to:
                self._locate(h, first)
            pieces = []
            try:
                behind = h.check.next_chunk
                if behind < first <= behind + CATCH_UP:
                    # Parallel kernel reads arrive a little out of order: hash the chunks the
                    # running hash still needs (in the window, or about to be) so it keeps up.
                    for j in range(behind, first):
                        h.check.seen(j, self._checked_chunk(h, j))
                for i in range(first, last + 1):
                    data = self._checked_chunk(h, i)
                    h.check.seen(i, data)
                    h.check.before_return(i)
                    start = h.ends[i] - len(data)
                    pieces.append(Piece(data, max(offset, start) - start, min(end, h.ends[i]) - start))
            except (DatamonError, OSError) as e:
                raise self._eio(h.path, e) from e
            sequential = abs(offset - h.next_offset) <= SEQUENTIAL_SLACK
            h.next_offset = end
            self._trim(h, last, self.prefetch)
            if sequential and self._pool is not None:
                self._schedule(h, last + 1)
        return pieces

    def _checked_chunk(self, h: OpenFile, i: int) -> bytes:
        data = self._chunk(h, i)
        if len(data) != h.chunks[i][1]:
            detail = f"chunk {i} has {len(data)} bytes, the map says {h.chunks[i][1]}"
            raise CorruptObject(h.entry.key.hex(), "file map", detail)
        return data

    def _chunk(self, h: OpenFile, i: int) -> bytes:
        got = h.window.get(i)
        if isinstance(got, Future):
            try:
                got = got.result()
            except Exception:  # fetch it again here: that raises the error for this read
                got = None
        if got is None:
            got = self._cas.reader.get(h.chunks[i][0])
        h.window[i] = got
        return got

    @staticmethod
    def _trim(h: OpenFile, last: int, prefetch: int) -> None:
        """Forget chunks behind the reader, and those a jump left far ahead (a prefetch still
        running completes into the chunk cache)."""
        low, high = last - KEEP_BEHIND, last + prefetch
        for i in [i for i in h.window if not low <= i <= high]:
            del h.window[i]

    def _locate(self, h: OpenFile, first: int) -> None:
        """Look up where the next chunks are stored with one index query rather than one each."""
        stop = min(len(h.chunks), first + LOCATE_BATCH)
        try:
            self._cas.reader.locate([k for k, _ in h.chunks[first:stop]])
        except DatamonError:
            pass  # a missing chunk: reading it reports the error, reading the others works
        h.located_from, h.located_to = first, stop

    def _schedule(self, h: OpenFile, start: int) -> None:
        assert self._pool is not None
        for i in range(start, min(len(h.chunks), start + self.prefetch)):
            if i in h.window:
                continue
            key = h.chunks[i][0]
            with self._lock:
                fut = self._inflight.get(key)
                if fut is None:
                    fut = self._inflight[key] = self._pool.submit(self._fetch, key)
            h.window[i] = fut

    def _fetch(self, key: bytes) -> bytes:
        try:
            return self._cas.reader.get(key)  # verified; fills the chunk cache
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._hash_pool.shutdown(wait=True, cancel_futures=True)


class BundleView:
    """A bundle as a read-only filesystem.

    Thread-safe. Every operation that would change something raises ``OSError(EROFS)``.
    """

    def __init__(
        self,
        ctx: Context,
        bundle: BundleRecord,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        tree_cache_entries: int = DEFAULT_TREE_CACHE_ENTRIES,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.bundle = bundle
        self.root = root_entry(bundle)
        self.trees = TreeCache(ctx.cas, tree_cache_entries)
        self.files = StoredFiles(ctx.cas, prefetch=prefetch, label=f"bundle {bundle.id[:12]}")
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._handles: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)

    # -- lookups -----------------------------------------------------------------------------
    def lookup(self, path: str) -> TreeEntry:
        """The entry at ``path``; ``ENOENT`` / ``ENOTDIR`` as a filesystem would say."""
        entry = self.root
        for part in split(path):
            if not entry.is_dir:
                raise oserror(errno.ENOTDIR, path)
            found = self.trees.get(entry.key).get(part)
            if found is None:
                raise oserror(errno.ENOENT, path)
            entry = found
        return entry

    def getattr(self, path: str) -> Stat:
        e = self.lookup(path)
        size = e.size if e.is_file else len(e.target.encode("utf-8", "surrogateescape"))
        return Stat(path_ino(path), entry_mode(e), size, e.mtime_ns, self.uid, self.gid)

    def readdir(self, path: str) -> list[Dirent]:
        """Entries of the directory at ``path`` (without ``.`` and ``..``), in name order."""
        e = self.lookup(path)
        if not e.is_dir:
            raise oserror(errno.ENOTDIR, path)
        tree = self.trees.get(e.key)
        return [
            Dirent(name, _mode(child.kind, child.mode), ino)
            for (name, child), ino in zip(tree.items(), child_inos(path, tree), strict=True)
        ]

    def readdir_raw(self, path: str) -> tuple[list[bytes], list[int], list[int]]:
        """``readdir`` as columns — encoded names, ``st_mode``, ``st_ino`` — for the FUSE
        adapter, which hands them to libfuse as they are (a million entries for a ``find``:
        no per-entry Python objects beyond these)."""
        e = self.lookup(path)
        if not e.is_dir:
            raise oserror(errno.ENOTDIR, path)
        tree = self.trees.get(e.key)
        base = "/".join(split(path))
        prefix = (base + "/").encode("utf-8", "surrogateescape") if base else b""
        names = tree.cols.names
        modes = tree.st_modes()
        frombytes = int.from_bytes
        inos = [(frombytes(blake2b(prefix + n, digest_size=8).digest(), "little") >> 2) + 2 for n in names]
        return names, modes, inos

    def readlink(self, path: str) -> str:
        e = self.lookup(path)
        if not e.is_symlink:
            raise oserror(errno.EINVAL, path)
        return e.target

    # -- file handles ------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """A handle for reading the file at ``path``; opening for writing raises ``EROFS``."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise oserror(errno.EROFS, path)
        e = self.lookup(path)
        if e.is_dir:
            raise oserror(errno.EISDIR, path)
        h = self.files.open(path, e)
        fh = next(self._fh)
        self._handles[fh] = h
        return fh

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return join(self.read_pieces(fh, offset, size))

    def read_pieces(self, fh: int, offset: int, size: int) -> list[Piece]:
        h = self._handles.get(fh)
        if h is None:
            raise oserror(errno.EBADF)
        return self.files.read_pieces(h, offset, size)

    def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def statfs(self) -> dict[str, int]:
        blocks = (self.bundle.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": blocks,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.bundle.file_count,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # -- everything that would write ---------------------------------------------------------
    def refuse(self, path: str | None = None) -> None:
        """Raise ``EROFS``: a bundle never changes."""
        raise oserror(errno.EROFS, path)

    def close(self) -> None:
        self._handles.clear()
        self.files.close()
