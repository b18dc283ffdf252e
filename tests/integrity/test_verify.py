"""verify: clean stores pass; a flipped byte and a deleted pack are found, named and repaired."""

from __future__ import annotations

import json
from pathlib import Path

from datamon.api.reindex import reindex
from datamon.api.verify import CORRUPT, MISSING, PACK_MISSING, verify
from datamon.cas.pack import Kind, pack_blob_name
from tests.integrity.helpers import (
    contents,
    dataset,
    download_bytes,
    flip_byte,
    open_ctx,
    pack_files,
    run_cli,
    write_tree,
)


def _setup(tmp_path: Path, files: dict[str, bytes] | None = None) -> tuple[Path, str]:
    root = tmp_path / "store"
    src = write_tree(tmp_path / "src", files or dataset(1))
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        bid = ctx.upload("r", src, message="one").bundle.id
    return root, bid


def test_clean_store_verifies_fast_and_full(tmp_path: Path) -> None:
    root, bid = _setup(tmp_path)
    with open_ctx(root) as ctx:
        for full in (False, True):
            r = verify(ctx, full=full)
            assert r.ok, r.problems
            assert r.bundles == 1 and r.objects > 20 and r.bytes > 7_000_000
        assert verify(ctx, repo="r", bundle=bid[:8]).ok
    cli = run_cli(root, "verify", "--full", "--json")
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout.splitlines()[-1])
    assert summary["ok"] and summary["mode"] == "full" and summary["objects"] > 20


def _chunk_of(ctx, path: str, bid: str) -> tuple[bytes, tuple]:  # type: ignore[no-untyped-def]
    from datamon.api.bundles import lookup

    e = lookup(ctx, ctx.bundle("r", bid), path)
    row = ctx.meta.lookup_objects([e.key])[e.key]
    if row[5] == Kind.FILEMAP:
        first = ctx.cas.file_chunks(e.key, e.size)[0][0]
        return first, ctx.meta.lookup_objects([first])[first]
    return e.key, row


def _packs_of(ctx, repo: str, bid: str, path: str) -> set[bytes]:  # type: ignore[no-untyped-def]
    """The packs holding a file's object and, for a file map, its chunks."""
    from datamon.api.bundles import lookup

    e = lookup(ctx, ctx.bundle(repo, bid), path)
    row = ctx.meta.lookup_objects([e.key])[e.key]
    keys = [c[0] for c in ctx.cas.file_chunks(e.key, e.size)] if row[5] == Kind.FILEMAP else []
    return {row[1]} | {r[1] for r in ctx.meta.lookup_objects(keys).values()}


def test_flipped_byte_is_found_named_and_repaired_by_reupload(tmp_path: Path) -> None:
    files = dataset(2)
    root, bid = _setup(tmp_path, files)
    with open_ctx(root) as ctx:
        key, row = _chunk_of(ctx, "big/1.bin", bid)
    pack = root / "blobs" / pack_blob_name(row[1])
    flip_byte(pack, row[2] + row[3] // 2)

    down = run_cli(
        root, "bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "d"
    )
    assert down.returncode == 4, down
    assert key.hex() in down.stderr

    fast = run_cli(root, "verify")  # fast mode reads no chunk data: the pack's own index still agrees
    assert fast.returncode == 0, fast.stderr
    full = run_cli(root, "verify", "--full")
    assert full.returncode == 4
    assert f"{bid[:12]}\tbig/1.bin\tcorrupt: object {key.hex()}" in full.stdout
    assert "big/0.bin" not in full.stdout

    # A plain re-upload deduplicates against the index and cannot repair; --repair makes it.
    rep = run_cli(root, "verify", "--full", "--repair", "--json")
    assert rep.returncode == 4
    assert json.loads(rep.stdout.splitlines()[-1])["dropped_rows"] >= 2  # the chunk and its file map
    with open_ctx(root) as ctx:
        again = ctx.upload("r", tmp_path / "src", message="repair")
        assert again.new_bytes >= row[4]
        r = verify(ctx, full=True)
        assert r.ok, r.affected
        assert download_bytes(ctx, "r", bid, tmp_path / "restored") == files


def test_flipped_byte_in_a_tree_is_found_by_fast_verify(tmp_path: Path) -> None:
    root, bid = _setup(tmp_path)
    with open_ctx(root) as ctx:
        b = ctx.bundle("r", bid)
        sub = next(e for e in ctx.cas.read_tree(bytes.fromhex(b.tree)) if e.name == "small")
        row = ctx.meta.lookup_objects([sub.key])[sub.key]
    flip_byte(root / "blobs" / pack_blob_name(row[1]), row[2] + 3)
    with open_ctx(root) as ctx:
        r = verify(ctx)
        assert not r.ok
        assert [(a.bundle, a.path, a.problem.kind) for a in r.affected] == [(bid, "small/", CORRUPT)]
        assert verify(ctx, repair=True).dropped_rows == 1
        ctx.upload("r", tmp_path / "src", message="repair")
        assert verify(ctx, full=True).ok


def test_deleted_pack_names_every_bundle_and_path(tmp_path: Path) -> None:
    files = dataset(3, big=2, small=3)
    root = tmp_path / "store"
    src = write_tree(tmp_path / "src", files)
    other = write_tree(tmp_path / "other", {"copy/of/big.bin": files["big/0.bin"], "mine.txt": b"x" * 5000})
    with open_ctx(root) as ctx:
        ctx.cas.pack_size = 1 << 20  # roughly one pack per chunk
        ctx.create_repo("r")
        ctx.create_repo("q")
        b1 = ctx.upload("r", src, message="one").bundle.id
        b2 = ctx.upload("q", other, message="two").bundle.id
        _key, row = _chunk_of(ctx, "big/0.bin", b1)
        # Big files are read in parallel, so a pack may also hold chunks of another file: every
        # file with a chunk in the deleted pack is affected (big/0.bin and its copy at least).
        expected = {
            (repo, bid, path)
            for repo, bid, paths in (("r", b1, files), ("q", b2, ["copy/of/big.bin", "mine.txt"]))
            for path in paths
            if row[1] in _packs_of(ctx, repo, bid, path)
        }
        assert {("r", b1, "big/0.bin"), ("q", b2, "copy/of/big.bin")} <= expected
    (root / "blobs" / pack_blob_name(row[1])).unlink()

    res = run_cli(root, "verify", "--json")
    assert res.returncode == 4
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    hit = {(x["repo"], x["bundle"], x["path"]) for x in lines if x["type"] == "affected"}
    assert hit == expected
    assert {x["problem"] for x in lines if x["type"] == "affected"} == {PACK_MISSING}
    assert "error:" in res.stderr and "--repair" in res.stderr

    only_q = run_cli(root, "verify", "--repo", "q")
    assert only_q.returncode == 4 and b1[:12] not in only_q.stdout

    with open_ctx(root) as ctx:
        verify(ctx, repair=True)
        assert verify(ctx).problems  # still broken until the data comes back
        ctx.upload("q", other, message="repair")
        if {p for _, bid, p in expected if bid == b1} != {"big/0.bin"}:
            ctx.upload("r", src, message="repair")  # the pack held more than big/0.bin's chunks
        r = verify(ctx, full=True)
        assert r.ok, r.affected
        assert download_bytes(ctx, "r", b1, tmp_path / "d1") == files


def test_missing_index_rows_are_reported_and_reindex_finds_them(tmp_path: Path) -> None:
    root, _bid = _setup(tmp_path)
    with open_ctx(root) as ctx:
        n = ctx.meta.count_objects()
        for p in ctx.meta.list_packs():
            ctx.meta.remove_pack(p.name)
        r = verify(ctx)
        assert [(a.path, a.problem.kind) for a in r.affected] == [("/", MISSING)]
        rep = reindex(ctx)
        assert rep.added == n and rep.new_packs == len(pack_files(root))
        assert verify(ctx, full=True).ok


def test_bundle_record_tampering_is_reported(tmp_path: Path) -> None:
    import sqlite3

    root, _bid = _setup(tmp_path)
    with sqlite3.connect(root / "meta.db") as db:
        db.execute("UPDATE bundles SET message = 'x', record = CAST(? AS BLOB)", (b'{"tree":"00"}',))
    with open_ctx(root) as ctx:
        r = verify(ctx)
        assert not r.ok and [a.problem.kind for a in r.affected] == ["record"]


def test_verify_cli_selection_errors(tmp_path: Path) -> None:
    root, _ = _setup(tmp_path)
    assert run_cli(root, "verify", "--repo", "nope").returncode == 2
    assert run_cli(root, "verify", "--bundle", "abcdef").returncode == 1


def test_contents_helper_sees_files(tmp_path: Path) -> None:
    write_tree(tmp_path / "x", {"a/b": b"1"})
    assert contents(tmp_path / "x") == {"a/b": b"1"}
