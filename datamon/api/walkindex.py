"""Indexing a bundle while its upload walks it (``datamon query``'s file index, docs/query.md).

An upload whose attribute rows are all known before the walk (rows were given for every path
its parent has rows for: nothing can be carried over) need not read its trees back to index
them: as the walk finishes each directory's tree (``api/uploadwalk.py``), the entries it just
encoded become the directory's index node, and the rows go to the database on the index
writer's thread while the walk goes on. The nodes are exactly those ``fileindex.build`` makes
from the stored trees (same ids, same rows; ``tests/query/test_walk_index.py`` compares them).

A directory the walk reuses from the stat cache (its tree unread) is indexed when its parent
is finished, from the store, unless the index already has it; so nodes are still written
children first. ``finish`` returns the root node for the bundle's index row.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from datamon.api.fileindex import (
    NO_ATTRS,
    AttrDir,
    IndexDir,
    Item,
    NodeWriter,
    attr_trie,
    db_text,
    dir_node,
    emit_dir,
    index_tree,
)

if TYPE_CHECKING:
    from datamon.api.context import Context

_FILE, _SYMLINK = 1, 3  # cas.tree.EntryKind
_MODE_BITS = 0o7777
_ZERO_KEY = bytes(32)  # a symlink's key in a tree
_by_name = itemgetter(0)


Event = tuple[Any, ...]  # ("done", path, tree, files, links, subs) | ("reused", path, tree) | ("restart",)


class DirReports:
    """What an upload's walk reports as it finishes directories, each report made an ``Event``
    and handed to ``_put`` with the number of entries it carries: ``WalkIndexer`` queues them
    for its thread, ``api/attrworker.py``'s ``AttrWorker`` sends them to one in a worker
    process, which hands them on with ``WalkIndexer.report``."""

    def _put(self, ev: Event, entries: int) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """The walk starts again: forget directories it reported reused (nodes written stay)."""
        self._put(("restart",), 0)

    def dir_reused(self, path: bytes, tree: bytes) -> None:
        """The directory at ``path`` is tree ``tree``, taken from the stat cache unread."""
        self._put(("reused", path, tree), 1)

    def dir_done(
        self,
        path: bytes,
        tree: bytes,
        files: tuple[list[bytes], list[int], list[int], list[int], list[bytes]],
        links: list[tuple[bytes, bytes, int, int]],
        subs: list[tuple[bytes, int, int, bytes, int, int]],
    ) -> None:
        """The walk encoded tree ``tree`` for the directory at ``path``: ``files`` are the columns
        (names, modes, mtimes_ns, sizes, keys), ``links`` (name, target, mode, mtime_ns), ``subs``
        the subdirectories as the walk keeps them (name, mode, mtime_ns, tree, files, bytes).
        The lists are the receiver's from now on (the walk does not change them again)."""
        self._put(("done", path, tree, files, links, subs), len(files[0]) + len(links) + len(subs))


class WalkIndexer(DirReports):
    """The file index of one upload, built from the walk's directories (``dir_done``,
    ``dir_reused``) for the attribute rows ``lines`` (path -> object line, ``""``: none).

    The work is done on a thread of its own, in the order the walk reports: the walk only
    queues what it finished (at most ``QUEUE_ENTRIES`` entries wait; then it waits). The thread
    first turns the rows into the trie of directory digests, then makes each node. Whatever it
    raises is raised again by the walk's next report or by ``finish``."""

    QUEUE_ENTRIES = 300_000

    def __init__(self, ctx: Context, root: str | bytes, lines: Mapping[str, str]) -> None:
        self.ctx = ctx
        rb = root if isinstance(root, bytes) else root.encode("utf-8", "surrogateescape")
        self.root_path = rb
        self.w = NodeWriter(ctx)
        self.emitted: set[bytes] = set()
        self.reused: dict[bytes, list[IndexDir]] = {}  # parent path -> children
        self.dirs: dict[bytes, AttrDir | None] = {}
        self.trie: AttrDir | None = None
        self.root: bytes | None = None
        self._lines: Mapping[str, str] | None = lines
        self._cv = threading.Condition()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queued = 0  # entries waiting
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="datamon-walk-index", daemon=True)
        self._thread.start()

    # -- the walk's side ---------------------------------------------------------------------
    def _put(self, ev: Event, entries: int) -> None:
        with self._cv:
            while self._queued > self.QUEUE_ENTRIES and self._error is None and self._queue:
                self._cv.wait(0.5)
            if self._error is not None:
                raise self._error
            self._queue.append(ev)
            self._queued += entries
            self._cv.notify_all()

    def report(self, ev: Event) -> None:
        """A report the walk made as an ``Event`` elsewhere (``AttrWorker``'s worker process)."""
        self._put(ev, _entries(ev))

    def finish(self) -> bytes:
        """Wait for every node to be written; the root node (the bundle's index row)."""
        self._put(("end",), 0)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.root is None:
            raise RuntimeError("the walk reported no root directory (a bug)")
        self.w.flush()
        return self.root

    def close(self) -> None:
        """Stop (the upload failed or is done): nothing more is written."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        self.w.close()

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            lines = self._lines
            self._lines = None
            if lines:
                from datamon.api.fileindex import texts_of

                texts = texts_of(lines)
                self.trie = attr_trie(texts) if texts else None
                del texts
            while True:
                with self._cv:
                    while not self._queue and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        return
                    ev = self._queue.popleft()
                    self._queued -= _entries(ev)
                    self._cv.notify_all()
                kind = ev[0]
                if kind == "done":
                    self._dir_done(*ev[1:])
                elif kind == "reused":
                    self._dir_reused(ev[1], ev[2])
                elif kind == "restart":
                    self.reused.clear()
                else:
                    return
        except BaseException as e:
            with self._cv:
                self._error = e
                self._cv.notify_all()

    # -- on the thread: the nodes ------------------------------------------------------------
    def _adir(self, path: bytes) -> AttrDir | None:
        """The attributes of the directory at local ``path`` (None: no file below has any)."""
        dirs = self.dirs
        if path in dirs:
            return dirs[path]
        if path == self.root_path:
            found = self.trie
        else:  # the nearest known ancestor, then down (iterative: trees may be deep)
            names: list[bytes] = []
            up = path
            while up not in dirs and up != self.root_path:
                up, _, name = up.rpartition(b"/")
                up = up or b"/"
                names.append(name)
            found = dirs.get(up, self.trie)
            for name in reversed(names):
                found = found.dirs.get(name.decode("utf-8", "surrogateescape")) if found is not None else None
        dirs[path] = found
        return found

    def _node(self, path: bytes, tree: bytes) -> tuple[bytes, AttrDir | None]:
        adir = self._adir(path)
        return dir_node(tree, adir.digest if adir is not None else NO_ATTRS), adir

    def _dir_reused(self, path: bytes, tree: bytes) -> None:
        nid, adir = self._node(path, tree)
        if path == self.root_path:
            self.root = nid
            self._complete([(nid, tree, adir)])
            return
        parent = path.rpartition(b"/")[0] or b"/"
        self.reused.setdefault(parent, []).append((nid, tree, adir))

    def _dir_done(
        self,
        path: bytes,
        tree: bytes,
        files: tuple[list[bytes], list[int], list[int], list[int], list[bytes]],
        links: list[tuple[bytes, bytes, int, int]],
        subs: list[tuple[bytes, int, int, bytes, int, int]],
    ) -> None:
        nid, adir = self._node(path, tree)
        if path == self.root_path:
            self.root = nid
        kids = self.reused.pop(path, None)
        if kids:
            self._complete(kids)
        if nid in self.emitted:
            return
        afiles = adir.files if adir is not None else {}
        adirs = adir.dirs if adir is not None else {}
        rows: list[tuple[bytes, Item]] = []
        add = rows.append
        for raw, mode, mtime, size, key in zip(*files, strict=True):
            name = raw.decode("utf-8", "surrogateescape")
            text = name if name.isascii() else db_text(name)
            add((raw, ("f", text, (text, _FILE, size, key, mode & _MODE_BITS, mtime, afiles.get(name)))))
        for raw, target, mode, mtime in links:
            name = raw.decode("utf-8", "surrogateescape")
            text = name if name.isascii() else db_text(name)
            add(
                (
                    raw,
                    (
                        "f",
                        text,
                        (text, _SYMLINK, len(target), _ZERO_KEY, mode & _MODE_BITS, mtime, afiles.get(name)),
                    ),
                )
            )
        for raw, _, _, sub_tree, _, _ in subs:
            name = raw.decode("utf-8", "surrogateescape")
            sub = adirs.get(name)
            cid = dir_node(sub_tree, sub.digest if sub is not None else NO_ATTRS)
            add((raw, ("d", name if name.isascii() else db_text(name), cid)))
        rows.sort(key=_by_name)
        emit_dir(self.w, nid, [item for _, item in rows])
        self.emitted.add(nid)

    def _complete(self, kids: list[IndexDir]) -> None:
        """Index the reused directories ``kids`` that neither the index nor this upload has."""
        index_tree(self.ctx, self.w, kids, self.emitted)


def _entries(ev: Event) -> int:
    if ev[0] == "done":
        return len(ev[3][0]) + len(ev[4]) + len(ev[5])
    return 1 if ev[0] == "reused" else 0
