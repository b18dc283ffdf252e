"""Bad configuration and failing servers, seen through the CLI in processes of their own.

A store that cannot be used is one ``error:`` line naming the context and the URL (no secrets, no
traceback) and exit 1. A server that dies during an upload fails it the same way; nothing the
metadata names is missing afterwards, and rerunning the upload completes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.servers import S3Server, free_port
from tests.teams.conftest import (
    PgInstance,
    RcloneS3,
    assert_one_line_error,
    cli_env,
    contents,
    finish,
    rand,
    run_cli,
    start_cli,
    write_files,
)

NO_AWS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _wrong_credentials(req: pytest.FixtureRequest, pg: str) -> tuple[str, str, dict[str, Any], list[str]]:
    s3: S3Server = req.getfixturevalue("s3_real_server")  # rclone checks signatures; moto does not
    bucket = s3.create_bucket()
    env = {"AWS_SECRET_ACCESS_KEY": "not-the-secret-0123456789"}
    return s3.url(bucket, "p"), pg, env, [f"s3://{bucket}/p", "refused"]


def _no_credentials(req: pytest.FixtureRequest, pg: str) -> tuple[str, str, dict[str, Any], list[str]]:
    s3: S3Server = req.getfixturevalue("s3_server")
    bucket = s3.create_bucket()
    return s3.url(bucket, "p"), pg, NO_AWS, [f"s3://{bucket}/p", "credentials"]


def _missing_bucket(req: pytest.FixtureRequest, pg: str) -> tuple[str, str, dict[str, Any], list[str]]:
    s3: S3Server = req.getfixturevalue("s3_server")
    return s3.url("no-such-bucket", "p"), pg, {}, ["s3://no-such-bucket/p", "does not exist"]


def _unreachable_endpoint(req: pytest.FixtureRequest, pg: str) -> tuple[str, str, dict[str, Any], list[str]]:
    port = free_port()
    url = S3Server("down", f"http://127.0.0.1:{port}").url("bucket", "p")
    return url, pg, {}, [f"127.0.0.1:{port}", "s3://bucket/p"]


def _unreachable_database(req: pytest.FixtureRequest, pg: str) -> tuple[str, str, dict[str, Any], list[str]]:
    s3: S3Server = req.getfixturevalue("s3_server")
    port = free_port()
    # datamon refuses to store a password in a context, but one may come from the environment:
    # it must still never be printed.
    meta = f"postgresql+psycopg://datamon@127.0.0.1:{port}/datamon"
    secret = {"DATAMON_META_URL": f"postgresql+psycopg://datamon:hunter2@127.0.0.1:{port}/datamon"}
    return s3.blob_url("p"), meta, secret, [f"postgresql+psycopg://datamon:***@127.0.0.1:{port}/datamon"]


BAD_STORES: dict[str, Callable[[pytest.FixtureRequest, str], tuple[str, str, dict[str, Any], list[str]]]] = {
    "wrong-credentials": _wrong_credentials,
    "no-credentials": _no_credentials,
    "missing-bucket": _missing_bucket,
    "unreachable-endpoint": _unreachable_endpoint,
    "unreachable-database": _unreachable_database,
}


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_unusable_store_is_one_clear_line(
    case: str, postgres_url: str, request: pytest.FixtureRequest, dm: Any, tmp_path: Path
) -> None:
    blob, meta, env, mentions = BAD_STORES[case](request, postgres_url)
    assert dm("context", "create", "broken", "--blob", blob, "--meta", meta).code == 0
    if case != "unreachable-database":
        assert dm("--context", "broken", "repo", "create", "--repo", "r").code == 0
    src = write_files(tmp_path / "src", {"a.txt": b"some data\n"})
    start = time.monotonic()
    r = run_cli(
        "--context", "broken", "bundle", "upload", "--repo", "r", "--path", src, "--message", "m",
        env=cli_env(**env),
    )  # fmt: skip
    line = assert_one_line_error(r, "context 'broken'", *mentions)
    assert "hunter2" not in line and "not-the-secret" not in line
    assert time.monotonic() - start < 30


def _big_tree(root: Path) -> dict[str, bytes]:
    """Incompressible files filling two packs (32 MiB each), so an upload takes a while."""
    files = {f"part-{i}.bin": rand(12 << 20, 50 + i) for i in range(5)}
    files["small.txt"] = b"small\n"
    write_files(root, files)
    return files


@pytest.mark.s3  # its own rclone server, not a fixture of tests/servers.py
def test_s3_server_killed_mid_upload(rclone_s3: RcloneS3, postgres_url: str, dm: Any, tmp_path: Path) -> None:
    bucket = rclone_s3.server.create_bucket()
    blob = rclone_s3.server.url(bucket, "store")
    assert dm("context", "create", "k", "--blob", blob, "--meta", postgres_url).code == 0

    def k(*args: object) -> Any:
        return dm("--context", "k", *args)

    assert k("repo", "create", "--repo", "r").code == 0
    before = {"x.txt": b"landed before the crash\n"}
    before_dir = write_files(tmp_path / "before", before)
    assert k("bundle", "upload", "--repo", "r", "--path", before_dir, "--message", "before").code == 0
    src = tmp_path / "src"
    files = _big_tree(src)
    upload = ("--context", "k", "bundle", "upload", "--repo", "r", "--path", src, "--message", "big")

    landed = set(rclone_s3.files(f"{bucket}/store/packs"))
    p = start_cli(*upload, "--concurrency-factor", "1")
    deadline = time.monotonic() + 60
    while set(rclone_s3.files(f"{bucket}/store/packs")) == landed and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    rclone_s3.kill()  # while the first pack lands; the second is still to come
    assert_one_line_error(finish(p), "context 'k'", f"s3://{bucket}/store")

    rclone_s3.start()  # same port, same directory: what landed before the crash is still there
    listed = [json.loads(line) for line in k("bundle", "list", "--repo", "r", "--json").out.splitlines()]
    assert [b["message"] for b in listed] == ["before"]
    assert _packs_exist("k"), "every pack the index names is in the bucket"

    r = run_cli(*upload)
    assert r.code == 0, r
    listed = [json.loads(line) for line in k("bundle", "list", "--repo", "r", "--json").out.splitlines()]
    assert [b["message"] for b in listed] == ["big", "before"]
    for b, expected in zip(listed, [files, before], strict=True):
        dest = tmp_path / b["id"]
        assert k("bundle", "download", "--repo", "r", "--bundle", b["id"], "--destination", dest).code == 0
        assert contents(dest) == expected


def _packs_exist(context: str) -> bool:
    """Every pack the metadata of ``context`` records is in its blob store, at its recorded size."""
    from datamon.api.context import connect
    from datamon.cas.pack import pack_blob_name

    with connect(context) as ctx:
        packs = ctx.meta.list_packs()
        return all(ctx.cas.blobs.size(pack_blob_name(p.name)) == p.size for p in packs)


def test_postgres_restarted_mid_run(
    pg_instance: PgInstance, s3_server: S3Server, dm: Any, tmp_path: Path
) -> None:
    meta = pg_instance.create_database()
    bucket = s3_server.create_bucket()
    assert dm("context", "create", "p", "--blob", s3_server.url(bucket, "store"), "--meta", meta).code == 0
    assert dm("--context", "p", "repo", "create", "--repo", "r").code == 0

    # A long-lived client (a notebook, the LFS agent): its pooled connections die with the restart
    # and are replaced on the next operation.
    from datamon.api.context import connect

    with connect("p") as ctx:
        one = write_files(tmp_path / "one", {"1.txt": b"one\n"})
        first = ctx.upload("r", one, message="one").bundle.id
        pg_instance.restart()
        two = write_files(tmp_path / "two", {"2.txt": b"two\n"})
        second = ctx.upload("r", two, message="two").bundle.id
        assert [b.id for b in ctx.list_bundles("r")] == [second, first]

    # An upload in flight when the server restarts: it either rides it out or fails in one line.
    src = tmp_path / "src"
    files = _big_tree(src)
    upload = ("--context", "p", "bundle", "upload", "--repo", "r", "--path", src, "--message", "big")
    client = s3_server.client()

    def packs() -> int:
        return int(client.list_objects_v2(Bucket=bucket, Prefix="store/packs/").get("KeyCount", 0))

    landed = packs()
    p = start_cli(*upload, "--concurrency-factor", "1")
    deadline = time.monotonic() + 60
    while p.poll() is None and packs() == landed and time.monotonic() < deadline:
        time.sleep(0.02)
    pg_instance.restart()
    r = finish(p)
    if r.code != 0:
        assert_one_line_error(r, "context 'p'", "metadata database")
        r = run_cli(*upload)
    assert r.code == 0, r

    r = dm("--context", "p", "bundle", "list", "--repo", "r", "--json")
    bundles = [json.loads(line) for line in r.out.splitlines()]
    assert [b["message"] for b in bundles] == ["big", "two", "one"]
    dest = tmp_path / "big"
    assert (
        dm(
            "--context",
            "p",
            "bundle",
            "download",
            "--repo",
            "r",
            "--bundle",
            bundles[0]["id"],
            "--destination",
            dest,
        ).code
        == 0
    )
    assert contents(dest) == files
