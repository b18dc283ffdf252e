"""Labels move, keep history, and lose no update under compare-and-swap."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_tree


def test_labels_move_and_keep_history(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "s", {"a": "1"})
    dm("repo", "create", "--repo", "r")
    b1 = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "1").out.strip()
    (src / "a").write_text("2")
    b2 = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "2").out.strip()
    assert dm("label", "set", "--repo", "r", "--label", "prod", "--bundle", b1[:6]).code == 0
    assert dm("label", "get", "--repo", "r", "--label", "prod", "--format", "{bundle}").out.strip() == b1
    assert dm("label", "set", "--repo", "r", "--label", "prod", "--bundle", b2).code == 0
    assert dm("label", "set", "--repo", "r", "--label", "dev").code == 0  # latest bundle by default
    labels = [json.loads(x) for x in dm("label", "list", "--repo", "r", "--json").out.splitlines()]
    assert [(x["label"], x["bundle"]) for x in labels] == [("dev", b2), ("prod", b2)]
    hist = [
        json.loads(x)
        for x in dm("label", "history", "--repo", "r", "--label", "prod", "--json").out.splitlines()
    ]
    assert [(h["old"], h["new"]) for h in hist] == [(b1, b2), (None, b1)]
    # download by label gets the labelled bundle
    out = tmp_path / "o"
    assert dm("bundle", "download", "--repo", "r", "--label", "prod", "--destination", out).code == 0
    assert (out / "a").read_text() == "2"


def test_compare_and_swap(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "s", {"a": "1"})
    dm("repo", "create", "--repo", "r")
    b1 = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "1").out.strip()
    (src / "a").write_text("2")
    b2 = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "2").out.strip()
    assert dm("label", "set", "--repo", "r", "--label", "p", "--bundle", b1, "--expected", "none").code == 0
    again = dm("label", "set", "--repo", "r", "--label", "p", "--bundle", b2, "--expected", "none")
    assert again.code == 3 and b1 in again.err
    ok = dm("label", "set", "--repo", "r", "--label", "p", "--bundle", b2, "--expected", b1[:8])
    assert ok.code == 0, ok
    lost = dm("label", "set", "--repo", "r", "--label", "p", "--bundle", b1, "--expected", b1)
    assert lost.code == 3
    assert b2 in lost.err and "error:" in lost.err and lost.err.count("\n") == 1
    assert dm("label", "get", "--repo", "r", "--label", "p", "--format", "{bundle}").out.strip() == b2
