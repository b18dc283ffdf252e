"""Writing under a destination directory without ever following a symlink datamon did not create.

Everything below the destination root is reached relative to directory fds opened with
``O_NOFOLLOW | O_DIRECTORY``, one component at a time, so a symlink (or a file) in the way
is never traversed: it is either replaced (unlinked, which never follows) or refused.
Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a temporary name in their
final directory and renamed into place only after their content was verified.
Names handed to these functions must be single safe components (see ``safe_parts``).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Sequence

from datamon.errors import IntegrityError, UsageError

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
TMP_PREFIX = ".datamon-tmp-"
MAX_OPEN = 64  # directory fds one walker keeps open (a 1,500-deep tree must not exhaust fds)
_IN_THE_WAY = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)  # O_NOFOLLOW on a symlink, or a file


def safe_parts(path: str) -> list[str]:
    """Components of a ``/``-separated bundle path; raises ``IntegrityError`` for a
    component that is empty, ``.``, ``..`` or contains NUL (a hostile or corrupt tree)."""
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts or "\x00" in path:
        bad = next((p for p in parts if p in ("", ".", "..") or "\x00" in p), "")
        raise IntegrityError(
            f"bundle path {path!r} has an unsafe component {bad!r}",
            "the store holds a hostile or corrupt tree; run `datamon verify --full`",
        )
    return parts


def umask() -> int:
    """The process umask. Read once per download (not per file), from /proc when possible:
    the ``os.umask`` trick has a moment where the umask is 0 for every thread."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    value = os.umask(0o022)
    os.umask(value)
    return value


def file_mode(mode: int, umask: int) -> int:
    """A bundle mode as written locally: no setuid/setgid/sticky, the umask applied (as tar
    does for a user who is not root)."""
    return mode & 0o777 & ~umask


def dir_mode(mode: int, umask: int) -> int:
    return (mode & 0o777 or 0o755) & ~umask


def open_root(dest: str) -> int:
    """The destination directory itself (the user's choice of path: symlinks in it are followed)."""
    try:
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except NotADirectoryError:
        raise UsageError(
            f"destination {dest!r} exists and is not a directory", "choose a directory"
        ) from None


def _is_dir_at(fd: int, name: str) -> bool | None:
    """True for a directory, False for anything else, None if absent (never follows)."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return stat.S_ISDIR(st.st_mode)


def remove_at(fd: int, name: str) -> None:
    """Remove ``name`` in directory ``fd`` (a whole tree if it is a directory); never follows."""
    kind = _is_dir_at(fd, name)
    if kind is None:
        return
    if not kind:
        os.unlink(name, dir_fd=fd)
        return
    w = DirWalker(fd)
    try:
        w.rmtree((name,))
    finally:
        w.close()


class DirWalker:
    """Directory fds along one current path below ``root_fd`` (not owned, not closed).

    ``cd(parts)`` moves there from the current path, opening only what differs; with
    ``create`` it makes missing directories, with ``replace`` it unlinks a file or symlink
    in the way (without, that is a ``UsageError``). At most ``MAX_OPEN`` fds stay open;
    closed levels are reopened, again with ``O_NOFOLLOW``, from the nearest open ancestor.
    Not thread-safe: use one walker per thread.
    """

    def __init__(self, root_fd: int, *, create: bool = False, replace: bool = False) -> None:
        self.root = root_fd
        self.create = create
        self.replace = replace
        self.names: list[str] = []
        self.fds: list[int | None] = []
        self.open_count = 0

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                os.close(fd)
        self.names.clear()
        self.fds.clear()
        self.open_count = 0

    def _truncate(self, n: int) -> None:
        while len(self.names) > n:
            self.names.pop()
            fd = self.fds.pop()
            if fd is not None:
                os.close(fd)
                self.open_count -= 1

    def _fd_at(self, level: int) -> int:
        """The fd of the first ``level`` names (0: root), reopening closed levels."""
        if level == 0:
            return self.root
        fd = self.fds[level - 1]
        if fd is not None:
            return fd
        j = level - 1
        while j > 0 and self.fds[j - 1] is None:
            j -= 1
        parent = self._fd_at(j)  # open (or the root)
        for k in range(j, level):
            fd = os.open(self.names[k], O_DIR, dir_fd=parent)
            self._keep(k, fd)
            parent = fd
        return parent

    def _keep(self, index: int, fd: int) -> None:
        self.fds[index] = fd
        self.open_count += 1
        if self.open_count > MAX_OPEN:
            for i in range(index):  # close the shallowest open one
                old = self.fds[i]
                if old is not None:
                    os.close(old)
                    self.fds[i] = None
                    self.open_count -= 1
                    break

    def _open_child(self, parent: int, name: str) -> int:
        try:
            return os.open(name, O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not self.create:
                raise
        except OSError as e:
            if e.errno not in _IN_THE_WAY or not self.create:
                raise
            if not self.replace:
                raise UsageError(
                    f"{name!r} is in the way of a directory of the bundle (it is not a directory)",
                    "pass --force-dest to replace what is in the way",
                ) from None
            os.unlink(name, dir_fd=parent)  # a symlink or a file: unlink never follows
        try:
            os.mkdir(name, 0o777, dir_fd=parent)  # the umask applies
        except FileExistsError:
            pass  # another walker made it meanwhile
        return os.open(name, O_DIR, dir_fd=parent)

    def cd(self, parts: Sequence[str]) -> int:
        """The fd of directory ``parts`` (relative to the root)."""
        if parts == self.names and self.fds and self.fds[-1] is not None:
            return self.fds[-1]  # the common case: the same directory as the last file
        n = min(len(self.names), len(parts))
        i = 0
        while i < n and self.names[i] == parts[i]:
            i += 1
        self._truncate(i)
        parent = self._fd_at(i)
        for part in parts[i:]:
            fd = self._open_child(parent, part)
            self.names.append(part)
            self.fds.append(None)
            self._keep(len(self.fds) - 1, fd)
            parent = fd
        return parent

    def rmtree(self, parts: Sequence[str]) -> None:
        """Remove directory ``parts`` and everything in it; never follows a symlink, no
        recursion (an explicit stack), at most ``MAX_OPEN`` fds."""
        top = tuple(parts)
        stack: list[tuple[str, ...]] = [top]
        saved = (self.create, self.replace)
        self.create = self.replace = False
        try:
            while stack:
                cur = stack[-1]
                fd = self.cd(cur)
                subdirs = []
                with os.scandir(fd) as it:
                    for de in it:
                        if de.is_dir(follow_symlinks=False):
                            subdirs.append(de.name)
                        else:
                            os.unlink(de.name, dir_fd=fd)
                if subdirs:
                    stack.extend((*cur, s) for s in reversed(subdirs))
                    continue
                stack.pop()
                parent = self.cd(cur[:-1])
                os.rmdir(cur[-1], dir_fd=parent)
        finally:
            self.create, self.replace = saved


def create_new(dir_fd: int, name: str) -> int | None:
    """``name`` created empty (mode 0600) with ``O_EXCL | O_NOFOLLOW``; None if something is
    there already (a file, a directory or a symlink: nothing is followed or truncated)."""
    try:
        return os.open(name, O_NEWFILE, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        return None


def new_temp(dir_fd: int) -> tuple[int, str]:
    """A new empty file (mode 0600) under a fresh temporary name in directory ``dir_fd``."""
    while True:
        name = TMP_PREFIX + secrets.token_hex(8)
        try:
            return os.open(name, O_NEWFILE, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue


def rename_into_place(dir_fd: int, tmp: str, name: str, *, replace: bool) -> None:
    """Rename ``tmp`` to ``name`` within ``dir_fd``. A symlink or file under ``name`` is replaced
    by the rename itself (never followed); a directory only with ``replace``."""
    if not replace and _is_dir_at(dir_fd, name) is not None:
        raise UsageError(f"{name!r} already exists", "pass --force-dest to replace it")
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST) or not replace:
            raise
        remove_at(dir_fd, name)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    n = len(view)
    while view:
        view = view[os.write(fd, view) :]
    return n
