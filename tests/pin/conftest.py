"""Fixtures for pinning tests: a git project directory (the cwd), a repo in the default context
with two bundles, and a counter of the bytes read from the blob store."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from datamon.api.context import Context, connect
from tests.conftest import CliResult, make_tree
from tests.teams.conftest import team  # noqa: F401  (the S3 + PostgreSQL fixture, for test_fs_team)

Dm = Callable[..., CliResult]  # the `dm` fixture: runs the CLI in-process

V1 = {
    "train": {"labels.csv": "".join(f"{i},{i % 10}\n" for i in range(2000)), "notes.txt": "v1\n"},
    "test": {"labels.csv": "0,1\n1,2\n"},
    "README": "mnist v1\n",
}


@dataclass
class Store:
    ctx: Context
    v1: str
    v2: str


@dataclass
class Reads:
    """Calls and bytes of every blob store ``get`` (packs, settings) in this process."""

    calls: int = 0
    bytes: int = 0
    names: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.calls = self.bytes = 0
        self.names.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    from datamon.cas import blobstore

    counter = Reads()
    real = blobstore.FsspecBlobStore.get

    def counting(self, name, start=None, end=None):  # type: ignore[no-untyped-def]
        data = real(self, name, start, end)
        counter.calls += 1
        counter.bytes += len(data)
        counter.names.append(name)
        return data

    monkeypatch.setattr(blobstore.FsspecBlobStore, "get", counting)
    return counter


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git work tree, made the current directory."""
    p = tmp_path / "project"
    p.mkdir()
    subprocess.run(["git", "init", "-q", str(p)], check=True)
    monkeypatch.chdir(p)
    return p


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Repo ``mnist`` in the default context: bundle v1 (label ``prod``), then v2 (not labelled)."""
    ctx = connect()
    ctx.create_repo("mnist")
    src = make_tree(tmp_path / "v1", V1)
    v1 = ctx.upload("mnist", src, "v1", label="prod").bundle.id
    (src / "train" / "notes.txt").write_text("v2\n")
    (src / "test" / "labels.csv").unlink()
    (src / "extra.txt").write_text("new in v2\n")
    v2 = ctx.upload("mnist", src, "v2").bundle.id
    yield Store(ctx, v1, v2)
    ctx.close()


def files_under(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[str(p.relative_to(root))] = p.read_bytes()
    return out
