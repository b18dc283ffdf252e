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
