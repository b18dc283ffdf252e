"""Data sets and partitions for the diamond tests."""

from __future__ import annotations

import os
import random
from pathlib import Path


def make_dataset(root: Path, n: int, seed: int = 7, big: int = 0) -> Path:
    """``n`` small files spread over nested directories, plus an empty directory, a symlink and
    ``big`` files of several chunks (2.5 MiB each)."""
    rnd = random.Random(seed)
    dirs = ["a", "a/x", "a/x/y", "b", "b/z", "c", "d/e/f/g"]
    for i in range(n):
        d = root / dirs[i % len(dirs)]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.txt").write_bytes(f"file {i}\n".encode() + rnd.randbytes(rnd.randint(0, 300)))
    for i in range(big):
        (root / "big").mkdir(parents=True, exist_ok=True)
        (root / "big" / f"{i}.bin").write_bytes(rnd.randbytes(2_500_000 + i))
    (root / "empty" / "dir").mkdir(parents=True, exist_ok=True)
    (root / "links").mkdir(exist_ok=True)
    os.symlink("../a/0.txt", root / "links" / "to-a")
    os.chmod(root / "a" / "0.txt", 0o600)
    return root


def listing(root: Path) -> list[str]:
    """Every file and symlink below ``root``, and every empty directory, relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            out.append(os.path.normpath(os.path.join(rel, name)))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.listdir(p):
                out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def partition(root: Path, k: int) -> list[list[str]]:
    """``k`` interleaved lists of the paths below ``root`` (directories are shared by splits)."""
    items = listing(root)
    return [items[i::k] for i in range(k)]


def files_of(root: Path, top: str) -> list[str]:
    return [p for p in listing(root) if p == top or p.startswith(top + "/")]
