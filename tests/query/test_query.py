"""Know the data: bundle meta, file attributes, schemas and ``datamon query``, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamon.api.query import VIEW_COLUMNS
from tests.conftest import make_tree
from tests.query.conftest import Store
from tests.teams.conftest import assert_one_line_error

SCHEMA = {
    "attributes": {
        "label": {"type": "string", "required": True, "values": ["cat", "dog"]},
        "width": {"type": "int"},
        "score": {"type": "float"},
        "ok": {"type": "bool"},
    },
    "meta": {"source": {"type": "string", "required": True}, "round": {"type": "int"}},
}


def _data(tmp_path: Path, name: str = "src", n: int = 4) -> Path:
    return make_tree(tmp_path / name, {"img": {f"{i}.png": f"image {i}" for i in range(n)}, "README": "hi"})


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _upload(s: Store, src: Path, *args: object) -> str:
    return s.ok(
        "bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--format", "{id}", *args
    ).out.strip()


def test_meta_and_attributes_round_trip(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    src = _data(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"round": 3, "tags": ["a", "b"], "source": "file"}))
    attrs = _jsonl(
        tmp_path / "a.jsonl",
        [
            {"path": "img/0.png", "label": "cat", "width": 640, "score": 0.5, "ok": True},
            {"path": "./img/1.png", "label": "dog", "width": 320, "ok": False, "note": None},
        ],
    )
    bid = _upload(
        store, src, "--meta-file", tmp_path / "meta.json", "--meta", "source=scanner", "--attributes", attrs
    )
    got = json.loads(store.ok("bundle", "get", "--repo", "r", "--bundle", bid, "--json").out)
    assert got["meta"] == {"round": 3, "source": "scanner", "tags": ["a", "b"]}
    listed = json.loads(store.ok("bundle", "list", "--repo", "r", "--json").out.splitlines()[0])
    assert listed["meta"] == got["meta"]
    rows = store.rows("SELECT path, attrs, size, kind FROM files ORDER BY path")
    assert [r["path"] for r in rows] == ["README", "img/0.png", "img/1.png", "img/2.png", "img/3.png"]
    by = {r["path"]: r for r in rows}
    assert json.loads(by["img/0.png"]["attrs"]) == {"label": "cat", "width": 640, "score": 0.5, "ok": True}
    assert json.loads(by["img/1.png"]["attrs"]) == {"label": "dog", "width": 320, "ok": False}
    assert by["README"]["attrs"] is None and by["README"]["size"] == 2 and by["README"]["kind"] == "file"
    # the same values through the Python API
    with store.context() as ctx:
        b = ctx.bundle("r", bundle=bid)
        assert b.meta == got["meta"] and b.attrs is not None
        from datamon.api.attributes import bundle_attrs

        assert bundle_attrs(ctx, b)["img/1.png"] == {"label": "dog", "width": 320, "ok": False}
        assert ctx.query("SELECT count(*) AS n FROM files WHERE attrs ->> 'label' = 'cat'") == [{"n": 1}]
        df = ctx.query_df("SELECT path, size FROM files ORDER BY path")
        assert list(df["path"])[:2] == ["README", "img/0.png"]


def test_csv_and_parquet_attributes(store: Store, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    store.ok("repo", "create", "--repo", "r")
    src = _data(tmp_path)
    (tmp_path / "a.csv").write_text(
        "path,label,width,zip,flag\nimg/0.png,cat,640,01234,true\nimg/1.png,,12.5,9,\n"
    )
    _upload(store, src, "--attributes", tmp_path / "a.csv")
    rows = {
        r["path"]: json.loads(r["attrs"])
        for r in store.rows("SELECT path, attrs FROM files WHERE attrs IS NOT NULL")
    }
    assert rows == {
        "img/0.png": {"label": "cat", "width": 640, "zip": "01234", "flag": True},
        "img/1.png": {"width": 12.5, "zip": 9},
    }
    table = pa.table({"path": ["img/2.png", "img/3.png"], "label": ["dog", None], "width": [10, 20]})
    pq.write_table(table, tmp_path / "a.parquet")
    _upload(store, src, "--attributes", tmp_path / "a.parquet")
    rows = {
        r["path"]: json.loads(r["attrs"])
        for r in store.rows(
            "SELECT f.path, f.attrs FROM files f JOIN bundles b ON b.id = f.bundle "
            "WHERE f.attrs IS NOT NULL AND b.time_ns = (SELECT max(time_ns) FROM bundles)"
        )
    }
    # unchanged files keep the rows of the parent; the new rows are added
    assert rows["img/2.png"] == {"label": "dog", "width": 10} and rows["img/3.png"] == {"width": 20}
    assert rows["img/0.png"]["label"] == "cat"


def test_rows_for_paths_not_in_the_bundle_are_exit_1(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    src = _data(tmp_path)
    attrs = _jsonl(
        tmp_path / "a.jsonl", [{"path": f"nope/{i}", "x": 1} for i in range(5)] + [{"path": "README", "x": 2}]
    )
    before = store.blobs()
    r = store("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--attributes", attrs)
    assert_one_line_error(r, "5 path(s)", "'nope/0'", "'nope/1'", "'nope/2'", "2 more")
    assert store.blobs() == before
    assert store.ok("bundle", "list", "--repo", "r").out == ""


BAD = [
    ({"path": "img/0.png", "label": "bird"}, ["img/0.png", "label", "bird"]),
    ({"path": "img/0.png", "label": "cat", "width": "wide"}, ["img/0.png", "width", "wide"]),
    ({"path": "img/0.png", "width": 3}, ["img/0.png", "label", "required"]),
    ({"path": "img/0.png", "label": "cat", "ok": "maybe"}, ["img/0.png", "ok", "maybe"]),
]


@pytest.mark.parametrize(("row", "mentions"), BAD)
def test_schema_violations_are_exit_1_and_write_nothing(
    store: Store, tmp_path: Path, row: dict[str, object], mentions: list[str]
) -> None:
    store.ok("repo", "create", "--repo", "r")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    store.ok("repo", "schema", "set", "--repo", "r", "--file", tmp_path / "schema.json")
    src = _data(tmp_path)
    before = store.blobs()
    attrs = _jsonl(tmp_path / "a.jsonl", [row])
    r = store(
        "bundle",
        "upload",
        "--repo",
        "r",
        "--path",
        src,
        "--message",
        "m",
        "--meta",
        "source=s",
        "--attributes",
        attrs,
    )
    assert_one_line_error(r, *mentions)
    assert store.blobs() == before  # no pack, no attributes object
    assert store.ok("bundle", "list", "--repo", "r").out == ""
    assert store.rows("SELECT count(*) AS n FROM files") == [{"n": 0}]


def test_schema_meta_rules_and_history(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    store.ok("repo", "schema", "set", "--repo", "r", "--file", tmp_path / "schema.json")
    src = _data(tmp_path)
    before = store.blobs()
    r = store("bundle", "upload", "--repo", "r", "--path", src, "--message", "m")
    assert_one_line_error(r, "source", "required")
    r = store(
        "bundle",
        "upload",
        "--repo",
        "r",
        "--path",
        src,
        "--message",
        "m",
        "--meta",
        "source=a",
        "--meta",
        "round=x",
    )
    assert_one_line_error(r, "round", "'x'", "int")
    assert store.blobs() == before
    bid = _upload(store, src, "--meta", "source=a", "--meta", "round=7")
    assert json.loads(store.ok("bundle", "get", "--repo", "r", "--bundle", bid, "--json").out)["meta"] == {
        "round": 7,
        "source": "a",
    }
    (tmp_path / "none.json").write_text("{}")
    store.ok("repo", "schema", "set", "--repo", "r", "--file", tmp_path / "none.json")
    hist = [
        json.loads(x)
        for x in store.ok("repo", "schema", "get", "--repo", "r", "--history", "--json").out.splitlines()
    ]
    assert [h["version"] for h in hist] == [2, 1]
    assert hist[0]["schema"] == {} and hist[1]["schema"]["meta"]["source"]["required"] is True
    _upload(store, src)  # no schema in force any more
    (tmp_path / "bad.json").write_text(json.dumps({"attributes": {"path": {"type": "string"}}}))
    assert_one_line_error(
        store("repo", "schema", "set", "--repo", "r", "--file", tmp_path / "bad.json"), "path"
    )
    assert store("repo", "schema", "get", "--repo", "nope").code == 2


def test_views_answer_the_documented_columns(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r", "--description", "d")
    (tmp_path / "schema.json").write_text(
        json.dumps({"attributes": {"label": {"type": "string"}, "width": {"type": "int"}}})
    )
    store.ok("repo", "schema", "set", "--repo", "r", "--file", tmp_path / "schema.json")
    src = _data(tmp_path)
    attrs = _jsonl(tmp_path / "a.jsonl", [{"path": "img/0.png", "label": "cat", "width": 640}])
    bid = _upload(store, src, "--attributes", attrs, "--label", "prod", "--meta", "k=v")
    with store.context() as ctx:
        from datamon.api.query import execute

        for view, cols in VIEW_COLUMNS.items():
            with execute(ctx, f"SELECT * FROM {view}") as r:
                want = list(cols)
                if view == "files":
                    want = [*cols[:-1], "label", "width", "attrs"]
                assert r.columns == want, view
                list(r)
    f = store.rows("SELECT * FROM files WHERE path = 'img/0.png'")[0]
    assert f["repo"] == "r" and f["bundle"] == bid and f["name"] == "0.png" and f["size"] == 7
    assert f["label"] == "cat" and f["width"] == 640 and f["mode"] & 0o777 and len(f["key"]) == 64
    assert f["mtime"].endswith("Z") and isinstance(f["mtime_ns"], int)
    from datamon.cas.hashing import key_of

    assert f["key"] == key_of(b"image 0").hex()
    assert store.rows("SELECT path FROM files WHERE label = 'cat' AND width > 512") == [{"path": "img/0.png"}]
    b = store.rows("SELECT * FROM bundles")[0]
    assert b["id"] == bid and json.loads(b["meta"]) == {"k": "v"} and json.loads(b["parents"]) == []
    assert b["files"] == 5 and b["attrs_key"] and b["time"].endswith("Z") and "Test User" in b["contributor"]
    assert store.rows("SELECT repo, label, bundle FROM labels") == [
        {"repo": "r", "label": "prod", "bundle": bid}
    ]
    h = store.rows("SELECT * FROM label_history")
    assert h[0]["label"] == "prod" and h[0]["new_bundle"] == bid and h[0]["old_bundle"] is None
    assert store.rows("SELECT repo, description, bundles FROM repos") == [
        {"repo": "r", "description": "d", "bundles": 1}
    ]


def test_a_query_across_three_bundles_joins_correctly(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    store.ok("repo", "create", "--repo", "other")
    src = _data(tmp_path)
    ids = []
    for i, label in enumerate(["v1", "v2", "v3"]):
        (src / "img" / "0.png").write_text(f"changed {i}")
        attrs = _jsonl(
            tmp_path / f"a{i}.jsonl", [{"path": "img/0.png", "label": ["cat", "dog", "cat"][i], "round": i}]
        )
        ids.append(_upload(store, src, "--attributes", attrs, "--label", label, "--meta", f"round={i}"))
    store.ok("bundle", "upload", "--repo", "other", "--path", src, "--message", "x", "--label", "v1")
    rows = store.rows(
        "SELECT l.label, f.attrs ->> 'label' AS kind, b.meta ->> 'round' AS round, f.size "
        "FROM files f JOIN bundles b ON b.id = f.bundle "
        "JOIN labels l ON l.bundle = f.bundle AND l.repo = f.repo "
        "WHERE f.repo = 'r' AND f.path = 'img/0.png' ORDER BY l.label"
    )
    assert rows == [
        {"label": "v1", "kind": "cat", "round": "0", "size": 9},
        {"label": "v2", "kind": "dog", "round": "1", "size": 9},
        {"label": "v3", "kind": "cat", "round": "2", "size": 9},
    ]
    counts = store.rows(
        "SELECT f.repo, count(*) AS n, count(DISTINCT f.bundle) AS b "
        "FROM files f GROUP BY f.repo ORDER BY f.repo"
    )
    assert counts == [{"repo": "other", "n": 5, "b": 1}, {"repo": "r", "n": 15, "b": 3}]
    parents = store.rows(f"SELECT parents FROM bundles WHERE id = '{ids[2]}'")
    assert json.loads(parents[0]["parents"]) == [ids[1]]
    # CSV and tab-separated output
    out = store.ok("query", "--csv", "SELECT path, size FROM files WHERE repo = 'other' ORDER BY path").out
    assert out.splitlines()[:2] == ["path,size", "README,2"]
    out = store.ok("query", "SELECT path, size FROM files WHERE repo = 'other' ORDER BY path").out
    assert out.splitlines()[:2] == ["path\tsize", "README\t2"]
    fmt = store.ok(
        "query",
        "--format",
        "{path}={size}",
        "SELECT path, size FROM files WHERE repo = 'other' ORDER BY path",
    )
    assert fmt.out.splitlines()[0] == "README=2"


def test_reindex_rebuilds_the_file_index_from_the_blob_store(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    src = _data(tmp_path)
    _upload(store, src, "--attributes", _jsonl(tmp_path / "a.jsonl", [{"path": "img/1.png", "x": 1}]))
    (src / "img" / "2.png").write_text("new")
    _upload(store, src)
    sql = "SELECT bundle, path, key, attrs FROM files ORDER BY bundle, path"
    want = store.rows(sql)
    assert len(want) == 10
    with store.context() as ctx:
        ctx.meta.clear_file_index()
        assert ctx.meta.index_size()["index_files"] == 0
    r = store.ok("admin", "reindex", "--json")
    assert json.loads(r.out)["indexed_bundles"] == 2
    with store.context() as ctx:
        assert ctx.meta.index_size()["bundle_index"] == 2
        assert store.rows(sql) == want
    r = store.ok("admin", "reindex", "--files", "--json")
    assert json.loads(r.out)["indexed_bundles"] == 2
    assert store.rows(sql) == want
