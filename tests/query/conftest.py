"""Fixtures for query tests: a context on SQLite (a file) or on the real PostgreSQL server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliResult


@dataclass
class Store:
    """Context ``q`` made current through ``DATAMON_CONTEXT``; ``blob_dir`` holds the blob store."""

    kind: str
    blob_dir: Path
    meta_url: str
    dm: Any

    def __call__(self, *args: object) -> CliResult:
        return self.dm(*args)  # type: ignore[no-any-return,unused-ignore]

    def ok(self, *args: object) -> CliResult:
        r = self.dm(*args)
        assert r.code == 0, r
        return r  # type: ignore[no-any-return,unused-ignore]

    def rows(self, sql: str) -> list[dict[str, Any]]:
        r = self.ok("query", "--json", sql)
        return [json.loads(line) for line in r.out.splitlines()]

    def blobs(self) -> set[str]:
        return {str(p.relative_to(self.blob_dir)) for p in self.blob_dir.rglob("*") if p.is_file()}

    def context(self) -> Any:
        from datamon.api.context import Context
        from datamon.config import Contributor

        return Context(self.blob_dir.as_uri(), self.meta_url, contributor=Contributor("Test", "t@x"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, dm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "postgres":
        meta = request.getfixturevalue("postgres_url")
    else:
        meta = f"sqlite:///{tmp_path}/meta.db"
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    assert dm("context", "create", "q", "--blob", blob_dir.as_uri(), "--meta", meta).code == 0
    monkeypatch.setenv("DATAMON_CONTEXT", "q")
    return Store(request.param, blob_dir, meta, dm)
