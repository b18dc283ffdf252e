"""Test-wide fixtures: every test gets its own DATAMON_HOME, so no test touches a user's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.servers"]

# Subprocesses the tests start (`python -m datamon`, git-lfs calling the agent, FUSE mounts) import
# datamon from this checkout, not from wherever `pip install -e` last pointed (several worktrees).
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)


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


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[:500]!r}, err={self.err[:500]!r})"


@pytest.fixture
def dm(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the datamon CLI in-process: ``dm("repo", "create", "--repo", "r")`` → CliResult."""
    from datamon.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(int(code or 0), captured.out, captured.err)

    return run


def tree_files(root: Path) -> dict[str, object]:
    """Everything under ``root`` as {relpath: bytes | ('link', target) | 'dir'} plus modes."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode & 0o7777)
            else:
                out[rel] = (p.read_bytes(), p.stat().st_mode & 0o7777, p.stat().st_mtime_ns)
    return out
