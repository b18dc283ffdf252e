"""Fixtures for lineage tests: a git project directory with step scripts, and repos to run them on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tree
from tests.teams.conftest import team  # noqa: F401  (the S3 + PostgreSQL fixture, for test_records)

CLEAN = """
import os
src, dst = os.environ["DATAMON_INPUT_RAW"], os.environ["DATAMON_OUTPUT_CLEAN"]
for name in sorted(os.listdir(src)):
    text = open(os.path.join(src, name)).read()
    seed = os.environ["DATAMON_PARAM_SEED"]
    open(os.path.join(dst, name), "w").write(text.upper() + "seed=" + seed + "\\n")
print("cleaned", len(os.listdir(dst)))
"""

STAMP = """
import os, time
open(os.path.join(os.environ["DATAMON_OUTPUT_OUT"], "stamp.txt"), "w").write(str(time.time_ns()))
open(os.path.join(os.environ["DATAMON_OUTPUT_OUT"], "same.txt"), "w").write("same")
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git work tree with the step scripts committed, made the current directory."""
    p = make_tree(tmp_path / "project", {"clean.py": CLEAN, "stamp.py": STAMP})
    git(p, "init", "-q")
    git(p, "add", ".")
    git(p, "commit", "-q", "-m", "steps")
    monkeypatch.chdir(p)
    return p


@pytest.fixture
def repos(dm, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """Repos raw (label prod: two CSV files), clean, feats, ext; returns raw's bundle id."""
    for r in ("raw", "clean", "feats", "ext"):
        assert dm("repo", "create", "--repo", r).code == 0
    src = make_tree(tmp_path / "raw", {"a.csv": "x,y\n1,2\n", "b.csv": "x,y\n3,4\n"})
    r = dm(
        "bundle", "upload", "--repo", "raw", "--path", src, "--message", "raw data", "--label", "prod",
        "--format", "{id}",
    )  # fmt: skip
    assert r.code == 0, r
    return str(r.out.strip())


PY = sys.executable
