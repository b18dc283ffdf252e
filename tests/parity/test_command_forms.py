"""The Datamon command forms scripts call: label list --prefix, version, --loglevel anywhere,
--concurrency-factor on diff/update, --batch-size on listings, and diff rows with both sides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def two_bundles(dm, tree_factory):  # type: ignore[no-untyped-def]
    data = tree_factory({"same.txt": "same", "edit.txt": "before", "gone.txt": "x"})
    assert dm("repo", "create", "--repo", "r").code == 0
    assert (
        dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "a", "--label", "rel-1").code == 0
    )
    (data / "edit.txt").write_text("after, longer")
    (data / "gone.txt").unlink()
    (data / "new.txt").write_text("new")
    assert (
        dm("bundle", "upload", "--repo", "r", "--path", data, "--message", "b", "--label", "rel-2").code == 0
    )
    return data


def test_label_list_prefix_is_exact_and_case_sensitive(dm, two_bundles) -> None:  # type: ignore[no-untyped-def]
    assert dm("label", "set", "--repo", "r", "--label", "relx", "--bundle", _id(dm, "rel-1")).code == 0

    def names(*a: str) -> list[str]:
        out = dm("label", "list", "--repo", "r", "--json", *a).out
        return [json.loads(x)["name"] for x in out.splitlines()]

    assert names("--prefix", "rel-") == ["rel-1", "rel-2"]
    assert names("--prefix", "rel") == ["rel-1", "rel-2", "relx"]
    assert names("--prefix", "REL") == []
    assert names("--prefix", "rel_") == []  # not a LIKE wildcard
    assert names("--prefix", "rel-", "--batch-size", "1") == ["rel-1", "rel-2"]
    assert dm("label", "list", "--repo", "nope", "--prefix", "x").code == 2


def _id(dm, label: str) -> str:  # type: ignore[no-untyped-def]
    return json.loads(dm("label", "get", "--repo", "r", "--label", label, "--json").out)["bundle"]


def test_diff_shows_both_sides_of_an_updated_file(dm, two_bundles) -> None:  # type: ignore[no-untyped-def]
    rows = {
        r["path"]: r
        for r in map(
            json.loads, dm("bundle", "diff", "--repo", "r", "rel-1..rel-2", "--json").out.splitlines()
        )
    }
    assert set(rows) == {"edit.txt", "gone.txt", "new.txt"}
    u = rows["edit.txt"]
    assert (u["op"], u["old_size"], u["new_size"]) == ("U", 6, 13)
    files = {
        json.loads(x)["path"]: json.loads(x)["key"]
        for x in dm("bundle", "list", "files", "--repo", "r", "--label", "rel-1", "--json").out.splitlines()
    }
    new_files = {
        json.loads(x)["path"]: json.loads(x)["key"]
        for x in dm("bundle", "list", "files", "--repo", "r", "--label", "rel-2", "--json").out.splitlines()
    }
    assert u["old_key"] == files["edit.txt"] and u["new_key"] == new_files["edit.txt"]
    assert rows["gone.txt"]["new_key"] is None and rows["gone.txt"]["old_size"] == 1
    assert rows["new.txt"]["old_key"] is None and rows["new.txt"]["new_size"] == 3
    text = dm("bundle", "diff", "--repo", "r", "rel-1..rel-2", "--concurrency-factor", "4").out.splitlines()
    assert f"U edit.txt\t6 {files['edit.txt']} -> 13 {new_files['edit.txt']}" in text
    assert "D gone.txt" in text and "A new.txt" in text


def test_diff_against_a_directory_names_unhashed_sides_as_unknown(dm, two_bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dl"
    assert dm("bundle", "download", "--repo", "r", "--label", "rel-2", "--destination", dest).code == 0
    (dest / "edit.txt").write_text("a local edit of another size")
    row = json.loads(
        dm("bundle", "diff", "--repo", "r", "--label", "rel-2", "--destination", dest, "--json").out
    )
    assert row["op"] == "U" and row["old_size"] == 28 and row["old_key"] is None and row["new_size"] == 13
    assert (
        dm(
            "bundle",
            "update",
            "--repo",
            "r",
            "--label",
            "rel-2",
            "--destination",
            dest,
            "--concurrency-factor",
            "2",
        ).code
        == 0
    )
    assert (dest / "edit.txt").read_text() == "after, longer"


def test_version_names_datamon_python_and_formats(dm) -> None:  # type: ignore[no-untyped-def]
    info = json.loads(dm("version", "--json").out)
    assert info["datamon"] and info["python"].startswith(sys.version.split()[0])
    assert info["formats"]["bundle_record"] == 1 and info["formats"]["metadata_schema"]
    text = dm("version").out
    assert text.startswith("datamon ") and "metadata_schema" in text


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "DATAMON_HOME": str(env_home)}
    env.pop("DATAMON_LOGLEVEL", None)
    return subprocess.run([sys.executable, "-m", "datamon", *args], capture_output=True, text=True, env=env)


def test_loglevel_anywhere_logs_to_stderr_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _cli("repo", "create", "--repo", "r", env_home=home).returncode == 0
    quiet = _cli("repo", "list", "--json", env_home=home)
    assert quiet.returncode == 0 and "DEBUG" not in quiet.stderr
    loud = _cli("repo", "list", "--json", "--loglevel", "debug", env_home=home)
    assert loud.returncode == 0 and loud.stdout == quiet.stdout
    assert "DEBUG datamon.cli: context" in loud.stderr and "finished in" in loud.stderr
    front = _cli("--loglevel=info", "repo", "list", env_home=home)
    assert "INFO" in front.stderr and "DEBUG" not in front.stderr
    bad = _cli("repo", "list", "--loglevel", "chatty", env_home=home)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: unknown log level 'chatty'; use one of debug, info, warning, warn, error, none"
    ]
    # after `--` it belongs to the command a run starts, not to datamon
    from datamon.cli.about import split_loglevel

    assert split_loglevel(["run", "--", "x", "--loglevel", "debug"]) == (
        ["run", "--", "x", "--loglevel", "debug"],
        None,
    )
