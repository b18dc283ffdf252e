"""Scanning a local directory into the shape of a bundle (without reading file contents)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from datamon.errors import UsageError


@dataclass
class LocalFile:
    path: str  # absolute
    st: os.stat_result


@dataclass
class LocalDir:
    path: str
    st: os.stat_result
    files: dict[str, LocalFile] = field(default_factory=dict)
    links: dict[str, tuple[str, os.stat_result]] = field(default_factory=dict)
    dirs: dict[str, LocalDir] = field(default_factory=dict)

    def iter_files(self) -> Iterator[LocalFile]:
        """Every file below, depth-first (a directory's files, then each subdirectory's);
        an explicit stack, so any depth works."""
        stack: list[LocalDir] = [self]
        while stack:
            d = stack.pop()
            yield from d.files.values()
            stack.extend(reversed(d.dirs.values()))


OnError = Callable[[str, OSError], None]


def check_root(path: str | os.PathLike[str]) -> str:
    p = os.path.abspath(os.fspath(path))
    if not os.path.lexists(p):
        raise UsageError(
            f"path {os.fspath(path)!r} does not exist", "give the directory to upload with --path"
        )
    if not os.path.isdir(p):
        raise UsageError(
            f"path {os.fspath(path)!r} is not a directory",
            "--path takes a directory; to version one file, put it in a directory",
        )
    return p


def scan(root: str, on_error: OnError) -> LocalDir:
    """The whole tree under ``root``. Symlinks are recorded as links and never followed;
    sockets, fifos and devices are skipped. ``on_error`` decides about unreadable entries
    (raise to fail, return to skip)."""
    top = LocalDir(root, os.stat(root))
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = list(os.scandir(d.path))
        except OSError as err:
            on_error(d.path, err)
            continue
        for de in it:
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as err:
                on_error(de.path, err)
                continue
            if stat.S_ISREG(st.st_mode):
                d.files[de.name] = LocalFile(de.path, st)
            elif stat.S_ISDIR(st.st_mode):
                sub = LocalDir(de.path, st)
                d.dirs[de.name] = sub
                stack.append(sub)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    d.links[de.name] = (os.readlink(de.path), st)
                except OSError as err:
                    on_error(de.path, err)
    return top


def scan_listed(root: str, relpaths: list[str], on_error: OnError) -> LocalDir:
    """Only the listed files (relative to ``root``), with the directories that hold them.

    Every component is ``lstat``-ed: a listed path that goes through a symlink stores that
    symlink as a link (as a plain upload would), never what is behind it."""
    top = LocalDir(root, os.stat(root))
    for rel in relpaths:
        if "\x00" in rel:
            raise UsageError(f"listed path {rel!r} contains a NUL character", "list one path per line")
        parts = [p for p in rel.strip().split("/") if p not in ("", ".")]
        if not parts:
            continue
        if ".." in parts:
            raise UsageError(f"listed path {rel!r} escapes {root}", "list paths relative to --path")
        d: LocalDir | None = top
        try:
            for part in parts[:-1]:
                assert d is not None
                if part in d.links:  # an earlier listed path found a symlink here
                    d = None
                    break
                if part not in d.dirs:
                    p = os.path.join(d.path, part)
                    st = os.lstat(p)
                    if stat.S_ISLNK(st.st_mode):
                        d.files.pop(part, None)
                        d.links[part] = (os.readlink(p), st)
                        d = None
                        break
                    if not stat.S_ISDIR(st.st_mode):
                        raise NotADirectoryError(20, "Not a directory", p)
                    d.dirs[part] = LocalDir(p, st)
                d = d.dirs[part]
            if d is None:
                continue
            p = os.path.join(d.path, parts[-1])
            st = os.lstat(p)
        except OSError as e:
            on_error(os.path.join(root, rel), e)
            continue
        name = parts[-1]
        if stat.S_ISREG(st.st_mode):
            d.files[name] = LocalFile(p, st)
        elif stat.S_ISLNK(st.st_mode):
            d.dirs.pop(name, None)
            d.links[name] = (os.readlink(p), st)
        elif stat.S_ISDIR(st.st_mode):
            d.dirs[name] = scan(p, on_error)
    return top
