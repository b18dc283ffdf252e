"""``repo rename``: labels, history and runs follow, ids stay valid, the old name is reserved and
explains itself, verify and admin reindex pass — and reindex replays a rename that a restored
database lacks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import CliResult, make_tree
from tests.teams.conftest import assert_one_line_error


def lines(r: CliResult) -> list[dict[str, object]]:
    return [json.loads(x) for x in r.out.splitlines() if x.strip()]


def upload(dm, repo: str, src: Path, msg: str) -> str:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", repo, "--path", src, "--message", msg, "--format", "{id}")
    assert r.code == 0, r
    return str(r.out.strip())


def setup_repo(dm, tmp: Path) -> list[str]:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "a").code == 0
    ids = [upload(dm, "a", make_tree(tmp / f"v{i}", {"f.txt": f"v{i}\n"}), f"v{i}") for i in range(3)]
    for label, i in (("prod", 0), ("prod", 1), ("prod", 2), ("old", 0)):
        assert dm("label", "set", "--repo", "a", "--label", label, "--bundle", ids[i]).code == 0
    return ids


def test_rename_with_labels_and_history(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = setup_repo(dm, tmp_path)
    before = lines(dm("label", "history", "--repo", "a", "--json"))
    listed = dm("bundle", "list", "--repo", "a", "--json").out
    r = dm("repo", "rename", "--repo", "a", "--new-name", "b")
    assert r.code == 0 and "renamed repo a to b" in r.err, r
    # everything followed, ids unchanged
    assert [
        (e["label"], e["old"], e["new"]) for e in lines(dm("label", "history", "--repo", "b", "--json"))
    ] == [(e["label"], e["old"], e["new"]) for e in before]
    r = dm("label", "get", "--repo", "b", "--label", "prod", "--format", "{bundle}")
    assert r.out.strip() == ids[2], r
    assert [x["id"] for x in lines(dm("bundle", "list", "--repo", "b", "--json"))] == [
        x["id"] for x in map(json.loads, listed.splitlines())
    ]
    for b in ids:  # records still name "a": displays accept a former name of the repo
        r = dm("bundle", "get", "--repo", "b", "--bundle", b[:8], "--json")
        assert r.code == 0 and json.loads(r.out)["id"] == b, r
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "b", "--label", "old", "--destination", out).code == 0
    assert (out / "f.txt").read_text() == "v0\n"
    # a new bundle of the renamed repo has the old ones as parents and names the new repo
    new = upload(dm, "b", make_tree(tmp_path / "v3", {"f.txt": "v3\n"}), "v3")
    assert json.loads(dm("bundle", "get", "--repo", "b", "--bundle", new, "--json").out)["parents"] == [
        ids[2]
    ]
    # the old name explains itself (exit 2) and stays reserved (exit 3); renaming back is fine
    r = dm("bundle", "list", "--repo", "a")
    assert_one_line_error(r, "repo 'a' was renamed to 'b' on", "use --repo b", code=2)
    r = dm("repo", "create", "--repo", "a")
    assert_one_line_error(r, "repo name 'a' was the name of repo 'b'", code=3)
    assert dm("repo", "create", "--repo", "c").code == 0
    r = dm("repo", "rename", "--repo", "c", "--new-name", "a")
    assert_one_line_error(r, "was the name of repo 'b'", code=3)
    r = dm("repo", "rename", "--repo", "b", "--new-name", "c")
    assert_one_line_error(r, "repo 'c' already exists", code=3)
    r = dm("repo", "rename", "--repo", "nope", "--new-name", "x")
    assert_one_line_error(r, "repo 'nope' does not exist", code=2)
    r = dm("repo", "rename", "--repo", "b", "--new-name", "bad/name")
    assert r.code == 1, r
    # verify (fast and full) and reindex are happy
    r = dm("verify", "--full")
    assert r.code == 0 and "no problems" in r.err, r
    r = dm("admin", "reindex", "--json")
    assert r.code == 0, r
    rep = json.loads(r.out)
    assert rep["renames"] == 1 and rep["replayed_renames"] == 0 and rep["problems"] == [], rep
    assert dm("verify").code == 0
    assert dm("repo", "rename", "--repo", "b", "--new-name", "a").code == 0
    assert dm("label", "get", "--repo", "a", "--label", "prod", "--format", "{bundle}").out.strip() == ids[2]
    assert dm("verify", "--full").code == 0
    # deleting the repo frees its names
    assert dm("repo", "delete", "--repo", "a", "--force-yes").code == 0
    assert dm("repo", "create", "--repo", "b").code == 0


def test_runs_follow_a_rename(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = setup_repo(dm, tmp_path)
    assert dm("repo", "create", "--repo", "out").code == 0
    o = upload(dm, "out", make_tree(tmp_path / "o", {"o.txt": "o"}), "o")
    r = dm(
        "run",
        "record",
        "--input",
        f"in=a@{ids[2]}",
        "--output",
        f"res=out@{o}",
        "--command",
        "step",
        "--json",
    )
    assert r.code == 0, r
    run = json.loads(r.out)["id"]
    assert dm("repo", "rename", "--repo", "a", "--new-name", "b").code == 0
    r = dm("run", "list", "--repo", "b", "--json")
    assert r.code == 0 and [x["id"] for x in lines(r)] == [run], r
    r = dm("lineage", "--repo", "out", "--bundle", o, "--upstream", "--json")
    assert r.code == 0 and ids[2] in r.out, r
    r = dm("verify", "--full")
    assert r.code == 0, r  # the run record still names "a": not a problem


def test_reindex_replays_a_rename_a_restored_database_lacks(dm, tmp_path: Path, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    ids = setup_repo(dm, tmp_path)
    db = datamon_home / "meta.db"
    backup = tmp_path / "backup.db"
    with sqlite3.connect(db) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    assert dm("repo", "rename", "--repo", "a", "--new-name", "b").code == 0
    assert dm("repo", "rename", "--repo", "b", "--new-name", "c").code == 0
    # restore the database from before the renames
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(backup) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    assert dm("repo", "get", "--repo", "a").code == 0
    r = dm("admin", "reindex", "--json")
    assert r.code == 0, r
    rep = json.loads(r.out)
    assert rep["renames"] == 2 and rep["replayed_renames"] == 2, rep
    assert [x["name"] for x in lines(dm("repo", "list", "--json"))] == ["c"]
    r = dm("bundle", "list", "--repo", "a")
    assert_one_line_error(r, "repo 'a' was renamed to 'c'", code=2)
    assert dm("label", "get", "--repo", "c", "--label", "prod", "--format", "{bundle}").out.strip() == ids[2]
    assert dm("verify", "--full").code == 0
    r = dm("admin", "reindex", "--json")  # idempotent
    assert json.loads(r.out)["replayed_renames"] == 0
    # a rename whose blob copy is missing gets it back
    for p in (datamon_home / "blobs" / "renames").iterdir():
        p.unlink()
    r = dm("admin", "reindex", "--json")
    assert json.loads(r.out)["restored_rename_blobs"] == 2, r


def test_delete_files_after_a_rename(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = setup_repo(dm, tmp_path)
    assert dm("repo", "rename", "--repo", "a", "--new-name", "b").code == 0
    (tmp_path / "list.txt").write_text("f.txt\n")
    r = dm(
        "repo", "delete", "files", "--repo", "b", "--files", tmp_path / "list.txt", "--force-yes", "--json"
    )
    assert r.code == 0, r
    new = {x["old"]: x["new"] for x in lines(r) if x["type"] == "rewrite"}
    assert set(new) == set(ids)
    r = dm("bundle", "get", "--repo", "b", "--label", "prod", "--json")
    assert r.code == 0 and json.loads(r.out)["id"] == new[ids[2]], r
    assert dm("verify", "--full").code == 0


def test_the_rename_record_is_the_documented_format() -> None:
    from datamon.api.rename import decode_rename, encode_rename
    from datamon.meta.rewrites import RenameEvent

    doc = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    block = doc.split("## Rename record", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    documented = "".join(line.strip() for line in block.splitlines()).encode()
    t0 = 1700000000000000000
    ev = RenameEvent("mnist-digits", "mnist", "mnist-digits", t0 + 100 * 10**9, "Ada <ada@example.com>", t0)
    rec = encode_rename(ev)
    assert rec.raw == documented
    assert decode_rename(rec.raw, rec.id) == rec
