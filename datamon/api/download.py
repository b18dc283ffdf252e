"""``download``: a bundle (or part of it) becomes a local directory, every byte verified."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamon.api.bundles import Entry, iter_entries, lookup, resolve, split_path
from datamon.api.progress import NoProgress, Progress
from datamon.api.statcache import StatCache, stat_key
from datamon.errors import UsageError

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


def _check_destination(dest: str, force: bool) -> None:
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise UsageError(f"destination {dest!r} exists and is not a directory", "choose a directory")
    if os.path.isdir(dest) and not force and any(os.scandir(dest)):
        raise UsageError(
            f"destination {dest!r} is not empty",
            "choose an empty or new directory, or pass --force-dest to overwrite files in it",
        )


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

    Raises ``UsageError`` if the destination is not empty (unless ``force_dest``),
    ``NotFound`` for unknown repo/bundle/label, ``IntegrityError`` if stored bytes are bad.
    """
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
    _check_destination(dest, force_dest)
    entries = list(iter_entries(ctx, b, name_filter=name_filter))
    os.makedirs(dest, exist_ok=True)
    files, nbytes = materialize(ctx, dest, entries, progress=progress, concurrency=concurrency)
    return DownloadResult(b, dest, files, nbytes, time.perf_counter() - t0)


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
    os.makedirs(dest, exist_ok=True)
    materialize(ctx, dest, [Entry("/".join(parts), e)], overwrite=True)
    return os.path.join(dest, *parts)


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


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
    Returns (files, bytes). Records written files in the stat cache."""
    from datamon.cas.tree import EntryKind

    cas = ctx.cas
    progress = progress or NoProgress()
    dirs: list[Entry] = []
    files: list[Entry] = []
    links: list[Entry] = []
    for e in entries:
        {EntryKind.DIR: dirs, EntryKind.FILE: files, EntryKind.SYMLINK: links}[e.entry.kind].append(e)
    progress.start(len(files), sum(e.size for e in files))

    made: set[str] = {dest}

    def ensure_dir(path: str) -> None:
        if path in made:
            return
        if (os.path.lexists(path) and not os.path.isdir(path)) or os.path.islink(path):
            _remove(path)
        os.makedirs(path, exist_ok=True)
        made.add(path)

    for d in dirs:
        ensure_dir(os.path.join(dest, d.path))
    for e in files + links:
        parent = os.path.dirname(os.path.join(dest, e.path))
        if parent not in made:
            ensure_dir(parent)

    small_limit = cas.chunker.params.min_size
    small = [e for e in files if e.size <= small_limit]
    large = [e for e in files if e.size > small_limit]
    written: list[tuple[str, bytes]] = []

    def write(e: Entry, pieces: Iterable[bytes]) -> None:
        path = os.path.join(dest, e.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            if not os.path.lexists(path):
                raise
            _remove(path)
            fd = os.open(path, flags, 0o600)
        try:
            for piece in pieces:
                _write_all(fd, piece)
            os.fchmod(fd, e.entry.mode & 0o7777)
            os.utime(fd, ns=(e.entry.mtime_ns, e.entry.mtime_ns))
        finally:
            os.close(fd)
        written.append((path, e.entry.key))

    def do_batch(batch: list[Entry]) -> None:
        got = cas.get_many([e.entry.key for e in batch if e.size])
        for e in batch:
            write(e, [got[e.entry.key]] if e.size else [])
        progress.advance(len(batch), sum(e.size for e in batch))

    def do_large(e: Entry) -> None:
        write(e, _counting(cas.iter_file(e.entry.key, e.size), progress))
        progress.advance(1, 0)

    batches: list[list[Entry]] = []
    cur: list[Entry] = []
    cur_bytes = 0
    for e in small:
        if cur and (cur_bytes + e.size > BATCH_BYTES or len(cur) >= BATCH_FILES):
            batches.append(cur)
            cur, cur_bytes = [], 0
        cur.append(e)
        cur_bytes += e.size
    if cur:
        batches.append(cur)
    workers = max(1, concurrency or os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-write") as pool:
        futs = [pool.submit(do_large, e) for e in sorted(large, key=lambda e: -e.size)]
        futs += [pool.submit(do_batch, b) for b in batches]
        try:
            for f in futs:
                f.result()
        except BaseException:
            for f in futs:
                f.cancel()
            raise

    for e in links:
        path = os.path.join(dest, e.path)
        if os.path.lexists(path):
            _remove(path)
        os.symlink(e.entry.target, path)
        try:
            os.utime(path, ns=(e.entry.mtime_ns, e.entry.mtime_ns), follow_symlinks=False)
        except OSError:
            pass
    for d in sorted(dirs, key=lambda d: -d.path.count("/")):
        path = os.path.join(dest, d.path)
        os.chmod(path, d.entry.mode & 0o7777 or 0o755)
        os.utime(path, ns=(d.entry.mtime_ns, d.entry.mtime_ns))
    progress.finish()

    cache = StatCache(ctx.state_dir)
    cache.store((p, stat_key(os.stat(p)), k) for p, k in written if k)
    cache.close()
    return len(files), sum(e.size for e in files)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _counting(it: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for piece in it:
        progress.advance(0, len(piece))
        yield piece
