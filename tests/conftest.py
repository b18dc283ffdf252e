"""Test-wide fixtures: every test gets its own DATAMON_HOME, so no test touches a user's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.servers"]


@pytest.fixture(autouse=True)
def datamon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "datamon-home"
    monkeypatch.setenv("DATAMON_HOME", str(home))
    for var in ("DATAMON_BLOB_URL", "DATAMON_META_URL", "DATAMON_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test User")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (tmp_path / "gitconfig").write_text("[user]\n\tname = Test User\n\temail = test@example.com\n")
    return home


def make_tree(root: Path, spec: dict[str, object]) -> Path:
    """Create files from a nested dict: str/bytes values are files, dicts are directories."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in spec.items():
        p = root / name
        if isinstance(value, dict):
            make_tree(p, value)
        elif isinstance(value, bytes):
            p.write_bytes(value)
        else:
            p.write_text(str(value))
    return root


@pytest.fixture
def tree_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    counter = iter(range(10**6))

    def factory(spec: dict[str, object]) -> Path:
        return make_tree(tmp_path / f"tree{next(counter)}", spec)

    return factory


os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
