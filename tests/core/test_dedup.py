"""Deduplication and the stat cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import datamon
from datamon.cas.hashing import key_of


def _store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "blobs").rglob("*.pack"))


def test_same_data_twice_is_stored_once(tmp_path: Path, datamon_home: Path) -> None:
    data = random.Random(1).randbytes(6 << 20)
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "x.bin").write_bytes(data)
        (d / "sub/copy.bin").write_bytes(data)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", a, message="a")
        after_first = _store_bytes(datamon_home)
        second = ctx.upload("r", b, message="b")
        assert first.new_bytes == len(data)  # the copy inside the same upload is deduplicated
        assert second.new_bytes == 0
        assert second.stored_bytes < 4096  # only tree objects
        assert _store_bytes(datamon_home) - after_first < 4096


def test_insertion_in_middle_of_64mib_file_stores_few_chunks(tmp_path: Path) -> None:
    rnd = random.Random(7)
    data = rnd.randbytes(64 << 20)
    d = tmp_path / "d"
    d.mkdir()
    f = d / "big.bin"
    f.write_bytes(data)
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        v1 = ctx.upload("r", d, message="v1")
        mid = len(data) // 2
        f.write_bytes(data[:mid] + rnd.randbytes(100) + data[mid:])
        v2 = ctx.upload("r", d, message="v2")
        assert v1.new_bytes == len(data)
        # about one or two chunks around the insertion (chunks average 1 MiB, at most 4 MiB)
        assert 0 < v2.new_bytes <= 2 * ctx.cas.chunker.params.max_size
        got = b"".join(ctx.cas.iter_file(*_file(ctx, v2.bundle, "big.bin")))
        assert key_of(got) == key_of(f.read_bytes())


def _file(ctx, bundle, path):  # type: ignore[no-untyped-def]
    from datamon.api.bundles import lookup

    e = lookup(ctx, bundle, path)
    return e.key, e.size


def test_unchanged_tree_is_not_reread(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for i in range(50):
        (d / f"dir{i % 5}").mkdir(parents=True, exist_ok=True)
        (d / f"dir{i % 5}/f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", d, message="v1")
        assert first.read_files == 50
        again = ctx.upload("r", d, message="v2")
        assert again.read_files == 0
        assert again.bundle.tree == first.bundle.tree
        # touching one file (new mtime) makes exactly that one be read again
        p = d / "dir3/f3.txt"
        os.utime(p, ns=(1, 1))
        third = ctx.upload("r", d, message="v3")
        assert third.read_files == 1
        # a cached key whose object vanished from the index is not trusted
        (d / "dir1/f1.txt").write_text("changed\n")
        assert ctx.upload("r", d, message="v4").read_files == 1


def test_stat_cache_does_not_trust_missing_objects(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("hello")
    home = tmp_path / "h"
    with datamon.connect() as ctx:
        ctx.create_repo("r")
        ctx.upload("r", d, message="v1")
    # a different store (fresh metadata + blobs) shares the same local stat cache dir
    state = Path(os.environ["DATAMON_HOME"]) / "cache"
    with datamon.api.Context((home / "blobs").as_uri(), f"sqlite:///{home}/m.db", state_dir=state) as other:
        other.create_repo("r")
        res = other.upload("r", d, message="v1")
        assert res.read_files == 1
        assert b"".join(other.cas.iter_file(*_file(other, res.bundle, "a.txt"))) == b"hello"
