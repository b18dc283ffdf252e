"""``repo delete files``: remove paths from every bundle of a repo, for data that must be erased.

Bundle ids are content-derived (the hash of a record naming the root tree and the parents), so a
bundle that held a listed path is rewritten under a new id; so is a bundle whose only change is
that its parent was rewritten. Bundles are rewritten in history order (parents first) and keep
their message, contributor and time; unaffected bundles keep their ids. Only the trees on the way
from a root to a listed path are rebuilt: every other subtree is reused by key.

Plan, then apply:

* ``plan_erase`` reads, changes nothing: the new trees and records (in memory), the objects whose
  bytes are erased (file keys, their file maps and chunks, and the replaced trees, which hold the
  names), and every live holder of the same bytes — a path of another bundle of any repo (the
  rewritten bundles included), a recorded run input, a Git LFS object — that will keep them in the
  blob store. Finding holders reads every tree (and, when an erased file has several chunks, every
  file map) once, as ``gc`` does.
* ``apply_erase`` stores the new trees (unreferenced until the switch), then switches in one
  metadata transaction (``MetadataStore.apply_rewrite``): new bundle rows, labels and label history
  moved to the new ids, rewrite rows (``bundle get OLD`` then says what OLD became), the erased keys
  queued for gc, old bundle rows deleted. A crash before the commit leaves only unreferenced trees
  (garbage for gc), and rerunning plans the same new ids; after it, a rerun finds nothing to do.
  If the repo changed between plan and switch (an upload landed), nothing is switched: ``Conflict``.

Runs (lineage) keep their records: a run record is content-addressed and stored twice, and says
what was read at the time. Readers map its bundle ids through the rewrite map: ``gc`` keeps a
rewritten input's *new* tree for reproduction (so runs do not keep erased bytes alive), ``verify``
does not report a rewritten input as missing, and ``forget`` keeps the new bundle of a pinned input.
A recorded input of this repo whose bundle row was already deleted (gc keeps its tree for the run)
has its tree rewritten too, recorded as a rewrite without a new bundle.

The erased bytes leave the blob store at the next ``gc`` once their packs are older than the grace
period: gc rewrites every pack holding a queued key, whatever its share of garbage
(``api/gc.py``). The local chunk cache of this machine is purged of them at once; other machines'
caches are not reachable from here (``docs/retention.md``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datamon.cas.hashing import EMPTY_KEY, ZERO_KEY, key_of
from datamon.cas.tree import TreeEntry, decode_tree, encode_tree
from datamon.errors import Conflict, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord
    from datamon.meta.rewrites import Rewrite

MAX_HOLDER_PATHS = 20  # paths reported per holding bundle


@dataclass(frozen=True)
class Holder:
    """A live reference that keeps erased bytes in the blob store after gc."""

    kind: str  # "bundle", "run input" or "lfs"
    repo: str
    ref: str  # bundle id, run id, or "" for an LFS object
    path: str  # path in the bundle, input name of the run, or "" for an LFS object
    key: str  # the file key found (hex)
    shares_chunks: bool = False  # holds a different file that shares chunks with an erased one

    def as_dict(self) -> dict[str, object]:
        return {
            "type": "held",
            "kind": self.kind,
            "repo": self.repo,
            "ref": self.ref,
            "path": self.path,
            "key": self.key,
            "shares_chunks": self.shares_chunks,
        }


@dataclass
class BundleChange:
    """One bundle of the repo: kept as it is (``new`` is ``None``) or rewritten."""

    old: BundleRecord
    new: BundleRecord | None = None
    removed: list[str] = field(default_factory=list)  # paths removed from it

    @property
    def relinked(self) -> bool:
        """Rewritten only because a parent was."""
        return self.new is not None and not self.removed

    def as_dict(self) -> dict[str, object]:
        return {
            "type": "rewrite" if self.new is not None else "keep",
            "old": self.old.id,
            "new": self.new.id if self.new is not None else self.old.id,
            "removed": self.removed,
            "relinked": self.relinked,
            "time_ns": self.old.created_ns,
            "message": self.old.message,
        }


@dataclass
class ErasePlan:
    repo: str
    paths: list[str]
    changes: list[BundleChange]  # every bundle of the repo, parents before children
    input_rewrites: list[Rewrite]  # recorded run inputs whose bundle row was gone already
    erased_files: set[bytes]  # file keys removed
    erased: set[bytes]  # every object key queued for gc: files, file maps, chunks, replaced trees
    held: list[Holder]
    missing: list[str]  # listed paths that no bundle holds
    new_trees: dict[bytes, bytes] = field(repr=False, default_factory=dict)
    applied: bool = False

    @property
    def rewritten(self) -> list[BundleChange]:
        return [c for c in self.changes if c.new is not None]


# -- the paths ----------------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.terminal = False


def _trie(paths: Sequence[str]) -> tuple[_Node, list[tuple[str, ...]]]:
    from datamon.api.bundles import split_path

    root = _Node()
    parsed = []
    for p in paths:
        parts = split_path(p)
        if not parts:
            raise UsageError(
                f"listed path {p!r} is the bundle root",
                "list files or directories; `datamon repo delete` removes a whole repo",
            )
        node = root
        for part in parts:
            node = node.children.setdefault(part, _Node())
        node.terminal = True
        parsed.append(tuple(parts))
    return root, parsed


def read_list(lines: Iterable[str]) -> list[str]:
    """The paths of a LIST file: one per line, as ``bundle list files`` prints them (the line
    ending is not part of the path; blank lines are skipped)."""
    out = [ln.rstrip("\r\n") for ln in lines]
    return list(dict.fromkeys(p for p in out if p.strip()))


# -- rewriting trees ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    key: bytes
    files: int  # files removed below
    size: int  # bytes of files removed below
    removed: tuple[str, ...]  # paths removed, relative to this tree


class _Rewriter:
    """New trees without the listed paths; only trees on the way to a listed path are read."""

    def __init__(self, ctx: Context, root: _Node) -> None:
        self.ctx = ctx
        self.root = root
        self.memo: dict[tuple[bytes, int], _Result] = {}
        self.new_trees: dict[bytes, bytes] = {}
        self.erased_files: set[bytes] = set()
        self.erased_trees: set[bytes] = set()
        self._counts: dict[bytes, int] = {}  # files below a removed directory's tree

    def rewrite(self, tree_hex: str) -> _Result:
        key = bytes.fromhex(tree_hex)
        # Iterative post-order: a listed path may be thousands of components deep.
        stack: list[tuple[bytes, _Node, list[TreeEntry] | None]] = [(key, self.root, None)]
        while stack:
            k, node, entries = stack.pop()
            if (k, id(node)) in self.memo:
                continue
            if entries is None:
                entries = self.ctx.cas.read_tree(k)
                stack.append((k, node, entries))
                for e in entries:
                    child = node.children.get(e.name)
                    if child is None or child.terminal or not e.is_dir:
                        continue
                    if (e.key, id(child)) not in self.memo:
                        stack.append((e.key, child, None))
                continue
            self.memo[(k, id(node))] = self._rebuild(k, node, entries)
        return self.memo[(key, id(self.root))]

    def _rebuild(self, key: bytes, node: _Node, entries: list[TreeEntry]) -> _Result:
        out: list[TreeEntry] = []
        files = size = 0
        removed: list[str] = []
        for e in entries:
            child = node.children.get(e.name)
            if child is None:
                out.append(e)
            elif child.terminal:
                removed.append(e.name + ("/" if e.is_dir else ""))
                if e.is_file:
                    files += 1
                    size += e.size
                    self.erased_files.add(e.key)
                elif e.is_dir:
                    files += self._drop_subtree(e.key)
                    size += e.size
            elif e.is_dir:
                r = self.memo[(e.key, id(child))]
                if r.key == e.key:
                    out.append(e)
                    continue
                files += r.files
                size += r.size
                removed += [f"{e.name}/{p}" for p in r.removed]
                out.append(
                    TreeEntry(e.name, e.kind, e.mode, e.mtime_ns, max(0, e.size - r.size), r.key, e.target)
                )
            else:
                out.append(e)  # a listed path goes through a file or link here: not in this tree
        if not removed:
            return _Result(key, 0, 0, ())
        raw = encode_tree(out)
        new = key_of(raw)
        self.new_trees[new] = raw
        self.erased_trees.add(key)
        return _Result(new, files, size, tuple(removed))

    def _drop_subtree(self, key: bytes) -> int:
        """Record every file and tree below a removed directory; returns its number of files."""
        if key in self._counts:
            return self._counts[key]
        read: dict[bytes, list[TreeEntry]] = {}
        stack = [(key, False)]
        while stack:
            k, expanded = stack.pop()
            if k in self._counts:
                continue
            if not expanded:
                entries = read[k] = self.ctx.cas.read_tree(k)
                stack.append((k, True))
                stack.extend((e.key, False) for e in entries if e.is_dir and e.key not in self._counts)
                continue
            done = read.pop(k, None)
            if done is None:  # expanded twice (the same subtree twice in one directory)
                continue
            self.erased_trees.add(k)
            n = 0
            for e in done:
                if e.is_file:
                    n += 1
                    self.erased_files.add(e.key)
                elif e.is_dir:
                    n += self._counts.get(e.key, 0)
            self._counts[k] = n
        return self._counts[key]


def _history_order(bundles: Sequence[BundleRecord], parents_of: dict[str, list[str]]) -> list[BundleRecord]:
    """Parents before children (within the repo), oldest first among those that are ready."""
    by_id = {b.id: b for b in bundles}
    waiting = {b.id: len({p for p in parents_of[b.id] if p in by_id and p != b.id}) for b in bundles}
    children: dict[str, list[str]] = {}
    for b in bundles:
        for p in set(parents_of[b.id]):
            if p in by_id and p != b.id:
                children.setdefault(p, []).append(b.id)
    ready = [(b.created_ns, b.id) for b in bundles if waiting[b.id] == 0]
    heapq.heapify(ready)
    out: list[BundleRecord] = []
    while ready:
        _, bid = heapq.heappop(ready)
        out.append(by_id[bid])
        for c in children.get(bid, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (by_id[c].created_ns, c))
    done = {b.id for b in out}
    out += sorted((b for b in bundles if b.id not in done), key=lambda b: (b.created_ns, b.id))
    return out


# -- planning -------------------------------------------------------------------------------------


def plan_erase(ctx: Context, repo: str, paths: Sequence[str]) -> ErasePlan:
    """What ``repo delete files`` would do (changes nothing). Raises ``NotFound`` (repo),
    ``UsageError`` (a bad or empty list), ``IntegrityError`` (a damaged record or tree)."""
    from datamon.api.bundles import check_record, make_bundle
    from datamon.meta.records import decode_record
    from datamon.meta.rewrites import Rewrite

    meta = ctx.meta
    meta.get_repo(repo)
    if not paths:
        raise UsageError("the list names no path", "list one path of the bundles per line")
    root, parsed = _trie(paths)
    bundles = meta.list_bundles(repo)
    for b in bundles:
        check_record(b)
    ids = {b.id for b in bundles}
    # A parent rewritten by an earlier run (a bundle uploaded on top of an old id since) is named
    # by what it became.
    outside = sorted({p for b in bundles for p in b.parents if p not in ids})
    earlier = {k: m.new_id for k, m in meta.final_rewrites(outside).items() if m.new_id} if outside else {}
    parents_of = {b.id: [earlier.get(p, p) for p in b.parents] for b in bundles}
    rw = _Rewriter(ctx, root)
    mapping: dict[str, str] = {}
    changes: list[BundleChange] = []
    for b in _history_order(bundles, parents_of):
        r = rw.rewrite(b.tree)
        parents = [mapping.get(p, p) for p in parents_of[b.id]]
        if r.key.hex() == b.tree and parents == list(b.parents):
            changes.append(BundleChange(b))
            continue
        f = decode_record(b.record, b.id)
        new = make_bundle(
            repo=repo,
            tree=r.key.hex(),
            parents=parents,
            message=f.message,
            contributor_name=f.contributor_name,
            contributor_email=f.contributor_email,
            time_ns=f.time_ns,
            file_count=max(0, f.file_count - r.files),
            total_size=max(0, f.total_size - r.size),
            meta=f.meta or None,
            attrs=_attrs_without(ctx, f.attrs, r.removed),
        )
        if new.id in ids:
            raise Conflict(
                f"rewriting bundle {b.id} would give the id of bundle {new.id} of the repo",
                "this is a datamon bug: please report it",
            )
        mapping[b.id] = new.id
        changes.append(BundleChange(b, new, list(r.removed)))
    input_rewrites = _recorded_inputs(ctx, repo, ids, rw, Rewrite)
    found = {p for c in changes for p in c.removed}
    missing = [p for p, parts in zip(paths, parsed, strict=True) if not _matched(parts, found)]
    erased_files = {k for k in rw.erased_files if k not in (EMPTY_KEY, ZERO_KEY)}
    chunks = _chunks_of(ctx, erased_files)
    erased = erased_files | {c for cs in chunks.values() for c in cs} | rw.erased_trees
    plan = ErasePlan(
        repo=repo,
        paths=list(paths),
        changes=changes,
        input_rewrites=input_rewrites,
        erased_files=erased_files,
        erased=erased,
        held=[],
        missing=missing,
        new_trees=rw.new_trees,
    )
    if erased_files:
        plan.held = _holders(ctx, plan, {c for cs in chunks.values() for c in cs})
    return plan


def _matched(parts: tuple[str, ...], removed: set[str]) -> bool:
    p = "/".join(parts)
    return p in removed or p + "/" in removed


def _recorded_inputs(
    ctx: Context, repo: str, ids: set[str], rw: _Rewriter, rewrite_cls: type[Rewrite]
) -> list[Rewrite]:
    """Rewrites of the trees of this repo's recorded run inputs whose bundle row is gone (gc keeps
    those trees for reproduction; their runs would otherwise keep the erased bytes)."""
    meta = ctx.meta
    names = set(meta.repo_names(repo))
    inputs = [i for i in meta.recorded_inputs() if i.repo in names and i.bundle_id not in ids]
    if not inputs:
        return []
    moved = meta.final_rewrites(sorted({i.bundle_id for i in inputs}))
    out: dict[str, Rewrite] = {}
    for i in inputs:
        key, tree = i.bundle_id, i.tree
        m = moved.get(i.bundle_id)
        if m is not None:
            if m.new_id in ids:
                continue  # its rewrite is a bundle of the repo: rewritten with the bundles
            key, tree = (m.new_id or m.last_old_id), m.new_tree
        if key in out:
            continue
        r = rw.rewrite(tree)
        if r.key.hex() != tree:
            out[key] = rewrite_cls(key, None, tree, r.key.hex())
    return list(out.values())


def _chunks_of(ctx: Context, file_keys: set[bytes]) -> dict[bytes, list[bytes]]:
    """Chunk lists of those ``file_keys`` that are stored as file maps."""
    from datamon.api.verify import lookup_many
    from datamon.cas.filemap import decode_filemap
    from datamon.cas.pack import Kind

    rows = lookup_many(ctx.meta, sorted(file_keys))
    out: dict[bytes, list[bytes]] = {}
    for k, row in rows.items():
        if row[5] == Kind.FILEMAP:
            raw = ctx.cas.reader.get_filemap(k)
            out[k] = [c for c, _ in decode_filemap(raw, ctx.cas.max_chunk)]
    return out


# -- who else holds the bytes ----------------------------------------------------------------------


def _holders(ctx: Context, plan: ErasePlan, erased_chunks: set[bytes]) -> list[Holder]:
    """Every live reference that will keep erased bytes after the rewrite: what gc will mark from
    (every bundle, the rewritten ones as rewritten; recorded run inputs; Git LFS objects)."""
    meta = ctx.meta
    new_ids = {c.old.id: c.new for c in plan.changes}
    roots: list[tuple[str, str, str, str, bytes]] = []  # (kind, repo, ref, label, tree key)
    for b in meta.iter_all_bundles():
        if b.id in new_ids:
            nb = new_ids[b.id]
            b = nb if nb is not None else b
        roots.append(("bundle", b.repo, b.id, "", bytes.fromhex(b.tree)))
    live = {r[2] for r in roots}
    input_trees = {r.old_id: r.new_tree for r in plan.input_rewrites}
    recorded = meta.recorded_inputs()
    moved = meta.final_rewrites(sorted({i.bundle_id for i in recorded}))
    mapped = {c.old.id: c.new.tree for c in plan.changes if c.new is not None}
    for i in recorded:
        tree, bid = i.tree, i.bundle_id
        m = moved.get(bid)
        if m is not None:
            tree, bid = m.new_tree, (m.new_id or m.last_old_id)
        if bid in live or bid in mapped:
            continue  # a live bundle (or one rewritten now): marked as a bundle
        tree = input_trees.get(bid, tree)
        roots.append(("run input", i.repo, i.run_id, i.name, bytes.fromhex(tree)))

    walk = _Walk(ctx, plan.new_trees)
    walk.visit(r[4] for r in roots)
    lfs_keys = [bytes.fromhex(k) for k in meta.iter_lfs_file_keys()]
    hits = walk.hits(set(walk.file_keys) | set(lfs_keys), plan.erased_files, erased_chunks)
    out: list[Holder] = []
    for kind, repo, ref, label, root in roots:
        for path, key in walk.paths_to(root, hits, MAX_HOLDER_PATHS):
            where = path if kind == "bundle" else f"{label}:{path}"
            out.append(
                Holder(
                    kind,
                    repo,
                    ref,
                    where,
                    key.hex(),
                    key not in plan.erased_files and key not in erased_chunks,
                )
            )
    for k in lfs_keys:
        if k in hits:
            out.append(
                Holder("lfs", "", "", "", k.hex(), k not in plan.erased_files and k not in erased_chunks)
            )
    return out


class _Walk:
    """Every tree reachable from some roots read once (the new, not yet stored trees from memory)."""

    def __init__(self, ctx: Context, new_trees: dict[bytes, bytes]) -> None:
        self.ctx = ctx
        self.new_trees = new_trees
        self.children: dict[bytes, list[TreeEntry]] = {}
        self.file_keys: set[bytes] = set()
        self._memo: dict[bytes, bool] = {}  # tree key → holds a hit (for one set of hits)

    def read(self, key: bytes) -> list[TreeEntry]:
        got = self.children.get(key)
        if got is None:
            raw = self.new_trees.get(key)
            got = decode_tree(raw) if raw is not None else self.ctx.cas.read_tree(key)
            self.children[key] = got
        return got

    def visit(self, roots: Iterable[bytes]) -> None:
        todo = [k for k in roots if k not in self.children]
        while todo:
            k = todo.pop()
            if k in self.children:
                continue
            for e in self.read(k):
                if e.is_dir and e.key not in self.children:
                    todo.append(e.key)
                elif e.is_file and e.key != EMPTY_KEY:
                    self.file_keys.add(e.key)

    def hits(self, keys: set[bytes], files: set[bytes], chunks: set[bytes]) -> set[bytes]:
        """Those of ``keys`` that are an erased file or chunk, or a file map sharing an erased chunk."""
        found = {k for k in keys if k in files or k in chunks}
        if not chunks:
            return found
        from datamon.api.verify import lookup_many, read_objects
        from datamon.cas.filemap import decode_filemap
        from datamon.cas.pack import Kind

        rest = sorted(keys - found)
        rows = [r for r in lookup_many(self.ctx.meta, rest).values() if r[5] == Kind.FILEMAP]

        def failed(row: object, kind: str, detail: str) -> None:
            pass  # unreadable maps are verify's business; they cannot hold readable bytes

        for row, _stored, raw in read_objects(self.ctx.cas.blobs, rows, failed, self.ctx.cas.max_chunk):
            try:
                if any(c in chunks for c, _ in decode_filemap(raw, self.ctx.cas.max_chunk)):
                    found.add(row[0])
            except ValueError:
                continue
        return found

    def paths_to(self, root: bytes, hits: set[bytes], limit: int) -> Iterator[tuple[str, bytes]]:
        """Up to ``limit`` (path, file key) of files below ``root`` whose key is in ``hits``."""
        if not hits or not self._has(root, hits):
            return
        n = 0
        stack: list[tuple[bytes, str]] = [(root, "")]
        while stack and n < limit:
            key, prefix = stack.pop()
            for e in reversed(self.read(key)):
                path = prefix + e.name
                if e.is_file and e.key in hits:
                    yield path, e.key
                    n += 1
                    if n >= limit:
                        return
                elif e.is_dir and self._has(e.key, hits):
                    stack.append((e.key, path + "/"))

    def _has(self, root: bytes, hits: set[bytes]) -> bool:
        memo = self._memo
        stack = [(root, False)]
        while stack:
            k, expanded = stack.pop()
            if k in memo:
                continue
            kids = self.read(k)
            if not expanded:
                stack.append((k, True))
                stack.extend((e.key, False) for e in kids if e.is_dir and e.key not in memo)
                continue
            memo[k] = any(
                (e.is_file and e.key in hits) or (e.is_dir and memo.get(e.key, False)) for e in kids
            )
        return bool(memo[root])


# -- applying ---------------------------------------------------------------------------------------


def apply_erase(ctx: Context, plan: ErasePlan) -> ErasePlan:
    """Carry out ``plan`` (module docstring: trees first, then one metadata transaction). Raises
    ``Conflict`` if the repo changed since the plan (nothing switched; run it again)."""
    from datamon.cas.pack import Kind

    if plan.applied:
        return plan
    if not plan.rewritten and not plan.input_rewrites:
        plan.applied = True
        return plan
    cache = ctx.cas.cache
    if cache is not None:
        cache.discard(plan.erased)
    if plan.new_trees:
        with ctx.cas.writing() as ing:
            ing.store_objects([(k, raw, Kind.TREE) for k, raw in sorted(plan.new_trees.items())])
    from datamon.meta.rewrites import Rewrite

    who = ctx.contributor
    rewrites = [
        Rewrite(c.old.id, c.new.id, c.old.tree, c.new.tree) for c in plan.rewritten if c.new is not None
    ]
    ctx.meta.apply_rewrite(
        plan.repo,
        expected=[c.old.id for c in plan.changes],
        new_bundles=[c.new for c in plan.rewritten if c.new is not None],
        rewrites=rewrites + plan.input_rewrites,
        erased=plan.erased,
        contributor=f"{who.name} <{who.email}>",
    )
    plan.applied = True
    return plan


def erase_files(ctx: Context, repo: str, paths: Sequence[str], *, dry_run: bool = False) -> ErasePlan:
    """Remove ``paths`` from every bundle of ``repo`` (``plan_erase`` then ``apply_erase``)."""
    plan = plan_erase(ctx, repo, paths)
    return plan if dry_run else apply_erase(ctx, plan)


def _attrs_without(ctx: Context, key: str | None, removed: Sequence[str]) -> str | None:
    """The attributes object of a rewritten bundle: the old rows minus those of removed paths
    (a removed directory takes the rows below it). The old object stays in the blob store (attribute
    objects are never collected; docs/retention.md says what is not erased)."""
    if key is None or not removed:
        return key
    from datamon.api.attributes import load_attrs, store_attrs

    gone = set(removed)

    def kept(path: str) -> bool:
        parts = path.split("/")
        return not any("/".join(parts[:i]) in gone for i in range(1, len(parts) + 1))

    rows = load_attrs(ctx, key)
    return store_attrs(ctx, {p: row for p, row in rows.items() if kept(p)})
