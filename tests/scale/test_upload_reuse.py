"""Re-uploads at scale reuse what did not change (issue 15), and never reuse what is not
stored: the stat cache's directory rows (a tree per unchanged directory) are checked against
the object index, the session that wrote them and the store's scope and index epoch."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

import datamon
from datamon.api.context import Context
from datamon.api.verify import verify
from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

KiB = 1024


def _tree(root: Path, dirs: int = 12, files: int = 15, seed: int = 1) -> list[Path]:
    """Two levels of directories with small files, a few empty files, symlinks and one file
    larger than the chunker's minimum (read by the parent, not a worker)."""
    rng = random.Random(seed)
    out = []
    for d in range(dirs):
        sub = root / f"d{d:02d}" / ("deep" if d % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            p = sub / f"f{i:03d}.bin"
            p.write_bytes(rng.randbytes(rng.randint(0, 2 * KiB)) if i % 7 else b"")
            out.append(p)
        os.symlink(f"f{0:03d}.bin", sub / "link")
    (root / "big.bin").write_bytes(rng.randbytes(300 * KiB))
    (root / "top.txt").write_text("top\n" * 100)
    return out


def _dir_keys(ctx: Context, tree_hex: str) -> dict[str, bytes]:
    """Every directory of a bundle tree: path → tree key (the root is "")."""
    out = {"": bytes.fromhex(tree_hex)}
    todo = [("", bytes.fromhex(tree_hex))]
    while todo:
        path, key = todo.pop()
        for e in ctx.cas.read_tree(key):
            if e.is_dir:
                p = f"{path}/{e.name}" if path else e.name
                out[p] = e.key
                todo.append((p, e.key))
    return out


def _ancestors(rel: str) -> set[str]:
    parts = rel.split("/")[:-1]
    return {"/".join(parts[:i]) for i in range(len(parts) + 1)}


def test_reupload_of_an_unchanged_tree_reuses_every_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", src, message="v1")
        again = ctx.upload("r", src, message="v2")
        dirs = _dir_keys(ctx, first.bundle.tree)
        assert again.bundle.tree == first.bundle.tree
        assert again.read_files == 0 and again.new_bytes == 0
        assert again.reused_dirs == len(dirs)  # every directory, the root included
        assert _dir_keys(ctx, again.bundle.tree) == dirs
        assert (again.files, again.bytes) == (first.files, first.bytes)


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_ten_changed_files_share_every_unchanged_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    monkeypatch.setenv("DATAMON_UPLOAD_WORKERS", workers)
    src = tmp_path / "src"
    files = [p for p in _tree(src, dirs=20) if p.stat().st_size]
    changed = random.Random(7).sample(files, 10)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", src, message="v1")
        for p in changed:
            p.write_bytes(p.read_bytes() + b"changed")
        second = ctx.upload("r", src, message="v2")
        before, after = _dir_keys(ctx, first.bundle.tree), _dir_keys(ctx, second.bundle.tree)
    touched = set().union(*(_ancestors(p.relative_to(src).as_posix()) for p in changed))
    assert before.keys() == after.keys()
    assert touched and touched < before.keys()
    for d in before:
        if d in touched:
            assert after[d] != before[d], d
        else:
            assert after[d] == before[d], d  # shared, not rebuilt
    assert second.read_files == 10
    assert second.reused_dirs == len(before) - len(touched)


def test_a_cached_tree_missing_from_the_index_is_not_reused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", src, message="v1")
        dirs = _dir_keys(ctx, first.bundle.tree)
        gone = dirs["d03/deep"]
        ctx.meta.remove_objects([gone])  # as if gc (or a repair) had dropped it
        assert gone not in ctx.meta.lookup_objects([gone])
        again = ctx.upload("r", src, message="v2")
        assert again.bundle.tree == first.bundle.tree
        assert again.reused_dirs == 0  # the walk started again without directory reuse
        assert again.read_files == 0  # every file key is still stored: nothing is read
        assert gone in ctx.meta.lookup_objects([gone])  # written again
        assert verify(ctx, full=True).ok


def test_a_cached_tree_whose_files_are_missing_is_rebuilt_after_a_repair(tmp_path: Path) -> None:
    """A file row dropped by ``verify --repair`` changes the index epoch: no cached tree above
    it is reused and the file is read and stored again."""
    src = tmp_path / "src"
    _tree(src)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", src, message="v1")
        entry = next(e for e in ctx.entries("r", first.bundle.id) if e.path == "d05/f001.bin")
        from datamon.cas.ingest import bump_index_epoch

        ctx.meta.remove_objects([entry.entry.key])
        bump_index_epoch(ctx.cas.blobs)  # what verify --repair does after dropping rows
        again = ctx.upload("r", src, message="v2")
        assert again.bundle.tree == first.bundle.tree
        assert again.reused_dirs == 0
        assert again.read_files == 1
        assert verify(ctx, full=True).ok


def test_trees_of_an_unfinished_session_are_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datamon.api.statcache import StatCache

    src = tmp_path / "src"
    _tree(src)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        with monkeypatch.context() as m:
            m.setattr(StatCache, "finish_session", lambda self, session: None)  # "killed" before the end
            first = ctx.upload("r", src, message="v1")
        again = ctx.upload("r", src, message="v2")
        assert again.bundle.tree == first.bundle.tree
        assert again.reused_dirs == 0 and again.read_files == 0
        third = ctx.upload("r", src, message="v3")
        assert third.reused_dirs > 0


def test_another_store_sharing_the_stat_cache_reuses_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        ctx.upload("r", src, message="v1")
    home = tmp_path / "other"
    state = Path(os.environ["DATAMON_HOME"]) / "cache"
    with datamon.api.Context((home / "blobs").as_uri(), f"sqlite:///{home}/m.db", state_dir=state) as other:
        other.create_repo("r")
        res = other.upload("r", src, message="v1")
        nonempty = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size]
        assert res.reused_dirs == 0 and res.read_files == len(nonempty)
        assert verify(other, full=True).ok


def test_worker_processes_and_threads_build_the_same_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _tree(src, dirs=6)
    bsrc = os.fsencode(src)
    os.mkdir(bsrc + b"/r\xe9p")
    with open(bsrc + b"/r\xe9p/\xff\xfe.bin", "wb") as f:
        f.write(b"two bad bytes")
    os.symlink(b"caf\xe9", bsrc + b"/l\xe9nk")
    os.mkfifo(src / "fifo")  # skipped, as before
    locked = src / "d01" / "locked.bin"
    locked.write_bytes(b"secret")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
        expect_skipped: list[str] = []
    else:
        expect_skipped = [str(locked)]
    trees = {}
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        for workers in ("threads", "processes"):
            monkeypatch.setenv("DATAMON_UPLOAD_WORKERS", workers)
            home_cache = Path(os.environ["DATAMON_HOME"]) / "cache"
            for p in home_cache.glob("statcache.db*"):
                p.unlink()  # read everything each time
            r = ctx.upload("r", src, message=workers, skip_on_error=True)
            assert [p for p, _ in r.skipped] == expect_skipped
            trees[workers] = r.bundle.tree
        assert trees["threads"] == trees["processes"]
        names = {e.path for e in ctx.entries("r", bundle=r.bundle.id)}
        assert "r\udce9p/\udcff\udcfe.bin" in names and "l\udce9nk" in names and "fifo" not in names
        assert verify(ctx, full=True).ok


def test_fast_tree_encoding_is_the_canonical_encoding() -> None:
    from datamon.api.uploadwalk import encode_entries

    rng = random.Random(3)
    for _ in range(200):
        entries = []
        names = rng.sample([f"n{i}" for i in range(300)] + ["é", "z" * 200, "\udcff"], rng.randint(0, 30))
        for name in names:
            kind = rng.choice([1, 2, 3])
            target = "t" * rng.randint(1, 50) if kind == 3 else ""
            size = len(target.encode()) if kind == 3 else rng.choice([0, 1, 5000, 2**62])
            key = bytes(32) if kind == 3 else rng.randbytes(32)
            entries.append(
                (name, kind, rng.randint(0, 0o177777), rng.randint(-(2**62), 2**62), size, key, target)
            )
        canonical = encode_tree(
            [TreeEntry(n, EntryKind(k), m, t, s, key, tg) for n, k, m, t, s, key, tg in entries]
        )
        fast = encode_entries(
            [
                (n.encode("utf-8", "surrogateescape"), k, m, t, s, key, tg.encode())
                for n, k, m, t, s, key, tg in entries
            ]
        )
        assert fast == canonical
