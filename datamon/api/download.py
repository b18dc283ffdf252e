"""``download``: a bundle (or part of it) becomes a local directory, every byte verified.

Local writes follow ``datamon/api/localfs.py``: every directory below the destination is
reached through ``O_NOFOLLOW`` directory fds, every file is written under a temporary name
in its final directory and renamed into place only when all of its bytes were verified
and counted, modes lose setuid/setgid/sticky and get the umask, and symlinks of the bundle
are created last (and never followed afterwards).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamon.api import localfs
from datamon.api.bundles import Entry, iter_entries, lookup, resolve, split_path
from datamon.api.progress import NoProgress, Progress
from datamon.api.statcache import StatCache, StatKey, stat_key
from datamon.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

BATCH_BYTES = 16 << 20
BATCH_FILES = 1024


@dataclass
class DownloadResult:
    bundle: BundleRecord
    destination: str
    files: int
    bytes: int
    seconds: float


def _not_a_directory(dest: str) -> UsageError:
    return UsageError(f"destination {dest!r} exists and is not a directory", "choose a directory")


def download(
    ctx: Context,
    repo: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
    name_filter: str | None = None,
    force_dest: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Write the bundle's files (those whose path matches ``name_filter``, a regex searched
    in the path) under ``destination``, with modes, mtimes, symlinks and empty directories.

    Raises ``UsageError`` if the destination is not empty (unless ``force_dest``, or it is
    an interrupted download of this same bundle: that is finished like ``update``),
    ``NotFound`` for unknown repo/bundle/label, ``IntegrityError`` if stored bytes are bad.
    The destination is recorded in the download registry before anything is written.
    """
    from datamon.api.downloads import Registry, registered

    t0 = time.perf_counter()
    dest = os.path.abspath(os.fspath(destination))
    if name_filter:
        try:
            re.compile(name_filter)
        except re.error as e:
            raise UsageError(
                f"--name-filter {name_filter!r} is not a valid regular expression: {e}"
            ) from None
    b = resolve(ctx, repo, bundle=bundle, label=label)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise _not_a_directory(dest)
    rec = registered(ctx.state_dir, dest) if os.path.isdir(dest) else None
    nonempty = os.path.isdir(dest) and any(os.scandir(dest))
    if nonempty and not force_dest:
        same = rec is not None and not rec.adopted and (rec.repo, rec.bundle) == (repo, b.id)
        if same and rec is not None and name_filter is None and rec.name_filter is None:
            return _resume(ctx, repo, dest, b, progress, concurrency, t0)
        if rec is not None and not rec.adopted:
            raise UsageError(
                f"destination {dest!r} is not empty: it holds a download of bundle {rec.bundle[:12]}"
                f" of repo {rec.repo}",
                f"run `datamon bundle update --repo {repo} --bundle {b.id[:12]} --destination {dest}`"
                " to make it this bundle, or choose an empty directory",
            )
        raise UsageError(
            f"destination {dest!r} is not empty",
            "choose an empty or new directory, or pass --force-dest to overwrite files in it",
        )
    entries = list(iter_entries(ctx, b, name_filter=name_filter))
    os.makedirs(dest, exist_ok=True)
    # A non-empty directory that was not a download holds files datamon did not make: it is
    # registered as adopted, and `update` will not delete in it unless forced.
    adopted = nonempty and (rec is None or rec.adopted)
    reg = Registry(ctx.state_dir)
    try:
        reg.put(dest, repo=repo, bundle=b.id, name_filter=name_filter, complete=False, adopted=adopted)
        files, nbytes = materialize(ctx, dest, entries, progress=progress, concurrency=concurrency)
        reg.put(dest, repo=repo, bundle=b.id, name_filter=name_filter, complete=True, adopted=adopted)
    finally:
        reg.close()
    return DownloadResult(b, dest, files, nbytes, time.perf_counter() - t0)


def _resume(
    ctx: Context,
    repo: str,
    dest: str,
    b: BundleRecord,
    progress: Progress | None,
    concurrency: int | None,
    t0: float,
) -> DownloadResult:
    """Finish an interrupted download of ``b`` into ``dest``: only what is missing or differs."""
    from datamon.api.diff import update

    r = update(ctx, repo, dest, bundle=b.id, progress=progress, concurrency=concurrency)
    done = [c.new for c in r.changes if c.op in ("A", "U") and c.new is not None and c.new.is_file]
    return DownloadResult(b, dest, len(done), sum(e.size for e in done), time.perf_counter() - t0)


def download_file(
    ctx: Context,
    repo: str,
    path: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
) -> str:
    """Write one file of a bundle to ``destination/path``; returns the written path."""
    b = resolve(ctx, repo, bundle=bundle, label=label)
    parts = split_path(path)
    e = lookup(ctx, b, path)
    if e.is_dir:
        raise UsageError(
            f"{path!r} is a directory", "use `datamon bundle download --name-filter` for directories"
        )
    dest = os.path.abspath(os.fspath(destination))
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise _not_a_directory(dest)
    os.makedirs(dest, exist_ok=True)
    materialize(ctx, dest, [Entry("/".join(parts), e)], overwrite=True)
    return os.path.join(dest, *parts)


def _size_error(e: Entry, got: int) -> IntegrityError:
    from datamon.errors import CorruptObject

    return CorruptObject(
        e.entry.key.hex(), "file", f"{e.path!r} has {got} bytes, its tree entry says {e.size}"
    )


def materialize(
    ctx: Context,
    dest: str,
    entries: Iterable[Entry],
    *,
    progress: Progress | None = None,
    concurrency: int | None = None,
    overwrite: bool = True,
) -> tuple[int, int]:
    """Create ``entries`` under ``dest`` (replacing what is in the way when ``overwrite``).
    Returns (files, bytes). Records written files in the stat cache, each with the stat it
    had when datamon closed it."""
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind

    cas = ctx.cas
    progress = progress or NoProgress()
    dirs: list[tuple[list[str], Entry]] = []
    files: list[tuple[list[str], Entry]] = []
    links: list[tuple[list[str], Entry]] = []
    for e in entries:
        bucket = {EntryKind.DIR: dirs, EntryKind.FILE: files, EntryKind.SYMLINK: links}[e.entry.kind]
        bucket.append((localfs.safe_parts(e.path), e))
    progress.start(len(files), sum(e.size for _, e in files))
    umask = localfs.umask()
    root = localfs.open_root(dest)
    written: list[tuple[str, StatKey, bytes]] = []
    try:
        # 1. directories, in tree order (one walker moves along the depth-first order)
        w = localfs.DirWalker(root, create=True, replace=overwrite)
        try:
            for parts, _ in dirs:
                w.cd(parts)
            for parts, _ in files + links:
                w.cd(parts[:-1])
        finally:
            w.close()

        small_limit = cas.chunker.params.min_size
        small = [(p, e) for p, e in files if 0 < e.size <= small_limit]
        empty = [(p, e) for p, e in files if e.size == 0]
        large = [(p, e) for p, e in files if e.size > small_limit]
        if small:  # an entry claiming to be small but naming a file map is streamed and checked
            locs = cas.reader.locate([e.entry.key for _, e in small])
            odd = {k for k, loc in locs.items() if loc.kind != Kind.CHUNK}
            if odd:
                large += [(p, e) for p, e in small if e.entry.key in odd]
                small = [(p, e) for p, e in small if e.entry.key not in odd]
        small = empty + small

        def write(w: localfs.DirWalker, parts: list[str], e: Entry, pieces: Iterable[bytes]) -> None:
            dfd = w.cd(parts[:-1])
            fd, tmp = localfs.new_temp(dfd)
            try:
                n = 0
                for piece in pieces:
                    n += len(piece)
                    if n > e.size:
                        raise _size_error(e, n)
                    localfs.write_all(fd, piece)
                if n != e.size:
                    raise _size_error(e, n)
                os.fchmod(fd, localfs.file_mode(e.entry.mode, umask))
                os.utime(fd, ns=(e.entry.mtime_ns, e.entry.mtime_ns))
                localfs.rename_into_place(dfd, tmp, parts[-1], replace=overwrite)
                tmp = ""
                st = os.fstat(fd)  # the stat it has as datamon lets go of it (rename sets ctime)
            except BaseException:
                os.close(fd)
                if tmp:
                    localfs.unlink_quietly(dfd, tmp)
                raise
            os.close(fd)
            if st.st_size == e.size and st.st_mtime_ns == e.entry.mtime_ns:
                written.append((os.path.join(dest, *parts), stat_key(st), e.entry.key))

        def write_verified(w: localfs.DirWalker, parts: list[str], e: Entry, data: bytes) -> None:
            """A small file whose bytes are in memory, verified (by the object reader) and
            counted: under a name that is free it is created directly (``O_EXCL``, so the
            name is ours and removed again if the write fails); else temp name + rename."""
            if len(data) != e.size:
                raise _size_error(e, len(data))
            dfd = w.cd(parts[:-1])
            fd = localfs.create_new(dfd, parts[-1])
            if fd is None:
                write(w, parts, e, [data])
                return
            try:
                if data:
                    localfs.write_all(fd, data)
                os.fchmod(fd, localfs.file_mode(e.entry.mode, umask))
                os.utime(fd, ns=(e.entry.mtime_ns, e.entry.mtime_ns))
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                localfs.unlink_quietly(dfd, parts[-1])
                raise
            os.close(fd)
            written.append((os.path.join(dest, *parts), stat_key(st), e.entry.key))

        def do_batch(batch: list[tuple[list[str], Entry]]) -> None:
            got = cas.get_many([e.entry.key for _, e in batch if e.size])
            w = localfs.DirWalker(root)
            try:
                for parts, e in batch:
                    write_verified(w, parts, e, got[e.entry.key] if e.size else b"")
            finally:
                w.close()
            progress.advance(len(batch), sum(e.size for _, e in batch))

        def do_large(parts: list[str], e: Entry) -> None:
            w = localfs.DirWalker(root)
            try:
                write(w, parts, e, _counting(cas.iter_file(e.entry.key, e.size), progress))
            finally:
                w.close()
            progress.advance(1, 0)

        batches: list[list[tuple[list[str], Entry]]] = []
        cur: list[tuple[list[str], Entry]] = []
        cur_bytes = 0
        for pe in small:
            size = pe[1].size
            if cur and (cur_bytes + size > BATCH_BYTES or len(cur) >= BATCH_FILES):
                batches.append(cur)
                cur, cur_bytes = [], 0
            cur.append(pe)
            cur_bytes += size
        if cur:
            batches.append(cur)
        workers = max(1, concurrency or os.cpu_count() or 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-write") as pool:
            futs = [pool.submit(do_large, p, e) for p, e in sorted(large, key=lambda pe: -pe[1].size)]
            futs += [pool.submit(do_batch, b) for b in batches]
            try:
                for f in futs:
                    f.result()
            except BaseException:
                for f in futs:
                    f.cancel()
                raise

        # 2. symlinks, last: nothing written after this goes below a path holding one
        w = localfs.DirWalker(root)
        try:
            for parts, e in links:
                dfd = w.cd(parts[:-1])
                name = parts[-1]
                if overwrite:
                    localfs.remove_at(dfd, name)
                os.symlink(e.entry.target, name, dir_fd=dfd)
                try:
                    os.utime(name, ns=(e.entry.mtime_ns, e.entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    pass
        finally:
            w.close()

        # 3. directory modes and mtimes, children before parents (reverse depth-first order)
        w = localfs.DirWalker(root)
        try:
            for parts, e in reversed(dirs):
                try:
                    dfd = w.cd(parts)
                except OSError:
                    continue  # replaced by a symlink of the bundle (a hostile duplicate name)
                os.fchmod(dfd, localfs.dir_mode(e.entry.mode, umask))
                os.utime(dfd, ns=(e.entry.mtime_ns, e.entry.mtime_ns))
        finally:
            w.close()
        progress.finish()
    finally:
        os.close(root)
        # what was completely written is cached even after a failure or Ctrl-C: a rerun
        # (``update``) then skips re-reading it
        cache = StatCache(ctx.state_dir)
        cache.store(written)
        cache.close()
    return len(files), sum(e.size for _, e in files)


def _counting(it: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for piece in it:
        progress.advance(0, len(piece))
        yield piece
