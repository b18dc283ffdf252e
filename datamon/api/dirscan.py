"""Listing one directory for an upload: stat every entry, then read, hash and compress its
small files. Runs in upload worker processes (``api/dirwalk.py``) or in threads.

Self-contained on purpose (standard library, ``blake3`` and ``zstandard`` only, no other
datamon module): a worker process loads this file alone, so it starts in a few
milliseconds instead of importing the whole client.

A job is one directory. It answers with messages passed to ``emit``:

* ``("part", job, columns)``: up to ``PART_FILES`` files (``PART_BYTES`` of data) at a time,
  as columns ``(names, recs, hows, keys, stored, compressions, sizes, modes, mtimes_ns,
  entries)``, an entry being the file's encoded tree entry when its key is known;
* ``("end", job, End)``: the directory's signature, subdirectories, symlinks and errors.

``how`` says where the key comes from: ``NEW`` read and hashed here (``stored`` holds the
bytes to pack, compressed or not, exactly as ``cas.objects.encode_object`` stores them);
``CACHED`` from the stat cache (the parent checks it against the object index before any
bundle refers to it); ``EMPTY`` a file of 0 bytes; ``LARGE`` too large (or grown since
its ``lstat``) to read here, the parent streams it through the chunker. A file that could
not be read is in no part, only in ``End.errors``.

When the directory's files and symlinks have exactly the signature the stat cache recorded
(``End.same``), no file is looked at beyond its ``lstat`` and no part is sent.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
from collections.abc import Callable
from typing import Any

from blake3 import blake3

NEW, CACHED, EMPTY, LARGE = range(4)
REC = struct.Struct("<qqqqq")  # mode, size, mtime_ns, ctime_ns, inode (the stat cache's record)
REC_SIZE = REC.size
KEY_SIZE = 32
EMPTY_KEY = blake3(b"").digest()
PART_FILES = 1024
PART_BYTES = 2 << 20
SIG_FILES = b"datamon files 1\0"
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_COUNT = struct.Struct("<Q")

Emit = Callable[[tuple[Any, ...]], None]


class End:
    """What the parent needs of a listed directory besides its files."""

    __slots__ = (
        "errors",
        "files_sig",
        "links",
        "nbytes",
        "nfiles",
        "row",
        "same",
        "subdirs",
    )

    def __init__(self) -> None:
        self.files_sig: bytes | None = None  # None: errors, the directory cannot be cached
        self.same = False  # files and links exactly as the stat cache row says
        self.row: tuple[Any, ...] | None = None  # the cache row's (sig, tree, nfiles, nbytes, session, scope)
        self.subdirs: list[tuple[bytes, int, int, Any]] = []  # (name, mode, mtime_ns, local)
        self.links: list[tuple[bytes, bytes, int, int]] = []  # (name, target, mode, mtime_ns)
        self.errors: list[tuple[bytes, int, str]] = []  # (path, errno, message)
        self.nfiles = 0  # regular files directly in the directory
        self.nbytes = 0  # their sizes (as listed)

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields as a plain tuple, for the pipe to the parent (which unpickles no class of
        this file: a worker loads it under another module name)."""
        return (
            self.files_sig,
            self.same,
            self.row,
            self.subdirs,
            self.links,
            self.errors,
            self.nfiles,
            self.nbytes,
        )

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> End:
        end = cls()
        (end.files_sig, end.same, end.row, end.subdirs, end.links, end.errors, end.nfiles, end.nbytes) = t
        return end


_entry_structs: dict[tuple[int, int], struct.Struct] = {}


def tree_entry(
    name: bytes, kind: int, mode: int, mtime: int, size: int, key: bytes, target: bytes = b""
) -> bytes:
    """One entry of the tree encoding (``cas/tree.py``): name_len u16 | name | kind u8 |
    mode u32 (permission bits) | mtime_ns i64 | size u64 | key | target_len u16 | target."""
    n, t = len(name), len(target)
    s = _entry_structs.get((n, t))
    if s is None:
        if len(_entry_structs) > 4096:
            _entry_structs.clear()
        s = _entry_structs[(n, t)] = struct.Struct(f"<H{n}sBIqQ32sH{t}s")
    return s.pack(n, name, kind, mode & 0o7777, mtime, size, key, t, target)


def _read_upto(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd`` (fewer at end of file): never an unbounded read."""
    first = os.read(fd, limit)
    if len(first) == limit or not first:
        return first
    parts = [first]
    got = len(first)
    while got < limit:
        more = os.read(fd, limit - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Compressor:
    """``encode_object`` for chunks, without importing ``cas.objects``: zstd at ``level``
    (with the content size in the frame), kept only when it saves at least 1/32."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._c: Any = None
        if level > 0:
            import zstandard

            self._c = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def encode(self, raw: bytes) -> tuple[bytes, int]:
        n = len(raw)
        if self._c is not None and n > 64:
            comp = self._c.compress(raw)
            if len(comp) < n - (n >> 5):
                return comp, 1
        return raw, 0


class CacheReader:
    """Read-only access to the stat cache's directory rows (``api/statcache.py`` owns the
    schema); any SQLite error means "nothing known"."""

    def __init__(self, path: str | None) -> None:
        self._db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        except sqlite3.Error:
            self._db = None

    def summary(self, path: bytes) -> tuple[Any, ...] | None:
        """(files_sig, sig, tree, nfiles, nbytes, session, scope) of ``path``'s row, or None."""
        if self._db is None:
            return None
        try:
            return self._db.execute(
                "SELECT files_sig, sig, tree, nfiles, nbytes, session, scope FROM dirs WHERE path = ?",
                (path,),
            ).fetchone()
        except sqlite3.Error:
            return None

    def files(self, path: bytes) -> tuple[Any, ...] | None:
        """(names, recs, keys) of ``path``'s row, or None."""
        if self._db is None:
            return None
        try:
            return self._db.execute("SELECT names, recs, keys FROM dirs WHERE path = ?", (path,)).fetchone()
        except sqlite3.Error:
            return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def row_files(row: tuple[Any, ...] | None) -> dict[bytes, tuple[bytes, bytes]]:
    """name → (stat record, file key) of a cache row's (names, recs, keys); empty if the row is
    damaged."""
    if row is None or not row[0]:
        return {}
    names = bytes(row[0]).split(b"\0")
    recs, keys = bytes(row[1]), bytes(row[2])
    if len(recs) != len(names) * REC_SIZE or len(keys) != len(names) * KEY_SIZE:
        return {}
    return {
        n: (recs[i * REC_SIZE : (i + 1) * REC_SIZE], keys[i * KEY_SIZE : (i + 1) * KEY_SIZE])
        for i, n in enumerate(names)
    }


def files_signature(names: list[bytes], recs: list[bytes], links: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Digest of a directory's regular files (names in order, stat records) and symlinks
    (name, target, stat record): equal signatures mean the same tree entries for them."""
    h = blake3(SIG_FILES)
    h.update(_COUNT.pack(len(names)))
    h.update(b"\0".join(names))
    h.update(b"\1")
    h.update(b"".join(recs))
    h.update(_COUNT.pack(len(links)))
    for name, target, rec in links:
        h.update(b"\2" + name + b"\0" + target + b"\0" + rec)
    return h.digest()


def _list_entries(
    path: bytes, end: End
) -> tuple[list[tuple[bytes, os.stat_result]], list[tuple[bytes, bytes, bytes]]]:
    """Regular files (name, lstat) and symlinks (name, target, rec) of ``path``; subdirectories
    and errors go into ``end``. Sockets, FIFOs and devices are skipped."""
    files: list[tuple[bytes, os.stat_result]] = []
    links: list[tuple[bytes, bytes, bytes]] = []
    S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = stat.S_IFMT, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError as err:
                    end.errors.append((e.path, err.errno or 0, err.strerror or str(err)))
                    continue
                fmt = S_IFMT(st.st_mode)
                if fmt == S_IFREG:
                    files.append((e.name, st))
                elif fmt == S_IFDIR:
                    end.subdirs.append((e.name, st.st_mode, st.st_mtime_ns, None))
                elif fmt == S_IFLNK:
                    try:
                        target = os.readlink(e.path)
                    except OSError as err:
                        end.errors.append((e.path, err.errno or 0, err.strerror or str(err)))
                        continue
                    links.append((e.name, target, REC.pack(*_rec_fields(st))))
    except OSError as err:
        end.errors.append((path, err.errno or 0, err.strerror or str(err)))
    return files, links


def _rec_fields(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def list_dir(
    job: int,
    path: bytes,
    cache: CacheReader | None,
    small_limit: int,
    comp: Compressor,
    emit: Emit,
    local: tuple[list[tuple[bytes, os.stat_result]], list[tuple[bytes, bytes, os.stat_result]], list[Any]]
    | None = None,
    *,
    allow_same: bool = True,
) -> None:
    """List directory ``path`` (absolute, bytes) and send its parts and end to ``emit``.

    Files of at most ``small_limit`` bytes (one chunk, whatever the content) are read and
    hashed here unless the cache vouches for them. ``local`` (an upload of listed files)
    gives the entries instead of a scan: then the directory gets no signature. Without
    ``allow_same`` every file is looked at even when the signature matches."""
    end = End()
    if local is None:
        files, links = _list_entries(path, end)
    else:
        files = list(local[0])
        links = [(n, t, REC.pack(*_rec_fields(st))) for n, t, st in local[1]]
        end.subdirs = list(local[2])
    # Files are signed in listing order (what an unchanged directory lists again; sorting a
    # directory that turns out unchanged would be wasted), then sorted if they are looked at.
    links.sort(key=lambda f: f[0])
    end.subdirs.sort(key=lambda f: f[0])
    pack = REC.pack
    names = [n for n, _ in files]
    recs = [pack(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for _, st in files]
    end.nfiles = len(files)
    end.nbytes = sum(st.st_size for _, st in files)
    end.links = [(n, t, *REC.unpack(r)[0:3:2]) for n, t, r in links]
    if local is None and not end.errors:
        end.files_sig = files_signature(names, recs, links)
        summary = cache.summary(path) if cache is not None else None
        if summary is not None:
            sig, tree = summary[1], summary[2]
            end.row = (
                None if sig is None else bytes(sig),
                None if tree is None else bytes(tree),
                *summary[3:],
            )
            if allow_same and summary[0] is not None and bytes(summary[0]) == end.files_sig:
                end.same = True
                emit(("end", job, end))
                return
    if files:
        order = sorted(range(len(files)), key=names.__getitem__)
        files = [files[i] for i in order]
        recs = [recs[i] for i in order]
    cached = row_files(cache.files(path)) if cache is not None else {}
    dfd = -1
    cols = _Columns()
    try:
        for (name, st), rec in zip(files, recs, strict=True):
            size = st.st_size
            if size == 0:
                cols.add(name, rec, EMPTY, EMPTY_KEY, b"", 0, 0, st)
                continue
            hit = cached.get(name) if cached else None
            if hit is not None and hit[0][8:] == rec[8:]:
                cols.add(name, rec, CACHED, hit[1], b"", 0, size, st)
                continue
            if size > small_limit:
                cols.add(name, rec, LARGE, None, b"", 0, size, st)
                continue
            if dfd < 0:
                try:
                    dfd = os.open(path, _O_DIR)
                except OSError as err:
                    end.errors.append((path, err.errno or 0, err.strerror or str(err)))
                    end.files_sig = None
                    break
            try:
                fd = os.open(name, _O_READ, dir_fd=dfd)
                try:
                    # at most one byte more than listed: a file that grew is the parent's to stream
                    data = _read_upto(fd, size + 1)
                finally:
                    os.close(fd)
            except OSError as err:
                end.errors.append((path + b"/" + name, err.errno or 0, err.strerror or str(err)))
                end.files_sig = None
                continue
            n = len(data)
            if n > size:
                cols.add(name, rec, LARGE, None, b"", 0, size, st)
                continue
            if n == 0:  # shrank to nothing since the listing
                cols.add(name, rec, EMPTY, EMPTY_KEY, b"", 0, 0, st)
                continue
            stored, c = comp.encode(data)
            cols.add(name, rec, NEW, blake3(data).digest(), stored, c, n, st)
            cols.nbytes += len(stored)
            if len(cols.names) >= PART_FILES or cols.nbytes >= PART_BYTES:
                emit(("part", job, cols.message()))
                cols = _Columns()
    finally:
        if dfd >= 0:
            os.close(dfd)
    if cols.names:
        emit(("part", job, cols.message()))
    emit(("end", job, end))


class _Columns:
    """One part: the files as columns (cheap to pickle and to take apart)."""

    __slots__ = (
        "comps",
        "ents",
        "hows",
        "keys",
        "modes",
        "mtimes",
        "names",
        "nbytes",
        "recs",
        "sizes",
        "stored",
    )

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.recs: list[bytes] = []
        self.hows = bytearray()
        self.keys: list[bytes | None] = []
        self.stored: list[bytes] = []
        self.comps = bytearray()
        self.sizes: list[int] = []
        self.modes: list[int] = []
        self.mtimes: list[int] = []
        self.ents: list[bytes | None] = []  # the file's tree entry, when its key is known
        self.nbytes = 0

    def add(
        self,
        name: bytes,
        rec: bytes,
        how: int,
        key: bytes | None,
        stored: bytes,
        comp: int,
        size: int,
        st: os.stat_result,
    ) -> None:
        self.names.append(name)
        self.recs.append(rec)
        self.hows.append(how)
        self.keys.append(key)
        self.stored.append(stored)
        self.comps.append(comp)
        self.sizes.append(size)
        self.modes.append(st.st_mode)
        self.mtimes.append(st.st_mtime_ns)
        self.ents.append(None if key is None else tree_entry(name, 1, st.st_mode, st.st_mtime_ns, size, key))

    def message(self) -> tuple[Any, ...]:
        """(names, recs, hows, keys, stored, comps, sizes, modes, mtimes, entries)."""
        return (
            self.names,
            self.recs,
            bytes(self.hows),
            self.keys,
            self.stored,
            bytes(self.comps),
            self.sizes,
            self.modes,
            self.mtimes,
            self.ents,
        )


def _peak_rss_kib() -> int:
    """This process's own peak RSS (``VmHWM``: ``ru_maxrss`` would also count the parent's
    memory at the fork that started it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_connections() -> tuple[Any, Any]:
    """In a child started by ``dirwalk.start_child``: (input, output) ``multiprocessing``
    connections over stdin and stdout. Ctrl-C is the parent's business (ignored here), and
    anything printed by accident goes to stderr, never into the message stream."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = Connection(os.dup(0), writable=False)
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    return inp, out


def worker_main() -> None:
    """A worker process: jobs arrive on stdin, messages leave on stdout (``multiprocessing``
    connections over the two pipes). Ctrl-C is the parent's business; the worker ends when
    its stdin closes."""
    inp, out = child_connections()
    try:
        cache_path, small_limit, level = inp.recv()
    except EOFError:
        return
    cache = CacheReader(cache_path)
    comp = Compressor(level)
    out.send(("ready",))

    def send(msg: tuple[Any, ...]) -> None:
        if msg[0] == "end":  # End is this file's class, unknown to the parent's unpickler
            msg = ("end", msg[1], msg[2].to_tuple())
        out.send(msg)

    try:
        while True:
            try:
                job = inp.recv()
            except EOFError:
                return
            if job is None:
                send(("bye", _peak_rss_kib()))
                return
            job_id, path, allow_same = job
            try:
                list_dir(job_id, path, cache, small_limit, comp, send, allow_same=allow_same)
            except (BrokenPipeError, EOFError):
                return
            except BaseException as e:  # a bug: the parent re-raises it
                import traceback

                send(("fail", job_id, "".join(traceback.format_exception(e))))
    finally:
        cache.close()


if __name__ == "__main__":
    worker_main()
