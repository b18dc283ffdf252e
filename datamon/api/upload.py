"""``upload``: a local directory becomes a bundle.

The tree is walked a directory at a time (``api/uploadwalk.py``, with ``api/dirwalk.py``
running the workers): each directory is listed
(``lstat`` of every entry) and its small files read, hashed and compressed by a worker
process or thread (``api/dirscan.py``), then this process deduplicates and packs the new
objects and, as soon as a directory's subdirectories are done, encodes and stores its tree.
Memory holds the directories on the path being walked and the messages in flight, never
one object per file of the whole tree: it is the same at 2M files as at 200k.

The stat cache (``api/statcache.py``) makes a re-upload cheap:

* a file whose ``lstat`` is unchanged keeps its key without being read — once the object
  index confirms the key is stored (as a chunk of that size, or a file map), or once the
  tree the cache recorded for its directory (which names the key) is confirmed as below;
* a directory whose files, symlinks and subdirectories' results are all unchanged (same
  *signature*) keeps its tree without a file being looked at beyond its ``lstat``. The
  cached tree key is reused only if it is indexed as a tree (looked up, with used marks
  against a concurrent gc, in batches before the bundle is written), if the session that
  recorded it completed, and under the same *scope*: blob store, metadata database and
  index epoch (``cas.ingest.index_epoch``, changed by ``verify --repair`` and ``admin
  reindex``, which can leave a tree indexed without everything below it). If a cached tree
  is not confirmed, the walk starts again without directory reuse (every cached file key is
  then checked one by one). What remains trusted is written in docs/security.md.

Order of writes (what makes a crash harmless): packs → index rows (both inside
``ContentStore.writing``; rows commit in the order packs were sealed, and a tree is written
after every object below it) → bundle row → label move. An interrupted upload leaves only
unreferenced objects; rerunning it deduplicates against everything that landed.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datamon.api.localtree import LocalDir, check_root, scan_listed
from datamon.api.progress import NoProgress, Progress
from datamon.api.refs import parent_id
from datamon.api.statcache import StatCache, stat_key
from datamon.api.uploadwalk import GC_THRESHOLD, _Errors, _Restart, _Walk
from datamon.cas.hashing import key_of
from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.walkindex import DirReports
    from datamon.meta.records import BundleRecord


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
    reused_dirs: int = 0  # directories whose tree the stat cache answered (nothing below looked at)


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
    ``concurrency`` is the number of workers listing and reading (default: one per CPU).
    Raises ``NotFound`` for an unknown repo or parent. Safe to interrupt and rerun.
    """
    from datamon.api.uploadattrs import AttrPlan

    t0 = time.perf_counter()
    ctx.meta.get_repo(repo)
    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    parent_ids = [parent_id(ctx, repo, p) for p in parents] if parents else None
    # the attribute rows (a million lines) live through the whole upload: the collector's
    # quiet mode (as for the walk) keeps its scans from going over them again and again
    _quiet_gc()
    plan: AttrPlan | None = None
    try:
        local = files is None and not _is_remote(path)
        plan = AttrPlan(ctx, repo, path, meta=meta, attributes=attributes, parents=parent_ids, local=local)
        parent_ids = plan.parents
        t = upload_tree(
            ctx,
            path,
            files=files,
            skip_on_error=skip_on_error,
            concurrency=concurrency,
            progress=progress,
            check_paths=plan.check_paths,
            indexer=plan.reports,
        )
        tree_hex, nfiles, nbytes = t.tree, t.files, t.bytes

        from datamon.api.bundles import make_bundle

        if parent_ids is None:
            latest = ctx.meta.latest_bundle(repo)
            parent_ids = [latest.id] if latest else []
        who = ctx.contributor
        bundle_meta, attrs_key = plan.finish(tree_hex, parent_ids)
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
        plan.index(bundle)  # a bundle with attributes is indexed before its row is written
        ctx.meta.add_bundle(bundle)
    finally:
        if plan is not None:
            plan.close()
        _restore_gc()
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
        reused_dirs=t.reused_dirs,
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
    reused_dirs: int = 0  # directories whose tree the stat cache answered


def upload_tree(
    ctx: Context,
    path: str | os.PathLike[str],
    *,
    files: Sequence[str] | None = None,
    skip_on_error: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
    check_paths: Callable[[Callable[[Iterable[str]], set[str]]], None] | None = None,
    indexer: DirReports | None = None,
) -> TreeUpload:
    """Store directory ``path`` (or only ``files`` under it) in the content store and return its
    root tree: everything a bundle needs except the bundle. ``upload`` and diamond splits use it.
    Everything it writes is content-addressed, so an interrupted call leaves only objects that a
    rerun deduplicates against (and ``gc`` removes if nothing ever references them).
    ``check_paths`` is called before anything is written (and may raise) with a function that
    tells which of the bundle paths it is given are not files of the upload. ``indexer`` (if
    given) indexes each directory as the walk finishes it (``api/walkindex.py``)."""
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
    local_top = scan_listed(root, list(files), errors) if files is not None else None
    if check_paths is not None:
        check_paths(_missing_of(root, local_top))
    progress = progress or NoProgress()
    progress.start(0, 0)

    statcache = StatCache(ctx.state_dir)
    cas = ctx.cas
    workers = max(1, concurrency or os.cpu_count() or 2)
    scope = _scope(ctx)
    # The writes (index rows, the bundle) need the full metadata store: import it while the
    # walk starts rather than before (a few hundred ms of a re-upload).
    threading.Thread(target=_import_store, name="datamon-import", daemon=True).start()
    _quiet_gc()
    try:
        with cas.writing(concurrency=workers) as ing:

            def new_walk(use_dirs: bool) -> _Walk:
                return _Walk(
                    ctx, ing, statcache, root, local_top, errors, workers, progress, scope,
                    use_dirs=use_dirs, indexer=indexer,
                )  # fmt: skip

            walk = new_walk(True)
            try:
                tree_key, nfiles, nbytes = walk.run()
            except _Restart:
                errors.skipped.clear()
                first = walk
                if indexer is not None:
                    indexer.restart()
                walk = new_walk(False)
                walk.new_bytes = first.new_bytes
                tree_key, nfiles, nbytes = walk.run()
            stored = ing.writer.stored_bytes
        if walk.learned:
            statcache.store(walk.learned)
        statcache.finish_session(walk.session)
    finally:
        statcache.close()
        _restore_gc()
    progress.finish()
    return TreeUpload(
        tree_key.hex(),
        nfiles,
        nbytes,
        walk.read_files,
        walk.new_bytes,
        stored,
        errors.skipped,
        walk.reused_dirs,
    )


def _missing_of(root: str, local_top: LocalDir | None) -> Callable[[Iterable[str]], set[str]]:
    """A function telling which of the bundle paths it is given are not files an upload of
    ``root`` (or of the files listed in ``local_top``) will hold, looked at before anything is
    read (only when attributes or a schema need it)."""
    if local_top is not None:
        present = {os.path.relpath(f.path, root).replace(os.sep, "/") for f in local_top.iter_files()}
        return lambda paths: {p for p in paths if p not in present}
    from datamon.api.attrfiles import missing_files

    return lambda paths: missing_files(root, paths)


def _is_remote(path: str | os.PathLike[str]) -> bool:
    from datamon.api.remotesrc import is_remote

    return is_remote(path)


def _import_store() -> None:
    try:
        import datamon.meta.store  # noqa: F401
    except Exception:
        pass


_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


def _quiet_gc() -> None:
    """Make the cyclic garbage collector cheap for a walk: the objects that exist now (the
    client's modules, SQLAlchemy's) are frozen out of its scans, and young collections are
    rarer (a walk allocates millions of short-lived objects; each collection of an older
    generation would scan every live object). Measured: about a fifth of the CPU of an
    upload of 200,000 files. Uploads running at once in threads share one setting: the last
    to finish puts the collector back."""
    global _gc_users, _gc_saved
    with _gc_lock:
        _gc_users += 1
        if _gc_users == 1:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_gc_saved[0], GC_THRESHOLD), _gc_saved[1], _gc_saved[2])


def _restore_gc() -> None:
    global _gc_users
    with _gc_lock:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


def _scope(ctx: Context) -> str:
    """What a cached tree was built against: the blob store, the metadata database and the
    index epoch. A tree cached under another scope is not reused."""
    from datamon.cas.ingest import index_epoch

    blobs = ctx.cas.blobs
    text = f"{blobs.url}\n{ctx.meta_url}\n{index_epoch(blobs)}"
    return key_of(text.encode("utf-8", "surrogateescape")).hex()[:32]


__all__ = ["TreeUpload", "UploadResult", "stat_key", "upload", "upload_tree"]
