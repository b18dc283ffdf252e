"""Writing bundle entries below a local directory (``download``, ``update``, ``download file``,
run inputs), every byte verified, with worker threads and bounded memory.

Local writes follow ``datamon/api/localfs.py``: every directory below the destination is
reached through ``O_NOFOLLOW`` directory fds, modes lose setuid/setgid/sticky and get the
umask, and symlinks of the bundle are created last (and never followed afterwards). A file
whose bytes are verified in memory first (a small file: one chunk, hashed against its key
on read) is created directly under its name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and its
final mode (the kernel applies the umask); a file streamed in pieces is written under a
temporary name and renamed into place only when all of its bytes were verified and counted.

``Materializer.write_tree`` streams a bundle: the tree is walked one directory at a time
while worker threads write the files of the directories already walked, with a bounded
number of batches in flight, so memory does not grow with the number of files (only with
the number of directories and symlinks, whose modes, mtimes and targets are applied at the
end). Small files are located through pack indexes (``cas/packindex.py``).
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from datamon.api import localfs
from datamon.api.bundles import Entry, locate_once, read_tree_once
from datamon.api.progress import NoProgress, Progress
from datamon.api.statcache import StatCache, stat_key
from datamon.errors import CorruptObject, IntegrityError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.downloads import DigestItem, Registry
    from datamon.cas.tree import TreeEntry

BATCH_BYTES = 16 << 20  # bytes of small files read and written by one task
BATCH_FILES = 1024  # files of one task
BATCH_DIRS = 16  # directories (each an open fd) of one task
IN_FLIGHT = 2  # tasks queued or running per worker thread
MIN_WRITERS = 4  # writer threads without --concurrency-factor, even on fewer cores
DIGESTS_FLUSH = 1024  # directory digests kept before they are written to the registry


def _size_error(key: bytes, path: str, size: int, got: int) -> IntegrityError:
    return CorruptObject(key.hex(), "file", f"{path!r} has {got} bytes, its tree entry says {size}")


def materialize(
    ctx: Context,
    dest: str,
    entries: Iterable[Entry],
    *,
    progress: Progress | None = None,
    concurrency: int | None = None,
    overwrite: bool = True,
) -> tuple[int, int]:
    """Create ``entries`` (in depth-first order, as ``iter_entries`` and diffs give them)
    under ``dest``, replacing what is in the way when ``overwrite``. Returns (files, bytes).
    Records written files in the stat cache, each with the stat it had when datamon closed it.
    Streams: ``entries`` may be a generator of any length."""
    from datamon.cas.tree import EntryKind

    with Materializer(ctx, dest, progress=progress, concurrency=concurrency, overwrite=overwrite) as m:
        if isinstance(entries, list | tuple):
            m.progress.start(
                sum(1 for e in entries if e.entry.kind == EntryKind.FILE),
                sum(e.size for e in entries if e.entry.kind == EntryKind.FILE),
            )
        else:
            m.progress.start(0, 0)
        for e in entries:
            m.add(e)
        m.finish()
        return m.files, m.bytes


class _Group:
    """Files of one directory in one task: a duplicate of the directory's fd (closed by the
    task), its absolute path (for the stat cache), its digest slot, the entries."""

    __slots__ = ("abspath", "entries", "fd", "slot")

    def __init__(self, fd: int, abspath: str, slot: _DirState | None) -> None:
        self.fd = fd
        self.abspath = abspath
        self.slot = slot
        self.entries: list[TreeEntry] = []


class _DirState:
    """A directory being written whose digest is recorded once all of its files are: the
    items of its digest so far and the tasks (and the walk) still adding to it."""

    __slots__ = ("broken", "items", "pending", "rel", "tree")

    def __init__(self, rel: str, tree: bytes, items: list[DigestItem]) -> None:
        self.rel = rel
        self.tree = tree
        self.items = items
        self.pending = 1  # the walk itself, until it has handed out every file
        self.broken = False


class _FinalDir(NamedTuple):
    parts: tuple[str, ...]
    mode: int
    mtime_ns: int


class _Link(NamedTuple):
    parts: tuple[str, ...]
    name: str
    target: str
    mtime_ns: int


class Materializer:
    """Writes files, directories and symlinks below ``dest`` with worker threads.

    The caller (one thread) adds entries in depth-first order — ``write_tree`` does it for a
    whole tree — then calls ``finish``; ``close`` (the context manager's exit) always runs,
    also after an error, and records what was written in the stat cache. Files are batched
    by directory; at most ``IN_FLIGHT`` batches per worker are queued, so the caller blocks
    rather than holding the bundle in memory. The first error stops everything and is
    raised (by ``add_*`` or ``finish``)."""

    def __init__(
        self,
        ctx: Context,
        dest: str,
        *,
        progress: Progress | None = None,
        concurrency: int | None = None,
        overwrite: bool = True,
        registry: Registry | None = None,
    ) -> None:
        from datamon.cas.packindex import PackLocator

        self.ctx = ctx
        self.cas = ctx.cas
        self._locator = PackLocator(self.cas.blobs, self.cas.index)
        self.dest = dest
        self.progress = progress or NoProgress()
        self.overwrite = overwrite
        self.umask = localfs.umask()
        self.small_limit = self.cas.chunker.params.min_size
        self.files = self.bytes = 0
        self._registry = registry
        self._digests: list[tuple[str, bytes, bytes]] = []
        self._dirs: list[_FinalDir] = []
        self._links: list[_Link] = []
        self._root = localfs.open_root(dest)
        self._walker: localfs.DirWalker | None = localfs.DirWalker(self._root, create=True, replace=overwrite)
        self._cache = StatCache(ctx.state_dir)
        cpus = os.cpu_count() or 2
        # Creating a file waits in the kernel (inode allocation, directory locks, the journal)
        # more than it computes: measured on 2 cores, 4 writer threads create 200,000 small
        # files in 25-30% less time than 2. Streams of large files stay at one per core (each
        # holds a window of chunks).
        workers = max(1, concurrency or max(MIN_WRITERS, cpus))
        streams = max(1, min(workers, concurrency or cpus))
        self._streams = threading.Semaphore(streams)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-write")
        # large files on threads of their own: their windows stay in as few malloc arenas
        self._stream_pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="datamon-stream")
        self._slots = threading.Semaphore(workers * IN_FLIGHT)
        self._futs: deque[Future[None]] = deque()
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._batch: list[_Group] = []
        self._batch_files = 0
        self._batch_bytes = 0
        self._group: _Group | None = None
        self._group_parts: tuple[str, ...] | None = None
        self._slot: _DirState | None = None  # the digest of the directory being walked
        self._slot_parts: tuple[str, ...] = ()

    def __enter__(self) -> Materializer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- adding entries (the caller's thread) ----------------------------------------------
    def _cd(self, parts: tuple[str, ...] | list[str]) -> int:
        assert self._walker is not None
        return self._walker.cd(parts)

    def add(self, entry: Entry) -> None:
        """One entry of any kind, at its path (entries in depth-first order)."""
        from datamon.cas.tree import EntryKind

        parts = localfs.safe_parts(entry.path)
        e = entry.entry
        if e.kind == EntryKind.FILE:
            self.add_file(parts[:-1], parts[-1], e)
        elif e.kind == EntryKind.DIR:
            self.add_dir(parts, e)
        else:
            self.add_link(parts[:-1], parts[-1], e)

    def add_dir(self, parts: list[str] | tuple[str, ...], e: TreeEntry) -> None:
        """Create directory ``parts``; its mode and mtime are set by ``finish``."""
        parts = tuple(parts)
        self._cd(parts)
        self._dirs.append(_FinalDir(parts, e.mode, e.mtime_ns))

    def add_link(self, dir_parts: list[str] | tuple[str, ...], name: str, e: TreeEntry) -> None:
        """A symlink, created by ``finish`` (after every file)."""
        dir_parts = tuple(dir_parts)
        self._cd(dir_parts)
        self._links.append(_Link(dir_parts, name, e.target, e.mtime_ns))

    def add_file(self, dir_parts: list[str] | tuple[str, ...], name: str, e: TreeEntry) -> None:
        dir_parts = tuple(dir_parts)
        if e.size > self.small_limit:
            fd = os.dup(self._cd(dir_parts))
            g = _Group(fd, self._abspath(dir_parts), self._take_slot(dir_parts))
            g.entries.append(e if e.name == name else e._replace(name=name))
            self._submit(self._run_large, g, self._stream_pool)
            return
        if self._group is None or dir_parts != self._group_parts:
            self._new_group(dir_parts)
        assert self._group is not None
        self._group.entries.append(e if e.name == name else e._replace(name=name))
        self._batch_files += 1
        self._batch_bytes += e.size
        if self._batch_files >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._flush_batch()

    def add_files(self, dir_parts: tuple[str, ...], entries: list[TreeEntry]) -> None:
        """Files of one directory, each named by its entry (``add_file`` for many)."""
        limit = self.small_limit
        small = [e for e in entries if e.size <= limit]
        if len(small) != len(entries):
            for e in entries:
                if e.size > limit:
                    self.add_file(dir_parts, e.name, e)
        if not small:
            return
        if self._group is None or dir_parts != self._group_parts:
            self._new_group(dir_parts)
        g = self._group
        files, nbytes = self._batch_files, self._batch_bytes
        for e in small:
            if g is None:
                self._new_group(dir_parts)
                g = self._group
            assert g is not None
            g.entries.append(e)
            files += 1
            nbytes += e.size
            if files >= BATCH_FILES or nbytes >= BATCH_BYTES:
                self._flush_batch()
                files = nbytes = 0
                g = None
        self._batch_files, self._batch_bytes = files, nbytes

    def _abspath(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.dest, *parts) if parts else self.dest

    def _new_group(self, dir_parts: tuple[str, ...]) -> None:
        if len(self._batch) >= BATCH_DIRS:
            self._flush_batch()
        fd = os.dup(self._cd(dir_parts))
        g = _Group(fd, self._abspath(dir_parts), self._take_slot(dir_parts))
        self._batch.append(g)
        self._group = g
        self._group_parts = dir_parts

    def _take_slot(self, dir_parts: tuple[str, ...]) -> _DirState | None:
        """The digest slot of the directory being walked, for one more task writing into it."""
        slot = self._slot
        if slot is None or dir_parts != self._slot_parts:
            return None
        with self._lock:
            slot.pending += 1
        return slot

    def _flush_batch(self) -> None:
        batch = self._batch
        self._batch, self._batch_files, self._batch_bytes = [], 0, 0
        self._group = None
        if batch:
            self._submit(self._run_batch, batch)

    def _submit(self, fn: Callable[[Any], None], arg: object, pool: ThreadPoolExecutor | None = None) -> None:
        self._check()
        self._slots.acquire()
        try:
            fut = (pool or self._pool).submit(fn, arg)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futs.append(fut)
        while self._futs and self._futs[0].done():
            self._futs.popleft().result()  # raises the task's error here

    def _check(self) -> None:
        if self._failed.is_set():
            for f in list(self._futs):
                if f.done() and f.exception() is not None:
                    f.result()

    # -- walking a tree -----------------------------------------------------------------------
    def write_tree(self, root_key: bytes, pattern: re.Pattern[str] | None = None) -> None:
        """Everything below tree ``root_key`` (only paths ``pattern`` finds, if given),
        depth-first in name order like ``iter_entries``, one tree object decoded at a time,
        without recursion. Without a pattern every directory's digest is recorded in the
        registry given to the constructor once all of its files are written."""
        from datamon.cas.tree import EntryKind

        ctx = self.ctx
        FILE, DIR = EntryKind.FILE, EntryKind.DIR
        # frames of directories being walked: (parts, path prefix, entries left, digest slot)
        stack: list[tuple[tuple[str, ...], str, Iterator[TreeEntry], _DirState | None]] = []

        def enter(parts: tuple[str, ...], key: bytes) -> None:
            entries = read_tree_once(ctx, key)
            slot = self._dir_state(parts, key, entries) if pattern is None else None
            stack.append((parts, "/".join(parts) + "/" if parts else "", iter(entries), slot))

        enter((), root_key)
        while stack:
            parts, prefix, it, slot = stack[-1]
            self._slot, self._slot_parts = slot, parts
            run: list[TreeEntry] = []  # files up to the next subdirectory, handed over together
            for e in it:
                kind = e.kind
                if kind == FILE:
                    if pattern is None or pattern.search(prefix + e.name):
                        run.append(e)
                elif kind == DIR:
                    if run:
                        self.add_files(parts, run)
                        run = []
                    sub = (*parts, e.name)
                    if pattern is None or pattern.search(prefix + e.name):
                        self.add_dir(sub, e)
                    enter(sub, e.key)
                    break
                elif pattern is None or pattern.search(prefix + e.name):
                    if run:
                        self.add_files(parts, run)
                        run = []
                    self.add_link(parts, e.name, e)
            else:
                if run:
                    self.add_files(parts, run)
                stack.pop()
                self._slot = None
                if slot is not None:
                    self._release(slot)  # the walk has handed out all of its files
                if len(self._digests) >= DIGESTS_FLUSH:
                    self._flush_digests()
        self._flush_batch()

    def _dir_state(self, parts: tuple[str, ...], key: bytes, entries: list[TreeEntry]) -> _DirState | None:
        if self._registry is None:
            return None
        from datamon.api.downloads import DIR_ITEM, LINK_ITEM
        from datamon.cas.tree import EntryKind

        items: list[DigestItem] = []
        for e in entries:
            if e.kind == EntryKind.DIR:
                items.append((e.name, DIR_ITEM, 0, 0, 0))
            elif e.kind == EntryKind.SYMLINK:
                items.append((f"{e.name}\0{e.target}", LINK_ITEM, 0, 0, 0))
        return _DirState("/".join(parts), key, items)

    def _release(self, slot: _DirState) -> None:
        from datamon.api.downloads import dir_digest

        with self._lock:
            slot.pending -= 1
            if slot.pending:
                return
            items, slot.items = slot.items, []
        if not slot.broken:
            row = (slot.rel, slot.tree, dir_digest(items))
            with self._lock:
                self._digests.append(row)

    def _flush_digests(self) -> None:
        with self._lock:
            rows, self._digests = self._digests, []
        if rows and self._registry is not None:
            self._registry.put_dirs(self.dest, rows)

    # -- the tasks (worker threads) -----------------------------------------------------------
    def _run_batch(self, batch: list[_Group]) -> None:
        from datamon.cas.hashing import EMPTY_KEY

        written: list[tuple[str, tuple[int, int, int, int], bytes]] = []
        try:
            if self._failed.is_set():
                return
            keys = [e.key for g in batch for e in g.entries if e.size]
            odd, got = self._read_small(keys)
            files = nbytes = 0
            perms = ~self.umask & 0o777
            # The hot loop (a million files): locals only, the entry unpacked once. A small
            # file's bytes are verified and counted already: under a name that is free it is
            # created directly with its final mode (``O_EXCL``, so the name is ours and is
            # removed again if the write fails); else under a temporary name, then renamed.
            open_, write, utime, fstat, close = os.open, os.write, os.utime, os.fstat, os.close
            flags = localfs.O_NEWFILE
            add_written = written.append
            for g in batch:
                items: list[DigestItem] = []
                add_item = items.append
                dfd, base = g.fd, g.abspath + "/"
                for e in g.entries:
                    name, _, mode, mtime, size, key, _ = e
                    if size and key in odd:
                        with self._streams:
                            st = self._write_stream(dfd, g.abspath, e)
                    else:
                        if size:
                            data = got[key]
                            if len(data) != size:
                                raise _size_error(key, base + name, size, len(data))
                        elif key != EMPTY_KEY:
                            raise CorruptObject(
                                key.hex(), "file", "the tree says 0 bytes for a non-empty key"
                            )
                        else:
                            data = b""
                        try:
                            fd = open_(name, flags, mode & perms, dir_fd=dfd)
                        except FileExistsError:
                            st = self._write_temp(dfd, e, [data])
                        else:
                            try:
                                if data:
                                    n = write(fd, data)
                                    if n != size:  # a short write: the rest
                                        localfs.write_all(fd, memoryview(data)[n:])
                                utime(fd, ns=(mtime, mtime))
                                st = fstat(fd)
                            except BaseException:
                                localfs.unlink_quietly(dfd, name)
                                raise
                            finally:
                                close(fd)
                    sk = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    if sk[0] == size and sk[1] == mtime:
                        add_written((base + name, sk, key))
                    add_item((name, *sk))
                    files += 1
                    nbytes += size
                if g.slot is not None:
                    with self._lock:
                        g.slot.items.extend(items)
                    self._release(g.slot)
                    g.slot = None
            with self._lock:
                self.files += files
                self.bytes += nbytes
            self.progress.advance(files, nbytes)
        except BaseException:
            self._failed.set()
            for g in batch:
                if g.slot is not None:
                    with self._lock:
                        g.slot.broken = True
                    self._release(g.slot)
                    g.slot = None
            raise
        finally:
            for g in batch:
                os.close(g.fd)
            self._cache.store(written)

    def _read_small(self, keys: list[bytes]) -> tuple[set[bytes], dict[bytes, bytes]]:
        """(keys not stored as one chunk, verified bytes of the others). Located through pack
        indexes; after a verification failure the database's rows decide (``cas/packindex.py``)."""
        from datamon.cas.pack import Kind

        if not keys:
            return set(), {}
        reader = self.cas.reader
        try:
            locs = self._locator.locate(keys)
            # an entry claiming to be small but naming a file map is streamed and checked
            odd = {k for k, loc in locs.items() if loc.kind != Kind.CHUNK}
            return odd, dict(reader.read_locations([loc for k, loc in locs.items() if k not in odd]))
        except CorruptObject:
            locs = locate_once(self.ctx, keys)
            odd = {k for k, loc in locs.items() if loc.kind != Kind.CHUNK}
            return odd, dict(reader.read_locations([loc for k, loc in locs.items() if k not in odd]))

    def _run_large(self, g: _Group) -> None:
        written: list[tuple[str, tuple[int, int, int, int], bytes]] = []
        try:
            if self._failed.is_set():
                return
            e = g.entries[0]
            st = self._write_stream(g.fd, g.abspath, e)
            sk = stat_key(st)
            if sk[0] == e.size and sk[1] == e.mtime_ns:
                written.append((os.path.join(g.abspath, e.name), sk, e.key))
            if g.slot is not None:
                with self._lock:
                    g.slot.items.append((e.name, *sk))
                self._release(g.slot)
                g.slot = None
            with self._lock:
                self.files += 1
                self.bytes += e.size
            self.progress.advance(1, 0)
        except BaseException:
            self._failed.set()
            if g.slot is not None:
                with self._lock:
                    g.slot.broken = True
                self._release(g.slot)
            raise
        finally:
            os.close(g.fd)
            self._cache.store(written)

    def _write_stream(self, dfd: int, abspath: str, e: TreeEntry) -> os.stat_result:
        return self._write_temp(dfd, e, _counting(self.cas.iter_file(e.key, e.size), self.progress), abspath)

    def _write_temp(
        self, dfd: int, e: TreeEntry, pieces: Iterable[bytes], abspath: str = ""
    ) -> os.stat_result:
        """Write under a temporary name in the directory, rename into place once every byte
        was counted (and, for a stream, verified: ``iter_file`` raises before its last piece)."""
        fd, tmp = localfs.new_temp(dfd)
        try:
            n = 0
            for piece in pieces:
                n += len(piece)
                if n > e.size:
                    raise _size_error(e.key, os.path.join(abspath, e.name), e.size, n)
                localfs.write_all(fd, piece)
            if n != e.size:
                raise _size_error(e.key, os.path.join(abspath, e.name), e.size, n)
            os.fchmod(fd, localfs.file_mode(e.mode, self.umask))
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            localfs.rename_into_place(dfd, tmp, e.name, replace=self.overwrite)
            tmp = ""
            return os.fstat(fd)  # the stat it has as datamon lets go of it (rename sets ctime)
        finally:
            os.close(fd)
            if tmp:
                localfs.unlink_quietly(dfd, tmp)

    # -- the end ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """Wait for every file, then create the symlinks and set directory modes and mtimes
        (children before parents). Raises the first error of any task."""
        self._flush_batch()
        while self._futs:
            self._futs.popleft().result()
        if self._walker is not None:
            self._walker.close()
            self._walker = None
        umask = self.umask
        w = localfs.DirWalker(self._root)
        try:
            # symlinks, last: nothing written after this goes below a path holding one
            for link in self._links:
                dfd = w.cd(link.parts)
                if self.overwrite:
                    localfs.remove_at(dfd, link.name)
                os.symlink(link.target, link.name, dir_fd=dfd)
                try:
                    os.utime(link.name, ns=(link.mtime_ns, link.mtime_ns), dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    pass
            # directory modes and mtimes, children before parents (reverse depth-first order)
            for d in reversed(self._dirs):
                try:
                    dfd = w.cd(d.parts)
                except OSError:
                    continue  # replaced by a symlink of the bundle (a hostile duplicate name)
                os.fchmod(dfd, localfs.dir_mode(d.mode, umask))
                os.utime(dfd, ns=(d.mtime_ns, d.mtime_ns))
        finally:
            w.close()
        self._flush_digests()
        self.progress.finish()

    def close(self) -> None:
        """Stop and wait for the workers, release every fd; what was completely written
        stays recorded (stat cache, directory digests), also after a failure or Ctrl-C: a rerun
        (``update``) then skips re-reading it."""
        self._failed.set()  # tasks not started yet return at once (closing their fds)
        self._pool.shutdown(wait=True)
        self._stream_pool.shutdown(wait=True)
        for g in self._batch:
            os.close(g.fd)
        self._batch = []
        if self._walker is not None:
            self._walker.close()
            self._walker = None
        if self._root >= 0:
            os.close(self._root)
            self._root = -1
        try:
            self._flush_digests()
        finally:
            self._cache.close()


def _counting(it: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for piece in it:
        progress.advance(0, len(piece))
        yield piece
