"""``bundle slice``: the right files, bytes, attributes and parents, and no new chunk."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_tree, tree_files
from tests.query.conftest import Store
from tests.teams.conftest import assert_one_line_error


def _chunks(s: Store) -> int:
    """Chunks and file maps in the object index (trees are kind 3)."""
    import sqlalchemy as sa

    engine = sa.create_engine(s.meta_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM objects WHERE kind <> 3")).scalar_one())
    finally:
        engine.dispose()


def test_slice_by_where_and_by_query(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "pets")
    store.ok("repo", "create", "--repo", "cats")
    src = make_tree(
        tmp_path / "src", {"img": {f"{i}.png": f"image {i}" * 100 for i in range(6)}, "README": "r"}
    )
    rows = [{"path": f"img/{i}.png", "label": "cat" if i % 2 else "dog", "w": i * 100} for i in range(6)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src_id = store.ok(
        "bundle", "upload", "--repo", "pets", "--path", src, "--message", "m",
        "--attributes", tmp_path / "a.jsonl", "--label", "prod", "--format", "{id}",
    ).out.strip()  # fmt: skip
    chunks, blobs = _chunks(store), {b for b in store.blobs() if b.startswith("packs/")}
    r = store.ok(
        "bundle", "slice", "--repo", "pets", "--label", "prod", "--where", "attrs ->> 'label' = 'cat'",
        "--to-repo", "cats", "--message", "cats only", "--set-label", "v1", "--json",
    )  # fmt: skip
    new = json.loads(r.out)
    assert new["parents"] == [src_id] and new["files"] == 3 and new["repo"] == "cats"
    assert _chunks(store) == chunks  # no chunk and no file map stored
    assert {b for b in store.blobs() if b.startswith("packs/")} - blobs  # only a pack of trees
    got = store.rows(f"SELECT path, key, attrs FROM files WHERE bundle = '{new['id']}' ORDER BY path")
    want = store.rows(
        f"SELECT path, key, attrs FROM files WHERE bundle = '{src_id}' "
        "AND attrs ->> 'label' = 'cat' ORDER BY path"
    )
    assert got == want and [g["path"] for g in got] == ["img/1.png", "img/3.png", "img/5.png"]
    dest = tmp_path / "dest"
    store.ok("bundle", "download", "--repo", "cats", "--label", "v1", "--destination", dest)
    files = tree_files(dest)
    assert sorted(files) == ["img", "img/1.png", "img/3.png", "img/5.png"]
    assert (dest / "img/3.png").read_text() == "image 3" * 100
    # --query across bundles; colliding paths are refused
    store.ok("bundle", "upload", "--repo", "cats", "--path", src, "--message", "again", "--format", "{id}")
    collide = "SELECT repo, bundle, path FROM files WHERE path = 'README'"
    assert_one_line_error(
        store("bundle", "slice", "--to-repo", "cats", "--message", "x", "--query", collide), "README"
    )
    r = store.ok(
        "bundle", "slice", "--to-repo", "pets", "--message", "mix", "--json", "--query",
        f"SELECT repo, bundle, path FROM files WHERE (bundle = '{src_id}' AND path = 'README') "
        f"OR (bundle = '{new['id']}' AND path = 'img/1.png')",
    )  # fmt: skip
    mix = json.loads(r.out)
    assert sorted(mix["parents"]) == sorted([src_id, new["id"]]) and mix["files"] == 2
    assert _chunks(store) == chunks
    assert store("bundle", "slice", "--repo", "pets", "--where", "1 = 0", "--message", "none").code == 1
