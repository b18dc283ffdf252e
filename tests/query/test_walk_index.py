"""The file index an upload builds as it walks (``api/walkindex.py``) is the index ``admin
reindex`` builds from the stored trees: same root node, same rows. And the attribute rows read
on the fast road (``orjson``) are the lines the careful road (Python's ``json``) writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamon.api.attrfiles import LineReader, read_attr_lines
from datamon.api.attributes import _ENCODER, normalize_path, parse_schema

TABLES = ("index_nodes", "index_links", "index_files", "bundle_index")


def _dump(ctx: Any) -> dict[str, set[tuple[Any, ...]]]:
    from sqlalchemy import text

    out: dict[str, set[tuple[Any, ...]]] = {}
    with ctx.meta._read() as conn:
        for t in TABLES:
            cols = "node" if t == "index_nodes" else "*"  # created_ns is when, not what
            out[t] = {tuple(_plain(v) for v in r) for r in conn.execute(text(f"SELECT {cols} FROM {t}"))}
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, dict):  # PostgreSQL's jsonb
        return json.dumps(v, sort_keys=True)
    return v


def _tree(root: Path) -> dict[str, dict[str, Any]]:
    """Files, symlinks, an empty file, odd modes, a non-UTF-8 name, a directory of 600 files
    (paginated), nested and empty directories; returns attribute rows for some files."""
    rows: dict[str, dict[str, Any]] = {}
    (root / "big").mkdir(parents=True)
    for i in range(600):
        p = f"big/f{i:04}.txt"
        (root / p).write_bytes(f"file {i}".encode() * (i % 7))
        if i % 3:
            rows[p] = {"label": ["cat", "dog", "émoji 🐈"][i % 3], "width": i, "score": i / 7}
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "empty").mkdir()
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(3000))
    rows["a/b/c/deep.bin"] = {"label": "deep", "ok": True}
    (root / "a" / "zero").write_bytes(b"")
    rows["a/zero"] = {}  # a row with no value: no attributes
    (root / "a" / "setuid").write_bytes(b"x")
    os.chmod(root / "a" / "setuid", 0o4755)
    os.symlink("b/c/deep.bin", root / "a" / "link")
    os.symlink("../big", root / "a" / "dirlink")
    (root / os.fsdecode(b"caf\xe9.bin")).write_bytes(b"latin-1 name")
    (root / "top.txt").write_bytes(b"top")
    rows["top.txt"] = {"n": -(2**63), "big": 2**63 - 1, "tiny": 1e-300, "huge": 1e300}
    return rows


def _reindexed(ctx: Any, bundle_id: str) -> tuple[bytes | None, dict[str, set[tuple[Any, ...]]]]:
    from datamon.api.fileindex import index_bundle

    ctx.meta.clear_file_index()
    b = ctx.meta.find_bundle(bundle_id)
    index_bundle(ctx, b)
    return ctx.meta.bundle_index_node(bundle_id), _dump(ctx)


def test_walk_index_is_the_reindexed_index(store: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    rows = _tree(src)
    ctx = store.context()
    ctx.create_repo("r")
    b = ctx.upload("r", src, "v1", attributes=rows).bundle
    walked_root, walked = ctx.meta.bundle_index_node(b.id), _dump(ctx)
    assert walked_root is not None and len(walked["index_files"]) == 600 + 7
    root, rebuilt = _reindexed(ctx, b.id)
    assert root == walked_root
    assert walked == rebuilt
    # the attributes read back through the view: the empty row left none, a symlink has none
    got = {r["path"]: r["attrs"] for r in ctx.query(f"SELECT path, attrs FROM files WHERE bundle = '{b.id}'")}
    assert got["a/zero"] is None and got["a/link"] is None
    top = json.loads(got["top.txt"])  # PostgreSQL's jsonb writes 1e300 as its 301 digits
    assert {k: float(v) for k, v in top.items()} == {k: float(v) for k, v in rows["top.txt"].items()}
    ctx.close()


def test_walk_index_of_directories_reused_from_the_stat_cache(store: Any, tmp_path: Path) -> None:
    """A plain upload fills the stat cache; the upload with attributes then reuses every
    unchanged directory unread (and one changed directory is listed): the nodes of the reused
    directories are built from the store, and the result is still the reindexed index."""
    from datamon.api.context import Context
    from datamon.config import Contributor

    src = tmp_path / "src"
    rows = _tree(src)
    who = Contributor("Test", "t@x")
    ctx = Context(store.blob_dir.as_uri(), store.meta_url, contributor=who, state_dir=tmp_path / "state")
    ctx.create_repo("r")
    ctx.upload("r", src, "plain")
    (src / "a" / "b" / "c" / "deep.bin").write_bytes(b"changed")
    up = ctx.upload("r", src, "v2", attributes=rows)
    assert up.reused_dirs > 0
    walked_root = ctx.meta.bundle_index_node(up.bundle.id)
    walked = {k: v for k, v in _dump(ctx).items()}
    root, rebuilt = _reindexed(ctx, up.bundle.id)
    assert root == walked_root
    # the plain bundle was not indexed (it is indexed by a first query): same tables
    assert walked == rebuilt
    # an unchanged re-upload with the same rows shares every node
    before = ctx.meta.index_size()
    again = ctx.upload("r", src, "v3", attributes=rows).bundle
    assert ctx.meta.bundle_index_node(again.id) == root
    after = ctx.meta.index_size()
    assert after["index_files"] == before["index_files"] and after["index_nodes"] == before["index_nodes"]
    ctx.close()


def test_rows_carried_over_are_indexed_from_the_rows(store: Any, tmp_path: Path) -> None:
    """New rows for only some paths: the rest are carried over from the parent after the walk,
    so the index is built afterwards; it is still the reindexed one."""
    src = tmp_path / "src"
    rows = _tree(src)
    ctx = store.context()
    ctx.create_repo("r")
    ctx.upload("r", src, "v1", attributes=rows)
    b = ctx.upload("r", src, "v2", attributes={"top.txt": {"n": 1}}).bundle
    got = {r["path"]: r["attrs"] for r in ctx.query(f"SELECT path, attrs FROM files WHERE bundle = '{b.id}'")}
    assert json.loads(got["top.txt"]) == {"n": 1} and json.loads(got["a/b/c/deep.bin"])["label"] == "deep"
    walked_root = ctx.meta.bundle_index_node(b.id)
    root, _ = _reindexed(ctx, b.id)
    assert root == walked_root
    ctx.close()


# -- the two roads of reading rows --------------------------------------------------------------

_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_names = st.text(alphabet="abcpathxyz_é", min_size=1, max_size=6).filter(lambda k: k != "path")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_names, _scalars, max_size=6), st.text(alphabet="abc/é.", min_size=1, max_size=12))
def test_fast_and_careful_roads_write_the_same_line(row: dict[str, Any], path: str) -> None:
    """A line is the canonical JSON of the row with its path, whichever road it took."""
    from datamon.errors import UsageError

    reader = LineReader("t", None)
    try:
        reader.add(1, {"path": path, **row})
    except UsageError:
        return  # a path that is not normal, or a value no road takes (NUL): refused either way
    ((p, line),) = reader.lines.items()
    assert p == normalize_path(path, "")  # the careful road normalizes ("a/" is "a")
    want = _ENCODER.encode({**row, "path": p}) if row else ""
    assert line == want


def test_jsonl_values_the_fast_road_must_not_take(tmp_path: Path) -> None:
    """Integers past 64 bits (orjson would read a float), floats written with an exponent, nulls,
    NUL in text, duplicate keys, CR line ends: the careful road decides, as it always did."""
    from datamon.errors import UsageError

    f = tmp_path / "a.jsonl"
    f.write_bytes(
        b'{"path": "a", "x": 1e16, "y": 1e-05, "z": null}\r\n'
        b'{"path": "b", "x": 2, "x": 3}\r\n'
        b"\r\n"
        b'{"path": "c", "big": 9223372036854775807, "neg": -9223372036854775808}\n'
    )
    lines = read_attr_lines(f)
    assert lines == {
        "a": '{"path":"a","x":1e+16,"y":1e-05}',
        "b": '{"path":"b","x":3}',
        "c": '{"big":9223372036854775807,"neg":-9223372036854775808,"path":"c"}',
    }
    f.write_text('{"path": "a", "x": 18446744073709551616}\n')
    with pytest.raises(UsageError, match="'x' value 18446744073709551616 is not a string, number"):
        read_attr_lines(f)
    f.write_text('{"path": "a", "x": "nul\\u0000"}\n')
    with pytest.raises(UsageError, match="not storable text"):
        read_attr_lines(f)
    schema = parse_schema({"attributes": {"w": {"type": "int"}, "s": {"type": "float"}}})
    f.write_text('{"path": "a", "w": "640", "s": 1e20}\n{"path": "b", "w": 1.5}\n')
    with pytest.raises(UsageError, match=r"'b'.*'w' value 1\.5 is not of type int"):
        read_attr_lines(f, schema)
    f.write_text('{"path": "a", "w": "640", "s": 1e20}\n')
    assert read_attr_lines(f, schema) == {"a": '{"path":"a","s":1e+20,"w":640}'}


# -- the attributes worker process (a file source, nothing carried over) -------------------------


def _jsonl(path: Path, rows: dict[str, dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for p, row in rows.items():
            f.write(json.dumps({"path": p, **row}, ensure_ascii=False) + "\n")
    return path


@pytest.mark.parametrize("split", [False, True])
def test_attributes_worker_indexes_as_the_walk_goes(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    """Rows from a file are read (in two halves at once when ``split``), checked and indexed by a
    worker process: the bundle's attributes and index are those of the same rows given in memory."""
    from datamon.api import attrfiles, attrworker, uploadattrs

    monkeypatch.setattr(uploadattrs, "WORKER_BYTES", 0)
    monkeypatch.setattr(attrfiles, "SPLIT_BYTES", 1 if split else 1 << 40)
    started: list[str] = []
    checked = attrworker.AttrWorker.checked
    monkeypatch.setattr(
        attrworker.AttrWorker, "checked", lambda w: (started.append(w._source), checked(w))[1]
    )
    src = tmp_path / "src"
    rows = _tree(src)
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    assert (attrfiles.split_point(str(source)) is not None) == split
    ctx = store.context()
    ctx.create_repo("r")
    b = ctx.upload("r", src, "from a file", attributes=source).bundle
    assert started == [str(source)]  # the worker read it
    walked_root, walked = ctx.meta.bundle_index_node(b.id), _dump(ctx)
    root, rebuilt = _reindexed(ctx, b.id)
    assert root == walked_root and walked == rebuilt
    ctx.create_repo("mem")
    same = ctx.upload("mem", src, "in memory", attributes=rows).bundle
    assert same.attrs == b.attrs and ctx.meta.bundle_index_node(same.id) == root
    ctx.close()


@pytest.mark.parametrize(
    "where, want",
    [
        ({10: {"width": "wide"}, 1990: {"width": "wider"}}, r"'d/f0010'.*'width' value 'wide'"),
        ({1990: {"width": "wider"}}, r"'d/f1990'.*'width' value 'wider'"),
        ({1990: {"path": "d/f0003"}}, r"path 'd/f0003' has two rows"),
        (
            {3: {"path": "nope/a"}, 1995: {"path": "nope/b"}},
            r"attributes name 2 path\(s\) .*'nope/a', 'nope/b'",
        ),
    ],
)
def test_attributes_worker_refuses_bad_rows_before_writing(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: dict[int, dict[str, Any]], want: str
) -> None:
    """Errors in either half of a file read in two halves: the first in the file is named, and
    nothing is written (no blob, no bundle)."""
    from datamon.api import attrfiles, uploadattrs
    from datamon.errors import UsageError

    monkeypatch.setattr(uploadattrs, "WORKER_BYTES", 0)
    monkeypatch.setattr(attrfiles, "SPLIT_BYTES", 1)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    rows: dict[str, dict[str, Any]] = {}
    for i in range(2000):
        (src / "d" / f"f{i:04}").write_bytes(f"{i}".encode())
        rows[f"d/f{i:04}"] = {"width": i}
    lines = [{"path": p, **r} for p, r in rows.items()]
    for i, change in where.items():
        lines[i] = {**lines[i], **change}
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ctx = store.context()
    ctx.create_repo("r")
    ctx.meta.set_schema("r", json.dumps({"attributes": {"width": {"type": "int"}}}))
    before = store.blobs()
    with pytest.raises(UsageError, match=want):
        ctx.upload("r", src, "bad", attributes=source)
    assert store.blobs() == before
    assert ctx.meta.latest_bundle("r") is None
    ctx.close()
