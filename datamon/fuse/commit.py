"""Turning a ``MutableView`` into a new bundle without downloading anything it did not touch.

Only directories that changed are encoded again: an untouched directory keeps its stored tree
key, an untouched file keeps its file key, and only staged files (created or modified) are
read and ingested. Write order is the upload's: packs and index rows (inside
``ContentStore.writing``), then trees, then the bundle row, then the label move, so a failure
at any point leaves nothing that refers to missing data.

When a commit fails, ``save_manifest`` writes ``manifest.json`` next to the staged files: the
whole tree as committed, naming each staged file, so ``retry`` can commit it later. Version 2
of the manifest is a flat list of nodes (each naming its parent), so that neither writing nor
reading it recurses on the depth of the tree (JSON parsers do); version 1 (nested) is still read.

Nothing here recurses on the depth of the tree: a bundle thousands of directories deep commits.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamon.cas.hashing import ZERO_KEY, key_of
from datamon.cas.pack import Kind
from datamon.cas.tree import EntryKind, TreeEntry, encode_tree
from datamon.errors import UsageError
from datamon.fuse.overlay import DirNode, FileNode, LinkNode, MutableView, Node

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.ingest import FileResult, Ingester
    from datamon.meta.records import BundleRecord

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2


# libfuse renames a file that is deleted while open to this name, and deletes it on the last
# close; one still there when the mount ended was deleted by its user.
_HIDDEN = re.compile(r"^\.fuse_hidden[0-9a-f]{16}$")


def _changed_dirs(root: DirNode) -> Iterator[DirNode]:
    """Loaded directories whose entries may have changed, parents before children (no recursion)."""
    stack = [root]
    while stack:
        d = stack.pop()
        if not d.dirty or d.children is None:
            continue
        yield d
        stack.extend(reversed([n for n in d.children.values() if isinstance(n, DirNode)]))


def _drop_hidden(view: MutableView, root: DirNode) -> None:
    for d in _changed_dirs(root):
        assert d.children is not None
        for name, node in list(d.children.items()):
            if isinstance(node, FileNode) and _HIDDEN.match(name):
                del d.children[name]
                view.file_count -= 1


def _staged(root: DirNode) -> list[FileNode]:
    """Staged files in the changed part of the tree (untouched directories hold none)."""
    out: list[FileNode] = []
    for d in _changed_dirs(root):
        assert d.children is not None
        out.extend(n for n in d.children.values() if isinstance(n, FileNode) and n.staged is not None)
    return out


def _ingest(ing: Ingester, files: list[FileNode], workers: int) -> dict[int, FileResult]:
    def one(node: FileNode) -> tuple[int, FileResult]:
        assert node.staged is not None
        return id(node), ing.ingest_path(node.staged)

    largest_first = sorted(files, key=lambda n: -n.size)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datamon-commit") as pool:
        return dict(pool.map(one, largest_first))


def _build(
    root: DirNode, ingested: dict[int, FileResult], objects: list[tuple[bytes, bytes, int]]
) -> tuple[bytes, int]:
    """(tree key, bytes of files below) of ``root``; new tree objects are appended to
    ``objects``, children before parents. Post-order without recursion."""
    done: dict[int, tuple[bytes, int]] = {}

    def result(d: DirNode) -> tuple[bytes, int] | None:
        if not d.dirty and d.base is not None:
            return d.base.key, d.base.size
        return done.get(id(d))

    stack: list[DirNode] = [root]
    while stack:
        d = stack[-1]
        if result(d) is not None:
            stack.pop()
            continue
        assert d.children is not None  # a changed directory has been loaded
        pending = [n for n in d.children.values() if isinstance(n, DirNode) and result(n) is None]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        entries: list[TreeEntry] = []
        total = 0
        for name, node in d.children.items():
            if isinstance(node, FileNode):
                if node.staged is not None:
                    r = ingested[id(node)]
                    key, size = r.key, r.size
                else:
                    assert node.entry is not None
                    key, size = node.entry.key, node.entry.size
                entries.append(TreeEntry(name, EntryKind.FILE, node.mode, node.mtime_ns, size, key))
                total += size
            elif isinstance(node, LinkNode):
                entries.append(
                    TreeEntry(
                        name,
                        EntryKind.SYMLINK,
                        node.mode,
                        node.mtime_ns,
                        len(node.target),
                        ZERO_KEY,
                        node.target,
                    )
                )
            else:
                sub = result(node)
                assert sub is not None
                entries.append(TreeEntry(name, EntryKind.DIR, node.mode, node.mtime_ns, sub[1], sub[0]))
                total += sub[1]
        raw = encode_tree(entries)
        key = key_of(raw)
        objects.append((key, raw, Kind.TREE))
        done[id(d)] = (key, total)
    got = result(root)
    assert got is not None
    return got


def commit(
    ctx: Context,
    repo: str,
    view: MutableView,
    *,
    message: str,
    label: str | None = None,
    concurrency: int | None = None,
) -> BundleRecord | None:
    """Store what ``view`` holds as a new bundle of ``repo`` (parent: the view's base bundle)
    and point ``label`` at it. Returns ``None``, storing nothing, when nothing changed.

    Call it once the view is no longer served. Raises what the stores raise; the staged files
    are left as they are (see ``save_manifest``).
    """
    from datamon.api.bundles import make_bundle

    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    if not view.changed:
        return None
    _drop_hidden(view, view.root)
    base = view.base
    if base is None and not view.root.children:
        return None
    workers = max(1, concurrency or os.cpu_count() or 2)
    with ctx.cas.writing(concurrency=workers) as ing:
        ingested = _ingest(ing, _staged(view.root), workers)
        objects: list[tuple[bytes, bytes, int]] = []
        root_key, total = _build(view.root, ingested, objects)
        ing.store_objects(objects)
    if base is not None and root_key.hex() == base.tree:
        return None
    who = ctx.contributor
    bundle = make_bundle(
        repo=repo,
        tree=root_key.hex(),
        parents=[base.id] if base is not None else [],
        message=message,
        contributor_name=who.name,
        contributor_email=who.email,
        time_ns=time.time_ns(),
        file_count=view.file_count,
        total_size=total,
    )
    ctx.meta.add_bundle(bundle)
    if label:
        from datamon.api.labels import set_label

        set_label(ctx, repo, label, bundle.id)
    return bundle


# -- keeping a failed commit --------------------------------------------------------------------
def _node_fields(node: Node, staging: Path) -> dict[str, Any]:
    """One node's own fields (a directory's entries are separate nodes)."""
    common = {"mode": node.mode, "mtime_ns": node.mtime_ns}
    if isinstance(node, LinkNode):
        return {"kind": "symlink", "target": node.target, **common}
    if isinstance(node, FileNode):
        if node.staged is not None:
            return {"kind": "file", "staged": os.path.relpath(node.staged, staging), **common}
        assert node.entry is not None
        return {"kind": "file", "key": node.entry.key.hex(), "size": node.entry.size, **common}
    if node.children is None or (not node.dirty and node.base is not None):
        assert node.base is not None
        return {"kind": "dir", "tree": node.base.key.hex(), "size": node.base.size, **common}
    return {"kind": "dir", **common}


def _nodes_json(root: DirNode, staging: Path) -> list[dict[str, Any]]:
    """The tree as a flat list, parents first; each node names its parent's index."""
    out: list[dict[str, Any]] = []
    stack: list[tuple[Node, int, str]] = [(root, -1, "")]
    while stack:
        node, parent, name = stack.pop()
        fields = _node_fields(node, staging)
        out.append({"parent": parent, "name": name, **fields})
        if isinstance(node, DirNode) and "tree" not in fields:
            me = len(out) - 1
            assert node.children is not None
            stack.extend((c, me, n) for n, c in reversed(list(node.children.items())))
    return out


def save_manifest(view: MutableView, repo: str, message: str, label: str | None = None) -> Path:
    """Write ``manifest.json`` in the staging directory: everything ``retry`` needs."""
    doc = {
        "version": MANIFEST_VERSION,
        "repo": repo,
        "message": message,
        "label": label,
        "base": view.base.id if view.base else None,
        "file_count": view.file_count,
        "nodes": _nodes_json(view.root, view.staging),
    }
    path = view.staging / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return path


def _one_node(d: dict[str, Any], staging: Path, view: MutableView) -> Node:
    """A node from its fields; a directory listed with its entries starts empty."""
    ino = view._new_ino()
    mode, mtime = int(d["mode"]), int(d["mtime_ns"])
    if d["kind"] == "symlink":
        return LinkNode(ino, mode, mtime, d["target"])
    if d["kind"] == "file":
        if "staged" in d:
            staged = str(staging / d["staged"])
            return FileNode(ino, mode, mtime, os.path.getsize(staged), staged=staged)
        key = bytes.fromhex(d["key"])
        e = TreeEntry("", EntryKind.FILE, mode, mtime, int(d["size"]), key)
        return FileNode(ino, mode, mtime, e.size, entry=e)
    if "tree" in d:
        e = TreeEntry("", EntryKind.DIR, mode, mtime, int(d["size"]), bytes.fromhex(d["tree"]))
        return DirNode(ino, mode, mtime, base=e, dirty=False)
    return DirNode(ino, mode, mtime, children={})


def _root_from_manifest(doc: dict[str, Any], staging: Path, view: MutableView) -> Node:
    if int(doc.get("version", 1)) >= 2:
        nodes: list[Node] = []
        for d in doc["nodes"]:
            node = _one_node(d, staging, view)
            parent = int(d["parent"])
            if parent >= 0:
                p = nodes[parent]
                assert isinstance(p, DirNode) and p.children is not None
                p.children[d["name"]] = node
            nodes.append(node)
        return nodes[0]
    # version 1: nested "entries"
    root = _one_node(doc["root"], staging, view)
    stack = [(doc["root"], root)]
    while stack:
        d, node = stack.pop()
        if isinstance(node, DirNode) and "entries" in d:
            assert node.children is not None
            for name, c in d["entries"].items():
                child = _one_node(c, staging, view)
                node.children[name] = child
                stack.append((c, child))
    return root


def retry(ctx: Context, staging_dir: str | os.PathLike[str]) -> BundleRecord | None:
    """Commit the changes a failed ``mount new`` kept in ``staging_dir`` (its ``manifest.json``);
    removes the directory once the bundle is stored. Raises ``UsageError`` without a manifest."""
    from datamon.api.bundles import resolve

    staging = Path(staging_dir)
    try:
        doc = json.loads((staging / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"no readable {MANIFEST} in {staging}: {e}") from None
    repo = doc["repo"]
    base = resolve(ctx, repo, bundle=doc["base"]) if doc["base"] else None
    view = MutableView(ctx, base, staging)
    root = _root_from_manifest(doc, staging, view)
    assert isinstance(root, DirNode)
    view.root = root
    view.file_count = int(doc["file_count"])
    view.changed = True
    try:
        bundle = commit(ctx, repo, view, message=doc["message"], label=doc["label"])
    finally:
        view.close()
    view.discard_staging()
    return bundle
