"""``datamon lfs install|uninstall|import|agent`` through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import datamon
from tests.lfs.conftest import oid_of


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def git_get(key: str, cwd: Path, *scope: str) -> str | None:
    r = subprocess.run(["git", "config", *scope, "--get", key], cwd=cwd, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture
def repo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    git("init", "-q", cwd=d)
    monkeypatch.chdir(d)
    return d


def test_every_lfs_command_has_help(dm) -> None:  # type: ignore[no-untyped-def]
    for cmd in ("agent", "install", "uninstall", "import"):
        r = dm("lfs", cmd, "--help")
        assert r.code == 0 and "Example" in r.out, (cmd, r)


def test_install_creates_the_repo_and_writes_the_keys(dm, repo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    r = dm("lfs", "install", "--repo", "models")
    assert r.code == 0, r
    assert "created datamon repo models" in r.err
    assert git_get("lfs.standalonetransferagent", repo_dir, "--local") == "datamon"
    path = git_get("lfs.customtransfer.datamon.path", repo_dir, "--local")
    assert path == str(Path(shutil.which("datamon") or "").absolute())
    assert git_get("lfs.customtransfer.datamon.args", repo_dir) == "lfs agent --repo models"
    assert git_get("lfs.customtransfer.datamon.concurrent", repo_dir) == "false"
    assert "lfs.customtransfer.datamon.args=lfs agent --repo models" in r.out
    with datamon.connect() as ctx:
        assert ctx.meta.get_repo("models")
    again = dm("lfs", "install", "--repo", "models", "--concurrent")
    assert again.code == 0 and "created" not in again.err
    assert git_get("lfs.customtransfer.datamon.concurrent", repo_dir) == "true"


def test_install_records_the_context_and_quotes_args(dm, repo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "team"
    made = dm(
        "context", "create", "team", "--blob", f"file://{home}/blobs", "--meta", f"sqlite:///{home}/meta.db"
    )
    assert made.code == 0, made
    # A space is no longer allowed in a repo name (datamon.names); a non-ASCII letter still needs quoting.
    r = dm("--context", "team", "lfs", "install", "--repo", "modèles")
    assert r.code == 0, r
    assert git_get("lfs.customtransfer.datamon.args", repo_dir) == "lfs agent --repo 'modèles' --context team"
    assert dm("--context", "team", "lfs", "install", "--repo", "my models").code == 1


def test_install_global_and_outside_a_repository(dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.chdir(outside)
    r = dm("lfs", "install", "--repo", "models")
    assert r.code == 1 and "not inside a git repository" in r.err and "--global" in r.err
    r = dm("lfs", "install", "--repo", "models", "--global")
    assert r.code == 0, r
    assert "standalonetransferagent = datamon" in (tmp_path / "gitconfig").read_text()
    r = dm("lfs", "uninstall", "--global")
    assert r.code == 0 and "lfs.customtransfer.datamon.args" in r.out
    assert "datamon" not in (tmp_path / "gitconfig").read_text()


def test_uninstall_removes_only_datamon_keys(dm, repo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("lfs", "install", "--repo", "models").code == 0
    git("config", "lfs.customtransfer.other.path", "/bin/other", cwd=repo_dir)
    r = dm("lfs", "uninstall")
    assert r.code == 0, r
    assert set(r.out.split()) == {
        "lfs.standalonetransferagent",
        "lfs.customtransfer.datamon.path",
        "lfs.customtransfer.datamon.args",
        "lfs.customtransfer.datamon.concurrent",
    }
    assert git_get("lfs.standalonetransferagent", repo_dir) is None
    assert git_get("lfs.customtransfer.other.path", repo_dir) == "/bin/other"
    r = dm("lfs", "uninstall")
    assert r.code == 0 and "nothing to remove" in r.err
    git("config", "lfs.standalonetransferagent", "other", cwd=repo_dir)
    dm("lfs", "uninstall")
    assert git_get("lfs.standalonetransferagent", repo_dir) == "other"


def test_import_from_the_repository_lfs_store(dm, repo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "models").code == 0
    for data in (b"alpha", b"beta"):
        oid = oid_of(data)
        p = repo_dir / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
    r = dm("lfs", "import", "--repo", "models")
    assert r.code == 0, r
    assert r.out.startswith("2 objects, 2 newly stored")
    with datamon.connect() as ctx:
        assert ctx.meta.get_lfs_object("models", oid_of(b"beta")) is not None
    r = dm("lfs", "import", "--repo", "nope")
    assert r.code == 2 and "does not exist" in r.err


def test_agent_command_answers_init_errors_on_stdout_and_logs_on_stderr(tmp_path: Path) -> None:
    exe = shutil.which("datamon")
    assert exe
    reqs = [{"event": "init", "operation": "download"}, {"event": "download", "oid": "ab" * 32, "size": 1}]
    r = subprocess.run(
        [exe, "lfs", "agent", "--repo", "missing"],
        input="".join(json.dumps(m) + "\n" for m in reqs),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert (
        out[0]["error"]["code"] == 404
        and "datamon repo 'missing' does not exist" in out[0]["error"]["message"]
    )
    assert "datamon lfs install --repo missing" in out[0]["error"]["message"]
    assert out[1]["oid"] == "ab" * 32 and out[1]["error"]["code"] == 404
    assert "init failed" in r.stderr


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--context", "nosuch"], {}, 404, "context 'nosuch' does not exist"),
        ([], {"DATAMON_BLOB_URL": "file:///dev/null/blobs"}, 503, "cannot open the store of context"),
    ],
)
def test_agent_init_fails_for_unknown_context_or_unreachable_store(
    dm,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    assert dm("repo", "create", "--repo", "proj").code == 0
    r = subprocess.run(
        [shutil.which("datamon") or "datamon", "lfs", "agent", "--repo", "proj", *args],
        input='{"event":"init","operation":"upload"}\n',
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=60,
    )
    assert r.returncode == 0
    reply = json.loads(r.stdout)
    assert reply["error"]["code"] == code and message in reply["error"]["message"], reply
