"""Uploading from an object store: ``--path s3://bucket/prefix`` or ``gs://bucket/prefix``.

The objects below the prefix are listed through fsspec and streamed into the content store: no
local copy, bounded memory and concurrency. Small objects are fetched in batches (at most
``SMALL_BATCH_BYTES`` or ``SMALL_BATCH_FILES`` per batch, with at most ``FETCH_CONCURRENCY``
requests in flight per batch) and stored with one index query per batch; an object of a
chunking window or more is read as a stream, a window at a time. At most ``concurrency`` batches
or streams are in flight, so memory stays near ``concurrency × (SMALL_BATCH_BYTES + 2 windows)``
whatever the source's size.

The tree is the object keys split at ``/``: files have mode 0644 and the object's last-modified
time; directories (which object stores do not have) mode 0755 and the newest time below them.
So the tree of a prefix is a function of the listing alone, and splits of one source merge into
exactly the tree of a single upload of the whole prefix. Keys ending in ``/`` (folder markers)
are skipped; a key whose name is not a valid entry name (``a//b``, ``..``) is an error, or skipped
with ``skip_on_error``.

Source URLs take the connection settings of blob URLs (``?endpoint_url=…&region=…``,
``datamon.cas.blobstore``); credentials are the storage libraries' own (``AWS_*`` variables,
``~/.aws``, Google application default credentials), independent of the context's blob store.
"""

from __future__ import annotations

import calendar
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from datamon.errors import NotFound, StoreUnavailable, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.progress import Progress
    from datamon.api.upload import TreeUpload
    from datamon.cas.ingest import Ingester

SCHEMES: Final = ("s3", "s3a", "gs", "gcs", "memory")
SMALL_BATCH_BYTES: Final = 8 << 20
SMALL_BATCH_FILES: Final = 256
FETCH_CONCURRENCY: Final = 16
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755


def is_remote(path: object) -> bool:
    """Whether ``path`` names an object-store source (``s3://``, ``gs://``, ``memory://``)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() in SCHEMES


@dataclass(frozen=True)
class RemoteFile:
    """One object below the source prefix: its relative path (``/``-separated), size and
    last-modified time."""

    rel: str
    size: int
    mtime_ns: int


@dataclass
class Source:
    url: str
    fs: Any
    root: str  # the prefix as the filesystem names it, without a trailing slash
    shown: str  # the URL without secrets

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel


def open_source(url: str) -> Source:
    """The fsspec filesystem and prefix of a source URL. ``UsageError`` for a malformed URL,
    ``StoreUnavailable`` if its library is missing."""
    import fsspec.core

    from datamon.cas.blobstore import _fs_kwargs, _scheme, _split_query, redact_url

    shown = redact_url(url)
    fs_url, query = _split_query(url)
    try:
        fs, root = fsspec.core.url_to_fs(fs_url, **_fs_kwargs(url, _scheme(fs_url), query, {}))
    except (ImportError, ValueError, TypeError) as e:
        raise StoreUnavailable(
            f"cannot open source {shown}: {e}",
            "install the extra for it: pip install 'datamon[s3]' or '[gcs]'",
        ) from e
    return Source(url, fs, root.rstrip("/"), shown)


def mtime_ns(info: dict[str, Any]) -> int:
    """Last-modified time of an object from an fsspec ``info`` (S3 ``LastModified``, GCS
    ``updated``, memory ``created``), in ns since the epoch; 0 if it has none."""
    for key in ("LastModified", "mtime", "updated", "last_modified", "created", "timeCreated"):
        v = info.get(key)
        if v is None or v == "":
            continue
        if isinstance(v, str):
            try:
                v = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(v, datetime):
            if v.tzinfo is None:
                seconds = calendar.timegm(v.timetuple())
            else:
                seconds = calendar.timegm(v.utctimetuple())
            return seconds * 10**9 + v.microsecond * 1000
        if isinstance(v, int | float):
            return int(v * 10**9) if v < 10**12 else int(v)
    return 0


def list_source(src: Source) -> list[RemoteFile]:
    """Every object below the prefix, sorted by path. ``NotFound`` if there is none."""
    try:
        found = src.fs.find(src.root, detail=True)
    except FileNotFoundError:
        found = {}
    except PermissionError as e:
        raise StoreUnavailable(
            f"access to source {src.shown} was refused: {e}", "check the storage library's credentials"
        ) from e
    out = []
    base = src.root.lstrip("/")
    for path, info in found.items():
        if info.get("type") == "directory" or path.endswith("/"):
            continue
        p = path.lstrip("/")
        if base:
            if not p.startswith(base + "/"):
                continue
            rel = p[len(base) + 1 :]
        else:
            rel = p
        out.append(RemoteFile(rel, int(info.get("size") or 0), mtime_ns(info)))
    if not out:
        raise NotFound(f"no objects found under {src.shown}", "check the bucket and prefix of --path")
    out.sort(key=lambda f: f.rel)
    return out


def select(listed: Sequence[RemoteFile], files: Sequence[str], on_error: Any) -> list[RemoteFile]:
    """The objects of ``listed`` named by ``files`` (relative paths; a path that is a "folder"
    selects everything below it)."""
    by_rel = {f.rel: f for f in listed}
    rels = sorted(by_rel)
    import bisect

    chosen: dict[str, RemoteFile] = {}
    for raw in files:
        rel = "/".join(p for p in raw.strip().split("/") if p not in ("", "."))
        if not rel:
            continue
        if ".." in rel.split("/"):
            raise UsageError(f"listed path {raw!r} escapes the source", "list paths relative to --path")
        if rel in by_rel:
            chosen[rel] = by_rel[rel]
            continue
        i = bisect.bisect_left(rels, rel + "/")
        below = []
        while i < len(rels) and rels[i].startswith(rel + "/"):
            below.append(rels[i])
            i += 1
        if not below:
            on_error(rel, FileNotFoundError(2, "No such object"))
        for r in below:
            chosen[r] = by_rel[r]
    return sorted(chosen.values(), key=lambda f: f.rel)


@dataclass
class _Dir:
    files: dict[str, RemoteFile] = field(default_factory=dict)
    dirs: dict[str, _Dir] = field(default_factory=dict)


def _shape(entries: Sequence[RemoteFile], on_error: Any) -> _Dir:
    from datamon.cas.tree import validate_name

    top = _Dir()
    for f in entries:
        parts = f.rel.split("/")
        try:
            for p in parts:
                validate_name(p)
        except ValueError:
            on_error(f.rel, OSError(22, "not a valid file name in a bundle"))
            continue
        d = top
        ok = True
        for p in parts[:-1]:
            if p in d.files:
                ok = False
                break
            d = d.dirs.setdefault(p, _Dir())
        if not ok or parts[-1] in d.dirs:
            on_error(f.rel, OSError(17, "both an object and a folder of objects"))
            continue
        d.files[parts[-1]] = f
    return top


def upload_remote_tree(
    ctx: Context,
    url: str,
    *,
    files: Sequence[str] | None = None,
    entries: Sequence[RemoteFile] | None = None,
    skip_on_error: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> TreeUpload:
    """``upload_tree`` for an object-store prefix: every object below ``url`` (only ``files``, or
    exactly ``entries`` as listed before, if given) into the content store; returns the root
    tree. Raises ``NotFound`` if nothing is there, ``UsageError`` for an unreadable object unless
    ``skip_on_error``."""
    from datamon.api.progress import NoProgress
    from datamon.api.upload import TreeUpload, _Errors

    src = open_source(url)
    errors = _Errors(skip_on_error)
    if entries is None:
        listed = list_source(src)
        entries = select(listed, files, errors) if files is not None else listed
    top = _shape(entries, errors)
    skipped = {p for p, _ in errors.skipped}
    wanted = [f for f in entries if f.rel not in skipped]
    progress = progress or NoProgress()
    progress.start(len(wanted), sum(f.size for f in wanted))
    workers = max(1, concurrency or os.cpu_count() or 2)
    keys: dict[str, tuple[bytes, int]] = {}
    cas = ctx.cas
    with cas.writing(concurrency=workers) as ing:
        new_bytes = _ingest(src, ing, wanted, keys, errors, workers, cas.chunker.window, progress)
        tree, nfiles, nbytes = _store_trees(ing, top, keys)
        stored = ing.writer.stored_bytes
    progress.finish()
    return TreeUpload(tree, nfiles, nbytes, len(keys), new_bytes, stored, errors.skipped)


def _ingest(
    src: Source,
    ing: Ingester,
    wanted: list[RemoteFile],
    keys: dict[str, tuple[bytes, int]],
    errors: Any,
    workers: int,
    window: int,
    progress: Progress,
) -> int:
    small = [f for f in wanted if f.size < window]
    large = sorted((f for f in wanted if f.size >= window), key=lambda f: -f.size)
    batches: list[list[RemoteFile]] = []
    cur: list[RemoteFile] = []
    cur_bytes = 0
    for f in small:
        if cur and (cur_bytes + f.size > SMALL_BATCH_BYTES or len(cur) >= SMALL_BATCH_FILES):
            batches.append(cur)
            cur, cur_bytes = [], 0
        cur.append(f)
        cur_bytes += f.size
    if cur:
        batches.append(cur)
    is_async = bool(getattr(src.fs, "async_impl", False))

    def fetch(batch: list[RemoteFile]) -> dict[str, Any]:
        paths = [src.path(f.rel) for f in batch]
        kw: dict[str, Any] = {"on_error": "return"}
        if is_async:
            kw["batch_size"] = FETCH_CONCURRENCY
        got = src.fs.cat(paths, **kw)
        if len(paths) == 1 and not isinstance(got, dict):
            got = {paths[0]: got}
        return {p.lstrip("/"): v for p, v in got.items()}

    def do_batch(batch: list[RemoteFile]) -> int:
        got = fetch(batch)
        datas: list[bytes] = []
        ok: list[RemoteFile] = []
        for f in batch:
            data = got.get(src.path(f.rel).lstrip("/"))
            if not isinstance(data, bytes | bytearray):
                err = data if isinstance(data, OSError) else OSError(5, str(data or "not read"))
                errors(f"{src.shown.split('?')[0].rstrip('/')}/{f.rel}", err)
                continue
            datas.append(bytes(data))
            ok.append(f)
        results = ing.ingest_buffers(datas)
        for f, r in zip(ok, results, strict=True):
            keys[f.rel] = (r.key, r.size)
        progress.advance(len(batch), sum(len(d) for d in datas))
        return sum(r.new_bytes for r in results)

    def do_large(f: RemoteFile) -> int:
        try:
            with src.fs.open(src.path(f.rel), "rb", block_size=min(window, 16 << 20)) as fh:
                r = ing.ingest_stream(fh)
        except OSError as e:
            errors(f"{src.shown.split('?')[0].rstrip('/')}/{f.rel}", e)
            progress.advance(1, 0)
            return 0
        keys[f.rel] = (r.key, r.size)
        progress.advance(1, r.size)
        return r.new_bytes

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-fetch") as pool:
        futs: list[Future[int]] = [pool.submit(do_large, f) for f in large]
        futs += [pool.submit(do_batch, b) for b in batches]
        done, _ = wait(futs, return_when=FIRST_EXCEPTION)
        for fut in done:
            if fut.exception() is not None:
                for other in futs:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
        return sum(f.result() for f in futs)


def _store_trees(ing: Ingester, top: _Dir, keys: dict[str, tuple[bytes, int]]) -> tuple[str, int, int]:
    """Encode every directory bottom-up (no recursion); returns (root key hex, files, bytes)."""
    from datamon.cas.hashing import key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    objects: list[tuple[bytes, bytes, int]] = []
    done: dict[int, tuple[bytes, int, int, int]] = {}  # id(_Dir) -> (key, files, bytes, mtime)
    stack: list[tuple[_Dir, str, bool]] = [(top, "", False)]
    while stack:
        d, path, expanded = stack.pop()
        if not expanded:
            stack.append((d, path, True))
            stack.extend((sub, posixpath.join(path, n), False) for n, sub in d.dirs.items())
            continue
        entries: list[TreeEntry] = []
        nfiles = nbytes = newest = 0
        for name, f in d.files.items():
            if f.rel not in keys:  # skipped
                continue
            key, size = keys[f.rel]
            entries.append(TreeEntry(name, EntryKind.FILE, FILE_MODE, f.mtime_ns, size, key))
            nfiles += 1
            nbytes += size
            newest = max(newest, f.mtime_ns)
        for name, sub in d.dirs.items():
            k, n, b, t = done.pop(id(sub))
            if n == 0:  # every object below it was skipped
                continue
            entries.append(TreeEntry(name, EntryKind.DIR, DIR_MODE, t, b, k))
            nfiles += n
            nbytes += b
            newest = max(newest, t)
        raw = encode_tree(entries)
        key = key_of(raw)
        objects.append((key, raw, Kind.TREE))
        done[id(d)] = (key, nfiles, nbytes, newest)
    root, nfiles, nbytes, _ = done.pop(id(top))
    ing.store_objects(objects)
    return root.hex(), nfiles, nbytes
