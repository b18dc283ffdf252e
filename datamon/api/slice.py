"""``bundle slice``: a new bundle made of chosen files of existing bundles, with no data movement.

The files are chosen by a SQL boolean over the ``files`` view (``--where``) or by the rows of any
query returning ``repo, bundle, path`` (``--query``). The new bundle's trees are built from the
source tree entries (same file keys, modes, times), so the only objects written are trees: no
chunk and no file map. Attributes of the chosen files come along; parents are the source bundles.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

_SHOW = 3


@dataclass
class SliceResult:
    bundle: BundleRecord
    files: int
    bytes: int
    sources: list[str]
    label: str | None = None


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _selected(ctx: Context, sql: str, timeout_s: float) -> list[tuple[str, str, str]]:
    from datamon.api.query import execute

    with execute(ctx, sql, timeout_s=timeout_s) as r:
        cols = [c.lower() for c in r.columns]
        if not {"repo", "bundle", "path"} <= set(cols):
            raise UsageError(
                f"the slice query returns columns {', '.join(r.columns)}",
                "select repo, bundle and path from files",
            )
        i, j, k = cols.index("repo"), cols.index("bundle"), cols.index("path")
        return [(row[i], row[j], row[k]) for row in r]


def _entries(ctx: Context, b: BundleRecord, paths: set[str]) -> dict[str, tuple[list[TreeEntry], TreeEntry]]:
    """For each of ``paths``: (the directory entries leading to it, its entry). Reads only the trees
    on the way to the chosen files."""
    trie: dict[str, Any] = {}
    for p in paths:
        node = trie
        parts = p.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part + "/", {})
        node[parts[-1]] = p
    out: dict[str, tuple[list[TreeEntry], TreeEntry]] = {}
    stack: list[tuple[bytes, dict[str, Any], list[TreeEntry]]] = [(bytes.fromhex(b.tree), trie, [])]
    while stack:
        key, node, dirs = stack.pop()
        entries = {e.name: e for e in ctx.cas.read_tree(key)}
        for name, v in node.items():
            if isinstance(v, str):
                e = entries.get(name)
                if e is not None and not e.is_dir:
                    out[v] = (dirs, e)
            else:
                e = entries.get(name[:-1])
                if e is not None and e.is_dir:
                    stack.append((e.key, v, [*dirs, e]))
    return out


def _build_trees(
    chosen: dict[str, tuple[list[TreeEntry], TreeEntry]],
) -> tuple[str, list[tuple[bytes, bytes, int]]]:
    """Encode the trees holding ``chosen`` (path -> (parent dirs, entry)); (root key hex, objects)."""
    from datamon.cas.hashing import key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    @dataclass
    class Dir:
        entry: TreeEntry | None
        files: dict[str, TreeEntry]
        dirs: dict[str, Dir]

    top = Dir(None, {}, {})
    for path, (dirs, e) in chosen.items():
        d = top
        for de in dirs:
            d = d.dirs.setdefault(de.name, Dir(de, {}, {}))
        d.files[path.rsplit("/", 1)[-1]] = e
    objects: list[tuple[bytes, bytes, int]] = []

    order: list[Dir] = []
    stack = [top]
    while stack:
        d = stack.pop()
        order.append(d)
        stack.extend(d.dirs.values())
    done: dict[int, tuple[bytes, int]] = {}
    for d in reversed(order):
        entries = list(d.files.values())
        total = sum(e.size for e in entries if e.is_file)
        for name, sub in d.dirs.items():
            k, size = done[id(sub)]
            assert sub.entry is not None
            entries.append(TreeEntry(name, EntryKind.DIR, sub.entry.mode, sub.entry.mtime_ns, size, k))
            total += size
        raw = encode_tree(entries)
        key = key_of(raw)
        objects.append((key, raw, Kind.TREE))
        done[id(d)] = (key, total)
    return done[id(top)][0].hex(), objects


def slice_bundle(
    ctx: Context,
    *,
    message: str,
    to_repo: str,
    repo: str | None = None,
    bundle: str | None = None,
    label: str | None = None,
    where: str | None = None,
    query: str | None = None,
    new_label: str | None = None,
    meta: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> SliceResult:
    """Make a bundle in ``to_repo`` of the files of ``repo``'s bundle (``bundle``/``label``/latest)
    matching ``where``, or of the ``repo, bundle, path`` rows of ``query``. Raises ``UsageError``
    for colliding paths, an empty selection, or attributes that break ``to_repo``'s schema."""
    from datamon.api import attributes as attrs
    from datamon.api.bundles import check_record, make_bundle, resolve
    from datamon.api.fileindex import index_bundle

    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    if (where is None) == (query is None):
        raise UsageError("give either --where or --query")
    ctx.meta.get_repo(to_repo)
    if where is not None:
        if not repo:
            raise UsageError("--where needs --repo (and --bundle or --label, else the latest bundle)")
        src = resolve(ctx, repo, bundle=bundle, label=label)
        sql = (
            f"SELECT repo, bundle, path FROM files WHERE repo = {_quote(src.repo)} "
            f"AND bundle = {_quote(src.id)} AND ({where})"
        )
    else:
        if bundle or label:
            raise UsageError("--query chooses its bundles itself: drop --bundle/--label")
        sql = query  # type: ignore[assignment]
    rows = _selected(ctx, sql, timeout_s)
    if not rows:
        raise UsageError("the slice selects no file", "check the condition with `datamon query`")
    by_path: dict[str, tuple[str, str]] = {}
    collisions: list[str] = []
    for row_repo, row_bundle, p in rows:
        prev = by_path.get(p)
        if prev is not None and prev != (row_repo, row_bundle):
            collisions.append(p)
        by_path[p] = (row_repo, row_bundle)
    if collisions:
        shown = ", ".join(repr(p) for p in sorted(set(collisions))[:_SHOW])
        more = f" and {len(set(collisions)) - _SHOW} more" if len(set(collisions)) > _SHOW else ""
        raise UsageError(
            f"{len(set(collisions))} path(s) come from more than one bundle: {shown}{more}",
            "select each path from one bundle only",
        )
    sources: dict[tuple[str, str], set[str]] = {}
    for p, rb in by_path.items():
        sources.setdefault(rb, set()).add(p)
    schema = attrs.load_schema(ctx, to_repo)
    bundle_meta = attrs.check_meta(meta, schema)
    chosen: dict[str, tuple[list[TreeEntry], TreeEntry]] = {}
    rows_out: dict[str, attrs.Row] = {}
    parents: list[str] = []
    for (source_repo, bid), paths in sorted(sources.items()):
        b = ctx.meta.get_bundle(source_repo, bid)
        check_record(b)
        parents.append(b.id)
        found = _entries(ctx, b, paths)
        missing = sorted(paths - set(found))
        if missing:
            raise UsageError(f"bundle {bid[:12]} has no file {missing[0]!r}")
        chosen.update(found)
        source_rows = attrs.bundle_attrs(ctx, b)
        for p in paths:
            if p in source_rows:
                attrs.check_row(p, source_rows[p], schema)
                rows_out[p] = source_rows[p]
    tree, objects = _build_trees(chosen)
    with ctx.cas.writing(concurrency=1) as ing:
        ing.store_objects(objects)
    attrs_key = attrs.store_attrs(ctx, rows_out) if rows_out else None
    files = sum(1 for _, e in chosen.values() if e.is_file)
    size = sum(e.size for _, e in chosen.values() if e.is_file)
    who = ctx.contributor
    new = make_bundle(
        repo=to_repo,
        tree=tree,
        parents=parents,
        message=message,
        contributor_name=who.name,
        contributor_email=who.email,
        time_ns=time.time_ns(),
        file_count=files,
        total_size=size,
        meta=bundle_meta,
        attrs=attrs_key,
    )
    index_bundle(ctx, new)
    ctx.meta.add_bundle(new)
    if new_label:
        from datamon.api.labels import set_label

        set_label(ctx, to_repo, new_label, new.id)
    return SliceResult(new, files, size, parents, new_label)
