"""Shared helpers of the integrity tests: stores in a temp dir, data sets, damage, snapshots."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from datamon.api.context import Context
from datamon.config import Contributor
from tests.conftest import tree_files

WHO = Contributor("Test User", "test@example.com")


def open_ctx(root: Path, **kw: object) -> Context:
    """A context on a file:// blob store and a SQLite database under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return Context(
        f"file://{root / 'blobs'}",
        f"sqlite:///{root / 'meta.db'}",
        contributor=WHO,
        state_dir=root / "state",
        **kw,  # type: ignore[arg-type]
    )


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def dataset(seed: int, big: int = 3, small: int = 20) -> dict[str, bytes]:
    """Files of several chunks (``big`` × 2.5 MiB) plus ``small`` files of a few KiB."""
    files = {f"big/{i}.bin": rand(2_500_000 + i, seed * 100 + i) for i in range(big)}
    files.update({f"small/{i:03d}.txt": rand(3000 + i, seed * 1000 + i) for i in range(small)})
    return files


def contents(root: Path) -> dict[str, bytes]:
    """Regular files under ``root`` by relative path."""
    return {k: v[0] for k, v in tree_files(root).items() if isinstance(v, tuple) and isinstance(v[0], bytes)}


def download_bytes(ctx: Context, repo: str, bundle: str, dest: Path) -> dict[str, bytes]:
    ctx.download(repo, dest, bundle=bundle)
    return contents(dest)


def age_packs(root: Path, seconds: float) -> None:
    """Make every pack look ``seconds`` older (tests cannot wait out a grace period)."""
    with sqlite3.connect(root / "meta.db") as db:
        db.execute("UPDATE packs SET created_ns = created_ns - ?", (int(seconds * 1e9),))


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "blobs" / "packs").rglob("*.pack"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def cli_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATAMON_HOME=str(root / "home"),
        DATAMON_BLOB_URL=f"file://{root / 'blobs'}",
        DATAMON_META_URL=f"sqlite:///{root / 'meta.db'}",
    )
    return env


def datamon_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "datamon.cli", *map(str, args)]


def run_cli(root: Path, *args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        datamon_cmd(*args), env=cli_env(root), capture_output=True, text=True, timeout=timeout, check=False
    )
