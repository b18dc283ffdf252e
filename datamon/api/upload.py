"""``upload``: a local directory becomes a bundle.

Order of writes (what makes a crash harmless): packs → index rows (both inside
``ContentStore.writing``) → trees → bundle row → label move. An interrupted upload leaves
only unreferenced objects; rerunning it deduplicates against everything that landed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datamon.api.localtree import LocalDir, LocalFile, check_root, scan, scan_listed
from datamon.api.progress import NoProgress, Progress
from datamon.api.refs import parent_id
from datamon.api.statcache import StatCache, stat_key
from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.ingest import Ingester
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

SMALL_BATCH_BYTES = 8 << 20
SMALL_BATCH_FILES = 512
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


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


@dataclass
class UploadResult:
    bundle: BundleRecord
    files: int = 0
    bytes: int = 0
    read_files: int = 0  # files actually read (not answered by the stat cache)
    new_bytes: int = 0  # raw bytes that were not in the store before
    stored_bytes: int = 0  # bytes written to packs (after compression)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label: str | None = None
    seconds: float = 0.0


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


def upload(
    ctx: Context,
    repo: str,
    path: str | os.PathLike[str],
    *,
    message: str,
    label: str | None = None,
    files: Sequence[str] | None = None,
    skip_on_error: bool = False,
    parents: Sequence[str] | None = None,
    concurrency: int | None = None,
    progress: Progress | None = None,
    meta: Mapping[str, Any] | None = None,
    attributes: Any = None,
) -> UploadResult:
    """Upload directory ``path`` to ``repo`` as a new bundle and optionally point ``label`` at it.

    ``files`` restricts the upload to those paths relative to ``path``. Unreadable files
    raise ``UsageError`` unless ``skip_on_error`` (then they are listed in ``skipped``).
    ``meta`` (a JSON object) goes into the bundle record; ``attributes`` (a file, rows or a
    DataFrame with a ``path`` column, see ``api/attributes.py``) become the files' attributes.
    Both are checked against the repo's schema before anything is written.
    Raises ``NotFound`` for an unknown repo or parent. Safe to interrupt and rerun.
    """
    from datamon.api import attributes as attrs

    bundle_meta: Mapping[str, Any] | None = meta
    t0 = time.perf_counter()
    ctx.meta.get_repo(repo)
    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    parent_ids = [parent_id(ctx, repo, p) for p in parents] if parents else None
    extras = attrs.prepare(ctx, repo, meta=bundle_meta, attributes=attributes, parents=parent_ids)
    t = upload_tree(
        ctx,
        path,
        files=files,
        skip_on_error=skip_on_error,
        concurrency=concurrency,
        progress=progress,
        check_paths=extras.check_paths,
    )
    tree_hex, nfiles, nbytes = t.tree, t.files, t.bytes

    from datamon.api.bundles import make_bundle

    if parent_ids is None:
        latest = ctx.meta.latest_bundle(repo)
        parent_ids = [latest.id] if latest else []
    who = ctx.contributor
    bundle_meta, attrs_key = extras.finish(ctx, tree_hex, parent_ids)
    bundle = make_bundle(
        repo=repo,
        tree=tree_hex,
        parents=parent_ids,
        message=message,
        contributor_name=who.name,
        contributor_email=who.email,
        time_ns=time.time_ns(),
        file_count=nfiles,
        total_size=nbytes,
        meta=bundle_meta,
        attrs=attrs_key,
    )
    if attrs_key is not None:  # a bundle with attributes is indexed before its row is written;
        from datamon.api.fileindex import index_bundle  # others when first queried (docs/query.md)

        index_bundle(ctx, bundle, rows=extras.final_rows, row_json=extras.final_json)
    ctx.meta.add_bundle(bundle)
    if label:
        from datamon.api.labels import set_label

        set_label(ctx, repo, label, bundle.id)
    return UploadResult(
        bundle=bundle,
        files=nfiles,
        bytes=nbytes,
        read_files=t.read_files,
        new_bytes=t.new_bytes,
        stored_bytes=t.stored_bytes,
        skipped=t.skipped,
        label=label,
        seconds=time.perf_counter() - t0,
    )


@dataclass
class TreeUpload:
    """What ``upload_tree`` stored: the root tree of a directory, and what it cost."""

    tree: str  # root tree key, hex
    files: int
    bytes: int
    read_files: int
    new_bytes: int
    stored_bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def upload_tree(
    ctx: Context,
    path: str | os.PathLike[str],
    *,
    files: Sequence[str] | None = None,
    skip_on_error: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
    check_paths: Callable[[Iterable[str]], None] | None = None,
) -> TreeUpload:
    """Store directory ``path`` (or only ``files`` under it) in the content store and return its
    root tree: everything a bundle needs except the bundle. ``upload`` and diamond splits use it.
    Everything it writes is content-addressed, so an interrupted call leaves only objects that a
    rerun deduplicates against (and ``gc`` removes if nothing ever references them).
    ``check_paths`` sees every file's bundle path before anything is written (and may raise)."""
    from datamon.api.remotesrc import is_remote

    if is_remote(path):  # s3://, gs://: streamed from the object store (api/remotesrc.py)
        from datamon.api.remotesrc import upload_remote_tree

        return upload_remote_tree(
            ctx,
            str(path),
            files=files,
            skip_on_error=skip_on_error,
            concurrency=concurrency,
            progress=progress,
        )
    root = check_root(path)
    errors = _Errors(skip_on_error)
    top = scan_listed(root, list(files), errors) if files is not None else scan(root, errors)
    progress = progress or NoProgress()
    all_files = list(top.iter_files())
    if check_paths is not None:
        check_paths(os.path.relpath(f.path, root).replace(os.sep, "/") for f in all_files)
    progress.start(len(all_files), sum(f.st.st_size for f in all_files))

    statcache = StatCache(ctx.state_dir)
    keys: dict[str, tuple[bytes, int]] = {}  # absolute path -> (file key, size)
    to_read = _answer_from_statcache(ctx, statcache, root, all_files, keys, progress)
    cas = ctx.cas
    workers = max(1, concurrency or os.cpu_count() or 2)
    with cas.writing(concurrency=workers) as ing:
        new_bytes = _ingest(ing, to_read, keys, errors, workers, cas.chunker.window, progress)
        tree_hex, nfiles, nbytes = _store_trees(ing, top, keys)
        stored = ing.writer.stored_bytes
    statcache.store(
        (f.path, stat_key(f.st), keys[f.path][0]) for f in to_read if f.path in keys and f.st.st_size
    )
    statcache.close()
    progress.finish()
    return TreeUpload(tree_hex, nfiles, nbytes, len(to_read), new_bytes, stored, errors.skipped)


def _answer_from_statcache(
    ctx: Context,
    statcache: StatCache,
    root: str,
    all_files: list[LocalFile],
    keys: dict[str, tuple[bytes, int]],
    progress: Progress,
) -> list[LocalFile]:
    """Fill ``keys`` for files whose stat is unchanged and whose object is still stored;
    return the files that must be read."""
    from datamon.cas.hashing import EMPTY_KEY

    cached = statcache.lookup_under(root)
    hits: dict[str, bytes] = {}
    to_read = []
    for f in all_files:
        if f.st.st_size == 0:
            keys[f.path] = (EMPTY_KEY, 0)
            continue
        c = cached.get(f.path)
        if c is not None and c[0] == stat_key(f.st):
            hits[f.path] = c[1]
        else:
            to_read.append(f)
    if hits:
        from datamon.cas.ingest import reusable

        present = reusable(ctx.meta, ctx.cas.blobs, list(set(hits.values())), set())
        by_path = {f.path: f for f in all_files}
        done_bytes = 0
        for p, k in hits.items():
            f = by_path[p]
            if k in present:
                keys[p] = (k, f.st.st_size)
                done_bytes += f.st.st_size
            else:
                to_read.append(f)
        progress.advance(len(all_files) - len(to_read), done_bytes)
    return to_read


def _ingest(
    ing: Ingester,
    to_read: list[LocalFile],
    keys: dict[str, tuple[bytes, int]],
    errors: _Errors,
    workers: int,
    window: int,
    progress: Progress,
) -> int:
    """Read and store every file in ``to_read``; returns the raw bytes newly stored."""
    small = sorted((f for f in to_read if f.st.st_size < window), key=lambda f: f.path)
    large = sorted((f for f in to_read if f.st.st_size >= window), key=lambda f: -f.st.st_size)
    batches: list[list[LocalFile]] = []
    cur: list[LocalFile] = []
    cur_bytes = 0
    for f in small:
        if cur and (cur_bytes + f.st.st_size > SMALL_BATCH_BYTES or len(cur) >= SMALL_BATCH_FILES):
            batches.append(cur)
            cur, cur_bytes = [], 0
        cur.append(f)
        cur_bytes += f.st.st_size
    if cur:
        batches.append(cur)

    def do_batch(batch: list[LocalFile]) -> int:
        datas: list[bytes] = []
        ok: list[LocalFile] = []
        new = 0
        for f in batch:
            try:
                fd = os.open(f.path, _O_READ)
            except OSError as e:
                errors(f.path, e)
                continue
            try:
                # at most one byte more than scanned: a file that grew since is streamed
                data = _read_upto(fd, f.st.st_size + 1)
                if len(data) > f.st.st_size:
                    os.lseek(fd, 0, os.SEEK_SET)
                    with os.fdopen(os.dup(fd), "rb") as fh:
                        r = ing.ingest_stream(fh)
                    keys[f.path] = (r.key, r.size)
                    new += r.new_bytes
                    progress.advance(0, r.size)
                    continue
            except OSError as e:
                errors(f.path, e)
                continue
            finally:
                os.close(fd)
            datas.append(data)
            ok.append(f)
        results = ing.ingest_buffers(datas)
        for f, r in zip(ok, results, strict=True):
            keys[f.path] = (r.key, r.size)
        progress.advance(len(batch), sum(len(d) for d in datas))
        return new + sum(r.new_bytes for r in results)

    def do_large(f: LocalFile) -> int:
        try:
            fd = os.open(f.path, _O_READ)
            with os.fdopen(fd, "rb") as fh:
                r = ing.ingest_stream(fh)
        except OSError as e:
            errors(f.path, e)
            progress.advance(1, 0)
            return 0
        keys[f.path] = (r.key, r.size)
        progress.advance(1, r.size)
        return r.new_bytes

    # Large files first: they are split across the compression pool, small batches fill
    # the gaps. At most ``workers`` file tasks run at once.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-read") as pool:
        futs: list[Future[int]] = [pool.submit(do_large, f) for f in large]
        futs += [pool.submit(do_batch, b) for b in batches]
        done, _ = wait(futs, return_when=FIRST_EXCEPTION)
        for fut in done:
            if fut.exception() is not None:
                for other in futs:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
        return sum(f.result() for f in futs)


def _store_trees(ing: Ingester, top: LocalDir, keys: dict[str, tuple[bytes, int]]) -> tuple[str, int, int]:
    """Encode every directory bottom-up and store the trees; returns (root key hex, files, bytes)."""
    from datamon.cas.hashing import ZERO_KEY, key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    objects: list[tuple[bytes, bytes, int]] = []
    done: dict[int, tuple[bytes, int, int]] = {}  # id(LocalDir) -> (tree key, files, bytes)

    def build(d: LocalDir) -> tuple[bytes, int, int]:
        entries: list[TreeEntry] = []
        nfiles = nbytes = 0
        for name, f in d.files.items():
            if f.path not in keys:  # skipped
                continue
            key, size = keys[f.path]
            entries.append(
                TreeEntry(name, EntryKind.FILE, f.st.st_mode & 0o7777, f.st.st_mtime_ns, size, key)
            )
            nfiles += 1
            nbytes += size
        for name, (target, st) in d.links.items():
            entries.append(
                TreeEntry(
                    name,
                    EntryKind.SYMLINK,
                    st.st_mode & 0o7777,
                    st.st_mtime_ns,
                    len(os.fsencode(target)),
                    ZERO_KEY,
                    target,
                )
            )
        for name, sub in d.dirs.items():
            k, n, b = done.pop(id(sub))
            entries.append(TreeEntry(name, EntryKind.DIR, sub.st.st_mode & 0o7777, sub.st.st_mtime_ns, b, k))
            nfiles += n
            nbytes += b
        raw = encode_tree(entries)
        key = key_of(raw)
        objects.append((key, raw, Kind.TREE))
        return key, nfiles, nbytes

    # post-order with an explicit stack (children before their parent, in name order), so a
    # tree of any depth works
    stack: list[tuple[LocalDir, bool]] = [(top, False)]
    while stack:
        d, expanded = stack.pop()
        if expanded:
            done[id(d)] = build(d)
            continue
        stack.append((d, True))
        stack.extend((sub, False) for sub in reversed(d.dirs.values()))
    root_key, nfiles, nbytes = done.pop(id(top))
    ing.store_objects(objects)
    return root_key.hex(), nfiles, nbytes
