"""A writable, copy-on-write view over an optional base bundle: what ``mount new`` serves.

The view is an in-memory tree of nodes. Directories of the base bundle stay unexpanded (just
their tree key) until a path under them is visited; files of the base bundle stay their tree
entry (file key) until they are opened for writing. Only then is a file copied up into the
staging directory (``files/<n>`` there); created files live there from the start. Untouched
files are therefore never downloaded, and ``commit.py`` reuses their keys, and the keys of
untouched directories, as they are.

Errors are ``OSError`` with the errno a filesystem returns. Thread-safe: one lock guards the
tree; file contents are read and written outside it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datamon.cas.tree import TreeEntry
from datamon.errors import DatamonError
from datamon.fuse import DEFAULT_PREFETCH
from datamon.fuse.vfs import (
    DEFAULT_TREE_CACHE_ENTRIES,
    ROOT_INO,
    Dirent,
    OpenFile,
    Piece,
    Stat,
    StoredFiles,
    TreeCache,
    child_inos,
    join,
    oserror,
    root_entry,
    split,
)

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

log = logging.getLogger("datamon.fuse")

UTIME_NOW = (1 << 30) - 1  # libfuse passes these tv_nsec values (with tv_sec 0) through
UTIME_OMIT = (1 << 30) - 2
NAME_MAX = 255


@dataclass(eq=False)
class FileNode:
    ino: int
    mode: int  # permission bits
    mtime_ns: int
    size: int
    entry: TreeEntry | None = None  # stored content (untouched since the base bundle)
    staged: str | None = None  # path of the staged content (created or modified)
    opened: int = 0  # open handles
    detached: bool = False  # unlinked or replaced while open
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(eq=False)
class LinkNode:
    ino: int
    mode: int
    mtime_ns: int
    target: str


@dataclass(eq=False)
class DirNode:
    ino: int
    mode: int
    mtime_ns: int
    base: TreeEntry | None = None  # the stored tree this directory was, while ``dirty`` is False
    children: dict[str, Node] | None = None  # None: not loaded yet, identical to ``base``
    dirty: bool = True  # its entries may differ from ``base``


Node = FileNode | LinkNode | DirNode


def node_from_entry(e: TreeEntry, ino: int) -> Node:
    if e.is_dir:
        return DirNode(ino, e.mode & 0o7777, e.mtime_ns, base=e, dirty=False)
    if e.is_symlink:
        return LinkNode(ino, e.mode & 0o7777, e.mtime_ns, e.target)
    return FileNode(ino, e.mode & 0o7777, e.mtime_ns, e.size, entry=e)


@dataclass(eq=False)
class _Handle:
    node: FileNode
    path: str
    writable: bool
    fd: int | None = None
    stored: OpenFile | None = None


class MutableView:
    """A writable filesystem starting from ``base`` (or empty), staging changes in ``staging_dir``.

    ``changed`` tells whether anything was modified; ``file_count`` is the number of regular
    files (kept up to date, so committing never walks untouched directories).
    """

    def __init__(
        self,
        ctx: Context,
        base: BundleRecord | None,
        staging_dir: str | os.PathLike[str],
        *,
        prefetch: int = DEFAULT_PREFETCH,
        tree_cache_entries: int = DEFAULT_TREE_CACHE_ENTRIES,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.base = base
        self.staging = Path(staging_dir)
        (self.staging / "files").mkdir(parents=True, exist_ok=True)
        self.trees = TreeCache(ctx.cas, tree_cache_entries)
        label = f"bundle {base.id[:12]}" if base else ""
        self.files = StoredFiles(ctx.cas, prefetch=prefetch, label=label)
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        if base is not None:
            self.root = DirNode(ROOT_INO, 0o755, base.created_ns, base=root_entry(base), dirty=False)
            self.file_count = base.file_count
        else:
            self.root = DirNode(ROOT_INO, 0o755, time.time_ns(), children={})
            self.file_count = 0
        self.changed = False
        self._lock = threading.RLock()
        self._inos = itertools.count(1)
        self._names = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._fh = itertools.count(1)

    # -- the tree ----------------------------------------------------------------------------
    def children(self, d: DirNode, path: str = "") -> dict[str, Node]:
        """Entries of ``d``, loading them from its stored tree the first time."""
        if d.children is None:
            assert d.base is not None
            tree = self.trees.get(d.base.key)
            d.children = {
                name: node_from_entry(e, ino)
                for (name, e), ino in zip(tree.items(), child_inos(path, tree), strict=True)
            }
        return d.children

    def _walk(self, path: str) -> tuple[list[DirNode], Node]:
        """(directories from the root down to the parent, the node) for ``path``."""
        chain: list[DirNode] = []
        node: Node = self.root
        walked = ""
        for part in split(path):
            if not isinstance(node, DirNode):
                raise oserror(errno.ENOTDIR, path)
            chain.append(node)
            found = self.children(node, walked).get(part)
            if found is None:
                raise oserror(errno.ENOENT, path)
            walked = f"{walked}/{part}"
            node = found
        return chain, node

    def _parent(self, path: str) -> tuple[list[DirNode], str]:
        """(directories from the root down to the parent, name) for a path to create."""
        parts = split(path)
        if not parts:
            raise oserror(errno.EEXIST, path)
        name = parts[-1]
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise oserror(errno.ENAMETOOLONG, path)
        chain, parent = self._walk("/".join(parts[:-1]))
        if not isinstance(parent, DirNode):
            raise oserror(errno.ENOTDIR, path)
        self.children(parent, "/" + "/".join(parts[:-1]))
        return [*chain, parent], name

    def _changed(self, chain: list[DirNode], *, touch_parent: bool = False) -> None:
        for d in chain:
            d.dirty = True
        if touch_parent and chain:
            chain[-1].mtime_ns = time.time_ns()
        self.changed = True

    def _new_ino(self) -> int:
        return (1 << 63) | next(self._inos)

    def _new_staged(self) -> str:
        path = str(self.staging / "files" / f"{next(self._names):08d}")
        with open(path, "xb"):
            pass
        return path

    def _discard(self, node: Node) -> None:
        """Forget a node that was unlinked or replaced (its staged copy goes when unused)."""
        if isinstance(node, FileNode):
            self.file_count -= 1
            node.detached = True
            if node.opened == 0:
                self._drop_staged(node)

    @staticmethod
    def _drop_staged(node: FileNode) -> None:
        if node.staged is not None:
            try:
                os.unlink(node.staged)
            except OSError:
                pass

    # -- reading -----------------------------------------------------------------------------
    def _stat(self, node: Node) -> Stat:
        if isinstance(node, FileNode):
            return Stat(node.ino, stat.S_IFREG | node.mode, node.size, node.mtime_ns, self.uid, self.gid)
        if isinstance(node, LinkNode):
            size = len(node.target.encode("utf-8", "surrogateescape"))
            return Stat(node.ino, stat.S_IFLNK | 0o777, size, node.mtime_ns, self.uid, self.gid)
        return Stat(node.ino, stat.S_IFDIR | (node.mode or 0o755), 0, node.mtime_ns, self.uid, self.gid)

    def getattr(self, path: str) -> Stat:
        with self._lock:
            return self._stat(self._walk(path)[1])

    def readdir(self, path: str) -> list[Dirent]:
        with self._lock:
            _, d = self._walk(path)
            if not isinstance(d, DirNode):
                raise oserror(errno.ENOTDIR, path)
            out = []
            for name, node in self.children(d, path).items():
                st = self._stat(node)
                out.append(Dirent(name, st.mode, st.ino))
            return out

    def readlink(self, path: str) -> str:
        with self._lock:
            node = self._walk(path)[1]
        if not isinstance(node, LinkNode):
            raise oserror(errno.EINVAL, path)
        return node.target

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.staging)
        return {
            "f_bsize": st.f_bsize,
            "f_frsize": st.f_frsize,
            "f_blocks": st.f_blocks,
            "f_bfree": st.f_bfree,
            "f_bavail": st.f_bavail,
            "f_files": st.f_files,
            "f_ffree": st.f_ffree,
            "f_favail": st.f_favail,
            "f_namemax": NAME_MAX,
        }

    # -- file handles ------------------------------------------------------------------------
    def _stage(self, node: FileNode, path: str, truncate_to: int | None) -> None:
        """Give ``node`` a staged copy (downloading its stored content unless it is about to be
        truncated to nothing), then truncate it if asked."""
        with node.lock:
            if node.staged is None:
                staged = self._new_staged()
                if node.entry is not None and node.size and truncate_to != 0:
                    self._copy_up(node.entry, staged, path)
                with self._lock:
                    node.staged, node.entry = staged, None
            if truncate_to is not None and truncate_to != node.size:
                assert node.staged is not None
                os.truncate(node.staged, truncate_to)
                with self._lock:
                    node.size = truncate_to
                    node.mtime_ns = time.time_ns()

    def _copy_up(self, entry: TreeEntry, dest: str, path: str) -> None:
        try:
            with open(dest, "wb") as f:
                for piece in self.ctx.cas.iter_file(entry.key, entry.size):
                    f.write(piece)
        except DatamonError as e:
            log.error("cannot copy %s for writing: %s", path, e)
            raise oserror(errno.EIO, path) from e

    def _handle(self, node: FileNode, path: str, writable: bool) -> int:
        h = _Handle(node, path, writable)
        if node.staged is not None:
            h.fd = os.open(node.staged, os.O_RDWR if writable else os.O_RDONLY)
        with self._lock:
            node.opened += 1
            fh = next(self._fh)
            self._handles[fh] = h
        return fh

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        with self._lock:
            chain, node = self._walk(path)
            if isinstance(node, DirNode):
                raise oserror(errno.EISDIR, path)
            if not isinstance(node, FileNode):
                raise oserror(errno.ELOOP, path)
            if writable or flags & os.O_TRUNC:
                self._changed(chain)
        if writable or flags & os.O_TRUNC:
            self._stage(node, path, 0 if flags & os.O_TRUNC else None)
        return self._handle(node, path, writable)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self._lock:
            chain, name = self._parent(path)
            parent = chain[-1]
            assert parent.children is not None
            exists = name in parent.children
            if exists and flags & os.O_EXCL:
                raise oserror(errno.EEXIST, path)
            if not exists:
                node = FileNode(self._new_ino(), mode & 0o7777, time.time_ns(), 0, staged=self._new_staged())
                parent.children[name] = node
                self.file_count += 1
                self._changed(chain, touch_parent=True)
        if exists:  # created by someone else meanwhile: open it as open(2) with O_CREAT would
            return self.open(path, flags)
        return self._handle(node, path, True)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return join(self.read_pieces(fh, offset, size))

    def read_pieces(self, fh: int, offset: int, size: int) -> list[Piece]:
        h = self._handles.get(fh)
        if h is None:
            raise oserror(errno.EBADF)
        node = h.node
        if h.fd is None and node.staged is not None:  # copied up by another handle since
            h.fd = os.open(node.staged, os.O_RDONLY)
        if h.fd is not None:
            data = os.pread(h.fd, size, offset)
            return [Piece(data, 0, len(data))]
        if node.entry is None:
            raise oserror(errno.EIO, h.path)
        if h.stored is None:
            h.stored = self.files.open(h.path, node.entry)
        return self.files.read_pieces(h.stored, offset, size)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        h = self._handles.get(fh)
        if h is None or not h.writable or h.fd is None:
            raise oserror(errno.EBADF)
        n = os.pwrite(h.fd, data, offset)
        node = h.node
        with self._lock:
            node.size = max(node.size, offset + n)
            node.mtime_ns = time.time_ns()
            self.changed = True
        return n

    def fsync(self, fh: int) -> None:
        h = self._handles.get(fh)
        if h is not None and h.fd is not None:
            os.fsync(h.fd)

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            h.node.opened -= 1
            drop = h.node.detached and h.node.opened == 0
        if h.fd is not None:
            os.close(h.fd)
        if drop:
            self._drop_staged(h.node)

    # -- changing the tree ---------------------------------------------------------------------
    def truncate(self, path: str, length: int) -> None:
        with self._lock:
            chain, node = self._walk(path)
            if isinstance(node, DirNode):
                raise oserror(errno.EISDIR, path)
            if not isinstance(node, FileNode):
                raise oserror(errno.EINVAL, path)
            if node.staged is None and length == node.size:
                return
            self._changed(chain)
        self._stage(node, path, length)

    def mkdir(self, path: str, mode: int) -> None:
        with self._lock:
            chain, name = self._parent(path)
            assert chain[-1].children is not None
            if name in chain[-1].children:
                raise oserror(errno.EEXIST, path)
            chain[-1].children[name] = DirNode(self._new_ino(), mode & 0o7777, time.time_ns(), children={})
            self._changed(chain, touch_parent=True)

    def symlink(self, path: str, target: str) -> None:
        with self._lock:
            chain, name = self._parent(path)
            assert chain[-1].children is not None
            if name in chain[-1].children:
                raise oserror(errno.EEXIST, path)
            chain[-1].children[name] = LinkNode(self._new_ino(), 0o777, time.time_ns(), target)
            self._changed(chain, touch_parent=True)

    def unlink(self, path: str) -> None:
        with self._lock:
            chain, name = self._parent(path)
            children = chain[-1].children
            assert children is not None
            node = children.get(name)
            if node is None:
                raise oserror(errno.ENOENT, path)
            if isinstance(node, DirNode):
                raise oserror(errno.EISDIR, path)
            del children[name]
            self._discard(node)
            self._changed(chain, touch_parent=True)

    def rmdir(self, path: str) -> None:
        with self._lock:
            if not split(path):
                raise oserror(errno.EBUSY, path)
            chain, name = self._parent(path)
            children = chain[-1].children
            assert children is not None
            node = children.get(name)
            if node is None:
                raise oserror(errno.ENOENT, path)
            if not isinstance(node, DirNode):
                raise oserror(errno.ENOTDIR, path)
            if self.children(node, path):
                raise oserror(errno.ENOTEMPTY, path)
            del children[name]
            self._changed(chain, touch_parent=True)

    def rename(self, old: str, new: str, *, noreplace: bool = False) -> None:
        """Move ``old`` to ``new``, replacing a file or an empty directory there (POSIX rules),
        or failing with ``EEXIST`` if anything is there and ``noreplace``."""
        with self._lock:
            old_chain, old_name = self._parent(old)
            old_children = old_chain[-1].children
            assert old_children is not None
            node = old_children.get(old_name)
            if node is None:
                raise oserror(errno.ENOENT, old)
            new_chain, new_name = self._parent(new)
            if node is new_chain[-1] or any(d is node for d in new_chain):
                raise oserror(errno.EINVAL, new)  # into itself
            new_children = new_chain[-1].children
            assert new_children is not None
            target = new_children.get(new_name)
            if target is node:
                return
            if target is not None:
                if noreplace:
                    raise oserror(errno.EEXIST, new)
                if isinstance(target, DirNode):
                    if not isinstance(node, DirNode):
                        raise oserror(errno.EISDIR, new)
                    if self.children(target, new):
                        raise oserror(errno.ENOTEMPTY, new)
                elif isinstance(node, DirNode):
                    raise oserror(errno.ENOTDIR, new)
                self._discard(target)
            del old_children[old_name]
            new_children[new_name] = node
            self._changed(old_chain, touch_parent=True)
            self._changed(new_chain, touch_parent=True)

    def chmod(self, path: str, mode: int) -> None:
        with self._lock:
            chain, node = self._walk(path)
            if not isinstance(node, LinkNode):
                node.mode = mode & 0o7777
            self._changed(chain)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        """Set the modification time (nanoseconds; ``None`` or UTIME_NOW: now). Access times
        are not kept."""
        mtime = time.time_ns() if times is None else times[1]
        if mtime == UTIME_OMIT:
            return
        if mtime == UTIME_NOW:
            mtime = time.time_ns()
        with self._lock:
            chain, node = self._walk(path)
            node.mtime_ns = mtime
            self._changed(chain)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            handles = list(self._handles)
        for fh in handles:
            self.release(fh)
        self.files.close()

    def discard_staging(self) -> None:
        """Remove the staging directory (after a commit, or when nothing changed)."""
        shutil.rmtree(self.staging, ignore_errors=True)
