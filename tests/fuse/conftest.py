"""Fixtures for the mount tests: a source tree with every kind of entry, and stores to put it in."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from datamon.api.context import Context
from datamon.cas.chunker import ChunkerParams
from datamon.meta.records import BundleRecord

MTIME = 1_600_000_000_123_456_789


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def make_source(root: Path) -> Path:
    """0 B, 1 B, a multi-chunk random file, unicode names, a symlink, an empty directory,
    an executable, nested directories and a fixed mtime."""
    files = {
        "empty.bin": b"",
        "one.bin": b"x",
        "big.bin": rand(3 * 1024 * 1024 + 12345, 2),
        "text.csv": b"".join(b"%d,%d,hello\n" % (i, i * i) for i in range(20_000)),
        "ünïcødé/日本語.txt": "ünïcødé\n".encode(),
        "deep/a/b/leaf.txt": b"leaf\n",
        "spaces in name/file with spaces.txt": b"s",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "empty-dir").mkdir()
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "one.bin", 0o600)
    os.symlink("text.csv", root / "link-to-text")
    os.symlink("deep/a", root / "dirlink")
    os.utime(root / "text.csv", ns=(MTIME, MTIME))
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path / "src")


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    """A context on a fresh in-memory blob store (memory:// is process-global: unique name)."""
    c = Context(
        f"memory://fuse-{uuid.uuid4().hex}",
        f"sqlite:///{tmp_path}/m.db",
        cache_dir=tmp_path / "chunks",
        state_dir=tmp_path / "state",
    )
    c.create_repo("r")
    yield c
    c.close()


@pytest.fixture
def bundle(ctx: Context, source: Path) -> BundleRecord:
    return ctx.upload("r", source, "fixture", label="prod").bundle


P = ChunkerParams()
