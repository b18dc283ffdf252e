"""Fixtures for the metadata-store contract suite.

``meta_url`` is parametrised over database backends. Each backend ``b`` other than SQLite gets its URL
from a fixture named ``{b}_url`` that must yield the URL of a fresh, empty database. PostgreSQL runs
against the real server of ``tests/servers.py`` (``postgresql_url`` bridges to its ``postgres_url``);
``pytest -m "not postgres"`` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon.meta.store import MetadataStore

META_BACKENDS = ["sqlite", "postgresql"]
_MARKS = {"postgresql": [pytest.mark.postgres]}


@pytest.fixture(params=[pytest.param(b, marks=_MARKS.get(b, []), id=b) for b in META_BACKENDS])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta' / 'meta.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def postgresql_url(postgres_url: str) -> str:
    """A fresh database on the session's PostgreSQL server (named for ``META_BACKENDS``)."""
    return postgres_url


@pytest.fixture
def store(meta_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore(meta_url)
    yield s
    s.close()
