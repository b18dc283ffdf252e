"""Hostile input for ``datamon query`` and attributes: user SQL cannot write, a query cannot run
forever, and a forged attributes object in the blob store is refused (docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_tree
from tests.query.conftest import Store
from tests.teams.conftest import assert_one_line_error


def _data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"img": {f"{i}.png": f"image {i}" for i in range(4)}, "README": "hi"})


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _upload(s: Store, src: Path, *args: object) -> str:
    r = s.ok("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--format", "{id}", *args)
    return r.out.strip()


WRITES = [
    "DROP TABLE bundles",
    "DELETE FROM bundles",
    "UPDATE bundles SET message = 'x'",
    "INSERT INTO repos (name, description, created_ns) VALUES ('x', '', 0)",
    "CREATE TABLE x (a int)",
    "SELECT 1; DELETE FROM bundles",
    "COMMIT; DELETE FROM bundles",
    "WITH d AS (DELETE FROM labels RETURNING *) SELECT * FROM d",
    "ATTACH DATABASE '/tmp/datamon-attached.db' AS x",
    "PRAGMA query_only = 0",
    "PRAGMA journal_mode = DELETE",
    "VACUUM",
]


def test_writes_are_refused_by_the_database(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    bid = _upload(store, _data(tmp_path), "--label", "prod")
    for sql in WRITES:
        r = store("query", sql)
        assert r.code == 1, (sql, r)
        assert "Traceback" not in r.err
        assert r.err.startswith("error: the query failed"), (sql, r.err)
    assert not Path("/tmp/datamon-attached.db").exists()
    assert [r["id"] for r in store.rows("SELECT id FROM bundles")] == [bid]
    assert (
        store.ok("label", "get", "--repo", "r", "--label", "prod", "--format", "{bundle}").out.strip() == bid
    )
    assert store.rows("SELECT message FROM bundles") == [{"message": "m"}]


def test_writes_are_refused_by_the_standard_library_sqlite_too(
    dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pysqlite3 is not installed, `datamon query` uses Python's own sqlite3 (an older
    SQLite): the same refusals, the same one-line errors."""
    import importlib

    from datamon.meta import query

    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    meta = f"sqlite:///{tmp_path}/meta.db"
    assert dm("context", "create", "q", "--blob", blob_dir.as_uri(), "--meta", meta).code == 0
    monkeypatch.setenv("DATAMON_CONTEXT", "q")
    monkeypatch.setattr(query, "_sqlite_module", lambda: importlib.import_module("sqlite3"))
    test_writes_are_refused_by_the_database(Store("sqlite", blob_dir, meta, dm), tmp_path)


def test_a_query_that_runs_too_long_is_stopped(store: Store) -> None:
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert_one_line_error(store("query", "--timeout", "0.5", sql), "longer than 0.5 s")


def test_a_damaged_attributes_object_is_refused(store: Store, tmp_path: Path) -> None:
    store.ok("repo", "create", "--repo", "r")
    src = _data(tmp_path)
    _upload(store, src, "--attributes", _jsonl(tmp_path / "a.jsonl", [{"path": "img/1.png", "x": 1}]))
    [name] = [b for b in store.blobs() if b.startswith("attrs/")]
    import zstandard

    forged = zstandard.ZstdCompressor().compress(b'{"path":"img/1.png","x":2}\n')
    (store.blob_dir / name).write_bytes(forged)
    with store.context() as ctx:
        ctx.meta.clear_file_index()
    r = store("admin", "reindex", "--json")
    assert r.code == 0
    assert json.loads(r.out)["indexed_bundles"] == 0
    assert "does not hash to its name" in r.err
    # the next upload, which carries rows over from that parent, refuses it too (exit 4)
    r = store("bundle", "upload", "--repo", "r", "--path", src, "--message", "m2")
    assert r.code == 4 and "does not hash to its name" in r.err, r
    # verify reads and hashes every bundle's attributes object: the forged one is a problem (exit 4)
    r = store("verify", "--json")
    assert r.code == 4, r
    found = [json.loads(line) for line in r.out.splitlines()]
    [problem] = [x for x in found if x["type"] == "problem"]
    assert problem["object"] == name.removeprefix("attrs/") and problem["problem"] == "corrupt"
    assert "does not hash to its name" in problem["detail"]
    assert [x["path"] for x in found if x["type"] == "affected"] == [""]
