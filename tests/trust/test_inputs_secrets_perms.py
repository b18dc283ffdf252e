"""Secrets in URLs never shown or stored; private modes under any umask; gc removes stale
temporaries; the LFS agent refuses what is not a regular file."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import pytest

from datamon.config import redact_text, redact_url, url_secrets
from tests.lfs.conftest import lines, oid_of, replies

SECRETS = [
    ("postgresql+psycopg://u@h/db?password=S3CR3T", "password"),
    ("postgresql+psycopg://u:S3CR3T@h/db", "userinfo"),
    ("gs://b/p?token=S3CR3T&project=x", "token"),
    ("s3://b/p?endpoint_url=http://AK:S3CR3T@host:9&region=r", "nested"),
    ("https://h/o?X-Amz-Signature=S3CR3T&X-Amz-Credential=S3CR3T&X-Amz-Security-Token=S3CR3T", "amz"),
    ("https://acct.blob.core.windows.net/c?sv=1&sig=S3CR3T", "sas"),
    ("s3://b/p?secret_access_key=S3CR3T&access_key=S3CR3T&session_token=S3CR3T", "keys"),
    ("postgresql://u@h/db?sslpassword=S3CR3T&credentials=S3CR3T&api_key=S3CR3T", "misc"),
]


@pytest.mark.parametrize("url, _what", SECRETS)
def test_redact_url_masks_every_secret(url: str, _what: str) -> None:
    assert "S3CR3T" not in redact_url(url)
    assert "S3CR3T" not in redact_text(f"boom: cannot reach {url}: refused")
    assert url_secrets(url)


def test_public_parts_stay_visible() -> None:
    assert redact_url("gs://b/p?token=anon&project=x") == "gs://b/p?token=anon&project=x"
    assert (
        redact_url("postgresql+psycopg://u@h/db?sslmode=require")
        == "postgresql+psycopg://u@h/db?sslmode=require"
    )
    assert (
        redact_url("s3://b/p?region=eu&endpoint_url=http://h:9")
        == "s3://b/p?region=eu&endpoint_url=http://h:9"
    )
    assert url_secrets("postgresql+psycopg://u@h/db?sslkey=/k.pem") == []


@pytest.mark.parametrize("url, _what", SECRETS)
def test_context_create_refuses_secrets(dm, url: str, _what: str) -> None:  # type: ignore[no-untyped-def]
    blob, meta = (url, "sqlite://") if url.startswith(("gs", "s3", "https")) else ("memory://x", url)
    r = dm("context", "create", "t", "--blob", blob, "--meta", meta)
    assert r.code == 1 and "S3CR3T" not in r.err + r.out and len(r.err.splitlines()) == 1
    assert "t" not in dm("context", "list", "--format", "{name}").out.split()


@pytest.mark.parametrize("url, _what", SECRETS)
def test_context_get_and_list_mask_overrides(dm, monkeypatch, url: str, _what: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATAMON_BLOB_URL", url)
    monkeypatch.setenv("DATAMON_META_URL", url)
    for args in (["context", "get"], ["context", "get", "--json"], ["context", "list"]):
        r = dm(*args)
        assert "S3CR3T" not in r.out + r.err, r


def test_store_errors_mask_secrets(dm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "DATAMON_META_URL", "postgresql+nosuchdriver://u:S3CR3T@127.0.0.1:1/db?password=S3CR3T"
    )
    r = dm("repo", "list")
    assert r.code == 1 and "S3CR3T" not in r.err and "Traceback" not in r.err


def test_lfs_agent_init_reply_masks_token(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    env = dict(
        os.environ,
        DATAMON_BLOB_URL="gs://no-such-bucket/p?token=/tmp/S3CR3T.json&endpoint_url=http://127.0.0.1:9",
    )
    subprocess.run(
        [sys.executable, "-m", "datamon.cli", "repo", "create", "--repo", "m"], env=env, check=True
    )
    req = json.dumps({"event": "init", "operation": "upload", "concurrent": False, "concurrenttransfers": 1})
    r = subprocess.run(
        [sys.executable, "-m", "datamon.cli", "lfs", "agent", "--repo", "m"],
        input=(req + "\n" + json.dumps({"event": "terminate"}) + "\n").encode(),
        capture_output=True,
        env=dict(env, GIT_TRACE="1"),
        timeout=120,
    )
    assert b"S3CR3T" not in r.stdout + r.stderr, (r.stdout, r.stderr)


# --- permissions ---------------------------------------------------------------------------


def test_modes_under_umask_000(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    home = tmp_path / "new" / "home"
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(5000))
    env = dict(os.environ, DATAMON_HOME=str(home))
    for args in (
        ["config", "set", "contributor.name", "A"],
        ["repo", "create", "--repo", "r"],
        ["bundle", "upload", "--repo", "r", "--path", str(src), "--message", "m"],
    ):
        script = f"import os, sys; os.umask(0); from datamon.cli import main; sys.exit(main({args!r}))"
        assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "meta.db").stat().st_mode) == 0o600
    for p in [home / "blobs", *(home / "blobs").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert not mode & 0o022, (p, oct(mode))
        assert mode <= (0o755 if p.is_dir() else 0o644), (p, oct(mode))


# --- gc and temporaries ------------------------------------------------------------------------


def test_gc_removes_stale_temporaries(dm, tmp_path: Path, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    dm("repo", "create", "--repo", "r")
    assert dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "m").code == 0
    packs = next((datamon_home / "blobs" / "packs").iterdir())
    old = packs / ".tmp-deadbeef"  # what a writer killed between write and rename leaves
    old.write_bytes(b"x" * 1000)
    past = time.time() - 3600
    os.utime(old, (past, past))
    young = packs / ".tmp-young"
    young.write_bytes(b"y")
    assert dm("gc", "--grace", "1h", "--dry-run").code == 0
    assert old.exists()
    assert dm("gc", "--grace", "30m").code == 0
    assert not old.exists() and young.exists()
    time.sleep(0.01)
    assert dm("gc", "--grace", "0s", "--json").code == 0
    assert not young.exists()
    assert dm("verify").code == 0


def test_only_temporaries_can_be_removed(tmp_path: Path) -> None:
    from datamon.cas.blobstore import FsspecBlobStore

    store = FsspecBlobStore(f"file://{tmp_path}/b")
    store.put("packs/aa/x.pack", b"data")
    with pytest.raises(ValueError):
        store.remove_temporary("packs/aa/x.pack")
    assert store.list_temporaries(time.time_ns() + 10**9) == []


# --- LFS agent: non-regular files and size mismatches ------------------------------------------


def _agent(ctx, req: dict[str, object], tmp: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from datamon.lfs.agent import Agent, ApiTransfers

    init = {"event": "init", "operation": "upload", "concurrent": False, "concurrenttransfers": 1}
    out = io.BytesIO()
    Agent(
        lambda _i: ApiTransfers(ctx, "lfs", lambda: str(tmp)), lines(init, req, {"event": "terminate"}), out
    ).serve()
    return replies(out)[-1]


@pytest.fixture
def lfs_ctx(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.integrity.helpers import open_ctx

    ctx = open_ctx(tmp_path / "store")
    ctx.create_repo("lfs")
    yield ctx
    ctx.close()


def test_agent_refuses_a_fifo(lfs_ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = _agent(lfs_ctx, {"event": "upload", "oid": oid_of(b""), "size": 0, "path": str(fifo)}, tmp_path)
    assert got["event"] == "complete" and "not a regular file" in got["error"]["message"]  # type: ignore[index]


def test_agent_refuses_dev_zero(lfs_ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    got = _agent(lfs_ctx, {"event": "upload", "oid": oid_of(b""), "size": 0, "path": "/dev/zero"}, tmp_path)
    assert "error" in got and "not a regular file" in got["error"]["message"]  # type: ignore[index,operator]


def test_agent_size_mismatch_is_an_error_reply(lfs_ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "obj"
    f.write_bytes(b"hello")
    got = _agent(lfs_ctx, {"event": "upload", "oid": oid_of(b"hello"), "size": 3, "path": str(f)}, tmp_path)
    assert "error" in got
    ok = _agent(lfs_ctx, {"event": "upload", "oid": oid_of(b"hello"), "size": 5, "path": str(f)}, tmp_path)
    assert ok == {"event": "complete", "oid": oid_of(b"hello")}


def test_reader_never_reads_past_the_declared_size(tmp_path: Path) -> None:
    from datamon.api.lfs import _Sha256Reader
    from datamon.api.progress import NoProgress

    r = _Sha256Reader(open("/dev/zero", "rb"), NoProgress(), limit=11)  # noqa: SIM115
    try:
        total = 0
        while chunk := r.read(4):
            total += len(chunk)
        assert total == 11
    finally:
        r.close()
