"""Bundle records with meta/attrs, and the sharing of the file index between bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datamon.api.bundles import encode_record, make_bundle
from datamon.errors import IntegrityError, UsageError
from datamon.meta.records import decode_record

H = "ab" * 32
FIELDS = dict(
    repo="r",
    tree=H,
    parents=[],
    message="m",
    contributor_name="A",
    contributor_email="a@x",
    time_ns=1,
    file_count=2,
    total_size=3,
)


def test_records_without_meta_keep_the_version_1_encoding() -> None:
    raw = encode_record(**FIELDS)  # type: ignore[arg-type]
    assert raw == encode_record(**FIELDS, meta={}, attrs=None)  # type: ignore[arg-type]
    assert json.loads(raw)["version"] == 1 and b"meta" not in raw
    f = decode_record(raw)
    assert f.meta == {} and f.attrs is None


def test_meta_and_attrs_make_a_version_2_record_covered_by_the_id() -> None:
    b = make_bundle(**FIELDS, meta={"k": "v", "n": 1.5}, attrs="cd" * 32)  # type: ignore[arg-type]
    d = json.loads(b.record)
    assert d["version"] == 2 and d["meta"] == {"k": "v", "n": 1.5} and d["attrs"] == "cd" * 32
    assert b.meta == {"k": "v", "n": 1.5} and b.attrs == "cd" * 32
    other = make_bundle(**FIELDS, meta={"k": "w", "n": 1.5}, attrs="cd" * 32)  # type: ignore[arg-type]
    assert other.id != b.id
    f = decode_record(b.record, b.id)
    assert f.meta == {"k": "v", "n": 1.5} and f.attrs == "cd" * 32


@pytest.mark.parametrize(
    "change",
    [
        {"version": 1},  # extras need version 2
        {"meta": {}},  # writers never write an empty meta
        {"meta": []},
        {"meta": {"": 1}},
        {"attrs": "nothex"},
        {"other": 1},
    ],
)
def test_decode_refuses_bad_extras(change: dict[str, object]) -> None:
    d = json.loads(encode_record(**FIELDS, meta={"k": "v"}))  # type: ignore[arg-type]
    d.update(change)
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError):
        decode_record(raw)


def test_meta_that_cannot_be_stored_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encode_record(**FIELDS, meta={"k": float("nan")})  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        encode_record(**FIELDS, meta={"k": "x" * (70 << 10)})  # type: ignore[arg-type]


def test_unchanged_directories_and_pages_are_shared(tmp_path: Path) -> None:
    from datamon.api.context import Context
    from datamon.config import Contributor

    ctx = Context((tmp_path / "b").as_uri(), f"sqlite:///{tmp_path}/m.db", contributor=Contributor("T", ""))
    ctx.create_repo("r")
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    for i in range(3000):
        (big / f"{i:05}.txt").write_text(str(i))
    (src / "small").mkdir()
    (src / "small" / "a").write_text("a")
    rows = {f"big/{i:05}.txt": {"label": "cat" if i % 2 else "dog", "i": i} for i in range(3000)}
    ctx.upload("r", src, "first", attributes=rows)
    first = ctx.meta.index_size()
    assert first["index_files"] == 3001
    (big / "01234.txt").write_text("changed")
    ctx.upload("r", src, "second", attributes={"big/01234.txt": {"label": "cat", "i": -1}})
    second = ctx.meta.index_size()
    added_files = second["index_files"] - first["index_files"]
    added_links = second["index_links"] - first["index_links"]
    # one page of the big directory (not its 3000 files) and the page links above it
    assert 0 < added_files <= 1024, added_files
    assert added_links < 200, added_links
    q = ctx.query(
        "SELECT f.attrs ->> 'label' AS label, count(*) AS n FROM files f JOIN bundles b ON b.id = f.bundle "
        "WHERE b.message = 'second' GROUP BY f.attrs ->> 'label' ORDER BY label"
    )
    assert q == [{"label": None, "n": 1}, {"label": "cat", "n": 1501}, {"label": "dog", "n": 1499}]
    assert ctx.query("SELECT attrs FROM files f WHERE path = 'big/01234.txt' ORDER BY attrs") == [
        {"attrs": '{"i":-1,"label":"cat"}'},
        {"attrs": '{"i":1234,"label":"dog"}'},
    ]
    # an upload without attributes carries every unchanged file's row over
    (big / "00000.txt").write_text("changed again")
    ctx.upload("r", src, "third")
    q = ctx.query(
        "SELECT count(*) AS n FROM files f JOIN bundles b ON b.id = f.bundle "
        "WHERE b.message = 'third' AND f.attrs IS NOT NULL"
    )
    assert q == [{"n": 2999}]
    ctx.close()


def test_ten_changed_files_add_rows_of_their_pages_not_of_the_bundle(store: Any, tmp_path: Path) -> None:
    """Issue 11's growth target at small scale, on both engines: after a slice (which becomes the
    repo's latest bundle), an upload of the full tree that names its parent and changes 10 files
    with new attribute rows adds the rows of the changed pages and the links above them (a few per
    changed directory), not a row per file of the bundle; unchanged files keep their attributes."""
    from datamon.api.fileindex import PAGE_HARD

    n_dirs, per_dir = 12, 1000  # directories of more than PAGE_MAX entries: paginated
    src = tmp_path / "src"
    rows = {}
    for d in range(n_dirs):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(per_dir):
            p = f"d{d:02}/f{i:04}.bin"
            (src / p).write_bytes(f"{d}-{i}".encode())
            rows[p] = {"label": ["cat", "dog"][i % 2], "width": i}
    ctx = store.context()
    ctx.create_repo("r")
    v0 = ctx.upload("r", src, "v0", attributes=rows).bundle
    ctx.slice("r", "cats", repo="r", bundle=v0.id, where="attrs ->> 'label' = 'cat'")
    before = ctx.meta.index_size()
    changed = [f"d{d:02}/f{(d * 37) % per_dir:04}.bin" for d in range(10)]
    for p in changed:
        (src / p).write_bytes(b"changed " + p.encode())
    new = {p: {"label": "fish", "width": -1} for p in changed}
    e1 = ctx.upload("r", src, "e1", parents=[v0.id], attributes=new).bundle
    after = ctx.meta.index_size()
    added_files = after["index_files"] - before["index_files"]
    added_links = after["index_links"] - before["index_links"]
    assert 0 < added_files <= len(changed) * PAGE_HARD // 4, added_files  # ~10 pages of ~32
    assert added_files < n_dirs * per_dir // 10, added_files
    assert added_links < 10 * 40, added_links
    assert after["bundle_index"] - before["bundle_index"] == 1
    q = ctx.query(
        f"SELECT attrs ->> 'label' AS label, count(*) AS n FROM files WHERE bundle = '{e1.id}' "
        "GROUP BY attrs ->> 'label' ORDER BY label"
    )
    assert q == [{"label": "cat", "n": 5995}, {"label": "dog", "n": 5995}, {"label": "fish", "n": 10}]
    ctx.close()


def test_gc_collects_index_nodes_no_bundle_uses(store: Any, tmp_path: Path) -> None:
    """gc removes the index nodes of deleted bundles that no remaining bundle shares, once older
    than its grace period; the shared ones and everything younger stay, and queries still answer."""
    from datamon.api.forget import squash
    from datamon.api.gc import gc

    src = tmp_path / "src"
    rows = {}
    for d in ("kept", "changed"):
        (src / d).mkdir(parents=True)
        for i in range(300):
            p = f"{d}/f{i:03}"
            (src / p).write_text(p)
            rows[p] = {"label": "cat" if i % 3 else "dog"}
    ctx = store.context()
    ctx.create_repo("r")
    a = ctx.upload("r", src, "a", attributes=rows).bundle
    with_a = ctx.meta.index_size()
    for i in range(300):
        (src / "changed" / f"f{i:03}").write_text(f"new {i}")
    b = ctx.upload("r", src, "b", parents=[a.id]).bundle
    both = ctx.meta.index_size()
    assert squash(ctx, "r") and [x.id for x in ctx.meta.list_bundles("r")] == [b.id]
    assert gc(ctx).index_nodes == 0  # default grace: everything is younger than a day
    assert ctx.meta.index_size() == both
    dry = gc(ctx, grace_ns=0, dry_run=True)
    assert dry.index_nodes > 0 and ctx.meta.index_size() == both
    r = gc(ctx, grace_ns=0)
    assert (r.index_nodes, r.index_rows) == (dry.index_nodes, dry.index_rows)
    after = ctx.meta.index_size()
    # a's root and its "changed" directory went; "kept" (shared with b) stayed
    assert after["index_files"] == both["index_files"] - 300 == with_a["index_files"]
    assert after["bundle_index"] == 1
    assert gc(ctx, grace_ns=0).index_nodes == 0
    q = ctx.query(
        "SELECT attrs ->> 'label' AS label, count(*) AS n FROM files "
        f"WHERE bundle = '{b.id}' AND attrs IS NOT NULL GROUP BY attrs ->> 'label' ORDER BY label"
    )
    assert q == [{"label": "cat", "n": 200}, {"label": "dog", "n": 100}]
    ctx.close()
