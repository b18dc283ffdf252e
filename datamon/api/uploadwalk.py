"""The walk of an upload (``upload_tree`` in ``api/upload.py``): directories listed and their
small files read by workers (``api/dirwalk.py``, ``api/dirscan.py``), new objects deduplicated
and packed in batches, each directory's tree encoded and stored once everything below it is,
and the stat cache's directory rows written. Why it is shaped this way, and what a cached
directory may be trusted for: the docstring of ``api/upload.py`` and docs/security.md."""

from __future__ import annotations

import os
import queue
import struct
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import TYPE_CHECKING, Any

from datamon.api.dirscan import CACHED, LARGE, NEW, REC, End, _read_upto, tree_entry
from datamon.api.localtree import LocalDir
from datamon.api.progress import Progress
from datamon.api.statcache import DirWrite, StatCache
from datamon.cas.hashing import key_of
from datamon.cas.objects import encode_object
from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.dirwalk import ProcessLister, ThreadLister
    from datamon.api.walkindex import DirReports
    from datamon.cas.ingest import FileResult, Ingester

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
WORKERS_ENV = "DATAMON_UPLOAD_WORKERS"  # "auto" (default), "processes" or "threads"
PROCESSES_AFTER_FILES = 20_000  # "auto": worker processes once the walk has listed this many files
WRITE_BATCH_OBJECTS = 4096  # new small objects deduplicated and packed together
WRITE_BATCH_BYTES = 8 << 20
TREE_CHECK_BATCH = 2000  # cached trees confirmed in the index together
DIR_ROWS_BATCH = 256  # stat cache directory rows written together
DIR_ROWS_BYTES = 4 << 20
GC_THRESHOLD = 10_000  # allocations between young collections during a walk (default 700)

KIND_CHUNK, KIND_TREE = 1, 3  # cas.pack.Kind
ENTRY_FILE, ENTRY_DIR, ENTRY_SYMLINK = 1, 2, 3  # cas.tree.EntryKind
ZERO_KEY = bytes(32)
TREE_MAGIC = b"DMTREE\x00\x01"
MAX_ENTRY_SIZE = (1 << 63) - 1
_COUNT = struct.Struct("<I")
_SUB = struct.Struct("<HqqQQ")


class _Errors:
    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.skipped: list[tuple[str, str]] = []

    def __call__(self, path: str, err: OSError) -> None:
        if not self.skip:
            raise UsageError(
                f"cannot read {path}: {err.strerror or err}",
                "fix its permissions, or pass --skip-on-error to upload the rest",
            )
        self.skipped.append((path, err.strerror or str(err)))


def encode_entries(entries: list[tuple[bytes, int, int, int, int, bytes, bytes]]) -> bytes:
    """The canonical tree encoding (byte for byte what ``cas.tree.encode_tree`` writes) of
    ``(name, kind, mode, mtime_ns, size, key, target)`` entries with names and targets as
    bytes; sorts ``entries`` in place. Refuses what ``encode_tree`` refuses."""
    from datamon.cas.tree import TreeFormatError

    entries.sort(key=lambda e: e[0])
    out = [TREE_MAGIC, _COUNT.pack(len(entries))]
    prev = None
    for name, kind, mode, mtime, size, key, target in entries:
        n, t = len(name), len(target)
        if name == prev:
            raise TreeFormatError(f"duplicate entry name {name!r}")
        if not n or n > 0xFFFF or t > 0xFFFF or name in (b".", b"..") or b"/" in name or b"\0" in name:
            raise TreeFormatError(f"invalid entry name {name!r}")
        if not 0 <= size <= MAX_ENTRY_SIZE:
            raise TreeFormatError(f"entry {name!r} has impossible size {size}")
        if kind == ENTRY_SYMLINK and (not t or b"\0" in target or size != t):
            raise TreeFormatError(f"symlink {name!r} has an empty target or one containing NUL")
        prev = name
        out.append(tree_entry(name, kind, mode, mtime, size, key, target))
    return b"".join(out)


class _Restart(Exception):
    """A cached tree was not confirmed by the index: walk again without directory reuse."""


class _Node:
    """A directory being walked. Its files are columns (``names``, ``recs``, ``modes``,
    ``mtimes``, ``sizes``, ``keys``); a key is ``None`` while a thread reads the file, and
    ``dropped`` lists files skipped after an error."""

    __slots__ = (
        "cacheable",
        "dropped",
        "end",
        "ents",
        "keys",
        "listed",
        "local",
        "mode",
        "modes",
        "mtime",
        "mtimes",
        "name",
        "names",
        "parent",
        "path",
        "pending",
        "recs",
        "sizes",
        "subs",
        "verify",
    )

    def __init__(
        self, path: bytes, name: bytes, mode: int, mtime: int, parent: _Node | None, local: LocalDir | None
    ) -> None:
        self.path = path
        self.name = name
        self.mode = mode
        self.mtime = mtime
        self.parent = parent
        self.local = local
        self.end: End | None = None
        self.listed = False
        self.pending = 0  # subdirectories and files not done yet
        self.subs: list[tuple[bytes, int, int, bytes, int, int]] = []  # name, mode, mtime, tree, files, bytes
        self.names: list[bytes] = []
        self.recs: list[bytes] = []
        self.modes: list[int] = []
        self.mtimes: list[int] = []
        self.sizes: list[int] = []
        self.keys: list[bytes | None] = []
        self.ents: list[bytes | None] = []  # encoded tree entries (None: key not known yet)
        self.dropped: set[int] = set()
        self.verify: list[int] = []  # indexes of keys the stat cache gave
        self.cacheable = True

    def child_path(self, name: bytes) -> bytes:
        return (b"" if self.path == b"/" else self.path) + b"/" + name


class _Walk:
    """One pass over the tree (``run``); the main thread does all the bookkeeping, workers
    (threads or processes) the listing and reading, and a thread pool the large files."""

    def __init__(
        self,
        ctx: Context,
        ing: Ingester,
        statcache: StatCache,
        root: str,
        local_top: LocalDir | None,
        errors: _Errors,
        workers: int,
        progress: Progress,
        scope: str,
        *,
        use_dirs: bool,
        indexer: DirReports | None = None,
    ) -> None:
        self.ing = ing
        self.indexer = indexer
        self.level = ctx.cas.level
        self.window = ctx.cas.chunker.window
        self.small_limit = ctx.cas.chunker.params.min_size  # a file this small is one chunk
        self.statcache = statcache
        self.root = root
        self.local_top = local_top
        self.errors = errors
        self.workers = workers
        self.progress = progress
        self._grow = getattr(progress, "grow", None)
        self.scope = scope
        self.scope_bytes = scope.encode()
        self.use_dirs = use_dirs
        self.session = statcache.new_session()
        self.done_sessions = statcache.done_sessions() if use_dirs else set()
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=2 * workers + 2)
        self.closed = False
        self.stack: list[_Node] = []
        self.jobs: dict[int, _Node] = {}
        self.job_lister: dict[int, Any] = {}
        self.next_job = 0
        self.max_jobs = 2 * workers
        self.large_inflight = 0
        self.result: tuple[bytes, int, int] | None = None
        self.wq: list[Any] = []  # chunk batches (keys, sizes, stored, compressions), trees [key, raw]
        self.wq_count = 0
        self.wq_bytes = 0
        self.tree_checks: list[bytes] = []
        self.dir_writes: list[DirWrite] = []
        self.dir_bytes = 0
        self.learned: list[tuple[str, tuple[int, int, int, int], bytes]] = []  # listed uploads
        self.listed_files = 0
        self.read_files = 0
        self.new_bytes = 0
        self.reused_dirs = 0
        self.vouched_files = 0  # cached file keys confirmed by their directory's cached tree
        self.threads: ThreadLister | None = None
        self.procs: ProcessLister | None = None
        self.mode = os.environ.get(WORKERS_ENV, "auto")
        self.large_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-read")

    # -- plumbing --------------------------------------------------------------------------
    def put(self, ev: tuple[Any, ...]) -> None:
        while not self.closed:
            try:
                self.events.put(ev, timeout=0.2)
                return
            except queue.Full:
                continue

    def _lister(self, local: bool) -> Any:
        from datamon.api.dirwalk import ProcessLister, ThreadLister, WorkerStartError

        cache_path = str(self.statcache.path) if self.statcache.usable and self.statcache.path else None
        want_procs = not local and (
            self.mode == "processes" or (self.mode == "auto" and self.listed_files >= PROCESSES_AFTER_FILES)
        )
        if want_procs and self.procs is None and self.mode != "threads":
            try:
                self.procs = ProcessLister(self.workers, cache_path, self.small_limit, self.level, self.put)
            except WorkerStartError:
                self.mode = "threads"
        if want_procs and self.procs is not None:
            return self.procs
        if self.threads is None:
            self.threads = ThreadLister(self.workers, cache_path, self.small_limit, self.level, self.put)
        return self.threads

    def _submit(self, node: _Node) -> None:
        job = self.next_job
        self.next_job += 1
        self.jobs[job] = node
        local = None
        if node.local is not None:
            d = node.local
            local = (
                [(os.fsencode(n), f.st) for n, f in d.files.items()],
                [(os.fsencode(n), os.fsencode(t), st) for n, (t, st) in d.links.items()],
                [(os.fsencode(n), s.st.st_mode, s.st.st_mtime_ns, s) for n, s in d.dirs.items()],
            )
        lister = self._lister(local is not None)
        self.job_lister[job] = lister
        lister.submit(job, node.path, local, self.use_dirs)

    def run(self) -> tuple[bytes, int, int]:
        top = _Node(os.fsencode(self.root), b"", 0, 0, None, self.local_top)
        self.stack.append(top)
        ok = False
        try:
            while self.result is None:
                while self.stack and len(self.jobs) < self.max_jobs:
                    self._submit(self.stack.pop())
                if not self.jobs and not self.large_inflight:
                    raise RuntimeError("upload walk has nothing left to wait for (a bug)")
                self._dispatch(self.events.get())
            self.flush_writes()
            self.flush_tree_checks()
            self.flush_dirs()
            ok = True
            return self.result
        finally:
            self.closed = True
            if self.procs is not None:
                self.procs.close(clean=ok)
            if self.threads is not None:
                self.threads.close()
            self.large_pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "part":
            self._part(self.jobs[ev[1]], ev[2])
        elif kind == "end":
            job = ev[1]
            node = self.jobs.pop(job)
            self.job_lister.pop(job).done(job)
            self._end(node, ev[2])
        elif kind == "file":
            self.large_inflight -= 1
            self._file(ev[1], ev[2], ev[3], ev[4])
        elif kind == "fail":
            raise ev[2]
        elif kind == "dead":
            raise RuntimeError(
                f"upload worker process {ev[1]} ended unexpectedly" + (f": {ev[2]}" if ev[2] else "")
            )

    # -- what workers report -----------------------------------------------------------------
    def _part(self, node: _Node, cols: tuple[Any, ...]) -> None:
        names, recs, hows, keys, stored, comps, sizes, modes, mtimes, ents = cols
        base = len(node.names)
        node.ents += ents
        node.names += names
        node.recs += recs
        node.keys += keys
        node.sizes += sizes
        node.modes += modes
        node.mtimes += mtimes
        n = len(names)
        listed_bytes = sum(sizes)
        if hows.count(NEW) == n:  # a first upload: every file was read
            self._queue_chunks(keys, sizes, stored, comps)
            self.read_files += n
            done, done_bytes = n, listed_bytes
        else:
            done, done_bytes = n, listed_bytes
            new = []
            for j, how in enumerate(hows):
                if how == NEW:
                    new.append(j)
                elif how == CACHED:
                    node.verify.append(base + j)
                elif how == LARGE:
                    self._large(node, base + j)
                    done -= 1
                    done_bytes -= sizes[j]
            if new:
                self._queue_chunks(
                    [keys[j] for j in new],
                    [sizes[j] for j in new],
                    [stored[j] for j in new],
                    bytes(comps[j] for j in new),
                )
                self.read_files += len(new)
        self.listed_files += n
        if self._grow is not None:
            self._grow(n, listed_bytes)
        self.progress.advance(done, done_bytes)

    def _queue_chunks(self, keys: list[bytes], sizes: list[int], stored: list[bytes], comps: bytes) -> None:
        self.wq.append((keys, sizes, stored, comps))
        self.wq_count += len(keys)
        self.wq_bytes += sum(map(len, stored))
        if self.wq_count >= WRITE_BATCH_OBJECTS or self.wq_bytes >= WRITE_BATCH_BYTES:
            self.flush_writes()

    def _end(self, node: _Node, end: End) -> None:
        node.end = end
        for p, errno, msg in end.errors:
            self.errors(os.fsdecode(p), OSError(errno, msg))
        if end.errors:
            node.cacheable = False
        children = [_Node(node.child_path(n), n, m, t, node, local) for n, m, t, local in end.subdirs]
        node.pending += len(children)
        self.stack.extend(reversed(children))
        if end.same:
            self.listed_files += end.nfiles
            if self._grow is not None:
                self._grow(end.nfiles, end.nbytes)
            self.progress.advance(end.nfiles, end.nbytes)
        if node.verify:
            if self._row_tree(end) is not None:
                # The keys the cache gave are those of the tree recorded with them: confirming
                # that tree (batched, like a reused one) confirms them (docs/security.md).
                self._check_tree(end.row[1])  # type: ignore[index]
                self.vouched_files += len(node.verify)
                node.verify = []
            else:
                self._verify_cached(node)
        node.listed = True
        self._try_finalize(node)

    def _row_tree(self, end: End) -> bytes | None:
        """The tree of the directory's cache row, if an upload may rely on it: recorded by a
        session that completed, under this scope (store, database, index epoch)."""
        row = end.row
        if not self.use_dirs or row is None:
            return None
        _, tree, _, _, session, scope = row
        if tree is None or scope != self.scope or session not in self.done_sessions:
            return None
        return tree

    def _check_tree(self, tree: bytes) -> None:
        self.tree_checks.append(tree)
        if len(self.tree_checks) >= TREE_CHECK_BATCH:
            self.flush_tree_checks()

    def _verify_cached(self, node: _Node) -> None:
        keys, sizes = node.keys, node.sizes
        ok = self.ing.present_files([(keys[i], sizes[i]) for i in node.verify])  # type: ignore[misc]
        for i in node.verify:
            if keys[i] not in ok:  # not stored (any more): read it again
                keys[i] = None
                node.ents[i] = None
                self._large(node, i)
        node.verify = []

    def _large(self, node: _Node, i: int) -> None:
        node.pending += 1
        self.large_inflight += 1
        path = node.child_path(node.names[i])
        self.large_pool.submit(self._large_task, node, i, path, node.sizes[i])

    def _large_task(self, node: _Node, i: int, path: bytes, size: int) -> None:
        try:
            r = self._ingest_path(path, size)
        except OSError as e:
            self.put(("file", node, i, None, e))
        except BaseException as e:
            self.put(("fail", -1, e))
        else:
            self.put(("file", node, i, r, None))

    def _ingest_path(self, path: bytes, size: int) -> FileResult:
        fd = os.open(path, _O_READ)
        try:
            if size < self.window:
                # at most one byte more than listed: a file that grew since is streamed
                data = _read_upto(fd, size + 1)
                if len(data) <= size:
                    return self.ing.ingest_buffers([data])[0]
                os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as fh:
                return self.ing.ingest_stream(fh)
        finally:
            os.close(fd)

    def _file(self, node: _Node, i: int, r: FileResult | None, err: OSError | None) -> None:
        if err is not None:
            self.errors(os.fsdecode(node.child_path(node.names[i])), err)
            node.dropped.add(i)
            node.cacheable = False
            self.progress.advance(1, 0)
        else:
            assert r is not None
            node.keys[i] = r.key
            node.sizes[i] = r.size
            node.ents[i] = tree_entry(node.names[i], ENTRY_FILE, node.modes[i], node.mtimes[i], r.size, r.key)
            self.read_files += 1
            self.new_bytes += r.new_bytes
            self.progress.advance(1, r.size)
        node.pending -= 1
        self._try_finalize(node)

    # -- trees ---------------------------------------------------------------------------------
    def _try_finalize(self, node: _Node | None) -> None:
        while node is not None and node.listed and node.pending == 0:
            key, nfiles, nbytes = self._finalize(node)
            node.listed = False  # finalized once
            parent = node.parent
            if parent is None:
                self.result = (key, nfiles, nbytes)
                return
            parent.subs.append((node.name, node.mode, node.mtime, key, nfiles, nbytes))
            parent.pending -= 1
            node = parent

    def _dir_sig(self, files_sig: bytes, subs: list[tuple[bytes, int, int, bytes, int, int]]) -> bytes:
        from blake3 import blake3

        h = blake3(b"datamon dir 1\0")
        h.update(self.scope_bytes)
        h.update(files_sig)
        for name, mode, mtime, tree, nf, nb in sorted(subs):
            h.update(_SUB.pack(len(name), mode, mtime, nf, nb))
            h.update(name)
            h.update(tree)
        return h.digest()

    def _finalize(self, node: _Node) -> tuple[bytes, int, int]:
        end = node.end
        assert end is not None
        if end.same:
            tree = self._row_tree(end)
            if tree is not None:
                sig, _, nf, nb, _, _ = end.row  # type: ignore[misc]
                if sig is not None and self._dir_sig(end.files_sig, node.subs) == sig:  # type: ignore[arg-type]
                    self._check_tree(tree)
                    self.reused_dirs += 1
                    if self.indexer is not None:
                        self.indexer.dir_reused(node.path, tree)
                    return tree, nf, nb
            self._files_from_row(node, tree)
        if node.dropped:
            keep = [i for i in range(len(node.names)) if i not in node.dropped]
            for col in ("names", "recs", "modes", "mtimes", "sizes", "keys", "ents"):
                v = getattr(node, col)
                setattr(node, col, [v[i] for i in keep])
            node.dropped = set()
        names, keys, sizes = node.names, node.keys, node.sizes
        nfiles = len(names)
        nbytes = sum(sizes)
        for sub in node.subs:
            nfiles += sub[4]
            nbytes += sub[5]
        if not end.links and not node.subs and not node.local and node.ents:
            # files only, in name order (dirscan sorts them), each entry encoded by the worker
            raw = b"".join([TREE_MAGIC, _COUNT.pack(len(names)), *node.ents])  # type: ignore[list-item]
        else:
            entries: list[tuple[bytes, int, int, int, int, bytes, bytes]] = list(
                zip(names, repeat(ENTRY_FILE), node.modes, node.mtimes, sizes, keys, repeat(b""))
            )
            for name, target, mode, mtime in end.links:
                entries.append((name, ENTRY_SYMLINK, mode, mtime, len(target), ZERO_KEY, target))
            for name, mode, mtime, tree, _, nb in node.subs:
                entries.append((name, ENTRY_DIR, mode, mtime, nb, tree, b""))
            raw = encode_entries(entries)
        key = key_of(raw)
        if self.indexer is not None:
            files = (names, node.modes, node.mtimes, sizes, keys)
            self.indexer.dir_done(node.path, key, files, end.links, node.subs)  # type: ignore[arg-type]
        self.wq.append([key, raw])
        self.wq_count += 1
        self.wq_bytes += len(raw)
        if node.local is not None:
            prefix = node.path.rstrip(b"/") + b"/"
            self.learned.extend(
                (os.fsdecode(prefix + name), _stat_key_of(rec), k)  # type: ignore[misc]
                for name, rec, k, size in zip(names, node.recs, keys, sizes, strict=True)
                if size
            )
        elif end.files_sig is not None and node.cacheable:
            w = DirWrite(
                node.path,
                b"\0".join(names),
                b"".join(node.recs),
                b"".join(keys),  # type: ignore[arg-type]
                end.files_sig,
                self._dir_sig(end.files_sig, node.subs),
                key,
                nfiles,
                nbytes,
            )
            self.dir_writes.append(w)
            self.dir_bytes += len(w.names) + len(w.recs) + len(w.keys)
            if len(self.dir_writes) >= DIR_ROWS_BATCH or self.dir_bytes >= DIR_ROWS_BYTES:
                self.flush_dirs()
        if self.wq_count >= WRITE_BATCH_OBJECTS or self.wq_bytes >= WRITE_BATCH_BYTES:
            self.flush_writes()
        return key, nfiles, nbytes

    def _files_from_row(self, node: _Node, tree: bytes | None) -> None:
        """Fill the file columns of a directory whose files are exactly as its cache row says,
        their keys confirmed by the row's ``tree`` (when it may be relied on) or one by one;
        ``_Restart`` if the row changed meanwhile or a key is not stored any more."""
        end = node.end
        assert end is not None
        row = self.statcache.lookup_dir(node.path)
        if row is None or row.files_sig != end.files_sig:
            raise _Restart()
        files = row.files()
        if len(files) != end.nfiles:
            raise _Restart()
        for name, (rec, key) in sorted(files.items()):
            mode, size, mtime, _, _ = REC.unpack(rec)
            node.names.append(name)
            node.recs.append(rec)
            node.modes.append(mode)
            node.mtimes.append(mtime)
            node.sizes.append(size)
            node.keys.append(key)
        node.ents = []  # entries are encoded from the columns
        if tree is not None:
            self._check_tree(tree)
            return
        wanted = [(k, n) for k, n in zip(node.keys, node.sizes, strict=True) if n]
        if wanted:
            ok = self.ing.present_files(wanted)  # type: ignore[arg-type]
            if any(k not in ok for k, _ in wanted):
                raise _Restart()

    # -- batched writes ------------------------------------------------------------------------
    def flush_writes(self) -> None:
        """Deduplicate the queued objects against the index (one query per 2000 keys) and pack
        the missing ones, in queue order (a tree after everything below it). The queue holds
        batches of chunks as columns ``(keys, sizes, stored, compressions)`` and trees
        ``[key, raw]``."""
        segs = self.wq
        if not segs:
            return
        self.wq = []
        self.wq_count = self.wq_bytes = 0
        keys: list[bytes] = []
        trees: dict[bytes, bytes] = {}
        for seg in segs:
            if isinstance(seg, tuple):
                keys += seg[0]
            else:
                trees[seg[0]] = seg[1]
                keys.append(seg[0])
        facts_of: dict[bytes, tuple[int, int]] = {}

        def facts(k: bytes) -> tuple[int, int]:
            if not facts_of:
                for seg in segs:
                    if isinstance(seg, tuple):
                        facts_of.update((k2, (KIND_CHUNK, n)) for k2, n in zip(seg[0], seg[1], strict=True))
                facts_of.update((k2, (KIND_TREE, len(raw))) for k2, raw in trees.items())
            return facts_of.get(k, (0, -1))

        todo = self.ing.claim_small(keys, facts)
        if not todo:
            return
        batch: list[tuple[bytes, bytes, int, int, int]] = []
        new = 0
        every = len(todo) == len(keys)  # nothing indexed, no key twice: write it all
        for seg in segs:
            if isinstance(seg, tuple):
                ks, sizes, stored, comps = seg
                if every:
                    batch += zip(ks, stored, sizes, repeat(KIND_CHUNK), comps)
                    new += sum(sizes)
                    continue
                for k, n, data, c in zip(ks, sizes, stored, comps, strict=True):
                    if k in todo:
                        todo.discard(k)
                        batch.append((k, data, n, KIND_CHUNK, c))
                        new += n
            else:
                k, raw = seg
                if k in todo:
                    todo.discard(k)
                    data, c = encode_object(raw, max(self.level, 3))
                    batch.append((k, data, len(raw), KIND_TREE, c))
        self.new_bytes += new
        self.ing.write_stored(batch)

    def flush_tree_checks(self) -> None:
        keys = self.tree_checks
        if not keys:
            return
        self.tree_checks = []
        ok = self.ing.present_trees(keys)
        if any(k not in ok for k in keys):
            raise _Restart()

    def flush_dirs(self) -> None:
        if self.dir_writes:
            self.statcache.put_dirs(self.dir_writes, self.session, self.scope)
            self.dir_writes = []
            self.dir_bytes = 0


def _stat_key_of(rec: bytes) -> tuple[int, int, int, int]:
    _, size, mtime, ctime, ino = REC.unpack(rec)
    return (size, mtime, ctime, ino)
