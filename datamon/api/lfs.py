"""Git LFS objects in datamon: store a file under its SHA-256 oid, fetch it back, import a store.

An LFS object is stored like any file of a bundle (chunked, deduplicated, compressed, in
packs), and the metadata store maps ``(repo, oid)`` to its file key. Two versions of a large
file that differ a little therefore share most chunks. Write order is the CAS's (packs →
index rows) and then the oid row, so a crash leaves only unreferenced objects and an oid is
never mapped to bytes that are not fully stored. Bytes are verified on the way in (their
SHA-256 must equal the oid before the oid is mapped) and on the way out (every chunk's
BLAKE3, the file key, and the SHA-256 again).
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from datamon.api.progress import NoProgress, Progress
from datamon.errors import IntegrityError, NotFound, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.ingest import Ingester

_PREFETCH: Final = 4  # pieces decoded ahead of the writer when fetching


class ContentMismatch(UsageError):
    """Bytes offered for an oid do not hash to it (or have another size). Nothing is mapped."""


@dataclass(frozen=True)
class StoredObject:
    oid: str
    file_key: str
    size: int
    new_bytes: int  # raw bytes that were not in the store before (0 when deduplicated)
    already_stored: bool  # the oid was mapped already: nothing was read


def check_repo(ctx: Context, repo: str) -> None:
    """Raise unless ``repo`` exists and the blob store can be opened (``NotFound``,
    ``StoreUnavailable`` or whatever the storage library raises)."""
    ctx.meta.get_repo(repo)
    ctx.cas  # noqa: B018  (opening reads the store's settings blob: proves the store is reachable)


def lookup(ctx: Context, repo: str, oid: str) -> tuple[str, int] | None:
    """``(file key hex, size)`` of a stored oid whose bytes are in the store, else ``None``."""
    from datamon.cas.hashing import EMPTY_KEY

    found = ctx.meta.get_lfs_object(repo, oid)
    if found is None:
        return None
    key_hex, size = found
    key = bytes.fromhex(key_hex)
    if size == 0 and key == EMPTY_KEY:
        return found
    return found if ctx.meta.lookup_objects([key]) else None


def store_object(
    ctx: Context,
    repo: str,
    oid: str,
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    progress: Progress | None = None,
) -> StoredObject:
    """Store the file at ``path`` as LFS object ``oid`` of ``repo``.

    Idempotent: an oid already stored is not read again. Raises ``ContentMismatch`` if the
    file's SHA-256 is not ``oid`` or its length is not ``size`` (then no oid row is written;
    chunks written before the mismatch showed are unreferenced and left to gc),
    ``NotFound`` for an unknown repo, ``OSError`` if the file cannot be read.
    """
    progress = progress or NoProgress()
    known = lookup(ctx, repo, oid)
    if known is not None and (size is None or known[1] == size):
        progress.start(1, known[1])
        progress.advance(1, known[1])
        progress.finish()
        return StoredObject(oid, known[0], known[1], 0, True)
    ctx.meta.get_repo(repo)
    with _open_regular(path, oid) as f:
        actual = os.fstat(f.fileno()).st_size
        if size is not None and actual != size:
            raise ContentMismatch(
                f"object {oid}: {os.fsdecode(path)} has {actual} bytes, the request says {size}",
                "the local LFS object is damaged: check it with `git lfs fsck`",
            )
        progress.start(1, actual)
        with ctx.cas.writing(concurrency=os.cpu_count() or 2) as ing:
            key, nbytes, new = _ingest_verified(ing, f, oid, progress, os.fsdecode(path), actual)
    ctx.meta.put_lfs_object(repo, oid, key.hex(), nbytes)
    progress.advance(1, 0)
    progress.finish()
    return StoredObject(oid, key.hex(), nbytes, new, False)


def _open_regular(path: str | os.PathLike[str], oid: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file; else ``ContentMismatch``.

    Opened non-blocking and checked on the open descriptor, so a FIFO (which would block the
    open until a writer came) or a device such as /dev/zero (endless) is refused, never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ContentMismatch(
                f"object {oid}: {os.fsdecode(path)} is not a regular file",
                "git-lfs should hand the agent a file: check the path, or `git lfs fsck`",
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Sha256Reader:
    """Reads a file for the chunker, hashing (SHA-256) and counting what passes through.

    The SHA-256 runs in a thread of its own (hashlib releases the GIL), in read order, so it
    overlaps chunking and BLAKE3 instead of adding to them.
    """

    def __init__(self, f: BinaryIO, progress: Progress, limit: int | None = None) -> None:
        self._f = f
        # Never read more than ``limit`` bytes: one more than the file should have is enough to
        # tell that it grew (or was a file that reports size 0 but streams, as in /proc).
        self._limit = limit
        self._progress = progress
        self._sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datamon-sha256")
        self._last: Future[None] | None = None
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self._limit is not None:
            left = self._limit - self.count
            if left <= 0:
                return b""
            n = left if n is None or n < 0 else min(n, left)
        data = self._f.read(n)
        self._last = self._hasher.submit(self._sha.update, data)
        self.count += len(data)
        self._progress.advance(0, len(data))
        return data

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)


def _ingest_verified(
    ing: Ingester, f: BinaryIO, oid: str, progress: Progress, name: str, expected: int | None = None
) -> tuple[bytes, int, int]:
    """Chunk, deduplicate and store ``f`` while computing its SHA-256; (file key, size, new bytes).

    The same steps as ``Ingester.ingest_path`` with a hashing reader in front (one pass over
    the bytes). The file map, which is what makes a multi-chunk file addressable, is only
    written once the SHA-256 matched.
    """
    reader = _Sha256Reader(f, progress, None if expected is None else expected + 1)
    try:
        return _ingest_hashing(ing, reader, oid, name, expected)
    finally:
        reader.close()


def _ingest_hashing(
    ing: Ingester, reader: _Sha256Reader, oid: str, name: str, expected: int | None = None
) -> tuple[bytes, int, int]:
    def check() -> None:
        if expected is not None and reader.count != expected:
            raise ContentMismatch(
                f"object {oid}: {name} changed size while it was read ({reader.count} bytes "
                f"{'or more ' if reader.count > expected else ''}instead of {expected}); nothing was stored",
                "make sure nothing writes the file while git-lfs pushes it, then push again",
            )
        got = reader.hexdigest()
        if got != oid:
            raise ContentMismatch(
                f"object {oid}: the SHA-256 of {name} is {got}; nothing was stored under that oid",
                "the local LFS object is damaged: check it with `git lfs fsck`",
            )

    r = ing.ingest_stream(reader, before_commit=check)  # type: ignore[arg-type]
    return r.key, r.size, r.new_bytes


def fetch_object(
    ctx: Context,
    repo: str,
    oid: str,
    directory: str | os.PathLike[str],
    *,
    size: int | None = None,
    progress: Progress | None = None,
) -> str:
    """Write LFS object ``oid`` of ``repo`` to a new temporary file in ``directory``; returns
    its path (the caller owns the file).

    Raises ``NotFound`` if the repo does not hold the oid, ``IntegrityError`` if the stored
    bytes fail verification (then no file is left behind).
    """
    progress = progress or NoProgress()
    found = ctx.meta.get_lfs_object(repo, oid)
    if found is None:
        ctx.meta.get_repo(repo)
        raise NotFound(
            f"object {oid} not found in datamon repo {repo!r}",
            "push it from a clone that has it (`git lfs push --all origin`), "
            "or check which repo the agent uses (`git config lfs.customtransfer.datamon.args`)",
        )
    key_hex, stored_size = found
    if size is not None and size != stored_size:
        raise IntegrityError(
            f"object {oid} is stored with {stored_size} bytes, the request says {size}",
            "run `datamon verify`; pushing the object again from a good clone repairs it",
        )
    progress.start(1, stored_size)
    fd, tmp = tempfile.mkstemp(prefix=f"datamon-{oid[:16]}-", suffix=".tmp", dir=os.fspath(directory))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        sha = hashlib.sha256()
        n = 0
        for piece in _prefetch(ctx.cas.iter_file(bytes.fromhex(key_hex), stored_size), _PREFETCH):
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
            sha.update(piece)
            n += len(piece)
            progress.advance(0, len(piece))
        if n != stored_size or sha.hexdigest() != oid:
            raise IntegrityError(
                f"object {oid}: the stored bytes ({n} bytes, SHA-256 {sha.hexdigest()}) do not match the oid",
                "run `datamon verify`; pushing the object again from a good clone repairs it",
            )
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    progress.advance(1, 0)
    progress.finish()
    return tmp


_UMASK: list[int] = []


def _umask() -> int:
    # os.umask can only be read by setting it; do that once, before any thread creates files.
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


def _prefetch(source: Iterator[bytes], depth: int) -> Iterator[bytes]:
    """Run ``source`` in a thread, ``depth`` items ahead of the consumer, so decoding
    (decompression and BLAKE3, which release the GIL) overlaps hashing and writing."""
    q: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put((0, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((1, None))
        except BaseException as e:
            q.put((2, e))

    t = threading.Thread(target=produce, name="datamon-lfs-read", daemon=True)
    t.start()
    try:
        while True:
            tag, item = q.get()
            if tag == 0:
                yield item  # type: ignore[misc]
            elif tag == 1:
                return
            else:
                raise item  # type: ignore[misc]
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


# -- importing an existing LFS store -------------------------------------------------------
@dataclass
class ImportResult:
    objects: int = 0  # oids seen
    stored: int = 0  # oids newly mapped
    bytes: int = 0
    new_bytes: int = 0
    failed: list[tuple[str, str]] | None = None


def iter_local_objects(objects_dir: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """(oid, path) of every object in a git-lfs object directory (``<lfs>/objects/ab/cd/<oid>``)."""
    from datamon.lfs.protocol import is_oid

    root = Path(objects_dir)
    if not root.is_dir():
        raise UsageError(f"{root} is not a Git LFS object directory", "give the path of .git/lfs/objects")
    for p in sorted(root.glob("??/??/*")):
        if is_oid(p.name) and p.parent.name == p.name[2:4] and p.parent.parent.name == p.name[:2]:
            yield p.name, p


def import_objects(
    ctx: Context, repo: str, objects_dir: str | os.PathLike[str], *, progress: Progress | None = None
) -> ImportResult:
    """Store every object of a local git-lfs object directory in ``repo``. Idempotent;
    objects whose bytes do not match their name are listed in ``failed`` and skipped."""
    progress = progress or NoProgress()
    ctx.meta.get_repo(repo)
    found = list(iter_local_objects(objects_dir))
    progress.start(len(found), sum(p.stat().st_size for _, p in found))
    result = ImportResult(failed=[])
    for oid, path in found:
        result.objects += 1
        try:
            r = store_object(ctx, repo, oid, path)
        except ContentMismatch as e:
            result.failed.append((oid, e.message))  # type: ignore[union-attr]
            progress.advance(1, 0)
            continue
        result.stored += 0 if r.already_stored else 1
        result.bytes += r.size
        result.new_bytes += r.new_bytes
        progress.advance(1, r.size)
    progress.finish()
    return result
