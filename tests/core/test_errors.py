"""Bad input gets one clear line, the documented exit code, and loses nothing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tree, tree_files


def _one_line(r) -> None:  # type: ignore[no-untyped-def]
    assert r.err.startswith("error: "), r
    assert r.err.count("\n") == 1, r
    assert "Traceback" not in r.err


@pytest.fixture
def repo(dm, tmp_path: Path) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "src", {"a.txt": "a", "b": {"c.txt": "c"}})
    assert dm("repo", "create", "--repo", "r").code == 0
    bid = dm(
        "bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--label", "prod"
    ).out.strip()
    return src, bid


def test_upload_missing_path_and_file_path(dm, repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", "r", "--path", tmp_path / "nope", "--message", "m")
    assert r.code == 1 and "does not exist" in r.err
    _one_line(r)
    r = dm("bundle", "upload", "--repo", "r", "--path", repo[0] / "a.txt", "--message", "m")
    assert r.code == 1 and "not a directory" in r.err
    _one_line(r)


def test_unknown_things_exit_2(dm, repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ("bundle", "list", "--repo", "nope"),
        ("repo", "get", "--repo", "nope"),
        ("bundle", "upload", "--repo", "nope", "--path", repo[0], "--message", "m"),
        ("bundle", "get", "--repo", "r", "--bundle", "abcdef0123"),
        ("bundle", "get", "--repo", "r", "--label", "nope"),
        ("label", "get", "--repo", "r", "--label", "nope"),
        ("bundle", "download", "--repo", "r", "--label", "nope", "--destination", tmp_path / "x"),
        ("bundle", "download", "file", "--repo", "r", "--file", "nope.txt", "--destination", tmp_path / "y"),
        ("--context", "nope", "repo", "list"),
    ]
    for args in cases:
        r = dm(*args)
        assert r.code == 2, (args, r)
        _one_line(r)
    assert not (tmp_path / "x").exists()


def test_ambiguous_prefix_lists_candidates(dm, repo) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import datamon

    with datamon.connect() as ctx:
        real = ctx.meta.latest_bundle("r")
        for tail in ("01", "02"):
            fake_id = "abcdef" + tail + "0" * 56
            ctx.meta.add_bundle(dataclasses.replace(real, id=fake_id, created_ns=real.created_ns - 1))
    r = dm("bundle", "get", "--repo", "r", "--bundle", "abcdef")
    assert r.code == 1 and "ambiguous" in r.err, r
    assert "abcdef01" in r.err and "abcdef02" in r.err
    _one_line(r)
    r = dm("bundle", "get", "--repo", "r", "--bundle", "abcde")
    assert r.code == 1 and "6" in r.err, r
    # a unique prefix resolves (and the forged record is caught by its hash check)
    r = dm("bundle", "get", "--repo", "r", "--bundle", "abcdef01")
    assert r.code == 4 and "does not hash to its id" in r.err, r
    assert dm("bundle", "get", "--repo", "r", "--bundle", repo[1][:6]).code == 0


def test_duplicate_repo_exits_3(dm, repo) -> None:  # type: ignore[no-untyped-def]
    r = dm("repo", "create", "--repo", "r")
    assert r.code == 3 and "already exists" in r.err
    _one_line(r)


def test_download_into_non_empty_destination(dm, repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = make_tree(tmp_path / "dest", {"mine.txt": "precious"})
    r = dm("bundle", "download", "--repo", "r", "--destination", dest)
    assert r.code == 1 and "--force-dest" in r.err
    _one_line(r)
    assert (dest / "mine.txt").read_text() == "precious" and len(list(dest.iterdir())) == 1
    r = dm("bundle", "download", "--repo", "r", "--destination", dest, "--force-dest")
    assert r.code == 0
    assert (dest / "mine.txt").read_text() == "precious" and (dest / "b/c.txt").read_text() == "c"


def test_path_escaping_the_bundle(dm, repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for bad in ["../etc/passwd", "b/../../x", "/etc/passwd"]:
        r = dm("bundle", "download", "file", "--repo", "r", "--file", bad, "--destination", tmp_path / "d")
        assert r.code == 1 and "escapes" in r.err, r
        _one_line(r)
    assert not (tmp_path / "etc").exists()


def test_corrupted_pack_byte_exits_4_naming_object(dm, repo, tmp_path: Path, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "big", {"data.csv": "".join(f"{i},{i * 3},row\n" for i in range(200_000))})
    dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "big", "--label", "big")
    packs = sorted((datamon_home / "blobs/packs").rglob("*.pack"), key=lambda p: p.stat().st_size)
    pack = packs[-1]
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    pack.write_bytes(bytes(raw))
    r = dm("bundle", "download", "--repo", "r", "--label", "big", "--destination", tmp_path / "out")
    assert r.code == 4, r
    assert "object" in r.err and "corrupt" in r.err
    _one_line(r)
    # the small bundle in another pack still downloads fine
    r = dm("bundle", "download", "--repo", "r", "--label", "prod", "--destination", tmp_path / "ok")
    assert r.code == 0 and tree_files(tmp_path / "ok") == tree_files(repo[0])


def test_newer_schema_is_refused(dm, repo, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    db = sqlite3.connect(datamon_home / "meta.db")
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    r = dm("repo", "list")
    assert r.code == 1 and "newer" in r.err and "upgrade datamon" in r.err
    _one_line(r)


def test_bad_format_and_regex(dm, repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = dm("bundle", "list", "--repo", "r", "--format", "{nope}")
    assert r.code == 1 and "available fields" in r.err
    r = dm("bundle", "download", "--repo", "r", "--destination", tmp_path / "q", "--name-filter", "(")
    assert r.code == 1 and "regular expression" in r.err
    r = dm("bundle", "get", "--repo", "r", "--bundle", "xyz")
    assert r.code == 1


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop DAC caps"
)
def test_unreadable_file_fails_or_is_skipped(tmp_path: Path, datamon_home: Path) -> None:
    """Root reads everything, so drop CAP_DAC_OVERRIDE/READ_SEARCH to get a real EACCES."""
    src = make_tree(tmp_path / "src", {"ok.txt": "fine", "secret.txt": "no"})
    os.chmod(src / "secret.txt", 0)
    datamon = [sys.executable, "-m", "datamon.cli"]
    drop = [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ]
    env = dict(os.environ)
    subprocess.run([*datamon, "repo", "create", "--repo", "r"], check=True, env=env)
    r = subprocess.run(
        [*drop, *datamon, "bundle", "upload", "--repo", "r", "--path", src, "--message", "m"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1, r
    assert "secret.txt" in r.stderr and "--skip-on-error" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [
            *drop,
            *datamon,
            "bundle",
            "upload",
            "--repo",
            "r",
            "--path",
            src,
            "--message",
            "m",
            "--skip-on-error",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r
    assert "skipped" in r.stderr and "secret.txt" in r.stderr
    files = subprocess.run(
        [*datamon, "bundle", "list", "files", "--repo", "r", "--format", "{path}"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    assert files == ["ok.txt"]
