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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamon.api.bundles import Descend, Entry, Step, flatten, resolve
from datamon.api.statcache import StatCache, stat_key

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.tree import TreeEntry


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
    return {c.name: c for c in ctx.cas.read_tree(e.key)}


def _leaves(ctx: Context, e: TreeEntry, path: str) -> Iterator[tuple[str, TreeEntry]]:
    """Files, symlinks and empty directories at or under ``e`` (depth-first, name order)."""
    return flatten(_leaves_step(ctx, e, path))


def _leaves_step(ctx: Context, e: TreeEntry, path: str) -> Step[tuple[str, TreeEntry]]:
    if not e.is_dir:
        yield path, e
        return
    kids = _children(ctx, e)
    if not kids:
        yield path + "/", e
    for name, c in sorted(kids.items()):
        yield Descend(_leaves_step(ctx, c, f"{path}/{name}"))


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
    """A local directory seen as tree entries; file keys computed only when needed."""

    def __init__(self, ctx: Context, root: str) -> None:
        self.root = root
        self.cache = StatCache(ctx.state_dir)
        self.known = self.cache.lookup_under(root)
        self.learned: list[tuple[str, tuple[int, int, int, int], bytes]] = []

    def entries(self, rel: str) -> dict[str, tuple[os.DirEntry[str], os.stat_result]]:
        path = os.path.join(self.root, rel) if rel else self.root
        out = {}
        try:
            for e in os.scandir(path):
                out[e.name] = (e, e.stat(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def file_key(self, path: str, st: os.stat_result) -> bytes:
        from datamon.cas.hashing import EMPTY_KEY, Hasher

        if st.st_size == 0:
            return EMPTY_KEY
        sk = stat_key(st)
        hit = self.known.get(path)
        if hit is not None and hit[0] == sk:
            return hit[1]
        h = Hasher()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        key = h.digest()
        self.learned.append((path, sk, key))
        return key

    def close(self) -> None:
        self.cache.store(self.learned)
        self.cache.close()


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


def _diff_local(ctx: Context, view: _LocalView, rel: str, tree: TreeEntry | None) -> Iterator[Change]:
    return flatten(_diff_local_step(ctx, view, rel, tree))


def _diff_local_step(ctx: Context, view: _LocalView, rel: str, tree: TreeEntry | None) -> Step[Change]:
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
        if have is not None and have.is_dir and want is not None and want.is_dir:
            yield Descend(_diff_local_step(ctx, view, sub, want))
            continue
        if have is not None and want is not None and not have.is_dir and not want.is_dir:
            if not _same(have, want):
                yield Change("U", sub, have, want)
            continue
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
            for p, e in _leaves(ctx, want, sub):
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
    from datamon.errors import UsageError

    dest = os.path.abspath(os.fspath(destination))
    if not os.path.isdir(dest):
        raise UsageError(
            f"destination {destination!r} is not a directory", "give the directory of a download"
        )
    b = resolve(ctx, repo, bundle=bundle, label=label)
    view = _LocalView(ctx, dest)
    try:
        return list(_diff_local(ctx, view, "", _root(b.tree, b.created_ns)))
    finally:
        view.close()


@dataclass
class UpdateResult:
    changes: list[Change]
    seconds: float


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
    from datamon.api.download import materialize
    from datamon.api.downloads import Registry, registered
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
    changes = diff_destination(ctx, repo, dest, bundle=b.id)
    reg = Registry(ctx.state_dir)
    try:
        # registered before the first change: an interrupted update is finished by rerunning it
        # (what it deletes is gone either way: the directory is this bundle's from now on)
        reg.put(dest, repo=repo, bundle=b.id, name_filter=None, complete=False, adopted=False)
        root = localfs.open_root(dest)
        w = localfs.DirWalker(root)
        try:
            for c in changes:
                if c.op != "D":
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
        todo = [Entry(c.path.rstrip("/"), c.new) for c in changes if c.op in ("A", "U") and c.new is not None]
        materialize(ctx, dest, todo, progress=progress, concurrency=concurrency)  # type: ignore[arg-type]
        reg.put(dest, repo=repo, bundle=b.id, name_filter=None, complete=True, adopted=False)
    finally:
        reg.close()
    return UpdateResult(changes, time.perf_counter() - t0)
