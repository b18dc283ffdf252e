"""The file index behind ``datamon query``'s ``files`` view, built from trees and attribute objects.

Design (docs/query.md, "The file index"): the index mirrors trees. A **directory node** stands for
one directory tree together with the attributes of the files below it; its id is
``BLAKE3("DMIDX1 dir" || tree key || attribute digest)``, so it is known before the tree is read
and a directory that did not change between two bundles (same tree, same attributes) is the same
node, stored once. A node's rows are its files (with their attributes as JSON) and links to its
subdirectories' nodes. A directory of more than ``PAGE_MAX`` entries is cut into **pages** at
content-defined boundaries (a CRC of the entry name), pages of more than ``PAGE_MAX`` pages are cut
again, and so on; a page's id is the BLAKE3 of its rows, so changing one file of a directory of a
million files adds one page of ~64 rows and the page links above it, not a million rows.

Nodes are written children first, each batch in one transaction with its presence mark, so a node
marked present is complete, and a crash leaves nothing that a later run would trust wrongly.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord, IndexFile, IndexLink, IndexNode

PAGE_MAX: Final = 256  # entries a node holds before it is cut into pages
PAGE_BITS: Final = 31  # boundary after an entry whose CRC & PAGE_BITS == 0: pages of ~32 entries
PAGE_HARD: Final = 1024  # a page never holds more than this many entries
FLUSH_ROWS: Final = 100_000  # rows buffered before a batch of finished nodes is written
NO_ATTRS: Final = bytes(32)
_TAG: Final = b"DMIDX1 "


def _key(*parts: bytes) -> bytes:
    from datamon.cas.hashing import key_of

    return key_of(_TAG + b"".join(parts))


def dir_node(tree: bytes, attrs_digest: bytes) -> bytes:
    """The id of the directory node of tree ``tree`` with the attributes of digest ``attrs_digest``."""
    return _key(b"dir ", tree, attrs_digest)


def db_text(name: str) -> str:
    """A name as text the database stores: non-UTF-8 bytes (kept as surrogates) become ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class AttrDir:
    files: dict[str, str]  # name -> canonical JSON of the row
    dirs: dict[str, AttrDir]
    digest: bytes = NO_ATTRS


def attr_trie(texts: Mapping[str, str]) -> AttrDir:
    """The attributes of a bundle as a trie of directories, each with its digest, from ``texts``
    (path -> the row's canonical JSON without its path; rows with no value left out)."""
    top = AttrDir({}, {})
    dirs: dict[str, AttrDir] = {"": top}
    for path, text in texts.items():
        parent, _, name = path.rpartition("/")
        d = dirs.get(parent)
        if d is None:
            d = top
            for p in parent.split("/"):
                d = d.dirs.setdefault(p, AttrDir({}, {}))
            dirs[parent] = d
        d.files[name] = text
    # digests bottom-up, explicit stack
    order: list[AttrDir] = []
    stack = [top]
    while stack:
        d = stack.pop()
        order.append(d)
        stack.extend(d.dirs.values())
    for d in reversed(order):
        body = json.dumps(
            [sorted(d.files.items()), sorted((n, s.digest.hex()) for n, s in d.dirs.items())],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        d.digest = _key(b"attrs ", body.encode("utf-8", "surrogatepass"))
    return top


_NO_FILES: Final[dict[str, str]] = {}
_NO_DIRS: Final[dict[str, AttrDir]] = {}
_DIR: Final = 2  # EntryKind.DIR


def _boundary(name: str, level: int) -> bool:
    return zlib.crc32(name.encode("utf-8", "surrogatepass"), level * 0x9E3779B1 & 0xFFFFFFFF) & PAGE_BITS == 0


def in_memory(url: str) -> bool:
    """Whether ``url`` names an in-memory SQLite database (one connection, one process)."""
    return url.startswith("sqlite") and (
        url.rstrip("/") in ("sqlite:", "sqlite+pysqlite:") or ":memory:" in url or "mode=memory" in url
    )


class NodeWriter:
    """Buffers finished nodes (children always before parents) and writes them in batches, on a
    thread of its own: the database's insert work (which releases the GIL) overlaps the walk.
    Batches are written in order, one at a time, each in its own transaction, so a node marked
    present is complete and its children were committed before it. At most two batches wait."""

    def __init__(self, ctx: Context) -> None:
        self.meta = ctx.meta
        # an in-memory SQLite database is one connection shared by all threads: write inline
        self._inline = in_memory(ctx.meta_url)
        self.nodes: list[IndexNode] = []
        self.rows = 0
        self.added = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[int]] = []

    def add(self, node: IndexNode) -> None:
        self.nodes.append(node)
        self.rows += len(node[1]) + len(node[2]) + 1
        if self.rows >= FLUSH_ROWS:
            self._submit()

    def _submit(self) -> None:
        if not self.nodes:
            return
        if self._inline:
            self.added += self.meta.add_index_nodes(self.nodes)
            self.nodes, self.rows = [], 0
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datamon-index")
        while len(self._pending) >= 2:
            self.added += self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self.meta.add_index_nodes, self.nodes))
        self.nodes, self.rows = [], 0

    def flush(self) -> None:
        """Write what is buffered and wait for every batch (raises what a batch raised)."""
        try:
            self._submit()
            while self._pending:
                self.added += self._pending.pop(0).result()
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)
            self._pool, self._pending = None, []


# An item of a node: ("f", name, file row) or ("d", name, child node id) or ("p", last name, page id)
Item = tuple[str, str, Any]


def _page_id(items: list[Item]) -> bytes:
    """BLAKE3 of the page's rows, NUL-separated (no name, number or attributes JSON holds a NUL)."""
    parts: list[str] = []
    for kind, name, value in items:
        if isinstance(value, bytes):
            parts += (kind, name, value.hex())
        else:
            n, k, size, key, mode, mtime, attrs = value
            parts += (kind, n, str(k), str(size), key.hex(), str(mode), str(mtime), attrs or "")
    return _key(b"page2 ", "\0".join(parts).encode("utf-8", "surrogatepass"))


def _node(node_id: bytes, items: list[Item]) -> IndexNode:
    links: list[IndexLink] = []
    files: list[IndexFile] = []
    for kind, name, value in items:
        if kind == "f":
            files.append(value)
        else:
            links.append((len(links), name if kind == "d" else "", value))
    return node_id, links, files


def emit_dir(w: NodeWriter, node_id: bytes, items: list[Item]) -> None:
    """Write a directory node, paginated if it is large (pages first)."""
    level = 0
    while len(items) > PAGE_MAX:
        level += 1
        pages: list[Item] = []
        cur: list[Item] = []
        for it in items:
            cur.append(it)
            if _boundary(it[1], level) or len(cur) >= PAGE_HARD:
                pid = _page_id(cur)
                w.add(_node(pid, cur))
                pages.append(("p", it[1], pid))
                cur = []
        if cur:
            pid = _page_id(cur)
            w.add(_node(pid, cur))
            pages.append(("p", cur[-1][1], pid))
        items = pages
    w.add(_node(node_id, items))


def build(
    ctx: Context,
    tree: str,
    texts: Mapping[str, str],
    trees: Mapping[bytes, list[TreeEntry]] | None = None,
) -> bytes:
    """Index the tree ``tree`` (hex) with attributes ``texts`` (path -> the row's canonical JSON
    without its path); returns the root node id. Directories already indexed with the same
    attributes are not read. ``trees`` (key -> entries in tree order) are trees the caller just
    encoded itself: they are not read back from the store."""
    trie = attr_trie(texts) if texts else None
    root_tree = bytes.fromhex(tree)
    root = dir_node(root_tree, trie.digest if trie is not None else NO_ATTRS)
    w = NodeWriter(ctx)
    try:
        index_tree(ctx, w, [(root, root_tree, trie)], set(), trees)
        w.flush()
    finally:
        w.close()
    return root


IndexDir = tuple[bytes, bytes, "AttrDir | None"]  # a directory to index: node id, tree key, attributes


def unindexed(ctx: Context, dirs: list[IndexDir], emitted: set[bytes]) -> list[IndexDir]:
    """Those of ``dirs`` whose node is neither in the index nor in ``emitted``. Those in the
    index are re-timed: shared, so gc keeps them (and what they reach) a grace period more."""
    ids = list({d[0] for d in dirs if d[0] not in emitted})
    have = ctx.meta.present_nodes(ids) if ids else set()
    if have:
        ctx.meta.touch_index_nodes(have)
    return [d for d in dirs if d[0] not in have and d[0] not in emitted]


def index_tree(
    ctx: Context,
    w: NodeWriter,
    dirs: list[IndexDir],
    emitted: set[bytes],
    trees: Mapping[bytes, list[TreeEntry]] | None = None,
) -> None:
    """Write the nodes of directories ``dirs`` and of everything below them that are not in the
    index yet nor in ``emitted`` (nodes this writer already has, which it grows), children
    first, reading trees from the store (or ``trees``)."""
    # post-order walk: (node id, tree key, attrs of this directory, items or None before expansion)
    stack: list[tuple[bytes, bytes, AttrDir | None, list[Item] | None]] = [
        (nid, tkey, adir, None) for nid, tkey, adir in reversed(unindexed(ctx, dirs, emitted))
    ]
    while stack:
        node_id, tkey, adir, items = stack.pop()
        if items is not None:
            emit_dir(w, node_id, items)
            emitted.add(node_id)
            continue
        known = trees.get(tkey) if trees is not None else None
        entries = known if known is not None else ctx.cas.read_tree(tkey)
        items = []
        children: list[tuple[bytes, bytes, AttrDir | None]] = []
        afiles = adir.files if adir is not None else _NO_FILES
        adirs = adir.dirs if adir is not None else _NO_DIRS
        add = items.append
        # the hot loop (one pass per file): entries unpacked as tuples (no property per
        # entry), names needing no escaping (the ASCII ones) taken as they are
        for name, kind, mode, mtime, size, key, _ in entries:
            text = name if name.isascii() else db_text(name)
            if kind == _DIR:
                sub = adirs.get(name)
                cid = dir_node(key, sub.digest if sub is not None else NO_ATTRS)
                add(("d", text, cid))
                children.append((cid, key, sub))
            else:
                add(("f", text, (text, int(kind), size, key, mode, mtime, afiles.get(name))))
        stack.append((node_id, tkey, adir, items))
        if children:
            stack.extend(
                (cid, ckey, sub, None) for cid, ckey, sub in reversed(unindexed(ctx, children, emitted))
            )


def index_bundle(
    ctx: Context,
    b: BundleRecord,
    *,
    texts: Mapping[str, str] | None = None,
    trees: Mapping[bytes, list[TreeEntry]] | None = None,
) -> bytes:
    """Index bundle ``b`` (its tree and attributes) and record its root node. ``texts`` are its
    attributes (path -> canonical JSON of the row without its path) when the caller has them
    (they are those of ``b.attrs``: the object is then not read back); ``trees`` as for ``build``."""
    if texts is None:
        texts = bundle_texts(ctx, b)
    node = build(ctx, b.tree, texts, trees)
    ctx.meta.set_bundle_index(b.id, node)
    return node


def bundle_texts(ctx: Context, b: BundleRecord) -> dict[str, str]:
    """Bundle ``b``'s attributes as the index stores them: path -> the row's canonical JSON
    without its path (verified against the object's key, ``IntegrityError`` else)."""
    from datamon.api.attributes import decode_attr_lines, read_attrs

    if not b.attrs:
        return {}
    return texts_of(decode_attr_lines(read_attrs(ctx, b.attrs), b.attrs))


def texts_of(lines: Mapping[str, str]) -> dict[str, str]:
    """Object lines by path (``""``: no row) as the index's texts."""
    from datamon.api.attributes import without_path

    return {p: without_path(line, p) for p, line in lines.items() if line}


def index_missing(ctx: Context) -> list[str]:
    """Index every bundle that is not indexed yet (made before the index existed, by a FUSE commit,
    or whose indexing was interrupted); returns their ids."""
    from datamon.api.bundles import check_record

    done: list[str] = []
    for repo, bid in ctx.meta.unindexed_bundles():
        b = ctx.meta.get_bundle(repo, bid)
        check_record(b)
        index_bundle(ctx, b)
        done.append(bid)
    return done
