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


# What a slice needs of each chosen file, read from the file index with the selection itself.
_ENTRY_COLS = "kind, size, key, mode, mtime_ns, attrs"
# (kind, size, key hex, mode, mtime_ns, attrs JSON) as the ``files`` view gives them
_Found = tuple[str, int, str | None, int, int, Any]


def _selected(ctx: Context, sql: str, timeout_s: float, *, entries: bool) -> list[tuple[Any, ...]]:
    """The ``repo, bundle, path`` rows of ``sql`` (with ``entries``: followed by the
    ``_ENTRY_COLS`` of the files view, which ``sql`` selects after them)."""
    from datamon.api.query import execute

    with execute(ctx, sql, timeout_s=timeout_s) as r:
        cols = [c.lower() for c in r.columns]
        if not {"repo", "bundle", "path"} <= set(cols):
            raise UsageError(
                f"the slice query returns columns {', '.join(r.columns)}",
                "select repo, bundle and path from files",
            )
        if entries:
            return list(r)
        i, j, k = cols.index("repo"), cols.index("bundle"), cols.index("path")
        return [(row[i], row[j], row[k]) for row in r]


def _bundle_entries(ctx: Context, b: BundleRecord, paths: set[str], timeout_s: float) -> dict[str, _Found]:
    """The index rows of ``paths`` in bundle ``b`` (for ``--query``, whose own columns are not
    trusted to describe the files: only its ``repo, bundle, path`` are)."""
    sql = f"SELECT path, {_ENTRY_COLS} FROM files WHERE repo = {_quote(b.repo)} AND bundle = {_quote(b.id)}"
    out: dict[str, _Found] = {}
    for row in _selected_plain(ctx, sql, timeout_s):
        if row[0] in paths:
            out[row[0]] = tuple(row[1:])
    return out


def _selected_plain(ctx: Context, sql: str, timeout_s: float) -> list[tuple[Any, ...]]:
    from datamon.api.query import execute

    with execute(ctx, sql, timeout_s=timeout_s, index=False) as r:
        return list(r)


def _entries(
    ctx: Context, b: BundleRecord, found: Mapping[str, _Found]
) -> tuple[dict[str, tuple[list[TreeEntry], TreeEntry]], dict[str, Any]]:
    """For each chosen path: (the directory entries leading to it, its entry), and the chosen
    paths' attributes (JSON as the index holds them).

    File entries come from the file index (``found``), so the trees of the directories holding
    them are not read: only trees on the way to chosen *directories* are (their entries give the
    directories' modes and times). A symlink's target, and a name the index holds escaped (not
    UTF-8), are not in the index: their directory's tree is read for them."""
    from datamon.cas.hashing import ZERO_KEY
    from datamon.cas.tree import EntryKind, TreeEntry, validate_name

    trie: dict[str, Any] = {}
    for p in found:
        node = trie
        parts = p.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part + "/", {})
        node[parts[-1]] = p
    out: dict[str, tuple[list[TreeEntry], TreeEntry]] = {}
    attrs: dict[str, Any] = {}
    stack: list[tuple[bytes, dict[str, Any], list[TreeEntry]]] = [(bytes.fromhex(b.tree), trie, [])]
    while stack:
        key, node, dirs = stack.pop()
        need_tree = False
        for name, v in node.items():
            if not isinstance(v, str):
                need_tree = True
                break
            kind = found[v][0]
            if kind != "file" or "\\" in name:
                need_tree = True
                break
        tree = {e.name: e for e in ctx.cas.read_tree(key)} if need_tree else None
        for name, v in node.items():
            if isinstance(v, str):
                kind, size, hkey, mode, mtime_ns, a = found[v]
                if tree is not None:
                    e = tree.get(name)
                    if e is None or e.is_dir:
                        continue
                else:
                    validate_name(name)
                    e = TreeEntry(
                        name,
                        EntryKind.FILE,
                        int(mode) & 0o7777,
                        int(mtime_ns),
                        int(size),
                        bytes.fromhex(hkey) if hkey else ZERO_KEY,
                    )
                out[v] = (dirs, e)
                if a is not None:
                    attrs[v] = a
            else:
                assert tree is not None
                e = tree.get(name[:-1])
                if e is not None and e.is_dir:
                    stack.append((e.key, v, [*dirs, e]))
    return out, attrs


def _build_trees(
    chosen: dict[str, tuple[list[TreeEntry], TreeEntry]],
) -> tuple[str, list[tuple[bytes, bytes, int]], dict[bytes, list[TreeEntry]]]:
    """Encode the trees holding ``chosen`` (path -> (parent dirs, entry)); (root key hex, objects,
    the trees' entries by key as ``decode_tree`` would return them, for the file index)."""
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
    trees: dict[bytes, list[TreeEntry]] = {}
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
        trees[key] = sorted(entries, key=lambda e: e.name.encode("utf-8", "surrogateescape"))
        done[id(d)] = (key, total)
    return done[id(top)][0].hex(), objects, trees


def _attrs_row(path: str, value: Any, b: BundleRecord) -> dict[str, Any]:
    """The attribute row of ``path`` as the index holds it (JSON text, or an object on PostgreSQL),
    checked like a row of an attributes object (``IntegrityError`` if the index is damaged)."""
    import json

    from datamon.api.attributes import check_row
    from datamon.errors import IntegrityError

    try:
        row = json.loads(value) if isinstance(value, str) else value
        if not isinstance(row, dict) or not row:
            raise ValueError("not an object")
        check_row(path, row, None)
    except (ValueError, UsageError) as e:
        raise IntegrityError(
            f"the file index of bundle {b.id[:12]} holds damaged attributes for {path!r} ({e})",
            "rebuild it with `datamon admin reindex --files`",
        ) from None
    return row


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
            f"SELECT repo, bundle, path, {_ENTRY_COLS} FROM files WHERE repo = {_quote(src.repo)} "
            f"AND bundle = {_quote(src.id)} AND ({where})"
        )
    else:
        if bundle or label:
            raise UsageError("--query chooses its bundles itself: drop --bundle/--label")
        sql = query  # type: ignore[assignment]
    rows = _selected(ctx, sql, timeout_s, entries=where is not None)
    if not rows:
        raise UsageError("the slice selects no file", "check the condition with `datamon query`")
    by_path: dict[str, tuple[str, str]] = {}
    collisions: list[str] = []
    for row in rows:
        p, rb = row[2], (row[0], row[1])
        prev = by_path.get(p)
        if prev is not None and prev != rb:
            collisions.append(p)
        by_path[p] = rb
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
    given: dict[str, _Found] = {r[2]: tuple(r[3:]) for r in rows} if where is not None else {}
    schema = attrs.load_schema(ctx, to_repo)
    bundle_meta = attrs.check_meta(meta, schema)
    chosen: dict[str, tuple[list[TreeEntry], TreeEntry]] = {}
    rows_out: dict[str, attrs.Row] = {}
    parents: list[str] = []
    for (source_repo, bid), paths in sorted(sources.items()):
        b = ctx.meta.get_bundle(source_repo, bid)
        check_record(b)
        parents.append(b.id)
        found = given if where is not None else _bundle_entries(ctx, b, paths, timeout_s)
        missing = sorted(paths - set(found))
        if missing:
            raise UsageError(f"bundle {bid[:12]} has no file {missing[0]!r}")
        entries, found_attrs = _entries(ctx, b, {p: found[p] for p in paths})
        missing = sorted(paths - set(entries))
        if missing:
            raise UsageError(f"bundle {bid[:12]} has no file {missing[0]!r}")
        chosen.update(entries)
        for p, a in found_attrs.items():
            arow = _attrs_row(p, a, b)
            attrs.check_row(p, arow, schema)
            rows_out[p] = arow
    tree, objects, trees = _build_trees(chosen)
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
    index_bundle(ctx, new, texts={p: attrs.canonical(r) for p, r in rows_out.items() if r}, trees=trees)
    ctx.meta.add_bundle(new)
    if new_label:
        from datamon.api.labels import set_label

        set_label(ctx, to_repo, new_label, new.id)
    return SliceResult(new, files, size, parents, new_label)
