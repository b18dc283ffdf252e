"""Diffs between bundles, and between a local directory and a bundle; ``update`` applies one.

A change is ``A`` (only in the newer side), ``D`` (only in the older side) or ``U``
(different content, kind, executable bit or link target). Files, symlinks and empty
directories are reported; identical subtrees (same tree key) are skipped unread.
For a directory compared with a bundle, the directory is the older side: ``A`` is what
``update`` would create, ``D`` what it would delete.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from datamon.api.bundles import Descend, Entry, Step, flatten, read_tree_once, resolve
from datamon.api.statcache import StatCache, stat_key

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Change:
    op: str  # "A", "U" or "D"
    path: str
    old: TreeEntry | None
    new: TreeEntry | None

    def as_dict(self) -> dict[str, object]:
        e = self.new or self.old
        assert e is not None
        from datamon.cas.hashing import ZERO_KEY

        kind = e.kind.name.lower()
        row: dict[str, object] = {"op": self.op, "path": self.path, "kind": kind, "size": e.size}
        for side, entry in (("old", self.old), ("new", self.new)):  # both sides, as Datamon's diff showed
            row[f"{side}_size"] = None if entry is None else entry.size
            # a local file of another size than the bundle's is not hashed: no key to show
            known = entry is not None and entry.is_file and entry.key != ZERO_KEY
            row[f"{side}_key"] = entry.key.hex() if entry is not None and known else None
        return row


def _same(a: TreeEntry, b: TreeEntry) -> bool:
    if a.kind != b.kind:
        return False
    if a.is_symlink:
        return a.target == b.target
    if a.is_dir:
        return a.key == b.key
    return a.key == b.key and a.size == b.size and (a.mode & 0o111) == (b.mode & 0o111)


def _children(ctx: Context, e: TreeEntry | None) -> dict[str, TreeEntry]:
    if e is None or not e.is_dir:
        return {}
    return {c.name: c for c in read_tree_once(ctx, e.key)}


def _leaves(
    ctx: Context, e: TreeEntry, path: str, dirs: list[tuple[str, bytes]] | None = None
) -> Iterator[tuple[str, TreeEntry]]:
    """Files, symlinks and empty directories at or under ``e`` (depth-first, name order);
    with ``dirs``, every directory's (path, tree key) is appended to it as it is walked."""
    return flatten(_leaves_step(ctx, e, path, dirs))


def _leaves_step(
    ctx: Context, e: TreeEntry, path: str, dirs: list[tuple[str, bytes]] | None = None
) -> Step[tuple[str, TreeEntry]]:
    if not e.is_dir:
        yield path, e
        return
    if dirs is not None:
        dirs.append((path, e.key))
    kids = _children(ctx, e)
    if not kids:
        yield path + "/", e
    for name, c in sorted(kids.items()):
        yield Descend(_leaves_step(ctx, c, f"{path}/{name}", dirs))


def diff_entries(
    ctx: Context, old: TreeEntry | None, new: TreeEntry | None, path: str = ""
) -> Iterator[Change]:
    """Changes from ``old`` to ``new`` (directory entries or None), paths under ``path``."""
    return flatten(_diff_step(ctx, old, new, path))


def _diff_step(ctx: Context, old: TreeEntry | None, new: TreeEntry | None, path: str) -> Step[Change]:
    if old is not None and new is not None and old.is_dir and new.is_dir:
        if old.key == new.key:
            return
        a, b = _children(ctx, old), _children(ctx, new)
        if not a and not b:
            return
        for name in sorted(set(a) | set(b)):
            sub = f"{path}/{name}" if path else name
            yield Descend(_diff_step(ctx, a.get(name), b.get(name), sub))
        if not a and b and path:
            yield Change("D", path + "/", old, None)
        if a and not b and path:
            yield Change("A", path + "/", None, new)
        return
    if old is not None and new is not None and not old.is_dir and not new.is_dir:
        if not _same(old, new):
            yield Change("U", path, old, new)
        return
    if old is not None:
        for p, e in _leaves(ctx, old, path):
            if p:
                yield Change("D", p.lstrip("/"), e, None)
    if new is not None:
        for p, e in _leaves(ctx, new, path):
            if p:
                yield Change("A", p.lstrip("/"), None, e)


def _root(b_tree: str, mtime: int) -> TreeEntry:
    from datamon.cas.tree import EntryKind, TreeEntry

    return TreeEntry("", EntryKind.DIR, 0o755, mtime, 0, bytes.fromhex(b_tree))


def diff_bundles(ctx: Context, repo: str, old: str, new: str) -> list[Change]:
    """Changes from bundle ``old`` to bundle ``new`` (ids, prefixes or ``label:NAME``)."""
    a = _ref(ctx, repo, old)
    b = _ref(ctx, repo, new)
    return list(diff_entries(ctx, _root(a.tree, 0), _root(b.tree, 0)))


def _ref(ctx: Context, repo: str, ref: str):  # type: ignore[no-untyped-def]
    """A bundle named by an id prefix, or by a label (``label:NAME`` or a bare non-hex name)."""
    import re

    if ref.startswith("label:"):
        return resolve(ctx, repo, label=ref[6:])
    if re.fullmatch(r"[0-9a-fA-F]{6,64}", ref):
        return resolve(ctx, repo, bundle=ref)
    return resolve(ctx, repo, label=ref)


class _LocalView:
    """A local directory seen as tree entries; file keys computed only when needed.

    Directories are compared with the bundle one at a time: the directory digest recorded by
    the download (``api/downloads.py``) is checked first, and only a directory that does not
    match it is compared entry by entry, with the stat cache's keys of that directory."""

    def __init__(self, ctx: Context, root: str) -> None:
        from datamon.api.downloads import Registry

        self.root = root
        self.cache = StatCache(ctx.state_dir)
        self.registry = Registry(ctx.state_dir)
        self._known: dict[str, dict[str, tuple[tuple[int, int, int, int], bytes]]] = {}
        self.learned: list[tuple[str, tuple[int, int, int, int], bytes]] = []
        self.touched: list[tuple[str, bytes]] = []  # (directory, tree) compared or changed here
        self.fast_dirs = 0  # directories whose digest matched (statistics, tests)
        self.slow_dirs = 0

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def entries(self, rel: str) -> dict[str, tuple[os.DirEntry[str], os.stat_result]]:
        out = {}
        try:
            for e in os.scandir(self.path(rel)):
                out[e.name] = (e, e.stat(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def digest(self, rel: str) -> tuple[bytes, bool] | None:
        """(digest of directory ``rel`` as ``dir_digest`` defines it, whether it has
        subdirectories); None if it cannot be listed. One ``lstat`` per file, none per
        subdirectory (the entry's type from the directory listing)."""
        from datamon.api.downloads import DIR_ITEM, LINK_ITEM, OTHER_ITEM, dir_digest

        items: list[tuple[str, int, int, int, int]] = []
        add = items.append
        subdirs = False
        try:
            # listed through an fd: each entry's lstat is then relative to it (``fstatat``),
            # a sixth cheaper than resolving the whole path again for every file
            fd = os.open(self.path(rel), _DIR_FLAGS)
        except OSError:
            return None
        try:
            with os.scandir(fd) as it:
                for de in it:
                    if de.is_file(follow_symlinks=False):
                        st = de.stat(follow_symlinks=False)
                        add((de.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                    elif de.is_dir(follow_symlinks=False):
                        add((de.name, DIR_ITEM, 0, 0, 0))
                        subdirs = True
                    elif de.is_symlink():
                        add((f"{de.name}\0{os.readlink(de.name, dir_fd=fd)}", LINK_ITEM, 0, 0, 0))
                    else:
                        add((de.name, OTHER_ITEM, 0, 0, 0))
        except OSError:
            return None
        finally:
            os.close(fd)
        return dir_digest(items), subdirs

    def recorded(self, rel: str) -> tuple[bytes, bytes] | None:
        return self.registry.get_dir(self.root, rel)

    def _known_in(self, directory: str) -> dict[str, tuple[tuple[int, int, int, int], bytes]]:
        """The stat cache's entries of the files directly in ``directory`` (a few kept)."""
        got = self._known.get(directory)
        if got is None:
            if len(self._known) >= 8:
                self._known.pop(next(iter(self._known)))
            prefix = directory.rstrip("/") + "/"
            got = {p: v for p, v in self.cache.lookup_under(directory).items() if "/" not in p[len(prefix) :]}
            self._known[directory] = got
        return got

    def file_key(self, path: str, st: os.stat_result) -> bytes:
        from datamon.cas.hashing import EMPTY_KEY, Hasher

        if st.st_size == 0:
            return EMPTY_KEY
        sk = stat_key(st)
        hit = self._known_in(os.path.dirname(path)).get(path)
        if hit is not None and hit[0] == sk:
            return hit[1]
        h = Hasher()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        key = h.digest()
        self.learned.append((path, sk, key))
        return key

    def record_touched(self) -> None:
        """After an update: record the digest of every directory compared or changed, as the
        bundle's tree there (the directory now holds exactly that)."""
        rows = []
        for rel, tree in self.touched:
            got = self.digest(rel)
            if got is not None:
                rows.append((rel, tree, got[0]))
        self.registry.put_dirs(self.root, rows)

    def close(self) -> None:
        self.cache.store(self.learned)
        self.cache.close()
        self.registry.close()


def _local_entry(
    view: _LocalView, de: os.DirEntry[str], st: os.stat_result, want: TreeEntry | None
) -> TreeEntry:
    from datamon.cas.hashing import ZERO_KEY
    from datamon.cas.tree import EntryKind, TreeEntry

    mode = st.st_mode & 0o7777
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(de.path)
        return TreeEntry(de.name, EntryKind.SYMLINK, mode, st.st_mtime_ns, len(target), ZERO_KEY, target)
    if stat.S_ISDIR(st.st_mode):
        return TreeEntry(de.name, EntryKind.DIR, mode, st.st_mtime_ns, 0, ZERO_KEY)
    # Hash only when the bundle has a file of the same size here: otherwise it differs anyway.
    if want is not None and want.is_file and want.size == st.st_size:
        key = view.file_key(de.path, st)
    else:
        key = ZERO_KEY
    return TreeEntry(de.name, EntryKind.FILE, mode, st.st_mtime_ns, st.st_size, key)


def _diff_local(ctx: Context, view: _LocalView, rel: str, tree: TreeEntry) -> Iterator[Change]:
    return flatten(_diff_dir_step(ctx, view, rel, tree))


def _diff_dir_step(ctx: Context, view: _LocalView, rel: str, tree: TreeEntry) -> Step[Change]:
    """Changes turning local directory ``rel`` into directory entry ``tree``: through the
    recorded digest when it matches (no file compared), else entry by entry."""
    from datamon.errors import DatamonError

    rec = view.recorded(rel)
    got = view.digest(rel) if rec is not None else None
    if got is not None and rec is not None and rec[1] == got[0]:
        old_key, has_subdirs = rec[0], got[1]
        if old_key == tree.key:  # exactly the bundle's tree at this level
            view.fast_dirs += 1
            if has_subdirs:
                for e in read_tree_once(ctx, tree.key):
                    if e.is_dir:
                        sub = f"{rel}/{e.name}" if rel else e.name
                        yield Descend(_diff_dir_step(ctx, view, sub, e))
            return
        try:
            old = {e.name: e for e in read_tree_once(ctx, old_key)}
        except DatamonError:
            old = None  # the recorded tree is gone (gc): compare entry by entry
        if old is not None:
            view.fast_dirs += 1
            view.touched.append((rel, tree.key))
            yield Descend(_diff_known_step(ctx, view, rel, old, tree))
            return
    view.slow_dirs += 1
    view.touched.append((rel, tree.key))
    yield Descend(_diff_local_step(ctx, view, rel, tree))


def _diff_known_step(
    ctx: Context, view: _LocalView, rel: str, old: dict[str, TreeEntry], tree: TreeEntry
) -> Step[Change]:
    """Directory ``rel`` holds exactly tree ``old`` at this level (its digest says so): its
    changes are those from ``old`` to ``tree`` there; subdirectories are compared in turn."""
    new = _children(ctx, tree)
    for name in sorted(set(old) | set(new)):
        sub = f"{rel}/{name}" if rel else name
        yield from _compare_entry(ctx, view, sub, old.get(name), new.get(name))


def _diff_local_step(ctx: Context, view: _LocalView, rel: str, tree: TreeEntry) -> Step[Change]:
    local = view.entries(rel)
    bundle = _children(ctx, tree)
    for name in sorted(set(local) | set(bundle)):
        sub = f"{rel}/{name}" if rel else name
        want = bundle.get(name)
        have = None
        if name in local:
            de, st = local[name]
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            have = _local_entry(view, de, st, want)
        yield from _compare_entry(ctx, view, sub, have, want)


def _compare_entry(
    ctx: Context, view: _LocalView, sub: str, have: TreeEntry | None, want: TreeEntry | None
) -> Step[Change]:
    """The changes at path ``sub`` from the local entry ``have`` to the bundle's ``want``
    (either may be missing): two directories are compared in turn, two files by content."""
    if have is not None and want is not None and have.is_dir and want.is_dir:
        yield Descend(_diff_dir_step(ctx, view, sub, want))
        return
    if have is not None and want is not None and not have.is_dir and not want.is_dir:
        if not _same(have, want):
            yield Change("U", sub, have, want)
        return
    if have is not None:
        if have.is_dir:
            leaves = list(_local_leaves(view, sub))
            for p, e in leaves:
                yield Change("D", p, e, None)
            if leaves and leaves[-1][0] != sub + "/":
                yield Change("D", sub + "/", have, None)  # update removes the directory too
        else:
            yield Change("D", sub, have, None)
    if want is not None:
        for p, e in _leaves(ctx, want, sub, view.touched):
            yield Change("A", p, None, e)


def _local_leaves(view: _LocalView, rel: str) -> Iterator[tuple[str, TreeEntry]]:
    return flatten(_local_leaves_step(view, rel))


def _local_leaves_step(view: _LocalView, rel: str) -> Step[tuple[str, TreeEntry]]:
    kids = view.entries(rel)
    if not kids:
        from datamon.cas.hashing import ZERO_KEY
        from datamon.cas.tree import EntryKind, TreeEntry

        yield rel + "/", TreeEntry(os.path.basename(rel), EntryKind.DIR, 0o755, 0, 0, ZERO_KEY)
    for name, (de, st) in sorted(kids.items()):
        sub = f"{rel}/{name}"
        if stat.S_ISDIR(st.st_mode):
            yield Descend(_local_leaves_step(view, sub))
        else:
            yield sub, _local_entry(view, de, st, None)


def diff_destination(
    ctx: Context,
    repo: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
) -> list[Change]:
    """Changes that would turn directory ``destination`` into the bundle."""
    b, view = _open_destination(ctx, repo, destination, bundle=bundle, label=label)
    try:
        return list(_diff_local(ctx, view, "", _root(b.tree, b.created_ns)))
    finally:
        view.close()


def _open_destination(
    ctx: Context,
    repo: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
) -> tuple[BundleRecord, _LocalView]:
    from datamon.errors import UsageError

    dest = os.path.abspath(os.fspath(destination))
    if not os.path.isdir(dest):
        raise UsageError(
            f"destination {destination!r} is not a directory", "give the directory of a download"
        )
    b = resolve(ctx, repo, bundle=bundle, label=label)
    return b, _LocalView(ctx, dest)


CHANGES_KEPT = 20_000  # an update with more changes streams them (``update``)


@dataclass
class UpdateResult:
    """What an update did. ``changes`` lists every change of an update of at most
    ``CHANGES_KEPT`` changes, the first ``CHANGES_KEPT`` of a larger one (memory stays
    bounded); the counts are always complete."""

    changes: list[Change]
    seconds: float
    added: int = 0
    updated: int = 0
    deleted: int = 0
    files: int = 0  # files written
    bytes: int = 0  # bytes written


class _Counts:
    __slots__ = ("A", "D", "U", "bytes", "files")

    def __init__(self, changes: Iterable[Change] = ()) -> None:
        self.A = self.U = self.D = self.files = self.bytes = 0
        for c in changes:
            self.add(c)

    def add(self, c: Change) -> None:
        setattr(self, c.op, getattr(self, c.op) + 1)
        if c.op != "D" and c.new is not None and c.new.is_file:
            self.files += 1
            self.bytes += c.new.size


def update(
    ctx: Context,
    repo: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
    progress: object = None,
    force: bool = False,
    concurrency: int | None = None,
) -> UpdateResult:
    """Make directory ``destination`` equal the bundle, touching only what differs.

    It deletes what is not in the bundle, so it refuses (``UsageError``) a directory that is
    not a datamon download (not in the download registry, or it held other files when it
    was first downloaded into) unless ``force``. Deletions go through ``O_NOFOLLOW``
    directory fds and never follow a symlink.
    """
    from datamon.api import localfs
    from datamon.api.downloads import Registry, registered
    from datamon.api.materialize import Materializer
    from datamon.errors import UsageError

    t0 = time.perf_counter()
    dest = os.path.abspath(os.fspath(destination))
    if not os.path.isdir(dest):
        raise UsageError(
            f"destination {destination!r} is not a directory", "give the directory of a download"
        )
    b = resolve(ctx, repo, bundle=bundle, label=label)
    rec = registered(ctx.state_dir, dest)
    if not force and (rec is None or rec.adopted):
        why = "it was not made by `datamon bundle download`" if rec is None else "it held other files"
        raise UsageError(
            f"refusing to update {dest!r}: {why}, and update deletes every file that is not in the bundle",
            "download into a new directory, or pass --force-dest to update it anyway",
        )
    # The changes are listed first (nothing is touched until the comparison is done). An
    # update of more than CHANGES_KEPT changes (finishing a large interrupted download) is
    # counted instead of listed, then compared again and applied as the comparison streams,
    # so memory does not grow with the number of changes.
    top = _root(b.tree, b.created_ns)
    _, view = _open_destination(ctx, repo, dest, bundle=b.id)
    try:
        it = _diff_local(ctx, view, "", top)
        changes = list(islice(it, CHANGES_KEPT + 1))
        counts = _Counts(changes)
        large = len(changes) > CHANGES_KEPT
        if large:
            del changes[CHANGES_KEPT:]
            for c in it:
                counts.add(c)
            view.close()  # (stores the keys it hashed: the second pass finds them cached)
            view = _LocalView(ctx, dest)
    except BaseException:
        view.close()
        raise
    stream: Iterator[Change] = _diff_local(ctx, view, "", top) if large else iter(changes)
    reg = Registry(ctx.state_dir)
    try:
        # registered before the first change: an interrupted update is finished by rerunning it
        # (what it deletes is gone either way: the directory is this bundle's from now on)
        reg.put(dest, repo=repo, bundle=b.id, name_filter=None, complete=False, adopted=False)
        with Materializer(ctx, dest, progress=progress, concurrency=concurrency) as m:  # type: ignore[arg-type]
            m.progress.start(counts.files, counts.bytes)
            root = localfs.open_root(dest)
            w = localfs.DirWalker(root)
            try:
                # In depth-first order a deletion comes before any addition at or below its
                # path, and the files of a directory are written only after its listing was
                # read: deleting as the changes come is the same as deleting everything first.
                for c in stream:
                    if c.op != "D":
                        if c.new is not None:
                            m.add(Entry(c.path.rstrip("/"), c.new))
                        continue
                    parts = localfs.safe_parts(c.path.rstrip("/"))
                    try:
                        dfd = w.cd(parts[:-1])
                    except OSError as e:
                        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                            continue  # its directory is gone (or is a symlink now): nothing to delete
                        raise
                    localfs.remove_at(dfd, parts[-1])
            finally:
                w.close()
                os.close(root)
            m.finish()
            files, nbytes = m.files, m.bytes
        view.record_touched()
        reg.put(dest, repo=repo, bundle=b.id, name_filter=None, complete=True, adopted=False)
    finally:
        reg.close()
        view.close()
    return UpdateResult(
        changes, time.perf_counter() - t0, counts.A, counts.U, counts.D, files=files, bytes=nbytes
    )
