"""Fixtures for the metadata-store contract suite.

``meta_url`` is parametrised over database backends. Each backend ``b`` other than SQLite gets its URL
from a fixture named ``{b}_url`` that must yield the URL of a fresh, empty database; to run the suite
against PostgreSQL, add ``"postgresql"`` to ``META_BACKENDS`` once ``tests/servers.py`` provides
``postgresql_url``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon.meta.store import MetadataStore

META_BACKENDS = ["sqlite"]
_MARKS = {"postgresql": [pytest.mark.postgres]}


@pytest.fixture(params=[pytest.param(b, marks=_MARKS.get(b, []), id=b) for b in META_BACKENDS])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta' / 'meta.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def store(meta_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore(meta_url)
    yield s
    s.close()
