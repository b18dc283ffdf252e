"""The real ``git-lfs`` binary talking to ``datamon lfs agent``: push, clone, fetch, fsck, dedup."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import datamon
from tests.lfs.conftest import oid_of

MiB = 1 << 20

pytestmark = [
    pytest.mark.lfs,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("git-lfs") is None,
        reason="git-lfs is not installed (apt-get install git-lfs, or scripts/install-test-deps.sh)",
    ),
]


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def datamon_exe() -> str:
    exe = shutil.which("datamon")
    assert exe, "the datamon command must be installed (pip install -e .)"
    return str(Path(exe).absolute())


def pack_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "blobs").rglob("*.pack"))


def commit(work: Path, files: dict[str, bytes], message: str) -> None:
    for name, data in files.items():
        (work / name).write_bytes(data)
    sh("git", "add", *files, cwd=work)
    sh("git", "commit", "-q", "-m", message, cwd=work)


def clone_config(repo: str) -> list[str]:
    """What docs/lfs.md tells users to pass to `git clone`."""
    return [
        "-c",
        "lfs.standalonetransferagent=datamon",
        "-c",
        f"lfs.customtransfer.datamon.path={datamon_exe()}",
        "-c",
        f"lfs.customtransfer.datamon.args=lfs agent --repo {repo}",
        "-c",
        "lfs.customtransfer.datamon.concurrent=false",
    ]


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(work tree with LFS tracking *.bin and the agent installed, bare remote)."""
    sh("git", "lfs", "install", "--skip-repo", cwd=tmp_path)  # the filters, in the test's global config
    bare = tmp_path / "remote.git"
    sh("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    sh("git", "init", "-q", "-b", "main", str(work), cwd=tmp_path)
    sh("git", "remote", "add", "origin", bare.as_uri(), cwd=work)
    sh("git", "lfs", "track", "*.bin", cwd=work)
    sh("git", "add", ".gitattributes", cwd=work)
    sh("git", "commit", "-q", "-m", "track *.bin", cwd=work)
    out = sh(datamon_exe(), "lfs", "install", "--repo", "proj", cwd=work)
    assert "created datamon repo proj" in out
    return work, bare


def test_push_clone_fetch_all_fsck_and_dedup(
    remote: tuple[Path, Path], tmp_path: Path, datamon_home: Path
) -> None:
    work, bare = remote
    rnd = random.Random(42)
    big_v1 = rnd.randbytes(50 * MiB)
    big_v2 = big_v1[: 20 * MiB] + b"a small insertion" + big_v1[20 * MiB :]
    versions = {
        "empty.bin": [b""],
        "one.bin": [b"1", b"2"],
        "mid.bin": [rnd.randbytes(5 * MiB)],
        "big.bin": [big_v1, big_v2],
    }
    commit(work, {"empty.bin": b"", "one.bin": b"1"}, "tiny files")
    commit(work, {"mid.bin": versions["mid.bin"][0]}, "5 MiB")
    commit(work, {"big.bin": big_v1}, "50 MiB")
    # git-lfs's default: concurrent agents (it starts 8 of them for this push)
    sh("git", "config", "lfs.customtransfer.datamon.concurrent", "true", cwd=work)
    sh("git", "push", "-q", "origin", "main", cwd=work)
    assert not (bare / "lfs").exists(), "objects went to git-lfs's own file:// store, not to datamon"
    before = pack_bytes(datamon_home)
    assert before > 50 * MiB

    commit(work, {"big.bin": big_v2, "one.bin": b"2"}, "insert into the big file")
    sh("git", "config", "lfs.customtransfer.datamon.concurrent", "false", cwd=work)
    sh("git", "push", "-q", "origin", "main", cwd=work)
    growth = pack_bytes(datamon_home) - before
    with datamon.connect() as ctx:
        max_chunk = ctx.cas.chunker.params.max_size
        for name, datas in versions.items():
            for data in datas:
                if data:  # git-lfs keeps empty files in git, not as LFS objects
                    assert ctx.meta.get_lfs_object("proj", oid_of(data)) is not None, name
    assert 0 < growth <= 2 * max_chunk + 64 * 1024, f"second version of the 50 MiB file added {growth} bytes"

    # clone with the agent given on the command line
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", *clone_config("proj"), bare.as_uri(), str(clone), cwd=tmp_path)
    for name, datas in versions.items():
        assert (clone / name).read_bytes() == datas[-1], name

    # every version of every object, fetched again from datamon
    shutil.rmtree(clone / ".git" / "lfs" / "objects")
    sh("git", "lfs", "fetch", "--all", cwd=clone)
    for name, datas in versions.items():
        for data in datas:
            if data:
                oid = oid_of(data)
                obj = clone / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                assert obj.read_bytes() == data, name
    assert "Git LFS fsck OK" in sh("git", "lfs", "fsck", cwd=clone)
    # The agent's own temporary files (git-lfs moves each into place); git-lfs's own numbered
    # temporary files there are its business and it removes them in its own time.
    leftovers = [p.name for p in (clone / ".git" / "lfs" / "tmp").iterdir() if p.name.startswith("datamon-")]
    assert not leftovers, f"downloads left temporary files: {leftovers}"

    # the other documented way: clone without LFS, install, pull
    plain = tmp_path / "plain"
    sh("git", "clone", "-q", bare.as_uri(), str(plain), cwd=tmp_path, env={"GIT_LFS_SKIP_SMUDGE": "1"})
    assert (plain / "big.bin").read_bytes().startswith(b"version https://git-lfs.github.com/spec/v1")
    sh(datamon_exe(), "lfs", "install", "--repo", "proj", cwd=plain)
    sh("git", "lfs", "pull", cwd=plain)
    for name, datas in versions.items():
        assert (plain / name).read_bytes() == datas[-1], name


def test_git_lfs_shows_agent_errors(remote: tuple[Path, Path], tmp_path: Path) -> None:
    work, bare = remote
    commit(work, {"a.bin": b"object a", "b.bin": b"object b"}, "two objects")
    sh("git", "push", "-q", "origin", "main", cwd=work)

    # a datamon repo that does not exist: the agent's init fails and git-lfs says why
    r = subprocess.run(
        ["git", "lfs", "pull"],
        cwd=_skip_smudge_clone(bare, tmp_path / "c1", "nope"),
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "datamon repo 'nope' does not exist" in r.stderr, r.stderr

    # a repo without the objects: each one fails with "not found"
    with datamon.connect() as ctx:
        ctx.create_repo("empty")
    r = subprocess.run(
        ["git", "lfs", "pull"],
        cwd=_skip_smudge_clone(bare, tmp_path / "c2", "empty"),
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0, r.stderr
    for data in (b"object a", b"object b"):
        assert f"[404] object {oid_of(data)} not found in datamon repo 'empty'" in r.stderr, r.stderr


def _skip_smudge_clone(bare: Path, dest: Path, repo: str) -> Path:
    sh(
        "git",
        "clone",
        "-q",
        *clone_config(repo),
        bare.as_uri(),
        str(dest),
        cwd=dest.parent,
        env={"GIT_LFS_SKIP_SMUDGE": "1"},
    )
    return dest
