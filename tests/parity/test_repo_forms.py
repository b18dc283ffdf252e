"""Datamon command forms on repos: the creator recorded at `repo create` and shown by `repo list/get`."""

from __future__ import annotations

import json

import pytest


def test_repo_records_its_creator(dm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r", "--description", "d").code == 0
    got = json.loads(dm("repo", "get", "--repo", "r", "--json").out)
    assert got["creator"] == "Test User"
    assert got["creator_email"] == "test@example.com"
    text = dm("repo", "list").out
    assert "Test User <test@example.com>" in text
    rows = [json.loads(line) for line in dm("repo", "list", "--json").out.splitlines()]
    assert [r["creator"] for r in rows] == ["Test User"]


def test_repo_with_size_counts_latest_bytes_and_stored_objects(dm, tree_factory) -> None:  # type: ignore[no-untyped-def]
    import os

    data = tree_factory({"a.bin": os.urandom(50_000), "b.txt": "hello"})
    assert dm("repo", "create", "--repo", "r").code == 0
    assert dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "one").code == 0
    first = json.loads(dm("repo", "get", "--repo", "r", "--with-size", "--json").out)
    assert first["size"] == 50_005
    assert first["stored"] >= 50_000 and first["missing_objects"] == 0  # random bytes do not compress
    (data / "c.bin").write_bytes(os.urandom(20_000))
    assert dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "two").code == 0
    second = json.loads(dm("repo", "get", "--repo", "r", "--with-size", "--json").out)
    assert second["size"] == 70_005
    # the second bundle shares a.bin and b.txt: only c.bin (and a new tree) adds stored bytes
    assert 20_000 <= second["stored"] - first["stored"] < 21_000
    assert "size" not in json.loads(dm("repo", "get", "--repo", "r", "--json").out)
    rows = [json.loads(line) for line in dm("repo", "list", "--with-size", "--json").out.splitlines()]
    assert rows[0]["stored"] == second["stored"]
    assert "70005 B logical" in dm("repo", "list", "--with-size", "--batch-size", "5").out
