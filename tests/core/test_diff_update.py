"""diff between bundles and between a download and a bundle; update makes them equal."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import make_tree, tree_files


def _changes(r) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(x["op"], x["path"]) for x in map(json.loads, r.out.splitlines())}


def _setup(dm, tmp_path: Path) -> tuple[str, str, Path, Path]:  # type: ignore[no-untyped-def]
    v1 = make_tree(
        tmp_path / "v1",
        {
            "keep.txt": "same",
            "change.txt": "old",
            "gone.txt": "bye",
            "dir": {"inner.txt": "x", "sub": {"deep.txt": "deep"}},
            "olddir": {"a.txt": "a", "b.txt": "b"},
            "unchanged": {"u1": "1", "u2": "2"},
        },
    )
    (v1 / "emptyold").mkdir()
    os.symlink("keep.txt", v1 / "link")
    v2 = tmp_path / "v2"
    import shutil

    shutil.copytree(v1, v2, symlinks=True)
    (v2 / "change.txt").write_text("new content")
    (v2 / "gone.txt").unlink()
    (v2 / "added.txt").write_text("hi")
    (v2 / "dir/sub/deep.txt").write_text("deeper")
    shutil.rmtree(v2 / "olddir")
    (v2 / "newdir/x").mkdir(parents=True)
    (v2 / "newdir/x/y.txt").write_text("y")
    (v2 / "emptyold").rmdir()
    (v2 / "emptynew").mkdir()
    (v2 / "link").unlink()
    os.symlink("change.txt", v2 / "link")
    os.chmod(v2 / "keep.txt", 0o755)
    dm("repo", "create", "--repo", "r")
    a = dm("bundle", "upload", "--repo", "r", "--path", v1, "--message", "v1", "--label", "one").out.strip()
    b = dm("bundle", "upload", "--repo", "r", "--path", v2, "--message", "v2", "--label", "two").out.strip()
    return a, b, v1, v2


EXPECTED = {
    ("U", "change.txt"),
    ("D", "gone.txt"),
    ("A", "added.txt"),
    ("U", "dir/sub/deep.txt"),
    ("D", "olddir/a.txt"),
    ("D", "olddir/b.txt"),
    ("A", "newdir/x/y.txt"),
    ("D", "emptyold/"),
    ("A", "emptynew/"),
    ("U", "link"),
    ("U", "keep.txt"),  # executable bit
}


def test_diff_between_bundles(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = _setup(dm, tmp_path)
    r = dm("bundle", "diff", "--repo", "r", f"{a[:10]}..{b[:10]}", "--json")
    assert r.code == 0, r
    assert _changes(r) == EXPECTED
    by_label = dm("bundle", "diff", "--repo", "r", "one..two", "--json")
    assert _changes(by_label) == EXPECTED
    back = _changes(dm("bundle", "diff", "--repo", "r", "two..one", "--json"))
    flip = {"A": "D", "D": "A", "U": "U"}
    assert back == {(flip[op], p) for op, p in EXPECTED}
    assert dm("bundle", "diff", "--repo", "r", f"{a}..{a}").out == ""
    text = dm("bundle", "diff", "--repo", "r", "one..two").out
    assert "A added.txt" in text.splitlines()


def test_diff_download_and_update(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, _b, v1, v2 = _setup(dm, tmp_path)
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--label", "one", "--destination", out).code == 0
    assert dm("bundle", "diff", "--repo", "r", "--label", "one", "--destination", out).out == ""
    r = dm("bundle", "diff", "--repo", "r", "--label", "two", "--destination", out, "--json")
    changes = _changes(r)
    assert EXPECTED - {("D", "olddir/a.txt"), ("D", "olddir/b.txt")} <= changes
    assert ("D", "olddir/a.txt") in changes and ("D", "olddir/") in changes
    # a local edit shows up too
    (out / "keep.txt").write_text("edited locally")
    assert ("U", "keep.txt") in _changes(
        dm("bundle", "diff", "--repo", "r", "--label", "one", "--destination", out, "--json")
    )
    r = dm("bundle", "update", "--repo", "r", "--label", "two", "--destination", out)
    assert r.code == 0, r
    assert tree_files(out) == tree_files(v2)
    assert dm("bundle", "diff", "--repo", "r", "--label", "two", "--destination", out).out == ""
    # and back again
    assert dm("bundle", "update", "--repo", "r", "--bundle", a, "--destination", out).code == 0
    assert tree_files(out) == tree_files(v1)
