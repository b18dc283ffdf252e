"""admin reindex: the object index comes back from the packs alone; bundles from a DB backup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datamon.api.gc import gc
from datamon.api.reindex import reindex
from datamon.api.verify import verify
from datamon.cas.pack import Kind, pack_blob_name
from tests.integrity.helpers import dataset, download_bytes, open_ctx, rand, run_cli, write_tree


def _all_keys(ctx) -> set[bytes]:  # type: ignore[no-untyped-def]
    return {r[0] for p in ctx.meta.list_packs() for r in ctx.meta.objects_in_pack(p.name)}


def test_lost_database_then_reindex_and_backup_restore(tmp_path: Path) -> None:
    root = tmp_path / "s"
    first, later = dataset(1, big=2, small=5), dataset(2, big=1, small=5)
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        b1 = ctx.upload("r", write_tree(tmp_path / "a", first), message="1").bundle.id
    shutil.copy(root / "meta.db", tmp_path / "backup.db")  # a backup taken with no writer running
    with open_ctx(root) as ctx:
        ctx.upload("r", write_tree(tmp_path / "b", later), message="2")
        keys = _all_keys(ctx)

    (root / "meta.db").unlink()
    res = run_cli(root, "admin", "reindex", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["added"] == len(keys) and rep["dropped_filemaps"] == 0
    with open_ctx(root) as ctx:
        assert _all_keys(ctx) == keys  # every object is found again ...
        assert ctx.list_repos() == []  # ... but repos, bundles and labels need the backup
        assert reindex(ctx).added == 0  # idempotent

    shutil.copy(tmp_path / "backup.db", root / "meta.db")
    with open_ctx(root) as ctx:
        again = reindex(ctx)
        assert again.added > 0 and again.new_packs > 0  # what was uploaded after the backup
        assert verify(ctx, full=True).ok
        assert download_bytes(ctx, "r", b1, tmp_path / "d") == first
        freed = gc(ctx, grace_ns=0)  # bundle 2 is not in the backup: its data is garbage now
        assert freed.freed_bytes > 2_500_000
        assert verify(ctx, full=True).ok
        assert download_bytes(ctx, "r", b1, tmp_path / "d2") == first


def test_reindex_drops_file_maps_whose_chunks_are_gone(tmp_path: Path) -> None:
    root = tmp_path / "s"
    big = rand(5_000_000, 3)
    with open_ctx(root) as ctx:
        ctx.cas.pack_size = 1 << 20
        ctx.create_repo("r")
        ctx.upload("r", write_tree(tmp_path / "a", {"big.bin": big}), message="1")
        rows = [r for p in ctx.meta.list_packs() for r in ctx.meta.objects_in_pack(p.name)]
        fm = next(r for r in rows if r[5] == Kind.FILEMAP)
        chunk_pack = next(r[1] for r in rows if r[5] == Kind.CHUNK and r[1] != fm[1])
    (root / "meta.db").unlink()
    (root / "blobs" / pack_blob_name(chunk_pack)).unlink()  # as gc would have, after the backup
    with open_ctx(root) as ctx:
        rep = reindex(ctx)
        assert rep.dropped_filemaps == 1
        assert fm[0] not in ctx.meta.lookup_objects([fm[0]])
        # so an upload of the same file stores it again instead of trusting the broken map
        ctx.create_repo("r")  # the database was lost
        up = ctx.upload("r", write_tree(tmp_path / "b", {"big.bin": big}), message="2")
        assert up.new_bytes > 0
        assert download_bytes(ctx, "r", up.bundle.id, tmp_path / "d") == {"big.bin": big}


def test_reindex_waits_for_gc(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.meta.try_lock("gc", "a running gc", 3600 * 10**9)
    res = run_cli(root, "admin", "reindex")
    assert res.returncode == 3 and "another gc or reindex" in res.stderr
