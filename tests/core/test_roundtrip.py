"""Upload → download round trips through the CLI on the embedded default store."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from datamon.cas.chunker import ChunkerParams
from tests.conftest import tree_files

P = ChunkerParams()


def _rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def fixture_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    files = {
        "empty.bin": b"",
        "one.bin": b"x",
        "min-1.bin": _rand(P.min_size - 1, 2),
        "min.bin": _rand(P.min_size, 3),
        "min+1.bin": _rand(P.min_size + 1, 4),
        "max-1.bin": _rand(P.max_size - 1, 5),
        "max.bin": _rand(P.max_size, 6),
        "max+1.bin": _rand(P.max_size + 1, 7),
        "several.bin": _rand(9 * 1024 * 1024, 8),
        "text.csv": b"".join(b"%d,%d,hello world\n" % (i, i * i) for i in range(100_000)),
        "deep/a/b/c/d/e/f/g/h/leaf.txt": b"deep",
        "ünïcødé/日本語.txt": "ünïcødé".encode(),
        "spaces in name/file with spaces.txt": b"s",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "empty-dir").mkdir()
    (root / "nested-empty/inner").mkdir(parents=True)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "one.bin", 0o600)
    os.symlink("text.csv", root / "link-to-text")
    os.symlink("../../outside", root / "deep/dangling")
    os.symlink("deep/a", root / "dirlink")
    os.utime(root / "text.csv", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


def test_round_trip_preserves_everything(dm, fixture_tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r", "--description", "d").code == 0
    up = dm("bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "m")
    assert up.code == 0, up
    bid = up.out.strip()
    assert len(bid) == 64
    out = tmp_path / "out"
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid[:8], "--destination", out)
    assert r.code == 0, r
    assert tree_files(out) == tree_files(fixture_tree)
    assert os.readlink(out / "dirlink") == "deep/a"
    assert not (out / "dirlink").resolve().is_relative_to(out / "dirlink")  # still a link, not a copy


def test_file_keys_match_b3sum(dm, fixture_tree: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    dm("repo", "create", "--repo", "r")
    dm("bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "m")
    rows = [json.loads(x) for x in dm("bundle", "list", "files", "--repo", "r", "--json").out.splitlines()]
    keys = {r["path"]: r["key"] for r in rows if r["kind"] == "file"}
    assert len(keys) == 14
    from blake3 import blake3

    for path, key in keys.items():
        assert blake3((fixture_tree / path).read_bytes()).hexdigest() == key
    if shutil.which("b3sum"):
        out = subprocess.run(["b3sum", str(fixture_tree / "several.bin")], capture_output=True, text=True)
        assert out.stdout.split()[0] == keys["several.bin"]


def test_python_api_round_trip(fixture_tree: Path, tmp_path: Path) -> None:
    import datamon

    with datamon.connect() as ctx:
        ctx.create_repo("api")
        res = ctx.upload("api", fixture_tree, message="v1", label="prod")
        assert res.files == 14
        assert ctx.get_label("api", "prod").bundle_id == res.bundle.id
        paths = {e.path for e in ctx.entries("api", label="prod")}
        assert {"deep/a/b/c/d/e/f/g/h/leaf.txt", "empty-dir", "link-to-text"} <= paths
        with ctx.open_file("api", "several.bin", label="prod") as f:
            f.seek(5_000_000)
            assert f.read(1000) == (fixture_tree / "several.bin").read_bytes()[5_000_000:5_001_000]
            f.seek(-10, os.SEEK_END)
            assert f.read() == (fixture_tree / "several.bin").read_bytes()[-10:]
        ctx.download("api", tmp_path / "api-out", bundle=res.bundle.id)
        assert tree_files(tmp_path / "api-out") == tree_files(fixture_tree)


def test_download_single_file_and_name_filter(dm, fixture_tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dm("repo", "create", "--repo", "r")
    dm("bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "m", "--label", "l")
    r = dm(
        "bundle",
        "download",
        "file",
        "--repo",
        "r",
        "--label",
        "l",
        "--file",
        "ünïcødé/日本語.txt",
        "--destination",
        tmp_path / "one",
    )
    assert r.code == 0, r
    assert (tmp_path / "one/ünïcødé/日本語.txt").read_bytes() == "ünïcødé".encode()
    r = dm("bundle", "download", "--repo", "r", "--destination", tmp_path / "f", "--name-filter", r"\.csv$")
    assert r.code == 0, r
    got = [str(p.relative_to(tmp_path / "f")) for p in (tmp_path / "f").rglob("*") if p.is_file()]
    assert got == ["text.csv"]


def test_upload_selected_files_and_listing(dm, fixture_tree: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listing = tmp_path / "list.txt"
    listing.write_text("one.bin\ndeep/a/b/c/d/e/f/g/h/leaf.txt\n")
    dm("repo", "create", "--repo", "r")
    r = dm("bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "m", "--files", listing)
    assert r.code == 0, r
    files = dm("bundle", "list", "files", "--repo", "r", "--format", "{path}").out.split()
    assert sorted(files) == ["deep/a/b/c/d/e/f/g/h/leaf.txt", "one.bin"]


def test_listing_commands_json_and_format(dm, fixture_tree: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    dm("repo", "create", "--repo", "r", "--description", "hello")
    b1 = dm("bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "one").out.strip()
    b2 = dm(
        "bundle", "upload", "--repo", "r", "--path", fixture_tree, "--message", "two", "--label", "x"
    ).out.strip()
    listed = dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()
    assert listed == [b2, b1]  # newest first
    row = json.loads(dm("bundle", "get", "--repo", "r", "--json").out)
    assert row["id"] == b2 and row["labels"] == ["x"] and row["parents"] == [b1] and row["message"] == "two"
    assert json.loads(dm("repo", "get", "--repo", "r", "--json").out)["bundles"] == 2
    assert dm("repo", "list", "--format", "{name}:{description}").out == "r:hello\n"
    assert dm("label", "get", "--repo", "r", "--label", "x", "--format", "{bundle}").out.strip() == b2
