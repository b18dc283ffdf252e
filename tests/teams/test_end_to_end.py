"""A team context end to end through the CLI: PostgreSQL metadata with an S3 or GCS bucket.

moto, ``rclone serve s3`` (a real storage system checking signatures) and the GCS emulator each get
one full run: context create, repo, upload, labels, listing, download byte-identical, dedup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.teams.conftest import cli_env, contents, rand, run_cli, text, write_files

BLOB_SERVERS = [
    pytest.param("s3_server", id="moto"),
    pytest.param("s3_real_server", id="rclone"),
    pytest.param("gcs_server", id="gcs"),
]


def _v1() -> dict[str, bytes]:
    return {
        "images/a.bin": rand(2_600_000, 1),  # several chunks
        "images/b.bin": rand(40_000, 2),
        "tables/t.csv": text(300_000, 3),
        "README": b"a dataset\n",
        "empty": b"",
    }


@pytest.mark.parametrize("server_fixture", BLOB_SERVERS)
def test_team_context_round_trip(
    server_fixture: str, postgres_url: str, dm: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue(server_fixture)
    blob = server.blob_url("datamon")
    r = dm("context", "create", "team", "--blob", blob, "--meta", postgres_url)
    assert r.code == 0, r
    r = dm("context", "get", "team", "--json")
    shown = json.loads(r.out)
    assert (shown["blob"], shown["meta"]) == (blob, postgres_url)

    ctx = ("--context", "team")
    assert dm(*ctx, "repo", "create", "--repo", "mnist", "--description", "digits").code == 0
    v1 = _v1()
    src1 = write_files(tmp_path / "v1", v1)
    r = dm(*ctx, "bundle", "upload", "--repo", "mnist", "--path", src1, "--message", "v1", "--label", "prod")
    assert r.code == 0, r
    b1 = r.out.strip()

    v2 = dict(v1)
    v2["tables/t.csv"] = v1["tables/t.csv"] + b"7,7,0.5,label-0\n"
    v2["images/c.bin"] = rand(30_000, 4)
    del v2["README"]
    src2 = write_files(tmp_path / "v2", v2)
    r = dm(*ctx, "bundle", "upload", "--repo", "mnist", "--path", src2, "--message", "v2", "--json")
    assert r.code == 0, r
    up2 = json.loads(r.out)
    b2 = up2["id"]
    assert up2["new_bytes"] < 400_000  # only the changed table and the new image: the rest deduplicated

    r = dm(*ctx, "bundle", "list", "--repo", "mnist", "--json")
    listed = [json.loads(line) for line in r.out.splitlines()]
    assert [b["id"] for b in listed] == [b2, b1]
    assert listed[1]["labels"] == ["prod"]

    r = dm(*ctx, "label", "set", "--repo", "mnist", "--label", "prod", "--bundle", b2[:10], "--expected", b1)
    assert r.code == 0, r
    r = dm(*ctx, "label", "set", "--repo", "mnist", "--label", "prod", "--bundle", b1, "--expected", b1)
    assert r.code == 3 and b2 in r.err, r
    r = dm(*ctx, "label", "get", "--repo", "mnist", "--label", "prod", "--format", "{bundle}")
    assert r.out.strip() == b2
    r = dm(*ctx, "label", "history", "--repo", "mnist", "--label", "prod", "--json")
    assert [json.loads(line)["new"] for line in r.out.splitlines()] == [b2, b1]

    for bundle_args, expected, dest in [
        (("--bundle", b1[:8]), v1, tmp_path / "d1"),
        (("--label", "prod"), v2, tmp_path / "d2"),
    ]:
        r = dm(*ctx, "bundle", "download", "--repo", "mnist", *bundle_args, "--destination", dest)
        assert r.code == 0, r
        assert contents(dest) == expected

    r = dm(*ctx, "bundle", "list", "files", "--repo", "mnist", "--bundle", b1, "--format", "{path}")
    assert sorted(r.out.split()) == sorted(v1)
    one = tmp_path / "one"
    r = dm(*ctx, "bundle", "download", "file", "--repo", "mnist", "--label", "prod", "--file", "images/c.bin",
           "--destination", one)  # fmt: skip
    assert r.code == 0, r
    assert (one / "images" / "c.bin").read_bytes() == v2["images/c.bin"]

    # Nothing of this went to the embedded default stores.
    assert dm("repo", "list", "--format", "{name}").out.strip() == ""


def test_env_overrides_in_another_process(team: Any, tmp_path: Path) -> None:
    """DATAMON_BLOB_URL / DATAMON_META_URL choose the stores without any config (a CI job)."""
    assert team.run("repo", "create", "--repo", "r").code == 0
    files = {"x/1.bin": rand(50_000, 9), "y.txt": b"hello\n"}
    src = write_files(tmp_path / "src", files)
    env = cli_env(
        DATAMON_HOME=str(tmp_path / "elsewhere"),
        DATAMON_BLOB_URL=team.blob_url,
        DATAMON_META_URL=team.meta_url,
    )
    r = run_cli("bundle", "upload", "--repo", "r", "--path", src, "--message", "from ci", env=env)
    assert r.code == 0, r
    bid = r.out.strip()
    r = team.run("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "out")
    assert r.code == 0, r
    assert contents(tmp_path / "out") == files
